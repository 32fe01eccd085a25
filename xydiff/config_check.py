"""Checks every config field a user may override, before any work starts.

A wrong value fails here with a ConfigError naming the field, not an hour
into training as a shape error.
"""

from __future__ import annotations

import os

import jax.numpy as jnp

from xydiff import data, models
from xydiff.runs import state as state_lib
from xydiff.data.synthetic import KERNEL_TYPES
from xydiff.errors import ConfigError
from xydiff.models import layers
from xydiff.models.spec import require as _require, require_positive_int


def _positive_int(config, field: str) -> None:
  value = config
  for part in field.split('.'):
    value = value[part]
  require_positive_int(value, field)


ALIGN_MODES = ('auto', 'ecc', 'none')


def validate_model(config) -> int:
  """Checks config.model (what every mode builds); returns the input-size multiple.

  The fields shared by every family here; the family's own through its spec.
  """
  m = config.model
  _require(m.name in models.FAMILIES, 'model.name', f'must be one of {models.FAMILIES}', m.name)
  try:
    dtype_ok = jnp.dtype(m.dtype) in (jnp.float32, jnp.bfloat16, jnp.float16)
  except TypeError:
    dtype_ok = False
  _require(dtype_ok, 'model.dtype', "must be 'float32', 'bfloat16' or 'float16'", m.dtype)
  _require(m.upsample_impl in layers.UPSAMPLE_IMPLS, 'model.upsample_impl',
           f'must be one of {layers.UPSAMPLE_IMPLS}', m.upsample_impl)
  spec = models.get(m)
  spec.validate(m)
  return spec.size_multiple(m)


MODES = ('train', 'eval', 'sweep', 'deblur', 'score')

# config.deblur.ensemble: 1 (off) or 8 (flips x rot90, the x8 self-ensemble).
ENSEMBLES = (1, 8)


def check_ensemble(value, field: str) -> None:
  """Raises ConfigError('<field>=<value>: ...') unless `value` is one of ENSEMBLES."""
  if isinstance(value, bool) or value not in ENSEMBLES:
    raise ConfigError(f'{field}={value!r}: must be 1 (no ensemble) or 8 (flips x rot90, '
                      'the x8 self-ensemble)')


def validate(config, mode: str = 'train', device_count: int = 1) -> None:
  """Checks every field `mode` reads: the model always; data, training, evaluation,
  sweep and deblur fields where the mode uses them."""
  validate_model(config)
  _require(isinstance(config.seed, int) and config.seed >= 0, 'seed', 'must be an integer >= 0',
           config.seed)
  # Read by evaluation and deblurring; older stored configs lack it (1).
  check_ensemble(config.deblur.get('ensemble', 1), 'config.deblur.ensemble')
  if models.is_diffusion(config.model):
    _validate_diffusion(config)
  if mode in ('train', 'eval', 'sweep'):
    _validate_data(config)
  if mode in ('train', 'eval', 'sweep', 'score'):
    _validate_eval(config)
  if mode == 'train':
    _validate_train(config, device_count)
  if mode == 'sweep':
    _validate_sweep(config)


def _validate_diffusion(config) -> None:
  """The training schedule, the sampling presets and the presets evaluation reports."""
  diff = config.diffusion
  _positive_int(config, 'diffusion.num_steps')
  _require(0 < diff.beta_start <= diff.beta_end < 1, 'diffusion.beta_start/beta_end',
           'need 0 < beta_start <= beta_end < 1', (diff.beta_start, diff.beta_end))
  _require(diff.predictor_loss_weight >= 0, 'diffusion.predictor_loss_weight', 'must be >= 0',
           diff.predictor_loss_weight)
  _require(diff.residual_scale > 0, 'diffusion.residual_scale', 'must be positive',
           diff.residual_scale)
  for name in config.eval.presets:
    _require(name in diff.presets, 'eval.presets', f'{name!r} is not in config.diffusion.presets',
             tuple(config.eval.presets))
  for name, preset in diff.presets.items():
    for f in ('num_steps', 'num_samples'):
      _positive_int(config, f'diffusion.presets.{name}.{f}')
    _require(0 < preset.beta_start <= preset.beta_end < 1,
             f'diffusion.presets.{name}.beta_start/beta_end',
             'need 0 < beta_start <= beta_end < 1', (preset.beta_start, preset.beta_end))


def _validate_sweep(config) -> None:
  if not models.is_diffusion(config.model):
    diffusion_families = tuple(n for n in models.FAMILIES if models.family(n).diffusion)
    raise ConfigError(f'config.model.name={config.model.name!r}: --mode=sweep needs a diffusion '
                      f'model {diffusion_families}')
  for i, schedule in enumerate(config.sweep.schedules):
    ok = (len(schedule) == 3 and int(schedule[0]) > 0 and 0 < schedule[1] <= schedule[2] < 1)
    _require(ok, f'sweep.schedules[{i}]', 'must be (num_steps, beta_start, beta_end) with '
             '0 < beta_start <= beta_end < 1', tuple(schedule))
  _require(len(config.sweep.num_samples) > 0 and
           all(isinstance(n, int) and n > 0 for n in config.sweep.num_samples),
           'sweep.num_samples', 'must be positive integers', tuple(config.sweep.num_samples))


def _validate_data(config) -> None:
  d = config.data
  multiple = models.size_multiple(config.model)
  _require(d.name in data.DATA_NAMES, 'data.name', f'must be one of {data.DATA_NAMES}', d.name)
  if d.name == 'folder':
    _require(bool(d.root), 'data.root', 'set it to the folder that holds your '
             f'{d.train_split}/ and {d.eval_split}/ splits', d.root)
  # tfds builders reuse prepared records even after the download is deleted:
  # they check their manual folder themselves, only when they must read it.
  if d.root and d.name not in data.TFDS_NAMES:
    _require(os.path.isdir(d.root), 'data.root', 'no such folder', d.root)
  _positive_int(config, 'data.crop')
  _require(d.crop % multiple == 0, 'data.crop', f'must be a multiple of {multiple} for this model',
           d.crop)
  _require(d.synthetic.kernel in KERNEL_TYPES, 'data.synthetic.kernel',
           f'must be one of {KERNEL_TYPES}', d.synthetic.kernel)
  _positive_int(config, 'data.synthetic.pairs_per_photo')
  syn = d.synthetic
  _require(isinstance(syn.kernel_size, int) and syn.kernel_size >= 3 and syn.kernel_size % 2,
           'data.synthetic.kernel_size', 'must be an odd integer >= 3', syn.kernel_size)
  _require(len(syn.kernel_length) == 2 and 0 < syn.kernel_length[0] <= syn.kernel_length[1]
           <= syn.kernel_size, 'data.synthetic.kernel_length',
           'must be (low, high) with 0 < low <= high <= kernel_size', tuple(syn.kernel_length))
  _require(syn.noise_std >= 0, 'data.synthetic.noise_std', 'must be >= 0', syn.noise_std)
  _require(syn.photo_crop >= 0, 'data.synthetic.photo_crop', 'must be >= 0 (0: whole photos)',
           syn.photo_crop)
  _positive_int(config, 'data.synthetic.num_eval')
  _require(d.eval_max_images >= 0, 'data.eval_max_images', 'must be >= 0 (0: all)',
           d.eval_max_images)
  _positive_int(config, 'data.cache_pairs')


def _validate_train(config, device_count: int) -> None:
  t = config.train
  for f in ('batch_size', 'num_steps', 'log_every', 'checkpoint_every', 'keep_checkpoints',
            'eval_every'):
    _positive_int(config, f'train.{f}')
  _positive_int(config, 'train.steps_per_call')
  for f in ('num_steps', 'log_every', 'checkpoint_every', 'eval_every'):
    _require(t[f] % t.steps_per_call == 0, f'train.{f}',
             f'must be a multiple of config.train.steps_per_call={t.steps_per_call}', t[f])
  _require(t.batch_size % device_count == 0, 'train.batch_size',
           f'must be divisible by the {device_count} devices of the data-parallel mesh',
           t.batch_size)
  _positive_int(config, 'train.microbatches')
  _require(t.batch_size % (device_count * t.microbatches) == 0, 'train.microbatches',
           f'must divide the per-device batch {t.batch_size} / {device_count} devices',
           t.microbatches)
  _require(t.lr > 0, 'train.lr', 'must be positive', t.lr)
  _require(0 <= t.ema_rate < 1, 'train.ema_rate', 'must be in [0, 1); 0 turns the EMA off',
           t.ema_rate)
  _require(t.warmup_steps >= 0, 'train.warmup_steps', 'must be >= 0', t.warmup_steps)
  _require(t.grad_clip >= 0, 'train.grad_clip', 'must be >= 0; 0 turns clipping off', t.grad_clip)
  _require(all(int(s) > 0 for s in t.lr_halve_steps), 'train.lr_halve_steps',
           'must be positive steps', tuple(t.lr_halve_steps))
  _require(t.lr_schedule in state_lib.LR_SCHEDULES, 'train.lr_schedule',
           f'must be one of {state_lib.LR_SCHEDULES}', t.lr_schedule)
  _require(0 <= t.lr_min <= t.lr, 'train.lr_min', 'must be in [0, train.lr]', t.lr_min)
  _require(0 < t.lr_decay_factor <= 1, 'train.lr_decay_factor', 'must be in (0, 1]',
           t.lr_decay_factor)
  _require(t.optimizer in state_lib.OPTIMIZERS, 'train.optimizer',
           f'must be one of {state_lib.OPTIMIZERS}', t.optimizer)
  _require(len(t.adam_betas) == 2 and all(0 <= b < 1 for b in t.adam_betas), 'train.adam_betas',
           'must be two numbers in [0, 1)', tuple(t.adam_betas))
  _require(t.weight_decay >= 0, 'train.weight_decay', 'must be >= 0', t.weight_decay)


def _validate_eval(config) -> None:
  _require(config.eval.align in ALIGN_MODES, 'eval.align', f'must be one of {ALIGN_MODES}',
           config.eval.align)
  _require(config.eval.num_image_summaries >= 0, 'eval.num_image_summaries', 'must be >= 0',
           config.eval.num_image_summaries)
  _require(isinstance(config.eval.lpips, bool), 'eval.lpips', 'must be True or False',
           config.eval.lpips)
  weights = config.eval.inception_weights
  _require(weights in ('', 'fetch') or os.path.isfile(weights), 'eval.inception_weights',
           "must be '', 'fetch' or an existing file", weights)
