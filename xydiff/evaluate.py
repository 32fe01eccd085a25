"""Evaluation: every named output of a model against the sharp images.

An `Evaluator` knows which outputs a model has — XYDeblur: 'restored';
DvSR: 'predictor' (g alone) plus one entry per inference preset ('perceptual',
'sa', ...) — and scores each on whole images with a `Scorer`: the field's
table protocol (PSNR on uint8-rounded RGB, peak 255; 2-D and 3-D SSIM on
uint8 levels), or on RealBlur (config.eval.align) that dataset's protocol
(each output saved as 8 bits, aligned to the ground truth with OpenCV's ECC,
masked PSNR/SSIM). Images stream one at a time: memory does not grow with the
size of the split. It writes `<workdir>/<subdir>/step_<N>.json` (every metric
named by its label) and `.csv` (one row per image), a few
input/output/sharp PNGs beside them, and the same as TensorBoard summaries.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from xydiff import config_check, data, files, images, inference, metrics, models, tf_guard
from xydiff.metrics import fid, lpips, realblur

REALBLUR_DATA = ('realblur_j', 'realblur_r')


def uses_alignment(config) -> bool:
  """RealBlur's protocol: forced by config.eval.align, or 'auto' on RealBlur data."""
  if config.eval.align == 'auto':
    return config.data.name in REALBLUR_DATA or (
        config.data.name == 'prepared' and config.data.tfds_config in REALBLUR_DATA)
  return config.eval.align == 'ecc'


@functools.partial(jax.jit, static_argnames=('with_lpips',))
def _table_scores(pred, target, with_lpips: bool):
  """GoPro/HIDE tables: PSNR, 2-D and 3-D SSIM on uint8 levels, and LPIPS."""
  scores = {'psnr': metrics.psnr_uint8(pred, target)[0], 'ssim': metrics.ssim(pred, target)[0],
            'ssim3d': metrics.ssim3d(pred, target)[0]}
  if with_lpips:
    scores['lpips'] = lpips.lpips(pred, target)[0]
  return scores


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
      self.labels = {'psnr': metrics.REALBLUR_LABEL, 'ssim': metrics.REALBLUR_LABEL}
    else:
      self.labels = {'psnr': metrics.PSNR_UINT8_LABEL, 'ssim': metrics.SSIM_2D_LABEL,
                     'ssim3d': metrics.SSIM_3D_LABEL}
      if self.with_lpips:
        self.labels['lpips'] = lpips.LPIPS_LABEL

  def __call__(self, pred, target) -> dict:
    """pred, target: HxWx3 float images in [0, 1]."""
    if self.aligned:
      scores = realblur.realblur_scores(np.asarray(pred), np.asarray(target))
    else:
      scores = _table_scores(jnp.asarray(pred)[None], jnp.asarray(target)[None],
                             self.with_lpips)
    return {k: (bool(v) if k == 'aligned' else float(v)) for k, v in scores.items()}


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
                   "'fetch' to download it", fid.INCEPTION_FILENAME)
      return
    self.params = fid.load_inception(None if inception_weights == 'fetch' else inception_weights)
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


def _file_stem(name: str) -> str:
  return name.replace('/', '_').replace(os.sep, '_')


class Progress:
  """Per-image progress with an ETA, logged at most every few seconds."""

  def __init__(self, what: str, total: int, every_s: float = 10.0):
    self.what, self.total, self.every_s = what, total, every_s
    self.start = self.last = time.time()

  def __call__(self, done: int) -> None:
    now = time.time()
    if done < self.total and now - self.last < self.every_s and done != 1:
      return
    self.last = now
    per_image = (now - self.start) / max(done, 1)
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
    """The output whose scores are also given as each image's plain psnr/ssim."""
    if not models.is_diffusion(self.config.model):
      return 'restored'
    return self.config.eval.presets[-1] if self.config.eval.presets else 'predictor'

  def run(self, graphdef, params, step: int) -> dict:
    """Scores `params` (the weights to evaluate: state.eval_params of a train state)."""
    if self._fns is None or graphdef is not self._graphdef:
      self._fns, self._graphdef = inference.make_restore_fns(self.config, graphdef), graphdef
    is_chief = jax.process_index() == 0
    out_dir = os.path.join(self.workdir, self.subdir, f'step_{step}')
    num_pictures = self.config.eval.num_image_summaries
    if is_chief:
      os.makedirs(out_dir, exist_ok=True)
    base_key = jax.random.key(self.config.seed + 1)  # Fixed: re-evaluation is repeatable.
    per_image, tb_images = [], {}
    max_images = self.config.data.eval_max_images
    total = data.eval_count(self.source, max_images)
    progress = Progress(f'eval step {step}', total)
    set_scores = self.set_scores.fresh()
    for index, (name, blur, sharp) in enumerate(data.eval_pairs(self.source, max_images)):
      set_scores.add('sharp', sharp)
      set_scores.add('input', blur)
      entry = {'name': name, **{f'input_{k}': v for k, v in self.scorer(blur, sharp).items()},
               'outputs': {}}
      if self.scorer.aligned and not entry['input_aligned']:
        logging.warning('%s: ECC alignment of the input failed; scored unaligned.', name)
      pictures = {'input': blur, 'sharp': sharp}
      for out_name, fn in self._fns.items():
        result = fn(params, jnp.asarray(blur)[None], jax.random.fold_in(base_key, index))
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
  """Where --mode=eval writes: one folder per dataset and split, e.g. eval_hide_test.

  Training writes its own evaluations to eval/; scoring a checkpoint on another
  benchmark must not overwrite them, nor one benchmark another.
  """
  parts = (config.data.name, config.data.tfds_config, config.data.eval_split,
           # A forced alignment setting scores differently: its own folder.
           '' if config.eval.align == 'auto' else f'align-{config.eval.align}')
  return 'eval_' + '_'.join(p for p in parts if p)


def evaluate_checkpoint(config, workdir: str) -> dict:
  """--mode=eval: scores the latest (or config.eval.checkpoint_step) checkpoint."""
  config_check.validate(config, 'eval', jax.device_count())
  step = None if config.eval.checkpoint_step < 0 else config.eval.checkpoint_step
  graphdef, params, step = inference.load_for_inference(config, workdir, step)
  writer = None
  if jax.process_index() == 0:
    from clu import metric_writers  # pylint: disable=import-outside-toplevel
    tf_guard.keep_tensorflow_off_accelerators()  # clu's summary writer runs TensorFlow ops.
    writer = metric_writers.create_default_writer(os.path.join(workdir, eval_subdir(config)))
  source = data.get_source(config.data, 'eval')
  return Evaluator(config, workdir, source, writer=writer, subdir=eval_subdir(config)).run(
      graphdef, params, step)
