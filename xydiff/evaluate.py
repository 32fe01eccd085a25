"""Evaluation: every named output of a model against the sharp images.

An `Evaluator` knows which outputs a model has — XYDeblur: 'restored';
DvSR: 'predictor' (g alone) plus one entry per inference preset ('perceptual',
'sa', ...) — and scores each on whole images with the field's protocol (PSNR
on uint8-rounded RGB, peak 255; 2-D Gaussian SSIM on uint8 levels). On
RealBlur (config.eval.align) each uint8-rounded output is first aligned to the
ground truth as RealBlur's evaluation script does (align.py), and PSNR/SSIM
are the masked ones of that protocol. It writes `<workdir>/eval/step_<N>.json`
(every metric named by its label), a few input/output/sharp PNGs beside it,
and the same as TensorBoard summaries.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from xydiff import align, data, diffusion, images, metrics, models


def preset_schedule(preset) -> diffusion.Schedule:
  return diffusion.linear_schedule(preset.num_steps, preset.beta_start, preset.beta_end)


def make_restore_fns(config, graphdef):
  """{output name: jitted fn(params, blur [1,H,W,3], key) -> dict with 'image' and extras}."""
  if not models.is_diffusion(config.model):
    @jax.jit
    def restore(params, blur, key):
      del key
      return {'image': nnx.merge(graphdef, params)(blur)['restored']}
    return {'restored': restore}

  @jax.jit
  def predictor(params, blur, key):
    del key
    return {'image': nnx.merge(graphdef, params).predict(blur)['restored']}

  fns = {'predictor': predictor}
  for name in config.eval.presets:
    preset = config.diffusion.presets[name]
    fns[name] = make_sampler(graphdef, preset_schedule(preset), preset.num_samples,
                           config.diffusion.residual_scale)
  return fns


def make_sampler(graphdef, schedule, num_samples, residual_scale):
  """jitted fn(params, blur, key) -> {image: mean of the N samples, std, samples [N, ...]}."""
  @jax.jit
  def run(params, blur, key):
    model = nnx.merge(graphdef, params)
    out = diffusion.sample(lambda y: model.predict(y)['restored'], model.denoise, blur,
                           diffusion.sample_keys(key, num_samples), schedule=schedule,
                           residual_scale=residual_scale)
    return {'image': out['mean'], 'std': out['std'], 'samples': out['samples']}
  return run


@jax.jit
def _table_scores(pred, target):
  """GoPro/HIDE tables: PSNR, 2-D and 3-D SSIM on uint8 levels."""
  return {'psnr': metrics.psnr_uint8(pred, target)[0], 'ssim': metrics.ssim(pred, target)[0],
          'ssim3d': metrics.ssim3d(pred, target)[0]}


@jax.jit
def _realblur_scores(pred, target):
  """RealBlur: the saved 8-bit output, aligned to the ground truth, masked PSNR/SSIM."""
  psnr, ssim, converged = align.realblur_scores(images.quantize(pred[0]),
                                                images.quantize(target[0]))
  return {'psnr': psnr, 'ssim': ssim, 'aligned': converged}


REALBLUR_DATA = ('realblur_j', 'realblur_r')


def uses_alignment(config) -> bool:
  """RealBlur's protocol: forced by config.eval.align, or 'auto' on RealBlur data."""
  if config.eval.align == 'auto':
    return config.data.name in REALBLUR_DATA or (
        config.data.name == 'prepared' and config.data.tfds_config in REALBLUR_DATA)
  return config.eval.align == 'ecc'


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
    self.aligned = uses_alignment(config)
    if self.aligned:
      self._scores, self.labels = _realblur_scores, {'psnr': metrics.REALBLUR_LABEL,
                                                     'ssim': metrics.REALBLUR_LABEL}
    else:
      self._scores, self.labels = _table_scores, {
          'psnr': metrics.PSNR_UINT8_LABEL, 'ssim': metrics.SSIM_2D_LABEL,
          'ssim3d': metrics.SSIM_3D_LABEL}

  def run(self, graphdef, params, step: int) -> dict:
    if self._fns is None or graphdef is not self._graphdef:
      self._fns, self._graphdef = make_restore_fns(self.config, graphdef), graphdef
    is_chief = jax.process_index() == 0
    out_dir = os.path.join(self.workdir, self.subdir, f'step_{step}')
    num_pictures = self.config.eval.num_image_summaries
    if is_chief:
      os.makedirs(out_dir, exist_ok=True)
    base_key = jax.random.key(self.config.seed + 1)  # Fixed: re-evaluation is repeatable.
    per_image, tb_images = [], {}
    for index, (name, blur, sharp) in enumerate(
        data.eval_pairs(self.source, self.config.data.eval_max_images)):
      blur_b, sharp_b = jnp.asarray(blur)[None], jnp.asarray(sharp)[None]
      entry = {'name': name, **{f'input_{k}': v for k, v in self._score(blur_b, sharp_b).items()},
               'outputs': {}}
      if self.aligned and not entry['input_aligned']:
        logging.warning('%s: ECC alignment of the input stopped early; scored with its last warp.',
                        name)
      pictures = {'input': blur, 'sharp': sharp}
      for out_name, fn in self._fns.items():
        result = fn(params, blur_b, jax.random.fold_in(base_key, index))
        entry['outputs'][out_name] = self._score(result['image'], sharp_b)
        if self.aligned and not entry['outputs'][out_name]['aligned']:
          logging.warning('%s: ECC alignment of %s stopped early; scored with its last warp.',
                          name, out_name)
        if index < num_pictures:
          pictures[out_name] = np.asarray(result['image'][0])
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
    summary = self._summarize(per_image, step)
    if is_chief:
      self._write(summary, tb_images, step)
    return summary

  def _score(self, pred, target) -> dict:
    return {k: (bool(v) if k == 'aligned' else float(v))
            for k, v in self._scores(pred, target).items()}

  @property
  def primary_output(self) -> str:
    """The output whose scores are also given as each image's plain psnr/ssim."""
    if not models.is_diffusion(self.config.model):
      return 'restored'
    return self.config.eval.presets[-1] if self.config.eval.presets else 'predictor'

  def _summarize(self, per_image, step):
    mean = lambda values: float(np.mean(values))
    outputs = {name: {k: mean([e['outputs'][name][k] for e in per_image]) for k in self.labels}
               for name in self._fns}
    summary = {
        'step': int(step), 'split': self.split, 'num_images': len(per_image),
        'metrics': dict(self.labels),
        'primary': self.primary_output,
        'input': {k: mean([e[f'input_{k}'] for e in per_image]) for k in self.labels},
        'outputs': outputs,
        'images': per_image,
    }
    if self.aligned:
      summary['alignment_failures'] = sum(
          (not e['input_aligned']) + sum(not o['aligned'] for o in e['outputs'].values())
          for e in per_image)
    return summary

  def _write(self, summary, tb_images, step):
    path = os.path.join(self.workdir, self.subdir, f'step_{step}.json')
    tmp = f'{path}.tmp'
    with open(tmp, 'w') as f:
      json.dump(summary, f, indent=1)
    os.replace(tmp, path)
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
  from clu import metric_writers
  from xydiff import config_check, train
  config_check.validate(config, jax.device_count())
  step = None if config.eval.checkpoint_step < 0 else config.eval.checkpoint_step
  graphdef, params, step = train.load_for_inference(config, workdir, step)
  writer = metric_writers.create_default_writer(
      os.path.join(workdir, eval_subdir(config)), just_logging=jax.process_index() > 0)
  source = data.get_source(config.data, 'eval')
  return Evaluator(config, workdir, source, writer=writer, subdir=eval_subdir(config)).run(
      graphdef, params, step)
