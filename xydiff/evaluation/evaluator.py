"""Evaluation: every named output of a model against the sharp images.

An `Evaluator` scores every output the model's family names (`outputs`:
XYDeblur 'restored'; DvSR 'predictor', g alone, plus one per preset of
config.eval.presets) and scores each on whole images with a `Scorer`: the field's
table protocol (PSNR on uint8-rounded RGB, peak 255; 2-D and 3-D SSIM on
uint8 levels), or on RealBlur (config.eval.align) that dataset's protocol
(each output saved as 8 bits, aligned to the ground truth with OpenCV's ECC,
masked PSNR/SSIM; scoring.py holds the metric table). Images stream one at a
time: memory does not grow with the size of the split. It writes
`<workdir>/<subdir>/step_<N>.json` (every metric named by its label) and
`.csv` (one row per image), a few input/output/sharp PNGs beside them, and
the same as TensorBoard summaries.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from xydiff import config as config_lib
from xydiff import data, images, models
from xydiff.data import tf_cpu
from xydiff.errors import require
from xydiff.evaluation.scoring import Progress, Scorer, SetScores, add_set_scores, summarize
from xydiff.evaluation.scoring import uses_alignment, write_report
from xydiff.inference import ensemble, restorer
from xydiff.runs import checkpoint

def _file_stem(name: str) -> str:
  return name.replace('/', '_').replace(os.sep, '_')


class Evaluator:
  """Scores a model's outputs on an evaluation source; see the module docstring."""

  def __init__(self, config, workdir: str, source, *, writer=None, split_name: str | None = None,
               subdir: str = 'eval'):
    self.config = config
    self.workdir = workdir
    self.subdir = subdir
    self.source = source
    self.writer = writer
    self.split = split_name or config.data.eval_split
    self._fns = None
    self._graphdef = None
    self.scorer = Scorer(uses_alignment(config), config.eval.lpips)
    self.set_scores = SetScores(config.eval.inception_weights)

  @property
  def primary_output(self) -> str:
    """The output whose scores are also given as each image's plain psnr/ssim: the last."""
    return list(models.family(self.config.model.name).outputs(self.config))[-1]

  def run(self, graphdef, params, step: int) -> dict:
    """Scores `params` (the weights to evaluate: state.eval_params of a train state)."""
    if self._fns is None or graphdef is not self._graphdef:
      outputs = models.family(self.config.model.name).outputs(self.config)
      self._fns = {name: restorer.restore_fn(self.config, graphdef, settings)
                   for name, settings in outputs.items()}
      self._graphdef = graphdef
    is_chief = jax.process_index() == 0
    out_dir = os.path.join(self.workdir, self.subdir, f'step_{step}')
    num_pictures = self.config.eval.num_image_summaries
    if is_chief:
      os.makedirs(out_dir, exist_ok=True)
    base_key = jax.random.key(self.config.seed + 1)  # Fixed: re-evaluation is repeatable.
    per_image, tb_images = [], {}
    max_images = self.config.data.eval_max_images
    total = data.eval_count(self.source, max_images)
    set_scores = self.set_scores.fresh()
    with Progress(f'eval step {step}', total) as progress:
      for index, (name, blur, sharp) in enumerate(data.eval_pairs(self.source, max_images)):
        set_scores.add('sharp', sharp)
        set_scores.add('input', blur)
        entry = {'name': name, **{f'input_{k}': v for k, v in self.scorer(blur, sharp).items()},
                 'outputs': {}}
        if self.scorer.aligned and not entry['input_aligned']:
          logging.warning('%s: ECC alignment of the input failed; scored unaligned.', name)
        pictures = {'input': blur, 'sharp': sharp}
        for out_name, fn in self._fns.items():
          key = jax.random.fold_in(base_key, index)
          # config.inference.ensemble 8: the x8 self-ensemble around the whole restore.
          result = ensemble.ensembled(lambda view: fn(params, jnp.asarray(view), key),
                                      np.asarray(blur)[None], self.config.inference.ensemble)
          restored = np.asarray(result['image'][0])
          entry['outputs'][out_name] = self.scorer(restored, sharp)
          set_scores.add(out_name, restored)
          if self.scorer.aligned and not entry['outputs'][out_name]['aligned']:
            logging.warning('%s: ECC alignment of %s failed; scored unaligned.', name, out_name)
          if index < num_pictures:
            pictures[out_name] = restored
            if 'std' in result:
              std = np.asarray(result['std'][0]).mean(axis=-1, keepdims=True)
              entry['outputs'][out_name]['std_max'] = float(std.max())
              # Shown scaled to its own maximum; std_max gives the absolute scale.
              pictures[f'{out_name}_std'] = np.repeat(std / max(std.max(), 1e-8), 3, axis=-1)
              pictures[f'{out_name}_sample'] = np.asarray(result['samples'][0, 0])
        primary = entry['outputs'][self.primary_output]
        entry['psnr'], entry['ssim'] = primary['psnr'], primary['ssim']
        per_image.append(entry)
        if index < num_pictures and is_chief:
          for kind, picture in pictures.items():
            images.write_png(os.path.join(out_dir, f'{_file_stem(name)}_{kind}.png'), picture)
            tb_images[f'eval/{_file_stem(name)}/{kind}'] = np.clip(picture, 0, 1)[None]
        progress(index + 1)
    summary = summarize(per_image, self.scorer.labels, self._fns, primary=self.primary_output,
                        split=self.split, step=step, aligned=self.scorer.aligned)
    add_set_scores(summary, set_scores)
    if is_chief:
      self._write(summary, tb_images, step)
    return summary

  def _write(self, summary, tb_images, step):
    write_report(os.path.join(self.workdir, self.subdir, f'step_{step}'), summary)
    line = ', '.join(f'{name} {v["psnr"]:.2f} dB / {v["ssim"]:.4f}'
                     for name, v in summary['outputs'].items())
    logging.info('eval step %d on %d %s images: input %.2f dB / %.4f; %s', step,
                 summary['num_images'], summary['split'], summary['input']['psnr'],
                 summary['input']['ssim'], line)
    if self.writer is not None:
      scalars = {f'eval/{name}/{k}': v for name, vals in summary['outputs'].items()
                 for k, v in vals.items()}
      scalars.update({f'eval/input/{k}': v for k, v in summary['input'].items()})
      self.writer.write_scalars(step, scalars)
      if tb_images:
        self.writer.write_images(step, tb_images)
      self.writer.flush()


def eval_subdir(config) -> str:
  """Where `xydiff eval` writes: one folder per dataset and split, e.g. eval_hide_test.

  Training writes its own evaluations to eval/; scoring a checkpoint on another
  benchmark must not overwrite them, nor one benchmark another.
  """
  parts = (config.data.name, config.data.tfds_config, config.data.eval_split,
           # A forced alignment setting scores differently: its own folder.
           '' if config.eval.align == 'auto' else f'align-{config.eval.align}')
  return 'eval_' + '_'.join(p for p in parts if p)


ALIGN_MODES = ('auto', 'ecc', 'none')


def validate(eval_config) -> None:
  """Checks config.eval's shared fields (a family's own: its validate_settings)."""
  require(eval_config.align in ALIGN_MODES, 'eval.align', f'must be one of {ALIGN_MODES}',
          eval_config.align)
  require(isinstance(eval_config.num_image_summaries, int) and
          eval_config.num_image_summaries >= 0, 'eval.num_image_summaries', 'must be >= 0',
          eval_config.num_image_summaries)
  require(isinstance(eval_config.lpips, bool), 'eval.lpips', 'must be True or False',
          eval_config.lpips)
  require(isinstance(eval_config.checkpoint_step, int), 'eval.checkpoint_step',
          'must be an integer (-1: the latest)', eval_config.checkpoint_step)
  weights = eval_config.inception_weights
  require(weights in ('', 'fetch') or os.path.isfile(weights), 'eval.inception_weights',
          "must be '', 'fetch' or an existing file", weights)


def evaluate_checkpoint(config, workdir: str, *, config_from_user: bool = False) -> dict:
  """Scores the latest (or config.eval.checkpoint_step) checkpoint on config.data's eval split."""
  config_lib.check(config)
  data.validate(config.data, models.size_multiple(config.model))
  validate(config.eval)
  restorer.validate(config.inference)
  step = None if config.eval.checkpoint_step < 0 else config.eval.checkpoint_step
  graphdef, params, step = checkpoint.load_params(config, workdir, step,
                                                 config_from_user=config_from_user)
  writer = None
  if jax.process_index() == 0:
    from clu import metric_writers  # pylint: disable=import-outside-toplevel
    tf_cpu.keep_tensorflow_off_accelerators()  # clu's summary writer runs TensorFlow ops.
    writer = metric_writers.create_default_writer(os.path.join(workdir, eval_subdir(config)))
  source = data.get_source(config.data, 'eval')
  return Evaluator(config, workdir, source, writer=writer, subdir=eval_subdir(config)).run(
      graphdef, params, step)
