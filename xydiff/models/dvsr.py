"""DvSR's pair of networks: initial predictor g(y) and denoiser f(z, level, y).

Both are U-Nets (unet.py); g can instead be XYDeblur. With an XY-decoupled g
(and optionally f) this is xydiff's own model.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class DvSR(nnx.Module):

  def __init__(self, predictor: nnx.Module, denoiser: nnx.Module):
    self.predictor = predictor
    self.denoiser = denoiser

  def predict(self, blur: jax.Array) -> dict[str, jax.Array]:
    """g(y): {'restored'} plus the decoders' residuals when g is XY-decoupled."""
    out = dict(self.predictor(blur))
    if 'restored' not in out:  # A U-Net predicts the residual y -> x.
      out['restored'] = blur + out.pop('output')
    return out

  def denoise(self, z: jax.Array, level: jax.Array, blur: jax.Array) -> jax.Array:
    """f(z, sqrt(alpha_bar), y): the noise estimate, from [z, y] stacked on channels."""
    return self.denoiser(jnp.concatenate([z, blur], axis=-1), level)['output']
