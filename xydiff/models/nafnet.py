"""NAFNet (Chen et al., ECCV 2022, "Simple Baselines for Image Restoration").

Layer for layer the official PyTorch network of megvii-research/NAFNet:
basicsr/models/archs/NAFNet_arch.py (NAFBlock, NAFNet, NAFNetLocal),
arch_util.py (LayerNorm2d) and local_arch.py (TLC's AvgPool2d). The GoPro
models have 4 levels with [1, 1, 1, 28] encoder blocks, 1 middle block and
[1, 1, 1, 1] decoder blocks: 67,888,835 parameters at width 64, 17,111,907
at width 32. Images are RGB in [0, 1]; the network zero-pads the bottom and
right to a multiple of 2**levels (check_image_size), adds the padded input
to its output and crops; the output is left unclamped, as the official
forward leaves it (the test script clamps and rounds only to save).

TLC (test-time local converter; Chu et al., "Revisiting Global Statistics
Aggregation for Improving Image Restoration"): NAFNetLocal, which the
authors' GoPro configs train and test with, replaces each block's global
average pool (the simplified channel attention's) by a box mean over a window
fixed by one pass at the training size: 1.5x the feature map that a
`train_size` image gives at the block's level (384 image pixels for 256-pixel
training crops). A feature map no larger than its window in both directions
is pooled globally, so NAFNetLocal equals NAFNet on images up to 384x384;
larger ones get a box mean ('valid' positions, the rest replicate-padded, as
AvgPool2d with auto_pad and without fast_imp). `tlc_train_size=0` is the
plain global pool. With global pooling a tile sees other statistics than the
whole image, hence `tile_safe` only with TLC and `for_tiles` turning it on.

XY cut: the encoder is `intro`, the `encoders`/`downs` and the `middle_blks`
(the bottleneck, shared); the decoder is what the official forward runs after
it: each level's `ups` (1x1 conv + pixel shuffle), the skip addition, the
level's `decoders` blocks, and `ending`: the official forward's decoder
loop. (XYDeblur's decoder opens with blocks at the coarsest scale; here those
are `middle_blks`, which the official code keeps apart from `decoders`, so
they stay shared.)
Each decoder returns a residual; restored = padded input + the residuals.
Rotated decoders turn every 3x3 kernel (the depthwise convs, `ending`); the
1x1 convs are unchanged by turning; the pixel shuffle runs in the
feature-rotation form (layers.rotated_call), and so does the TLC box mean
(asymmetric replicate padding) in its reference form, while its CPU form pads
the corner the turned features would (`edge_pad`); the global mean is
rotation-invariant. NAFNet is not in XYDeblur's Table 2, so no compute target
fixes the cut; the decoder is light (one block per level against the
encoder's 31). At 1280x720, width 64, xydiff.models.complexity.gmacs counts 886.6
GMACs for the baseline with global pooling (1027.3 with TLC at 256, whose
channel-attention 1x1 convs the official code runs at every pixel), 1.14x
that with 2 decoders and 1.42x with 4.

On CPU the depthwise and 1x1 convs and the TLC pooling run in faster forms
of the same function (layers.CONV_IMPLS, TLC_IMPLS; benchmarks/depthwise_ops.py
and benchmarks/zoo_forward.py measure them).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from xydiff.errors import require
from xydiff.models import contract, layers, xy
from xydiff.models.layers import Conv, rotated_call

# The GoPro training crop (gt_size in options/train/GoPro/NAFNet-width*.yml):
# NAFNetLocal's train_size, and what `for_tiles` turns TLC on with.
AUTHORS_TRAIN_SIZE = 256


def tlc_windows(train_size: int, levels: int) -> tuple[int | None, ...]:
  """The box-mean window (feature pixels) of a block at each level 0..levels; None: global.

  NAFNetLocal fixes each AvgPool2d's kernel on a forward pass of a
  train_size x train_size image, which check_image_size first pads to a
  multiple of 2**levels: kernel = feature size * int(1.5 * train_size) // train_size.
  """
  if not train_size:
    return (None,) * (levels + 1)
  multiple = 2 ** levels
  padded = -(-train_size // multiple) * multiple
  base = int(train_size * 1.5)
  return tuple((padded >> level) * base // train_size for level in range(levels + 1))


def local_mean(x: jax.Array, window: int | None) -> jax.Array:
  """NHWC mean over the whole image (window None or >= both sides) or over a window.

  The windowed form is local_arch.AvgPool2d (fast_imp=False, auto_pad=True):
  a summed-area table over the 'valid' positions of a min(h, window) x
  min(w, window) box, replicate-padded back to h x w with the odd pixel at
  the bottom/right. Computed in float32: the table's differences cancel large
  partial sums, which bfloat16 would round away.
  """
  _, h, w, _ = x.shape
  x = x.astype(jnp.float32)
  if window is None or (window >= h and window >= w):
    return jnp.mean(x, axis=(1, 2), keepdims=True)
  k1, k2 = min(h, window), min(w, window)
  table = jnp.cumsum(jnp.cumsum(x, axis=2), axis=1)
  table = jnp.pad(table, ((0, 0), (1, 0), (1, 0), (0, 0)))
  out = (table[:, k1:, k2:] + table[:, :-k1, :-k2] - table[:, :-k1, k2:]
         - table[:, k1:, :-k2]) / (k1 * k2)
  dh, dw = h - out.shape[1], w - out.shape[2]
  return jnp.pad(out, ((0, 0), (dh // 2, (dh + 1) // 2), (dw // 2, (dw + 1) // 2), (0, 0)),
                 mode='edge')


# How the TLC box means and the channel attention's 1x1 conv after them are
# computed; the same function either way (tests/test_cpu_forms.py), a different speed.
#   'reference': the official form: a summed-area table (two cumulative sums
#     over the whole map; `local_mean`) edge-padded back to the map's size, the
#     1x1 conv then at every pixel. What xydiff.models.complexity counts.
#   'separable': the window sums one axis at a time (`window_means`), the 1x1
#     conv on the valid positions only (a 1x1 conv commutes with edge padding),
#     then the padding (`edge_pad`), a broadcast where the window spans an axis.
#     XLA:CPU's cumulative sums and sums over H run several times slower than
#     a product with a ones vector or a band matrix (benchmarks/depthwise_ops.py).
#   'auto': 'separable' on CPU, 'reference' elsewhere, decided when traced
#     (not measured on a GPU).
TLC_IMPLS = ('auto', 'reference', 'separable')


def resolve_tlc_impl(impl: str) -> str:
  return layers.resolve_impl(impl, TLC_IMPLS, 'separable', 'tlc_impl')


# A window sum along an axis of n positions with m = n - k + 1 outputs is a
# product with an m x n band matrix (m * n multiply-adds a line) while m is
# small or the lines few; else differences of prefix sums, a scan down the
# axis (a few operations per element, and a loop step per position).
_BAND_MAX_OUTPUTS = 32
_BAND_MAX_MACS = 1 << 17  # Per position of the axis, over all lines.


def _window_sums(x: jax.Array, k: int, axis: int) -> jax.Array:
  """Sums of x over every k consecutive positions along `axis` ('valid': n - k + 1 of them)."""
  n = x.shape[axis]
  outputs = n - k + 1
  lines = x.size // n
  if outputs <= _BAND_MAX_OUTPUTS or outputs * lines <= _BAND_MAX_MACS:
    start = jnp.arange(outputs)[:, None]
    position = jnp.arange(n)[None, :]
    band = ((position >= start) & (position < start + k)).astype(x.dtype)
    sums = jnp.tensordot(band, x, axes=((1,), (axis,)), precision=jax.lax.Precision.HIGHEST)
    return jnp.moveaxis(sums, 0, axis)
  rows = jnp.moveaxis(x, axis, 0)
  _, prefix = jax.lax.scan(lambda total, row: (total + row, total + row),
                           jnp.zeros_like(rows[0]), rows)
  prefix = jnp.concatenate([jnp.zeros_like(prefix[:1]), prefix])
  return jnp.moveaxis(prefix[k:] - prefix[:outputs], 0, axis)


def window_means(x: jax.Array, window: int) -> jax.Array:
  """NHWC float32 means over min(h, window) x min(w, window) boxes at their 'valid' positions.

  The values of local_mean before its edge padding, each axis summed apart
  (the one with fewer outputs first): no table of sums over the whole map,
  whose differences cancel large partial sums.
  """
  x = x.astype(jnp.float32)
  sizes = {1: min(x.shape[1], window), 2: min(x.shape[2], window)}
  for axis in sorted(sizes, key=lambda a: x.shape[a] - sizes[a]):
    x = _window_sums(x, sizes[axis], axis)
  return x / (sizes[1] * sizes[2])


def edge_pad(values: jax.Array, h: int, w: int, quarter_turns: int = 0) -> jax.Array:
  """Valid positions edge-padded to h x w as AvgPool2d's auto_pad, on features turned k times.

  AvgPool2d puts the odd pixel of the padding at the bottom and the right of
  the features it is given; of features turned counter-clockwise by k
  quarter turns (layers.rotated_call), that is in the unturned frame the
  bottom-right (k = 0), bottom-left (1), top-left (2) or top-right (3). An
  axis with one valid position stays one: a broadcast in the product.
  """
  k = int(quarter_turns) % 4
  odd_pixel_last = {1: k in (0, 1), 2: k in (0, 3)}
  pads = [(0, 0)] * 4
  for axis, size in ((1, h), (2, w)):
    if values.shape[axis] > 1:
      missing = size - values.shape[axis]
      first, last = missing // 2, (missing + 1) // 2
      pads[axis] = (first, last) if odd_pixel_last[axis] else (last, first)
  return jnp.pad(values, pads, mode='edge')


def pixel_shuffle(x: jax.Array, factor: int = 2) -> jax.Array:
  """torch.nn.PixelShuffle on NHWC: channel c*f*f + i*f + j goes to (f*y + i, f*x + j)."""
  n, h, w, c = x.shape
  out = c // (factor * factor)
  x = x.reshape(n, h, w, out, factor, factor).transpose(0, 1, 4, 2, 5, 3)
  return x.reshape(n, h * factor, w * factor, out)


class LayerNorm2d(nnx.Module):
  """arch_util.LayerNorm2d: each pixel normalised over its channels (eps 1e-6), then affine."""

  def __init__(self, channels: int, *, dtype, eps: float = 1e-6):
    self.scale = nnx.Param(jnp.ones((channels,)))
    self.bias = nnx.Param(jnp.zeros((channels,)))
    self.eps = eps
    self.dtype = dtype

  def __call__(self, x):
    x = x.astype(jnp.float32)  # Statistics in float32 whatever the activation dtype.
    mu = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mu), axis=-1, keepdims=True)
    y = (x - mu) / jnp.sqrt(var + self.eps)
    return (self.scale[...] * y + self.bias[...]).astype(self.dtype)


def simple_gate(x):
  """SimpleGate: the first half of the channels times the second."""
  first, second = jnp.split(x, 2, axis=-1)
  return first * second


class NAFBlock(nnx.Module):
  """NAFBlock with DW_Expand = FFN_Expand = 2 and no dropout, as every GoPro model.

  `pool_window`: the simplified channel attention's pooling (local_mean).
  beta and gamma start at zero, as in the official code: a fresh block is
  the identity. `conv_impl` (layers.CONV_IMPLS) and `tlc_impl`
  (TLC_IMPLS) pick how the depthwise and 1x1 convs and the windowed pooling run.
  """

  def __init__(self, channels: int, *, pool_window: int | None, dtype,
               conv_impl: str = 'auto', tlc_impl: str = 'auto', rngs: nnx.Rngs):
    if tlc_impl not in TLC_IMPLS:
      raise ValueError(f'tlc_impl must be one of {TLC_IMPLS}, got {tlc_impl!r}')
    hidden = 2 * channels  # dw_channel and ffn_channel.
    conv = functools.partial(Conv, dtype=dtype, impl=conv_impl, rngs=rngs)
    self.norm1 = LayerNorm2d(channels, dtype=dtype)
    self.conv1 = conv(channels, hidden, 1)
    self.conv2 = conv(hidden, hidden, 3, groups=hidden)
    self.sca = conv(hidden // 2, hidden // 2, 1)
    self.conv3 = conv(hidden // 2, channels, 1)
    self.norm2 = LayerNorm2d(channels, dtype=dtype)
    self.conv4 = conv(channels, hidden, 1)
    self.conv5 = conv(hidden // 2, channels, 1)
    self.beta = nnx.Param(jnp.zeros((channels,)))
    self.gamma = nnx.Param(jnp.zeros((channels,)))
    self.pool_window = pool_window
    self.tlc_impl = tlc_impl
    self.dtype = dtype

  def _attention(self, x, rotation):
    """sca(pool(x)): [N, 1, 1, C] for a global pool, else as x or broadcastable to it."""
    window, (h, w) = self.pool_window, x.shape[1:3]
    if window is None or (window >= h and window >= w):  # Global: the same for turned features.
      return self.sca(local_mean(x, None).astype(self.dtype), rotation)
    if resolve_tlc_impl(self.tlc_impl) == 'reference':
      pool = lambda t: local_mean(t, window).astype(self.dtype)
      return self.sca(rotated_call(pool, x, rotation), rotation)
    means = window_means(x, window).astype(self.dtype)
    return edge_pad(self.sca(means, rotation), h, w, rotation)

  def __call__(self, inp, rotation: int = 0):
    x = self.conv1(self.norm1(inp), rotation)
    x = simple_gate(self.conv2(x, rotation))
    x = x * self._attention(x, rotation)
    x = self.conv3(x, rotation)
    y = inp + x * self.beta[...].astype(self.dtype)
    x = self.conv5(simple_gate(self.conv4(self.norm2(y), rotation)), rotation)
    return y + x * self.gamma[...].astype(self.dtype)


def _blocks(count, channels, window, dtype, impls, rngs):
  return nnx.List([NAFBlock(channels, pool_window=window, dtype=dtype, **impls, rngs=rngs)
                   for _ in range(count)])


class Encoder(nnx.Module):
  """intro, then per level its blocks (kept as the skip) and a 2x2 stride-2 conv; the middle blocks."""

  def __init__(self, channels: int, width: int, enc_blocks, middle_blocks: int, windows, *,
               dtype, impls, rngs: nnx.Rngs):
    self.intro = Conv(channels, width, 3, dtype=dtype, rngs=rngs)
    self.encoders, self.downs = nnx.List(), nnx.List()
    chan = width
    for level, count in enumerate(enc_blocks):
      self.encoders.append(_blocks(count, chan, windows[level], dtype, impls, rngs))
      self.downs.append(Conv(chan, 2 * chan, 2, stride=2, padding=0, dtype=dtype, rngs=rngs))
      chan *= 2
    self.middle_blks = _blocks(middle_blocks, chan, windows[len(enc_blocks)], dtype, impls, rngs)

  def __call__(self, x):
    x = self.intro(x)
    skips = []
    for blocks, down in zip(self.encoders, self.downs):
      for block in blocks:
        x = block(x)
      skips.append(x)
      x = down(x)
    for block in self.middle_blks:
      x = block(x)
    return x, tuple(skips)


class Decoder(nnx.Module):
  """Per level from the coarsest: 1x1 conv + pixel shuffle, + the skip, the level's blocks; `ending`."""

  def __init__(self, channels: int, width: int, dec_blocks, windows, *, dtype, impls,
               rngs: nnx.Rngs):
    self.ups, self.decoders = nnx.List(), nnx.List()
    levels = len(dec_blocks)
    chan = width * 2 ** levels
    for i, count in enumerate(dec_blocks):
      self.ups.append(Conv(chan, 2 * chan, 1, use_bias=False, dtype=dtype,
                           impl=impls['conv_impl'], rngs=rngs))
      chan //= 2
      self.decoders.append(_blocks(count, chan, windows[levels - 1 - i], dtype, impls, rngs))
    self.ending = Conv(width, channels, 3, dtype=dtype, rngs=rngs)

  def __call__(self, x, skips, rotation: int = 0):
    for up, blocks, skip in zip(self.ups, self.decoders, skips[::-1]):
      x = rotated_call(pixel_shuffle, up(x, rotation), rotation)
      x = x + skip
      for block in blocks:
        x = block(x, rotation)
    return self.ending(x, rotation)


class NAFNet(nnx.Module):
  """Restores `x` (NHWC in [0, 1]) as the padded input + the decoders' residuals, cropped.

  Returns {'restored', 'residuals': one [N, H, W, 3] array per decoder}.
  `conv_impl` and `tlc_impl` pick the forms of the depthwise and 1x1 convs
  and of the TLC pooling (NAFBlock); the parameters are the same either way.
  """

  def __init__(self, *, width: int = 64, enc_blocks=(1, 1, 1, 28), middle_blocks: int = 1,
               dec_blocks=(1, 1, 1, 1), channels: int = 3, tlc_train_size: int = 0,
               decoders: int = 1, share: str = 'rotate', dtype=jnp.float32,
               conv_impl: str = 'auto', tlc_impl: str = 'auto', rngs: nnx.Rngs):
    if len(enc_blocks) != len(dec_blocks):
      raise ValueError(f'enc_blocks {enc_blocks} and dec_blocks {dec_blocks} need one entry '
                       'per level each')
    levels = len(enc_blocks)
    windows = tlc_windows(tlc_train_size, levels)
    impls = dict(conv_impl=conv_impl, tlc_impl=tlc_impl)
    self.encoder = Encoder(channels, width, enc_blocks, middle_blocks, windows, dtype=dtype,
                           impls=impls, rngs=rngs)
    self.decoder = xy.make_decoders(
        lambda r: Decoder(channels, width, dec_blocks, windows, dtype=dtype, impls=impls, rngs=r),
        decoders, share, rngs)
    self.decoders = decoders
    self.size_multiple = 2 ** levels  # The official padder_size.

  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    h, w = x.shape[1], x.shape[2]
    # check_image_size: zeros at the bottom and right, up to the padder size.
    padded = jnp.pad(x, ((0, 0), (0, (-h) % self.size_multiple),
                         (0, (-w) % self.size_multiple), (0, 0)))
    bottleneck, skips = self.encoder(padded)
    residuals = [r.astype(jnp.float32) for r in
                 xy.run_decoders(self.decoder, self.decoders, bottleneck, skips)]
    restored = padded
    for r in residuals:  # The official `ending(x) + inp` for one decoder.
      restored = restored + r
    return {'restored': restored[:, :h, :w],
            'residuals': tuple(r[:, :h, :w] for r in residuals)}


def psnr_loss(model, batch, key):
  """BasicSR's PSNRLoss (loss_weight 1, mean): the batch mean of 10 log10(MSE + 1e-8) per image.

  That is minus the images' mean PSNR on the [0, 1] scale (the official code
  writes it as 10 / ln 10 * mean(ln(MSE + 1e-8))).
  """
  del key
  restored = model(batch['blur'])['restored']
  mse = jnp.mean(jnp.square(restored - batch['sharp']), axis=(1, 2, 3))
  loss = (10.0 / math.log(10.0)) * jnp.mean(jnp.log(mse + 1e-8))
  return loss, {'psnr_loss': loss}


# ------------------------------------------------------------------ the family

class NAFNetFamily(contract.Family):
  name = 'nafnet'
  module = NAFNet

  def defaults(self):
    return dict(
        width=64,  # Channels at full resolution; doubled at each level (GoPro: 64, or 32).
        enc_blocks=(1, 1, 1, 28),  # NAFBlocks per encoder level, finest first.
        middle_blocks=1,  # NAFBlocks at the bottleneck (1/2**levels resolution).
        dec_blocks=(1, 1, 1, 1),  # NAFBlocks per decoder level, coarsest first.
        # TLC: 0 pools the channel attention over the whole image (NAFNet);
        # N > 0 over windows 1.5x what an N x N training crop gives
        # (NAFNetLocal, the authors' GoPro configs: N = 256).
        tlc_train_size=AUTHORS_TRAIN_SIZE,
        decoders=1,  # XY transform (xy.py): 1 plain, 2 XY, 4 four rotations.
        share='rotate',  # 'rotate': one decoder's weights turned; 'none': U-Net^2D.
        # 'auto': depthwise and 1x1 convs and the TLC mean in the backend's fastest
        # form (shifted multiply-adds on CPU); 'reference': conv_general_dilated and
        # the official pooling everywhere (what models.complexity counts).
        layer_impl='auto',
    )

  def validate(self, section, prefix):
    contract.check_positive_int(section.width, f'{prefix}.width')
    for field in ('enc_blocks', 'dec_blocks'):
      value = section[field]
      require(isinstance(value, (tuple, list)) and len(value) > 0
              and all(_is_count(v, 0) for v in value), f'{prefix}.{field}',
              'must be a non-empty tuple of block counts (integers >= 0), one per level', value)
    require(len(section.dec_blocks) == len(section.enc_blocks), f'{prefix}.dec_blocks',
            f'needs one entry per level, as enc_blocks={tuple(section.enc_blocks)}',
            section.dec_blocks)
    contract.check_count(section.middle_blocks, f'{prefix}.middle_blocks')
    require(_is_count(section.tlc_train_size, 0), f'{prefix}.tlc_train_size',
            "must be an integer >= 0 (0: global pooling; 256: the authors' NAFNetLocal)",
            section.tlc_train_size)
    require(section.layer_impl in LAYER_IMPLS, f'{prefix}.layer_impl',
            f'must be one of {LAYER_IMPLS}', section.layer_impl)
    xy.check_section(section, prefix)

  def output_fields(self, section):
    # tlc_train_size is left out: the same weights run with or without TLC
    # (the authors train with it and test with it), so a run may switch it.
    fields = super().output_fields(section)
    fields.pop('tlc_train_size', None)
    return fields

  def build(self, section, *, dtype, rngs):
    return NAFNet(width=section.width, enc_blocks=tuple(section.enc_blocks),
                  middle_blocks=section.middle_blocks, dec_blocks=tuple(section.dec_blocks),
                  tlc_train_size=section.tlc_train_size, decoders=section.decoders,
                  share=section.share, dtype=dtype, conv_impl=section.layer_impl,
                  tlc_impl=section.layer_impl, rngs=rngs)

  def size_multiple(self, section):
    return 2 ** len(section.enc_blocks)

  def loss(self, section):
    return psnr_loss

  def tile_safe(self, section):
    return section.tlc_train_size > 0

  def for_tiles(self, section):
    """The section with TLC on (at the authors' training size unless already on)."""
    tiled = section.copy_and_resolve_references()
    if not tiled.tlc_train_size:
      tiled.tlc_train_size = AUTHORS_TRAIN_SIZE
    return tiled


LAYER_IMPLS = ('auto', 'reference')


def _is_count(value, minimum: int) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


FAMILY = NAFNetFamily()
