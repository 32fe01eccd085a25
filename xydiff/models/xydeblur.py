"""XYDeblur (Ji et al., CVPR 2022): one encoder, two rot90 weight-sharing decoders.

Layer for layer the official PyTorch network (Seowon-Ji/XYDeblur,
models/XYDeblur.py): with the defaults it has exactly 4,918,627 parameters.
It is the XY transform (xy.py) of a plain three-scale U-Net: with
`decoders=2, share='rotate'` the vertical decoder is the horizontal one with
every kernel turned by `rot90(W, -1)`; see layers.py for why that equals the
official feature-rotation formulation. `decoders=1` is the paper's baseline
U-Net, `share='none'` its U-Net^2D.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from xydiff.models import contract, xy
from xydiff.models.layers import (Conv, ConvTranspose, ResStack, ThreeScaleEncoder,
                                  pad_to_multiple)


class Decoder(nnx.Module):
  """Decoder1_1..1_4 and Convs1_1..1_2; XYDeblur calls it twice, the second time rotated."""

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

  def __call__(self, z, e2, e1, rotation: int = 0):
    d = jax.nn.relu(self.up1(self.res1(z, rotation), rotation))
    # Decoder feature first, skip second, as in the official concatenation.
    d = jax.nn.relu(self.fuse1(jnp.concatenate([d, e2], axis=-1)))
    d = jax.nn.relu(self.up2(self.res2(d, rotation), rotation))
    d = jax.nn.relu(self.fuse2(jnp.concatenate([d, e1], axis=-1)))
    return self.out(self.res3(d, rotation), rotation)


class XYDeblur(nnx.Module):
  """Restores `x` as x + the sum of the decoders' residuals; returns both.

  Inputs whose height or width is not a multiple of 4 are reflect-padded and
  the outputs cropped back, so any image of at least 3x3 pixels goes through.
  Returns {'restored', 'residuals': one [N, H, W, 3] array per decoder}.
  """

  size_multiple = 4

  def __init__(self, *, width: int = 32, num_res: int = 6, channels: int = 3,
               decoders: int = 2, share: str = 'rotate', dtype=jnp.float32,
               upsample_impl: str = 'auto', rngs: nnx.Rngs):
    self.encoder = ThreeScaleEncoder(channels, width, num_res, relu=True, dtype=dtype, rngs=rngs)
    self.decoder = xy.make_decoders(
        lambda r: Decoder(width, num_res, channels, dtype=dtype, upsample_impl=upsample_impl,
                          rngs=r), decoders, share, rngs)
    self.decoders = decoders

  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    padded, (h, w) = pad_to_multiple(x, self.size_multiple)
    z, e2, e1 = self.encoder(padded)
    residuals = tuple(r[:, :h, :w].astype(jnp.float32)
                      for r in xy.run_decoders(self.decoder, self.decoders, z, e2, e1))
    restored = x
    for r in residuals:  # x + r_hor + r_ver, added in the official order.
      restored = restored + r
    return {'restored': restored, 'residuals': residuals}


# ------------------------------------------------------------------ the family

class XYDeblurFamily(contract.Family):
  name = 'xydeblur'
  module = XYDeblur

  def defaults(self):
    return dict(
        width=32,  # Channels at full resolution, doubled at 1/2 and 1/4 (official: 32).
        num_res=6,  # ResBlocks per stage (official: 6).
        decoders=2,  # XY transform (xy.py): 1 is the baseline U-Net, 2 XYDeblur, 4 four turns.
        share='rotate',  # 'rotate': one decoder's weights turned; 'none': U-Net^2D.
        upsample_impl='auto',  # layers.UPSAMPLE_IMPLS: how the up-convolutions run.
    )

  def validate(self, section, prefix):
    contract.check_positive_ints(section, prefix, 'width', 'num_res')
    contract.check_decoders(section, prefix)

  def build(self, section, *, dtype, rngs):
    return XYDeblur(width=section.width, num_res=section.num_res, decoders=section.decoders,
                    share=section.share, dtype=dtype, upsample_impl=section.upsample_impl,
                    rngs=rngs)

  def size_multiple(self, section):
    return XYDeblur.size_multiple


FAMILY = XYDeblurFamily()
