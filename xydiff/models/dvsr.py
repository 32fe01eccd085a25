"""DvSR's pair of networks: initial predictor g(y) and denoiser f(z, level, y).

Both are U-Nets (unet.py) by default; g can be any registered deterministic
family instead (`model.predictor.arch`, e.g. 'xydeblur' or 'nafnet', built
from that family's own config section). With an XY-decoupled g (and
optionally f) this is xydiff's own model.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from xydiff import diffusion
from xydiff.models import spec as spec_lib, xy
from xydiff.models.unet import UNet


class DvSR(nnx.Module):

  def __init__(self, predictor: nnx.Module, denoiser: nnx.Module):
    self.predictor = predictor
    self.denoiser = denoiser

  def predict(self, blur: jax.Array) -> dict[str, jax.Array]:
    """g(y): {'restored'} plus the predictor's extras (e.g. its decoders' residuals)."""
    out = dict(self.predictor(blur))
    if 'restored' not in out:  # A U-Net predicts the residual y -> x.
      out['restored'] = blur + out.pop('output')
    return out

  def denoise(self, z: jax.Array, level: jax.Array, blur: jax.Array) -> jax.Array:
    """f(z, sqrt(alpha_bar), y): the noise estimate, from [z, y] stacked on channels."""
    return self.denoiser(jnp.concatenate([z, blur], axis=-1), level)['output']


# ------------------------------------------------------------------ the family's spec

def _registry():
  from xydiff import models  # pylint: disable=import-outside-toplevel
  return models


def _unet(section, model_config, *, in_channels, noise_conditioned, rngs):
  return UNet(in_channels=in_channels, out_channels=3, base=section.base,
              multipliers=tuple(section.multipliers), num_res=section.num_res,
              decoders=section.decoders, share=section.share,
              noise_conditioned=noise_conditioned,
              noise_embedding_scale=model_config.noise_embedding_scale,
              film_scale=section.get('film_scale', False), dtype=jnp.dtype(model_config.dtype),
              upsample_impl=model_config.upsample_impl, rngs=rngs)


def _build(model_config, rngs):
  arch = model_config.predictor.arch
  if arch == 'unet':
    predictor = _unet(model_config.predictor, model_config, in_channels=3,
                      noise_conditioned=False, rngs=rngs)
  else:  # Another family's network, from its own config section.
    predictor = _registry().family(arch).build(model_config, rngs)
  denoiser = _unet(model_config.denoiser, model_config, in_channels=6, noise_conditioned=True,
                   rngs=rngs)
  return DvSR(predictor, denoiser)


def _size_multiple(model_config):
  arch = model_config.predictor.arch
  predictor = (UNet.multiple_for(model_config.predictor.multipliers) if arch == 'unet'
               else _registry().family(arch).size_multiple(model_config))
  return math.lcm(predictor, UNet.multiple_for(model_config.denoiser.multipliers))


def predictor_archs() -> tuple[str, ...]:
  return ('unet',) + _registry().deterministic_families()


def _validate_unet(section, prefix):
  for field in ('base', 'num_res'):
    spec_lib.require_positive_int(section[field], f'{prefix}.{field}')
  mults = section.multipliers
  spec_lib.require(len(mults) >= 1 and all(isinstance(x, int) and x > 0 for x in mults),
                   f'{prefix}.multipliers', 'must be positive integers', mults)
  xy.check_section(section, prefix)


def _validate(model_config):
  arch = model_config.predictor.arch
  archs = predictor_archs()
  spec_lib.require(arch in archs, 'model.predictor.arch', f'must be one of {archs}', arch)
  if arch == 'unet':
    _validate_unet(model_config.predictor, 'model.predictor')
  else:
    _registry().family(arch).validate(model_config)
  _validate_unet(model_config.denoiser, 'model.denoiser')
  spec_lib.require(model_config.noise_embedding_scale > 0, 'model.noise_embedding_scale',
                   'must be positive', model_config.noise_embedding_scale)


def _output_fields(model_config):
  arch = model_config.predictor.arch
  predictor = (('model.predictor',) if arch == 'unet' else
               ('model.predictor.arch',) + tuple(_registry().family(arch).output_fields(model_config)))
  # The residual scale and the training schedule fix what the denoiser's levels mean.
  return predictor + ('model.denoiser', 'model.noise_embedding_scale', 'diffusion.residual_scale',
                      'diffusion.num_steps', 'diffusion.beta_start', 'diffusion.beta_end')


def _make_loss(config):
  d = config.diffusion
  return functools.partial(
      diffusion.loss, schedule=diffusion.linear_schedule(d.num_steps, d.beta_start, d.beta_end),
      residual_scale=d.residual_scale, predictor_weight=d.predictor_loss_weight)


def _tile_safe(model_config):
  arch = model_config.predictor.arch
  return arch == 'unet' or _registry().family(arch).tile_safe(model_config)


def _for_tiles(model_config):
  """DvSR with its predictor's tile-safe form, where the predictor has one (U-Nets are)."""
  arch = model_config.predictor.arch
  spec = None if arch == 'unet' else _registry().family(arch)
  if spec is None or spec.for_tiles is None:
    return None
  return spec.for_tiles(model_config)


def _defaults():
  # DvSR's initial predictor g(y): 'unet' (DvSR) or any deterministic family,
  # built from that family's section (the U-Net fields here are then unused).
  # `decoders`/`share`: the XY transform (xy.py); decoders=2 is xydiff's g.
  # The denoiser f(z, level, y); `film_scale` adds a FiLM scale to the shift.
  return {
      'predictor': dict(arch='unet', base=64, multipliers=(1, 2, 3, 4), num_res=3, decoders=1,
                        share='rotate'),
      'denoiser': dict(base=32, multipliers=(1, 2, 3, 4), num_res=3, decoders=1,
                       share='rotate', film_scale=False),
      'noise_embedding_scale': 5000.0,  # WaveGrad's scale of the level before the sinusoid.
  }


SPEC = spec_lib.ModelSpec(
    name='dvsr',
    defaults=_defaults,
    build=_build,
    size_multiple=_size_multiple,
    validate=_validate,
    output_fields=_output_fields,
    make_loss=_make_loss,
    diffusion=True,
    tile_safe=_tile_safe,
    for_tiles=_for_tiles,
    # DvSR's GoPro config; its 'xy' summary row (an XY-decoupled g) is xydiff.
    variants={'dvsr': spec_lib.Variant('dvsr', 'dvsr_gopro', about='DvSR (Whang et al., CVPR '
                                       '2022): U-Net g (base 64) + U-Net f (base 32)')},
    xy_section='predictor',
    width_field='base',
    depth_field='num_res',
)
