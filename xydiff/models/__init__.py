"""Model construction from a config: the one place that maps config.model to modules."""

from __future__ import annotations

import json

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
      predictor = XYDeblur(width=pcfg.base, num_res=pcfg.num_res, **common)
    else:
      predictor = _unet(pcfg, in_channels=3, noise_conditioned=False, **common)
    denoiser = _unet(model_config.denoiser, in_channels=6, noise_conditioned=True,
                     noise_embedding_scale=model_config.noise_embedding_scale, **common)
    return DvSR(predictor, denoiser)
  raise ValueError(f'config.model.name must be one of {MODEL_NAMES}, got {model_config.name!r}')


def shape_signature(model_config) -> dict:
  """The config.model fields that decide parameter shapes, as plain JSON values.

  Fields of the other model family and the activation dtype are left out, so
  changing them never makes a checkpoint incompatible.
  """
  keys = {'xydeblur': ('name', 'xydeblur'),
          'dvsr': ('name', 'predictor', 'denoiser', 'noise_embedding_scale')}[model_config.name]
  sig = {k: json.loads(model_config[k].to_json()) if hasattr(model_config[k], 'to_json')
         else model_config[k] for k in keys}
  if 'predictor' in sig and sig['predictor']['arch'] == 'xydeblur':
    sig['predictor'] = {k: sig['predictor'][k] for k in ('arch', 'base', 'num_res')}
  return sig


def is_diffusion(model_config) -> bool:
  return model_config.name == 'dvsr'
