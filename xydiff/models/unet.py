"""DvSR's fully convolutional U-Net, optionally noise-conditioned and XY-decoupled.

Two uses: DvSR's denoiser f (noise-conditioned, `UNet`), and a deterministic
deblurrer of its own (`UNetDeblur`, the family 'unet': x + the U-Net's
output), which is DvSR's default initial predictor g.

No self-attention and no normalisation, so a network trained on 128x128 crops
runs on a 1280x720 frame. The noise level enters every residual block as a
FiLM shift (optionally also a scale) computed by an MLP from a sinusoidal
embedding. With `decoders=2` the decoder runs twice, the second time with
every kernel rotated (xy.py): XYDeblur's decoupling inside DvSR, at zero extra
parameters.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from xydiff.errors import require
from xydiff.models import contract, xy
from xydiff.models.layers import Conv, ConvTranspose, pad_to_multiple, sinusoidal_embedding


class ResBlock(nnx.Module):
  """Pre-activation residual block with an optional FiLM from the noise embedding."""

  def __init__(self, in_features: int, out_features: int, *, emb_features: int | None,
               film_scale: bool, dtype, rngs: nnx.Rngs):
    self.conv1 = Conv(in_features, out_features, 3, dtype=dtype, rngs=rngs)
    self.conv2 = Conv(out_features, out_features, 3, dtype=dtype, rngs=rngs)
    self.skip = (Conv(in_features, out_features, 1, dtype=dtype, rngs=rngs)
                 if in_features != out_features else None)
    self.film = (nnx.Linear(emb_features, out_features * (2 if film_scale else 1),
                            dtype=dtype, rngs=rngs) if emb_features is not None else None)
    self.film_scale = film_scale

  def __call__(self, x, emb=None, rotation: int = 0):
    h = self.conv1(jax.nn.swish(x), rotation)
    if self.film is not None:
      # DDPM/SR3 put a nonlinearity between the shared embedding MLP and each
      # block's projection; without it the two linear maps collapse into one.
      film = self.film(jax.nn.swish(emb))[:, None, None, :].astype(h.dtype)
      if self.film_scale:
        scale, shift = jnp.split(film, 2, axis=-1)
        h = h * (1.0 + scale) + shift
      else:
        h = h + film
    h = self.conv2(jax.nn.swish(h), rotation)
    skip = x if self.skip is None else self.skip(x, rotation)
    return skip + h


def _blocks(in_features, out_features, num_blocks, **kwargs):
  return nnx.List([ResBlock(in_features if i == 0 else out_features, out_features, **kwargs)
                   for i in range(num_blocks)])


class UNetDecoder(nnx.Module):
  """Upsampling half; every convolution in it honours `rotation`."""

  def __init__(self, widths: Sequence[int], num_res: int, out_channels: int, *, block_kwargs,
               dtype, upsample_impl: str, rngs: nnx.Rngs):
    levels = len(widths)
    self.stages = nnx.List([
        _blocks(2 * widths[l], widths[l], num_res, rngs=rngs, **block_kwargs)
        for l in range(levels)])
    self.ups = nnx.List([ConvTranspose(widths[l], widths[l - 1], dtype=dtype,
                                       impl=upsample_impl, rngs=rngs)
                         for l in range(1, levels)])
    # Zero-initialised: a predictor starts as the identity y -> y and a
    # denoiser as eps_hat = 0, so training starts from the blurry input's PSNR.
    self.out = Conv(widths[0], out_channels, 3, dtype=dtype, zero_init=True, rngs=rngs)

  def __call__(self, h, skips, emb, rotation: int = 0):
    for level in reversed(range(len(self.stages))):
      h = jnp.concatenate([h, skips[level]], axis=-1)
      for block in self.stages[level]:
        h = block(h, emb, rotation)
      if level > 0:
        h = self.ups[level - 1](h, rotation)
    return self.out(jax.nn.swish(h), rotation)


class UNet(nnx.Module):
  """Encoder-decoder returning {'output': the sum of its decoders, 'residuals': each one}.

  `noise_level` (shape [N], values in [0, 1]) is required exactly when the
  network was built with `noise_conditioned=True`.
  """

  def __init__(self, *, in_channels: int = 3, out_channels: int = 3, base: int = 64,
               multipliers: Sequence[int] = (1, 2, 3, 4), num_res: int = 3,
               decoders: int = 1, share: str = 'rotate', noise_conditioned: bool = False,
               noise_embedding_scale: float = 5000.0, film_scale: bool = False,
               dtype=jnp.float32, upsample_impl: str = 'auto', rngs: nnx.Rngs):
    widths = [base * m for m in multipliers]
    self.size_multiple = self.multiple_for(multipliers)
    self.decoders = decoders
    self.noise_embedding_scale = noise_embedding_scale
    self.base = base
    emb_features = 4 * base if noise_conditioned else None
    if noise_conditioned:
      self.noise_mlp = nnx.List([nnx.Linear(base, emb_features, rngs=rngs),
                                 nnx.Linear(emb_features, emb_features, rngs=rngs)])
    else:
      self.noise_mlp = None
    block_kwargs = dict(emb_features=emb_features, film_scale=film_scale, dtype=dtype)
    self.stem = Conv(in_channels, widths[0], 3, dtype=dtype, rngs=rngs)
    self.stages = nnx.List([
        _blocks(widths[max(l - 1, 0)], widths[l], num_res, rngs=rngs, **block_kwargs)
        for l in range(len(widths))])
    self.downs = nnx.List([Conv(widths[l], widths[l], 3, stride=2, dtype=dtype, rngs=rngs)
                           for l in range(len(widths) - 1)])
    self.middle = ResBlock(widths[-1], widths[-1], rngs=rngs, **block_kwargs)
    self.decoder = xy.make_decoders(
        lambda r: UNetDecoder(widths, num_res, out_channels, block_kwargs=block_kwargs,
                              dtype=dtype, upsample_impl=upsample_impl, rngs=r),
        decoders, share, rngs)

  @staticmethod
  def multiple_for(multipliers: Sequence[int]) -> int:
    """The size multiple of a U-Net with these level multipliers: one halving per level."""
    return 2 ** (len(multipliers) - 1)

  def embed(self, noise_level: jax.Array | None) -> jax.Array | None:
    """The noise level's FiLM input: sinusoids -> MLP; None without conditioning."""
    if (noise_level is None) != (self.noise_mlp is None):
      raise ValueError('noise_level must be given exactly when the U-Net is noise-conditioned')
    if self.noise_mlp is None:
      return None
    emb = sinusoidal_embedding(noise_level, self.base, self.noise_embedding_scale)
    return self.noise_mlp[1](jax.nn.swish(self.noise_mlp[0](emb)))

  def encode(self, x: jax.Array, emb) -> tuple[jax.Array, list[jax.Array]]:
    """The shared half: bottleneck features and one skip per level."""
    feat = self.stem(x)
    skips = []
    for level, stage in enumerate(self.stages):
      for block in stage:
        feat = block(feat, emb)
      skips.append(feat)
      if level < len(self.downs):
        feat = self.downs[level](feat)
    return self.middle(feat, emb), skips

  def __call__(self, x: jax.Array, noise_level: jax.Array | None = None) -> dict[str, jax.Array]:
    emb = self.embed(noise_level)
    padded, (h, w) = pad_to_multiple(x, self.size_multiple)
    feat, skips = self.encode(padded, emb)
    residuals = tuple(r[:, :h, :w].astype(jnp.float32)
                      for r in xy.run_decoders(self.decoder, self.decoders, feat, skips, emb))
    return {'output': sum(residuals), 'residuals': residuals}


class UNetDeblur(UNet):
  """The U-Net as a deblurrer: restored = x + the sum of its decoders' residuals.

  DvSR's initial predictor g(y); the same parameters as the plain UNet.
  Returns {'restored', 'residuals'}.
  """

  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:  # pylint: disable=arguments-differ
    out = super().__call__(x)
    return {'restored': x + out['output'], 'residuals': out['residuals']}


def check_section(section, prefix: str) -> None:
  """Validates a U-Net section (the deblurrer's or DvSR's denoiser's)."""
  contract.check_positive_ints(section, prefix, 'base', 'num_res')
  mults = section.multipliers
  require(
      isinstance(mults, (tuple, list)) and len(mults) >= 1 and
      all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in mults),
      f'{prefix}.multipliers', 'must be a non-empty tuple of positive integers', mults)
  contract.check_decoders(section, prefix)


class UNetFamily(contract.Family):
  name = 'unet'
  module = UNetDeblur

  def defaults(self):
    # DvSR's predictor g: base 64, multipliers (1, 2, 3, 4), 3 residual blocks per level.
    return dict(base=64, multipliers=(1, 2, 3, 4), num_res=3,
                decoders=1,  # XY transform (xy.py): 2 is xydiff's XY predictor.
                share='rotate',  # 'rotate': one decoder's weights turned; 'none': U-Net^2D.
                upsample_impl='auto')  # layers.UPSAMPLE_IMPLS: how the up-convolutions run.

  def validate(self, section, prefix):
    check_section(section, prefix)

  def build(self, section, *, dtype, rngs):
    return UNetDeblur(in_channels=3, out_channels=3, base=section.base,
                      multipliers=tuple(section.multipliers), num_res=section.num_res,
                      decoders=section.decoders, share=section.share, dtype=dtype,
                      upsample_impl=section.upsample_impl, rngs=rngs)

  def size_multiple(self, section):
    return UNet.multiple_for(section.multipliers)


FAMILY = UNetFamily()
