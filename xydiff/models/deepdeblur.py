"""DeepDeblur (Nah et al., CVPR 2017): the multi-scale ResNet ("MSCNN" in XYDeblur's Table 2).

Layer for layer the authors' PyTorch network (SeungjunNah/DeepDeblur-PyTorch,
src/model/MSResNet.py, ResNet.py and common.py; head 26047f7). With the
defaults it has exactly 11,721,321 parameters.

- One ResNet per scale (3 scales, full to quarter resolution): a 5x5 conv to
  64 features, 19 ResBlocks (conv, ReLU, conv, + input; no normalisation, no
  activation after the sum) and a 5x5 conv to 3 channels. No global skip.
- Coarse to fine: the coarsest scale sees its pyramid level; each finer one
  sees its level concatenated (level first) with the coarser output turned
  into 3 channels at twice the size by a 5x5 conv to 12 channels and a 2x
  pixel shuffle (`conv_end`).
- Pixels are on the 0..255 scale; the network subtracts 127.5 from every
  pyramid level and adds it back to every output. The finest output is the
  result; the coarser ones feed the multi-scale loss.
- The authors build the input pyramid outside the network with scikit-image
  (src/data/common.py: `pyramid_gaussian(img, n_scales - 1)` on the uint8
  values as float32): each level is the finer one blurred by a Gaussian of
  sigma 2/3 (7 taps, 'reflect' borders) and bilinearly resized to half the
  size. Here the module builds it itself (`gaussian_pyramid`, equal to
  scikit-image's to float32 precision), so it takes [0, 1] images like every
  xydiff network and returns [0, 1] outputs.
- Sizes: GoPro frames go in whole (test mode pads nothing). Other sizes are
  padded as the authors' demo mode does (src/data/dataset.py, train.py): edge
  replication at the bottom and right up to a multiple of 2^(scales - 1), then
  the result cropped back. Coarser outputs are cropped to the sizes the
  authors' pyramid of the unpadded image has, ceil(size / 2^s).

XY transform (xy.py) and where the cut is: the network has no encoder/decoder
in the U-Net sense, so the cut is chosen to reproduce the compute of XYDeblur's
Table 2. Each scale's "decoder" is the last num_res // 2 of its ResBlocks plus
its output conv; the head conv and the first num_res - num_res // 2 ResBlocks
are its "encoder". With 19 blocks that is 9 blocks + the output conv, 47.3% of
a scale's MACs, so the XY network (decoders=2) costs 1.4732 x the baseline:
4724.2 -> 6959.5 GMACs at 1280x720 (xydiff.models.complexity), Table 2's
4728.69 -> 6966.13 (also 1.4732 x; no other whole-block cut comes near). Every
scale is transformed, each with its own decoder(s); the decoders' outputs are
summed into that scale's output, and the up-conv to the next scale takes the
sum. The decoder holds only stride-1 'same' convolutions, so turning kernels
is exactly the rotated-features form (no rotated_call needed).

Table 2's "Channel" and "Layer" baselines are `width` and `num_res`
(variants deepdeblur_channel and deepdeblur_layer). The network has no
transposed convolution, so config.model.upsample_impl does not apply.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from xydiff.errors import require
from xydiff.models import contract, xy
from xydiff.models.layers import Conv

# The authors' value range: pixels 0..255 (--rgb_range 255); the network
# subtracts rgb_range / 2 from its inputs and adds it back to its outputs.
PIXEL_RANGE = 255.0
MEAN = PIXEL_RANGE / 2


# ------------------------------------------------------------------ the input pyramid

def _gaussian_taps(sigma: float, truncate: float = 4.0) -> np.ndarray:
  """scipy.ndimage.gaussian_filter's 1-D kernel: radius int(truncate * sigma + 0.5), sum 1."""
  radius = int(truncate * sigma + 0.5)
  x = np.arange(-radius, radius + 1, dtype=np.float64)
  taps = np.exp(-0.5 * (x / sigma) ** 2)
  return taps / taps.sum()


# scikit-image's pyramid_reduce default for downscale 2: sigma = 2 * 2 / 6.
_PYRAMID_TAPS = _gaussian_taps(2 * 2 / 6.0)


def _blur_axis(x: jax.Array, axis: int) -> jax.Array:
  """The Gaussian along one axis, borders mirrored as scipy's mode='reflect' (d c b a | a b c d)."""
  radius = len(_PYRAMID_TAPS) // 2
  pad = [(0, 0)] * x.ndim
  pad[axis] = (radius, radius)
  padded = jnp.pad(x, pad, mode='symmetric')
  size = x.shape[axis]
  out = None
  for offset, tap in enumerate(_PYRAMID_TAPS):
    term = float(tap) * jax.lax.slice_in_dim(padded, offset, offset + size, axis=axis)
    out = term if out is None else out + term
  return out


def pyramid_reduce(x: jax.Array) -> jax.Array:
  """One level of scikit-image's pyramid_gaussian(downscale=2) for NHWC, even H and W.

  Blur, then bilinear resize to half size; at exactly half size the bilinear
  sample of output pixel i sits at input coordinate 2i + 0.5, the mean of
  pixels 2i and 2i + 1, so the resize is a 2x2 mean.
  """
  n, h, w, c = x.shape
  if h % 2 or w % 2:
    raise ValueError(f'pyramid_reduce needs even sizes, got {h}x{w}')
  blurred = _blur_axis(_blur_axis(x, 1), 2)
  return blurred.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def gaussian_pyramid(x: jax.Array, levels: int) -> list[jax.Array]:
  """[x, reduce(x), reduce(reduce(x)), ...]: `levels` images, finest first, in float32."""
  pyramid = [x.astype(jnp.float32)]
  for _ in range(levels - 1):
    pyramid.append(pyramid_reduce(pyramid[-1]))
  return pyramid


def pixel_shuffle(x: jax.Array, factor: int) -> jax.Array:
  """PyTorch's nn.PixelShuffle, NHWC: input channel c * f^2 + i * f + j goes to
  pixel (f y + i, f x + j) of output channel c."""
  n, h, w, c = x.shape
  out = c // (factor * factor)
  x = x.reshape(n, h, w, out, factor, factor)
  return x.transpose(0, 1, 4, 2, 5, 3).reshape(n, h * factor, w * factor, out)


def _pad_edge(x: jax.Array, multiple: int) -> tuple[jax.Array, tuple[int, int]]:
  """Edge-replicates the bottom and right up to a multiple, as the authors' demo pads."""
  h, w = x.shape[1], x.shape[2]
  ph, pw = (-h) % multiple, (-w) % multiple
  if ph or pw:
    x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode='edge')
  return x, (h, w)


# ------------------------------------------------------------------ the network

class ResBlock(nnx.Module):
  """common.ResBlock: x + conv(relu(conv(x))), no normalisation, nothing after the sum."""

  def __init__(self, width: int, kernel_size: int, *, dtype, rngs: nnx.Rngs):
    self.conv1 = Conv(width, width, kernel_size, dtype=dtype, rngs=rngs)
    self.conv2 = Conv(width, width, kernel_size, dtype=dtype, rngs=rngs)

  def __call__(self, x, rotation: int = 0):
    return x + self.conv2(jax.nn.relu(self.conv1(x, rotation)), rotation)


def decoder_blocks(num_res: int) -> int:
  """How many of a scale's ResBlocks belong to its decoder (the XY cut; module docstring)."""
  return num_res // 2


class Encoder(nnx.Module):
  """A scale's head conv and its first num_res - num_res // 2 ResBlocks."""

  def __init__(self, in_channels: int, width: int, num_res: int, kernel_size: int, *, dtype,
               rngs: nnx.Rngs):
    self.head = Conv(in_channels, width, kernel_size, dtype=dtype, rngs=rngs)
    self.blocks = nnx.List([ResBlock(width, kernel_size, dtype=dtype, rngs=rngs)
                            for _ in range(num_res - decoder_blocks(num_res))])

  def __call__(self, x):
    x = self.head(x)
    for block in self.blocks:
      x = block(x)
    return x


class Decoder(nnx.Module):
  """A scale's last num_res // 2 ResBlocks and its conv to 3 channels; turned by `rotation`."""

  def __init__(self, width: int, num_res: int, kernel_size: int, out_channels: int, *, dtype,
               rngs: nnx.Rngs):
    self.blocks = nnx.List([ResBlock(width, kernel_size, dtype=dtype, rngs=rngs)
                            for _ in range(decoder_blocks(num_res))])
    self.tail = Conv(width, out_channels, kernel_size, dtype=dtype, rngs=rngs)

  def __call__(self, x, rotation: int = 0):
    for block in self.blocks:
      x = block(x, rotation)
    return self.tail(x, rotation)


class Scale(nnx.Module):
  """One scale's ResNet (ResNet.py): encoder, then the sum of its decoders' outputs."""

  def __init__(self, in_channels: int, width: int, num_res: int, kernel_size: int,
               out_channels: int, *, decoders: int, share: str, dtype, rngs: nnx.Rngs):
    self.encoder = Encoder(in_channels, width, num_res, kernel_size, dtype=dtype, rngs=rngs)
    self.decoder = xy.make_decoders(
        lambda r: Decoder(width, num_res, kernel_size, out_channels, dtype=dtype, rngs=r),
        decoders, share, rngs)
    self.decoders = decoders

  def __call__(self, x):
    """(the scale's output, each decoder's output): the sum, and its terms in order."""
    outputs = xy.run_decoders(self.decoder, self.decoders, self.encoder(x))
    out = outputs[0]
    for o in outputs[1:]:
      out = out + o
    return out, outputs


class UpConv(nnx.Module):
  """MSResNet.conv_end: a conv to 4x the channels, then a 2x pixel shuffle."""

  def __init__(self, channels: int, kernel_size: int, *, dtype, rngs: nnx.Rngs):
    self.conv = Conv(channels, 4 * channels, kernel_size, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    return pixel_shuffle(self.conv(x), 2)


class DeepDeblur(nnx.Module):
  """The multi-scale network, from [0, 1] blurry images to [0, 1] restorations.

  Returns {'restored': the finest output, 'coarser': (the outputs at 1/2,
  1/4, ... resolution), 'residuals': one [N, H, W, 3] array per decoder of the
  finest scale}, all float32 on the [0, 1] scale and unclamped, as the
  authors' network leaves them (their saver clamps and rounds).

  The network has no global skip: the finest output is sum_i D_i + 127.5 on
  the 0..255 scale, not the input plus residuals. So that, as for every XY
  family, restored = x + sum(residuals), decoder i's residual is its output
  plus an equal share of (127.5 - 255 x), divided by 255; with one decoder it
  is simply restored - x.
  """

  def __init__(self, *, width: int = 64, num_res: int = 19, kernel_size: int = 5,
               scales: int = 3, channels: int = 3, decoders: int = 1, share: str = 'rotate',
               dtype=jnp.float32, rngs: nnx.Rngs):
    # Index 0 is the finest scale, as the authors' body_models; every scale
    # but the coarsest also takes the up-convolved coarser output.
    self.scales = nnx.List([
        Scale(channels if s == scales - 1 else 2 * channels, width, num_res, kernel_size,
              channels, decoders=decoders, share=share, dtype=dtype, rngs=rngs)
        for s in range(scales)])
    # upconvs[s - 1] takes scale s's output to scale s - 1 (conv_end_models[s]).
    self.upconvs = nnx.List([UpConv(channels, kernel_size, dtype=dtype, rngs=rngs)
                             for _ in range(1, scales)])
    self.num_scales = scales
    self.size_multiple = 2 ** (scales - 1)
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    padded, (h, w) = _pad_edge(x.astype(jnp.float32) * PIXEL_RANGE, self.size_multiple)
    levels = [level - MEAN for level in gaussian_pyramid(padded, self.num_scales)]
    outputs = [None] * self.num_scales
    features = levels[-1]
    for s in range(self.num_scales - 1, -1, -1):  # Coarse to fine.
      outputs[s], per_decoder = self.scales[s](features.astype(self.dtype))
      if s > 0:
        up = self.upconvs[s - 1](outputs[s])
        # The blurry level first, the coarser output second, as the authors concatenate.
        features = jnp.concatenate([levels[s - 1].astype(self.dtype), up.astype(self.dtype)],
                                   axis=-1)
    restored = [(o.astype(jnp.float32) + MEAN) / PIXEL_RANGE for o in outputs]
    coarser = tuple(r[:, :math.ceil(h / 2 ** s), :math.ceil(w / 2 ** s)]
                    for s, r in enumerate(restored) if s > 0)
    share = (MEAN - padded) / len(per_decoder)  # per_decoder: the finest scale's, from the loop.
    residuals = tuple(((d.astype(jnp.float32) + share) / PIXEL_RANGE)[:, :h, :w]
                      for d in per_decoder)
    return {'restored': restored[0][:, :h, :w], 'coarser': coarser, 'residuals': residuals}


def multiscale_l1_loss(model, batch, key):
  """The authors' default '1*L1' on every scale (loss/__init__.py, _ms_forward).

  The sum over scales of the mean absolute error between each output and the
  same level of the sharp image's Gaussian pyramid (their dataset builds the
  target pyramid as the input's), on their 0..255 pixel scale, so the value
  and the gradients Adam sees are theirs.
  """
  del key
  out = model(batch['blur'])
  outputs = (out['restored'],) + tuple(out['coarser'])
  targets = gaussian_pyramid(batch['sharp'], len(outputs))
  terms = [PIXEL_RANGE * jnp.mean(jnp.abs(o - t)) for o, t in zip(outputs, targets)]
  metrics = {f'l1_scale{s}': t for s, t in enumerate(terms)}
  loss = sum(terms)
  metrics['l1'] = loss
  return loss, metrics


# ------------------------------------------------------------------ the family

class DeepDeblurFamily(contract.Family):
  name = 'deepdeblur'
  module = DeepDeblur

  def defaults(self):
    return dict(
        width=64,  # Features of every ResBlock (--n_feats); Table 2's "Channel" widens it.
        num_res=19,  # ResBlocks per scale (--n_resblocks); Table 2's "Layer" deepens it.
        kernel_size=5,  # Every convolution's kernel side (--kernel_size).
        scales=3,  # Pyramid levels, full to 1/2^(scales-1) resolution (--n_scales).
        decoders=1,  # XY transform (xy.py): 1 plain, 2 XY, 4 four rotations.
        share='rotate',  # 'rotate': one decoder turned per run (XY); 'none': independent.
    )

  def validate(self, section, prefix):
    contract.check_positive_ints(section, prefix, 'width', 'num_res', 'kernel_size', 'scales')
    require(section.kernel_size % 2 == 1, f'{prefix}.kernel_size',
            "must be odd (the authors' convolutions pad kernel_size // 2 on each side)",
            section.kernel_size)
    require(section.num_res >= 2, f'{prefix}.num_res',
            'must be at least 2: the XY decoder is the last num_res // 2 ResBlocks',
            section.num_res)
    xy.check_section(section, prefix)

  def build(self, section, *, dtype, rngs):
    return DeepDeblur(width=section.width, num_res=section.num_res,
                      kernel_size=section.kernel_size, scales=section.scales,
                      decoders=section.decoders, share=section.share, dtype=dtype, rngs=rngs)

  def size_multiple(self, section):
    return 2 ** (section.scales - 1)

  def loss(self, section):
    return multiscale_l1_loss

  # Convolutions, a local blur and 2x2 means: a tile starting on a multiple of
  # size_multiple computes what the whole image does away from its edges (the default).


FAMILY = DeepDeblurFamily()
