"""XYDeblur (Ji et al., CVPR 2022): one encoder, two rot90 weight-sharing decoders.

Layer for layer the official PyTorch network (Seowon-Ji/XYDeblur,
models/XYDeblur.py): with the defaults it has exactly 4,918,627 parameters.
The vertical decoder is the horizontal one called with `rotated=True`, i.e.
every kernel turned by `rot90(W, -1)`; see layers.py for why that equals the
official feature-rotation formulation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from xydiff.models.layers import Conv, ConvTranspose, pad_to_multiple


class ResBlock(nnx.Module):
  """x + conv(relu(conv(x))): no activation after the sum, no normalisation."""

  def __init__(self, features: int, *, dtype, rngs: nnx.Rngs):
    self.conv1 = Conv(features, features, 3, dtype=dtype, rngs=rngs)
    self.conv2 = Conv(features, features, 3, dtype=dtype, rngs=rngs)

  def __call__(self, x, rotated: bool = False):
    return x + self.conv2(jax.nn.relu(self.conv1(x, rotated)), rotated)


class ResStack(nnx.Module):

  def __init__(self, features: int, num_blocks: int, *, dtype, rngs: nnx.Rngs):
    self.blocks = nnx.List([ResBlock(features, dtype=dtype, rngs=rngs)
                            for _ in range(num_blocks)])

  def __call__(self, x, rotated: bool = False):
    for block in self.blocks:
      x = block(x, rotated)
    return x


class Encoder(nnx.Module):
  """Three scales: full, 1/2 and 1/4 resolution (Encoder1..3 in the official code)."""

  def __init__(self, in_channels: int, width: int, num_res: int, *, dtype, rngs):
    self.stem = Conv(in_channels, width, 3, dtype=dtype, rngs=rngs)
    self.res1 = ResStack(width, num_res, dtype=dtype, rngs=rngs)
    self.down2 = Conv(width, 2 * width, 3, stride=2, dtype=dtype, rngs=rngs)
    self.res2 = ResStack(2 * width, num_res, dtype=dtype, rngs=rngs)
    self.down3 = Conv(2 * width, 4 * width, 3, stride=2, dtype=dtype, rngs=rngs)
    self.res3 = ResStack(4 * width, num_res, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    e1 = self.res1(jax.nn.relu(self.stem(x)))
    e2 = self.res2(jax.nn.relu(self.down2(e1)))
    z = self.res3(jax.nn.relu(self.down3(e2)))
    return z, e2, e1


class Decoder(nnx.Module):
  """Decoder1_1..1_4 and Convs1_1..1_2; called twice, the second time rotated."""

  def __init__(self, width: int, num_res: int, out_channels: int, *, dtype, upsample_impl,
               rngs):
    self.res1 = ResStack(4 * width, num_res, dtype=dtype, rngs=rngs)
    self.up1 = ConvTranspose(4 * width, 2 * width, dtype=dtype, impl=upsample_impl, rngs=rngs)
    self.fuse1 = Conv(4 * width, 2 * width, 1, dtype=dtype, rngs=rngs)
    self.res2 = ResStack(2 * width, num_res, dtype=dtype, rngs=rngs)
    self.up2 = ConvTranspose(2 * width, width, dtype=dtype, impl=upsample_impl, rngs=rngs)
    self.fuse2 = Conv(2 * width, width, 1, dtype=dtype, rngs=rngs)
    self.res3 = ResStack(width, num_res, dtype=dtype, rngs=rngs)
    self.out = Conv(width, out_channels, 3, dtype=dtype, rngs=rngs)

  def __call__(self, z, e2, e1, rotated: bool = False):
    d = jax.nn.relu(self.up1(self.res1(z, rotated), rotated))
    # Decoder feature first, skip second, as in the official concatenation.
    d = jax.nn.relu(self.fuse1(jnp.concatenate([d, e2], axis=-1)))
    d = jax.nn.relu(self.up2(self.res2(d, rotated), rotated))
    d = jax.nn.relu(self.fuse2(jnp.concatenate([d, e1], axis=-1)))
    return self.out(self.res3(d, rotated), rotated)


class XYDeblur(nnx.Module):
  """Restores `x` as x + r_hor + r_ver; returns all three.

  Inputs whose height or width is not a multiple of 4 are reflect-padded and
  the outputs cropped back, so any image of at least 3x3 pixels goes through.
  """

  size_multiple = 4

  def __init__(self, *, width: int = 32, num_res: int = 6, channels: int = 3,
               dtype=jnp.float32, upsample_impl: str = 'auto', rngs: nnx.Rngs):
    self.encoder = Encoder(channels, width, num_res, dtype=dtype, rngs=rngs)
    self.decoder = Decoder(width, num_res, channels, dtype=dtype, upsample_impl=upsample_impl,
                           rngs=rngs)

  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    padded, (h, w) = pad_to_multiple(x, self.size_multiple)
    z, e2, e1 = self.encoder(padded)
    horizontal = self.decoder(z, e2, e1)[:, :h, :w].astype(jnp.float32)
    vertical = self.decoder(z, e2, e1, rotated=True)[:, :h, :w].astype(jnp.float32)
    return {'horizontal': horizontal, 'vertical': vertical,
            'restored': x + horizontal + vertical}
