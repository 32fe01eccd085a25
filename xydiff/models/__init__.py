"""Model construction from a config: the one place that maps config.model to modules."""

from __future__ import annotations

import math

import jax.numpy as jnp
from flax import nnx

from xydiff.models.dvsr import DvSR
from xydiff.models.unet import UNet
from xydiff.models.xydeblur import XYDeblur

MODEL_NAMES = ('xydeblur', 'dvsr')
PREDICTOR_ARCHS = ('unet', 'xydeblur')


def _unet(cfg, *, in_channels, noise_conditioned, noise_embedding_scale=0.0, **kwargs):
  return UNet(in_channels=in_channels, out_channels=3, base=cfg.base,
              multipliers=tuple(cfg.multipliers), num_res=cfg.num_res, xy=cfg.xy,
              noise_conditioned=noise_conditioned,
              noise_embedding_scale=noise_embedding_scale,
              film_scale=cfg.get('film_scale', False), **kwargs)


def build_model(model_config, *, seed: int = 0) -> nnx.Module:
  """Returns a freshly initialised model for `config.model`."""
  # Every module takes the activation dtype, the up-convolution implementation
  # (same parameters either way) and the RNG streams.
  common = dict(dtype=jnp.dtype(model_config.dtype), upsample_impl=model_config.upsample_impl,
                rngs=nnx.Rngs(seed))
  if model_config.name == 'xydeblur':
    cfg = model_config.xydeblur
    return XYDeblur(width=cfg.width, num_res=cfg.num_res, **common)
  if model_config.name == 'dvsr':
    pcfg = model_config.predictor
    if pcfg.arch == 'xydeblur':
      # An XYDeblur predictor is the XYDeblur of config.model.xydeblur
      # (officially width 32, 6 blocks), not sized by the U-Net's base/num_res.
      xcfg = model_config.xydeblur
      predictor = XYDeblur(width=xcfg.width, num_res=xcfg.num_res, **common)
    else:
      predictor = _unet(pcfg, in_channels=3, noise_conditioned=False, **common)
    denoiser = _unet(model_config.denoiser, in_channels=6, noise_conditioned=True,
                     noise_embedding_scale=model_config.noise_embedding_scale, **common)
    return DvSR(predictor, denoiser)
  raise ValueError(f'config.model.name must be one of {MODEL_NAMES}, got {model_config.name!r}')


def size_multiple(model_config) -> int:
  """The factor every network of the model pads H and W to (their least common multiple).

  Each network class states its own multiple; this only combines them.
  """
  if model_config.name == 'xydeblur':
    return XYDeblur.size_multiple
  pcfg = model_config.predictor
  predictor = (XYDeblur.size_multiple if pcfg.arch == 'xydeblur'
               else UNet.multiple_for(pcfg.multipliers))
  return math.lcm(predictor, UNet.multiple_for(model_config.denoiser.multipliers))


def is_diffusion(model_config) -> bool:
  return model_config.name == 'dvsr'
