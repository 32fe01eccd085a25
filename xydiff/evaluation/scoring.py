"""Model-free scoring: the metric table, per-image and per-set scores, reports.

Evaluation (evaluator.py), the sampling sweep (sweep.py) and `xydiff score`
(score.py) all read `METRICS`: a new full-reference or no-reference metric is
its module under xydiff/metrics/ and one row here. Each row names the
function (NHWC float images in [0, 1] -> one value per image) and the label
that says which variant of the metric a reported number is.

- `Scorer`: one restored image against its sharp image, on the GoPro/HIDE
  table protocol or RealBlur's (ECC-aligned, masked PSNR/SSIM);
- `SetScores`: FID and KID of whole image sets;
- `summarize` / `write_report`: the JSON + CSV report every mode writes;
- `Progress`: per-image progress with an ETA.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from xydiff import files, metrics, progress
from xydiff.interop import inception
from xydiff.metrics import fid, lpips, realblur

REALBLUR_DATA = ('realblur_j', 'realblur_r')


@dataclasses.dataclass(frozen=True)
class Metric:
  """One row of the metric table."""
  name: str
  fn: Callable  # (pred [N,H,W,3], target [N,H,W,3] or None) -> [N]
  label: str
  # Which reports carry it: 'table' (evaluation and `xydiff score`, the
  # GoPro/HIDE protocol) and/or 'sweep' (the sampling sweep).
  reports: tuple[str, ...] = ('table', 'sweep')
  # NIQE's block statistics do not trace: computed eagerly, image by image.
  jit: bool = True


def _niqe_or_nan(pred, target):
  """NIQE, or NaN for an image too small for two 96x96 blocks (reported as null)."""
  del target
  try:
    return metrics.niqe(pred)
  except ValueError:
    return jnp.full((pred.shape[0],), jnp.nan)


METRICS = {m.name: m for m in (
    Metric('psnr', metrics.psnr_uint8, metrics.PSNR_UINT8_LABEL),
    Metric('ssim', metrics.ssim, metrics.SSIM_2D_LABEL),
    Metric('ssim3d', metrics.ssim3d, metrics.SSIM_3D_LABEL, reports=('table',)),
    Metric('lpips', lpips.lpips, lpips.LPIPS_LABEL),
    Metric('niqe', _niqe_or_nan, metrics.NIQE_LABEL, reports=('sweep',), jit=False),
)}


def metric_names(report: str, with_lpips: bool = True) -> tuple[str, ...]:
  """The METRICS rows a report carries (LPIPS only when config.eval.lpips is on)."""
  return tuple(name for name, m in METRICS.items()
               if report in m.reports and (name != 'lpips' or with_lpips))


@functools.cache
def _compiled(name: str):
  metric = METRICS[name]
  return jax.jit(metric.fn) if metric.jit else metric.fn


def score(names, pred, target) -> dict[str, float]:
  """{name: value} of the METRICS rows `names` for one HxWx3 image pair in [0, 1]."""
  pred, target = jnp.asarray(pred)[None], jnp.asarray(target)[None]
  return {name: float(_compiled(name)(pred, target)[0]) for name in names}


def uses_alignment(config) -> bool:
  """RealBlur's protocol: forced by config.eval.align, or 'auto' on RealBlur data."""
  if config.eval.align == 'auto':
    return config.data.name in REALBLUR_DATA or (
        config.data.name == 'prepared' and config.data.tfds_config in REALBLUR_DATA)
  return config.eval.align == 'ecc'



class Scorer:
  """Full-reference scores of one restored image against its sharp image.

  `labels` names every score it returns; `aligned` says whether it follows
  RealBlur's protocol, whose scores also carry 'aligned' (False where OpenCV's
  ECC failed and the identity warp was used).
  """

  def __init__(self, aligned: bool, with_lpips: bool = True):
    self.aligned = aligned
    # LPIPS on the GoPro protocol only: RealBlur's pairs are misaligned by design,
    # and its protocol scores PSNR/SSIM of the aligned output alone.
    self.with_lpips = with_lpips and not aligned
    if aligned:
      self.names = ()
      self.labels = {'psnr': metrics.REALBLUR_LABEL, 'ssim': metrics.REALBLUR_LABEL}
    else:
      self.names = metric_names('table', self.with_lpips)
      self.labels = {name: METRICS[name].label for name in self.names}

  def __call__(self, pred, target) -> dict:
    """pred, target: HxWx3 float images in [0, 1]."""
    if self.aligned:
      scores = realblur.realblur_scores(np.asarray(pred), np.asarray(target))
      return {k: (bool(v) if k == 'aligned' else float(v)) for k, v in scores.items()}
    return score(self.names, pred, target)


class SetScores:
  """FID and KID of named image sets against the sharp images, accumulated image by image.

  `config.eval.inception_weights`: '' leaves them off (noted once in the log),
  'fetch' downloads pytorch-fid's weights once into the user's cache, a path
  reads that file; both fail at start-up, in one line, if the weights cannot
  be had. The sharp images are the set called 'sharp'.
  """

  def __init__(self, inception_weights: str):
    self.params = None
    self.labels = {}
    self._stats = {}
    if not inception_weights:
      logging.info('FID/KID off: set config.eval.inception_weights to a local %s or to '
                   "'fetch' to download it", inception.INCEPTION_FILENAME)
      return
    self.params = inception.load_inception(None if inception_weights == 'fetch' else inception_weights)
    self.labels = {'fid': fid.FID_LABEL, 'kid': fid.KID_LABEL}

  @property
  def enabled(self) -> bool:
    return self.params is not None

  def fresh(self) -> 'SetScores':
    """An empty accumulator sharing these loaded weights (one per evaluation)."""
    other = object.__new__(SetScores)
    other.params, other.labels, other._stats = self.params, self.labels, {}
    return other

  def features(self, image) -> np.ndarray:
    """The Inception features [2048] of one HxWx3 image in [0, 1]."""
    return np.asarray(fid.inception_features(self.params, jnp.asarray(image)[None]))[0]

  def add(self, name: str, image) -> None:
    """Adds one HxWx3 image in [0, 1] to the set `name` (nothing when FID/KID are off)."""
    if self.enabled:
      self._stats.setdefault(name, fid.FeatureStats()).add(self.features(image))

  def restore_rows(self, rows: dict[str, np.ndarray]) -> None:
    for name, features in rows.items():
      stats = self._stats.setdefault(name, fid.FeatureStats())
      if len(features):
        stats.add(features)

  def results(self) -> dict[str, dict[str, float]]:
    """{set: {'fid', 'kid'}} against 'sharp', for sets of 2 images or more."""
    sharp = self._stats.get('sharp')
    if not self.enabled or sharp is None or sharp.count < 2:
      return {}
    return {name: {'fid': stats.fid(sharp), 'kid': stats.kid(sharp)}
            for name, stats in self._stats.items() if name != 'sharp' and stats.count >= 2}


class Progress:
  """Per-image progress with an ETA: a bar on a terminal (xydiff.progress), else a log line
  at most every few seconds.

    with Progress('eval step 10', total) as report:
      for index, ... in enumerate(images):
        ...
        report(index + 1)
  """

  def __init__(self, what: str, total: int, every_s: float = 10.0, done: int = 0):
    self.what, self.total, self.every_s = what, total, every_s
    self.start = self.last = time.time()
    self.first = done
    self._bar = progress.task(what, total=total, unit='image', initial=done, leave=False,
                              on=jax.process_index() == 0)
    self._task = None

  def __enter__(self):
    self._task = self._bar.__enter__()
    return self

  def __exit__(self, *exc):
    return self._bar.__exit__(*exc)

  def __call__(self, done: int) -> None:
    if self._task is not None and not self._task.bar.disable:
      self._task.update(done - self._task.bar.n)
      return
    now = time.time()
    if done < self.total and now - self.last < self.every_s and done != self.first + 1:
      return
    self.last = now
    per_image = (now - self.start) / max(done - self.first, 1)
    logging.info('%s: %d/%d images, %.2f s/image, ETA %.0f s', self.what, done, self.total,
                 per_image, per_image * (self.total - done))


def write_report(path_stem: str, summary: dict) -> None:
  """`<stem>.json` (the whole summary) and `<stem>.csv` (one row per image), each atomic."""
  rows = []
  for entry in summary['images']:
    row = {'name': entry['name']}
    row.update({k: v for k, v in entry.items() if k.startswith('input_')})
    for out_name, scores in entry['outputs'].items():
      row.update({f'{out_name}_{k}': v for k, v in scores.items()})
    rows.append(row)
  text = io.StringIO()
  if rows:
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  files.write_atomic(f'{path_stem}.json', json.dumps(summary, indent=1))
  files.write_atomic(f'{path_stem}.csv', text.getvalue())


def summarize(per_image: list[dict], labels: dict, output_names, *, primary: str, split: str,
              step: int | None, aligned: bool) -> dict:
  """The report of one evaluation: per-image scores, their means, and what each metric is."""
  mean = lambda values: float(np.mean(values)) if values else float('nan')
  summary = {
      'step': None if step is None else int(step), 'split': split,
      'num_images': len(per_image), 'metrics': dict(labels), 'primary': primary,
      'input': {k: mean([e[f'input_{k}'] for e in per_image if f'input_{k}' in e])
                for k in labels if any(f'input_{k}' in e for e in per_image)},
      'outputs': {name: {k: mean([e['outputs'][name][k] for e in per_image]) for k in labels}
                  for name in output_names},
      'images': per_image,
  }
  if aligned:
    summary['alignment_failures'] = sum(
        (not e.get('input_aligned', True)) + sum(not o['aligned'] for o in e['outputs'].values())
        for e in per_image)
  return summary


def add_set_scores(summary: dict, set_scores: SetScores) -> None:
  """Puts each set's FID/KID beside its per-image means ('input' included), labelled."""
  results = set_scores.results()
  if results:
    summary['metrics'].update(set_scores.labels)
  for name, scores in results.items():
    (summary['input'] if name == 'input' else summary['outputs'][name]).update(scores)


