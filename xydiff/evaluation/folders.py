"""`xydiff score`: scores a folder of restored images against the sharp ones, no model needed.

  xydiff score RESTORED_DIR SHARP_DIR [-o DIR] [--align=ecc] [--no-lpips]

Files are paired by name (the stem, so `a.png` scores against `a.jpg`); an
unpaired file or a size mismatch is an error naming it, since a silently
skipped image would change every average. Each pair is scored as the
evaluator scores its own outputs (scoring.Scorer): the GoPro table protocol
with LPIPS, or with `config.eval.align=ecc` (--align=ecc) RealBlur's aligned
one; FID and KID of the whole folder when `config.eval.inception_weights`
(--inception-weights) is set. Writes `<out_dir>/score.json` and `score.csv`
in the evaluation's schema (the output is called 'restored'), so other
methods' released results are scored the way xydiff scores its own.
"""

from __future__ import annotations

import os

from absl import logging

from xydiff import images
from xydiff.evaluation import evaluator
from xydiff.evaluation import scoring
from xydiff.data.folders import match_pairs
from xydiff.errors import DataError

OUTPUT = 'restored'


def pair_files(restored_dir: str, sharp_dir: str) -> list[tuple[str, str, str]]:
  """(name, restored path, sharp path) for every image, matched by file stem."""
  for what, folder in (('RESTORED_DIR', restored_dir), ('SHARP_DIR', sharp_dir)):
    if not os.path.isdir(folder):
      raise DataError(f'{what} {folder} is not a folder')
  pairs = match_pairs(restored_dir, sharp_dir)
  if not pairs:
    raise DataError(f'RESTORED_DIR {restored_dir} holds no '
                    f'{"/".join(images.IMAGE_EXTENSIONS)} images')
  return pairs


def run(config, out_dir: str, restored_dir: str, sharp_dir: str) -> dict:
  """Scores every pair and writes `<out_dir>/score.{json,csv}`; returns the summary."""
  evaluator.validate(config.eval)
  pairs = pair_files(restored_dir, sharp_dir)
  os.makedirs(out_dir, exist_ok=True)
  scorer = scoring.Scorer(config.eval.align == 'ecc', config.eval.lpips)
  set_scores = scoring.SetScores(config.eval.inception_weights)
  with scoring.Progress('score', len(pairs)) as progress:
    per_image = []
    for index, (name, restored_path, sharp_path) in enumerate(pairs):
      restored = images.to_float(images.read_image(restored_path))
      sharp = images.to_float(images.read_image(sharp_path))
      if restored.shape != sharp.shape:
        raise DataError(f'{restored_path} is {restored.shape[1]}x{restored.shape[0]} but '
                        f'{sharp_path} is {sharp.shape[1]}x{sharp.shape[0]}')
      scores = scorer(restored, sharp)
      set_scores.add(OUTPUT, restored)
      set_scores.add('sharp', sharp)
      per_image.append({'name': name, 'psnr': scores['psnr'], 'ssim': scores['ssim'],
                        'outputs': {OUTPUT: scores}})
      progress(index + 1)
  summary = scoring.summarize(per_image, scorer.labels, [OUTPUT], primary=OUTPUT,
                               split=os.path.abspath(sharp_dir), step=None,
                               aligned=scorer.aligned)
  scoring.add_set_scores(summary, set_scores)
  summary['input_dir'] = os.path.abspath(restored_dir)
  scoring.write_report(os.path.join(out_dir, 'score'), summary)
  means = summary['outputs'][OUTPUT]
  logging.info('score: %d images, %s', len(per_image),
               ', '.join(f'{k} {v:.4f}' for k, v in means.items()))
  return summary
