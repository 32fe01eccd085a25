"""DvSR's pair of networks: initial predictor g(y) and denoiser f(z, level, y).

g is any deterministic family of the zoo, given as a nested model section
`config.model.predictor = {name, ...}` (DvSR's own is the U-Net, 'unet'); f
is a noise-conditioned U-Net (unet.py). With an XY-decoupled g (and
optionally f) this is xydiff's own model. The diffusion (diffusion/) models
the residual x - g(y); `restore` samples it with the sampler and schedule of
an inference preset (config.inference.presets), or returns g(y) alone for
the preset 'predictor'.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from xydiff import models
from xydiff.diffusion import losses, samplers, schedules
from xydiff.errors import ConfigError, require
from xydiff.models import contract, unet


class DvSR(nnx.Module):

  def __init__(self, predictor: nnx.Module, denoiser: nnx.Module):
    self.predictor = predictor
    self.denoiser = denoiser

  def predict(self, blur: jax.Array) -> dict[str, jax.Array]:
    """g(y): {'restored'} plus the predictor's extras (e.g. its decoders' residuals)."""
    return self.predictor(blur)

  def denoise(self, z: jax.Array, level: jax.Array, blur: jax.Array) -> jax.Array:
    """f(z, sqrt(alpha_bar), y): the noise estimate, from [z, y] stacked on channels."""
    return self.denoiser(jnp.concatenate([z, blur], axis=-1), level)['output']


# The name of the output that is g(y) alone (evaluation reports it beside the presets).
PREDICTOR = 'predictor'


@dataclasses.dataclass(frozen=True)
class Sampling:
  """How `restore` samples: a preset with its overrides applied, and the residual scale.

  `num_steps` 0 means no sampling at all: g(y) alone (the 'predictor' output).
  `num_steps` is the number of denoiser calls (NFE). The preset's
  (preset_steps, beta_start, beta_end, spacing, range_steps) fix its levels:
  `range_steps` linear betas from beta_start to beta_end give the first and
  last level (0: preset_steps), and 'logsnr' spreads the steps evenly in
  logSNR between them. When a steps override differs from preset_steps, the
  ancestral chain on linear betas keeps its betas' ends (the paper's
  protocol: a schedule is (T, beta range)), and every other sampler keeps the
  preset's first and last level and spreads the steps in logSNR between them
  (DPM-Solver's spacing).
  """
  preset: str
  num_steps: int
  beta_start: float = 0.0
  beta_end: float = 0.0
  num_samples: int = 1
  residual_scale: float = 1.0
  sampler: str = 'ancestral'
  eta: float = 0.0
  spacing: str = 'linear_beta'
  preset_steps: int = 0  # 0: num_steps.
  range_steps: int = 0  # 0: preset_steps.

  @property
  def schedule(self) -> schedules.Schedule:
    preset_steps = self.preset_steps or self.num_steps
    range_steps = self.range_steps or preset_steps
    if self.num_steps == preset_steps == range_steps:
      return schedules.sampling_schedule(preset_steps, self.beta_start, self.beta_end,
                                         self.spacing)
    if (self.sampler == 'ancestral' and self.spacing == 'linear_beta'
        and range_steps == preset_steps):
      return schedules.linear_schedule(self.num_steps, self.beta_start, self.beta_end)
    ends = schedules.linear_schedule(range_steps, self.beta_start, self.beta_end).alpha_bars
    return schedules.logsnr_schedule(self.num_steps, float(ends[1]), float(ends[-1]))


def _preset(num_steps, beta_start, beta_end, num_samples, sampler='ancestral', eta=0.0,
            spacing='linear_beta', range_steps=0):
  """One inference preset's fields (see DvSRFamily.settings_defaults). A preset stored
  without sampler, eta, spacing or range_steps meant these defaults."""
  return dict(num_steps=num_steps, beta_start=beta_start, beta_end=beta_end,
              num_samples=num_samples, sampler=sampler, eta=eta, spacing=spacing,
              range_steps=range_steps)


def predictor_families() -> tuple[str, ...]:
  """The families that can be DvSR's initial predictor: every deterministic one."""
  return tuple(name for name in models.FAMILIES if name != DvSRFamily.name)


def _predictor(section):
  return models.family(section.predictor.name)


class DvSRFamily(contract.Family):
  name = 'dvsr'
  module = DvSR

  # ------------------------------------------------------------ the config section

  def defaults(self):
    return dict(
        # The initial predictor g(y): any deterministic family's section (unet: DvSR's).
        predictor={'name': 'unet', **models.family('unet').defaults()},
        # The denoiser f(z, level, y): a noise-conditioned U-Net; `film_scale` adds a
        # FiLM scale to the shift; `decoders=2` makes it XY too.
        denoiser=dict(base=32, multipliers=(1, 2, 3, 4), num_res=3, decoders=1,
                      share='rotate', film_scale=False, upsample_impl='auto'),
        noise_embedding_scale=5000.0,  # WaveGrad's scale of the level before the sinusoid.
        diffusion=dict(
            # Training schedule (SR3): beta linear from beta_start to beta_end over num_steps.
            num_steps=2000, beta_start=1e-6, beta_end=1e-2,
            residual_scale=2.0,  # Residuals of [0, 1] images on the [-1, 1] scale.
            predictor_loss_weight=0.0,  # Optional L1 on g(y); 0 in the paper.
        ),
    )

  def validate(self, section, prefix):
    predictors = predictor_families()
    name = section.predictor.get('name')
    require(name in predictors, f'{prefix}.predictor.name', f'must be one of {predictors}', name)
    _predictor(section).validate(section.predictor, f'{prefix}.predictor')
    unet.check_section(section.denoiser, f'{prefix}.denoiser')
    require(isinstance(section.denoiser.film_scale, bool), f'{prefix}.denoiser.film_scale',
            'must be True or False', section.denoiser.film_scale)
    require(section.noise_embedding_scale > 0, f'{prefix}.noise_embedding_scale',
            'must be positive', section.noise_embedding_scale)
    diff = section.diffusion
    contract.check_positive_int(diff.num_steps, f'{prefix}.diffusion.num_steps')
    require(0 < diff.beta_start <= diff.beta_end < 1, f'{prefix}.diffusion.beta_start/beta_end',
            'need 0 < beta_start <= beta_end < 1', (diff.beta_start, diff.beta_end))
    require(diff.residual_scale > 0, f'{prefix}.diffusion.residual_scale', 'must be positive',
            diff.residual_scale)
    require(diff.predictor_loss_weight >= 0, f'{prefix}.diffusion.predictor_loss_weight',
            'must be >= 0', diff.predictor_loss_weight)

  def output_fields(self, section):
    fields = {f'predictor.{k}': v for k, v in
              {'name': section.predictor.name,
               **_predictor(section).output_fields(section.predictor)}.items()}
    fields.update({f'denoiser.{k}': v for k, v in section.denoiser.items()
                   if k not in contract.IMPLEMENTATION_FIELDS})
    fields['noise_embedding_scale'] = section.noise_embedding_scale
    # The residual scale and the training schedule fix what the denoiser's levels mean.
    for field in ('num_steps', 'beta_start', 'beta_end', 'residual_scale'):
      fields[f'diffusion.{field}'] = section.diffusion[field]
    return fields

  # ------------------------------------------------------------ the network

  def build(self, section, *, dtype, rngs):
    predictor = _predictor(section).build(section.predictor, dtype=dtype, rngs=rngs)
    f = section.denoiser
    denoiser = unet.UNet(in_channels=6, out_channels=3, base=f.base,
                         multipliers=tuple(f.multipliers), num_res=f.num_res,
                         decoders=f.decoders, share=f.share, noise_conditioned=True,
                         noise_embedding_scale=section.noise_embedding_scale,
                         film_scale=f.film_scale, dtype=dtype, upsample_impl=f.upsample_impl,
                         rngs=rngs)
    return DvSR(predictor, denoiser)

  def size_multiple(self, section):
    return math.lcm(_predictor(section).size_multiple(section.predictor),
                    unet.UNet.multiple_for(section.denoiser.multipliers))

  def xy_section(self, section):
    return _predictor(section).xy_section(section.predictor)

  # ------------------------------------------------------------ training

  def loss(self, section):
    d = section.diffusion
    schedule = schedules.linear_schedule(d.num_steps, d.beta_start, d.beta_end)

    def loss_fn(model, batch, key):
      return losses.loss(model, batch, key, schedule=schedule,
                            residual_scale=d.residual_scale,
                            predictor_weight=d.predictor_loss_weight)
    return loss_fn

  # ------------------------------------------------------------ inference

  def settings(self, config, *, preset=None, steps=None, samples=None, sampler=None):
    inference = config.inference
    preset = inference.preset if preset is None else preset
    if preset == PREDICTOR:
      return Sampling(PREDICTOR, 0)
    if preset not in inference.presets:
      raise ConfigError(f'preset={preset!r}: must be one of '
                        f'{(PREDICTOR,) + tuple(inference.presets)}')
    values = inference.presets[preset]
    if sampler is not None and sampler not in samplers.SAMPLERS:
      raise ConfigError(f'sampler={sampler!r}: must be one of {samplers.SAMPLERS}')
    for name, value in (('steps', steps), ('samples', samples)):
      if value is not None and not (isinstance(value, int) and not isinstance(value, bool)
                                    and value > 0):
        raise ConfigError(f'{name}={value!r}: must be a positive integer')
    num_samples = samples or inference.num_samples or values.num_samples
    chosen = sampler or values.sampler
    # eta is DDIM's alone: another sampler chosen over a DDIM preset drops it.
    eta = values.eta if chosen == 'ddim' == values.sampler else 0.0
    if chosen == 'ddim' and values.sampler != 'ddim':
      eta = 1.0  # DDIM with eta = 1 is the ancestral step: the closest to a preset's own chain.
    return Sampling(preset, steps or values.num_steps, values.beta_start, values.beta_end,
                    num_samples, config.model.diffusion.residual_scale, chosen, eta,
                    values.spacing, values.num_steps, values.range_steps)

  def restore(self, model, blur, key, settings):
    prediction = model.predict(blur)['restored']
    if settings.num_steps == 0:
      return {'image': prediction}
    out = samplers.sample(lambda y: prediction, model.denoise, blur,
                          samplers.sample_keys(key, settings.num_samples),
                          schedule=settings.schedule, residual_scale=settings.residual_scale,
                          sampler=settings.sampler, eta=settings.eta)
    return {'image': out['mean'], 'std': out['std'], 'samples': out['samples']}

  def outputs(self, config):
    return {PREDICTOR: self.settings(config, preset=PREDICTOR),
            **{name: self.settings(config, preset=name) for name in config.eval.presets}}

  def describe(self, settings):
    if settings.num_steps == 0:
      return 'g(y) alone, no sampling'
    sampler = settings.sampler + (f' eta={settings.eta:g}' if settings.sampler == 'ddim' else '')
    return (f"preset '{settings.preset}', {sampler}, {settings.num_steps} denoiser calls, "
            f'mean of {settings.num_samples} sample{"s" * (settings.num_samples > 1)}')

  def components(self, model):
    return [
        contract.Component('predictor', lambda blur: model.predict(blur)['restored'],
                             (('blur', 'image'),), 'restored'),
        contract.Component('denoiser', model.denoise,
                             (('noisy_residual', 'image'), ('level', 'level'),
                              ('blur', 'image')), 'noise'),
    ]

  def tile_safe(self, section):
    return _predictor(section).tile_safe(section.predictor)

  def for_tiles(self, section):
    """DvSR with its predictor's tile-safe form, where the predictor has one."""
    tiled = _predictor(section).for_tiles(section.predictor)
    if tiled is None:
      return None
    section = section.copy_and_resolve_references()
    section.predictor = tiled
    return section

  # ------------------------------------------------------------ fields of other sections

  def settings_defaults(self):
    return {
        'inference': dict(
            preset='sa',  # Which of `presets` the Restorer, deblur and the page sample.
            num_samples=0,  # Samples averaged; 0 takes the preset's.
            # Same weights, different schedules. 'perceptual' is the paper's "Ours"
            # (many steps), 'sa' its "Ours-SA" (few steps, mean of N samples).
            # Each preset: its levels (num_steps of linear betas from beta_start to
            # beta_end; or spacing='logsnr': num_steps spread evenly in logSNR between
            # the first and last level of range_steps such betas, 0: num_steps), the
            # sampler that walks them (diffusion.samplers.SAMPLERS; eta is DDIM's noise,
            # 0 deterministic, 1 ancestral) and the samples averaged.
            # 'perceptual' is the paper's "Ours" level range (500 linear betas to 0.04)
            # walked by DPM-Solver++(2M) SDE in 20 denoiser calls: its LPIPS matched the
            # 500-call ancestral chain's within 0.004 (experiments/samplers.md), 25x
            # fewer calls. 'perceptual_ancestral' is the paper's chain itself, 'sa' its
            # "Ours-SA" (few steps, mean of N samples).
            presets=dict(
                perceptual=_preset(num_steps=20, beta_start=1e-6, beta_end=4e-2,
                                   num_samples=1, sampler='dpmpp_2m_sde', spacing='logsnr',
                                   range_steps=500),
                perceptual_ancestral=_preset(num_steps=500, beta_start=1e-6, beta_end=4e-2,
                                             num_samples=1),
                sa=_preset(num_steps=10, beta_start=1e-4, beta_end=0.8, num_samples=8),
            ),
        ),
        'eval': dict(
            presets=('perceptual', 'sa'),  # Reported beside the predictor; the last is primary.
            # xydiff sweep: each (num_steps, beta_start, beta_end) schedule x each number
            # of averaged samples, scored on the eval split: the perception-distortion curve.
            sweep=dict(schedules=((10, 1e-4, 0.8), (20, 1e-5, 0.5), (50, 1e-6, 0.2),
                                  (100, 1e-6, 0.1), (500, 1e-6, 0.04)),
                       num_samples=(1, 2, 4, 8),
                       # Each walks every schedule (its T is the NFE): `xydiff sweep --samplers`.
                       samplers=('ancestral',)),
        ),
    }

  def settings_entry_defaults(self):
    return {'inference.presets': _preset(0, 0.0, 0.0, 0)}

  def validate_settings(self, config):
    inference = config.inference
    require(inference.preset in (PREDICTOR,) + tuple(inference.presets), 'inference.preset',
            f'must be one of {(PREDICTOR,) + tuple(inference.presets)}', inference.preset)
    contract.check_count(inference.num_samples, 'inference.num_samples')
    for name, preset in inference.presets.items():
      missing = sorted(set(_preset(0, 0.0, 0.0, 0)) - set(preset))
      require(not missing, f'inference.presets.{name}', f'lacks the fields {missing}',
              dict(preset))
      for field in ('num_steps', 'num_samples'):
        contract.check_positive_int(preset[field], f'inference.presets.{name}.{field}')
      require(preset.sampler in samplers.SAMPLERS, f'inference.presets.{name}.sampler',
              f'must be one of {samplers.SAMPLERS}', preset.sampler)
      require(preset.spacing in schedules.SPACINGS, f'inference.presets.{name}.spacing',
              f'must be one of {schedules.SPACINGS}', preset.spacing)
      contract.check_count(preset.range_steps, f'inference.presets.{name}.range_steps')
      require(preset.spacing == 'logsnr' or preset.range_steps in (0, preset.num_steps),
              f'inference.presets.{name}.range_steps',
              "needs spacing='logsnr' (linear betas span their own num_steps)",
              preset.range_steps)
      eta_ok = (0.0 <= preset.eta <= 1.0) if preset.sampler == 'ddim' else preset.eta == 0.0
      require(eta_ok, f'inference.presets.{name}.eta',
              "is DDIM's noise, in [0, 1]; other samplers take 0", preset.eta)
      require(0 < preset.beta_start <= preset.beta_end < 1,
              f'inference.presets.{name}.beta_start/beta_end',
              'need 0 < beta_start <= beta_end < 1', (preset.beta_start, preset.beta_end))
    for name in config.eval.presets:
      require(name in inference.presets, 'eval.presets',
              f'{name!r} is not in config.inference.presets', tuple(config.eval.presets))
    for i, schedule in enumerate(config.eval.sweep.schedules):
      ok = (len(schedule) == 3 and int(schedule[0]) > 0 and 0 < schedule[1] <= schedule[2] < 1)
      require(ok, f'eval.sweep.schedules[{i}]', 'must be (num_steps, beta_start, beta_end) '
              'with 0 < beta_start <= beta_end < 1', tuple(schedule))
    swept = config.eval.sweep.samplers
    require(len(swept) > 0 and all(name in samplers.SAMPLERS for name in swept)
            and len(set(swept)) == len(swept), 'eval.sweep.samplers',
            f'must name distinct samplers of {samplers.SAMPLERS}', tuple(swept))
    counts = config.eval.sweep.num_samples
    require(len(counts) > 0 and all(isinstance(n, int) and n > 0 for n in counts),
            'eval.sweep.num_samples', 'must be positive integers', tuple(counts))


FAMILY = DvSRFamily()
