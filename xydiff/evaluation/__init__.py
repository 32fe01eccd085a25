"""Evaluation: scoring a model's outputs against sharp images.

- scoring.py: the metric table, per-image and per-set scores, reports;
- evaluator.py: `Evaluator` (every output a model has, over a split) and
  `evaluate_checkpoint`;
- sweep.py: DvSR's grid of sampling schedules, the perception-distortion curve;
- folders.py: a folder of restored images against a folder of sharp ones, no model.
"""
