"""DMPHN (Zhang et al., CVPR 2019): the deep multi-patch hierarchical network.

Layer for layer the authors' PyTorch network (github.com/HongguangZhang/
DMPHN-cvpr19-master: `Encoder` and `Decoder` in models.py, wired as in
DMPHN_1_2_4_test.py and DMPHN_1_2_4_8_test.py). Each level k of the
hierarchy has its own Encoder/Decoder pair (1,808,131 parameters at the
authors' width 32): DMPHN(1-2-4) has 3 levels (5,424,393 parameters),
DMPHN(1-2-4-8) 4 (7,232,524).

How the levels are wired (the official scripts, with H and W exact multiples):
- Level 1 sees the whole image, level 2 its top and bottom halves, level 3
  each half's left and right quarter, level 4 each quarter's top and bottom
  eighth (splits at H/2, then W/2, then H/4).
- The coarsest level encodes its patches as they are; every other level
  encodes its patches plus the residual that the next coarser level decoded
  for them.
- A level's encoder outputs are joined back in pairs (along the axis its
  patches were split on) before its decoder runs, so level k decodes the
  patches of level k-1 (level 1 the whole image): level 3's features of the
  two quarters of a half are decoded as one map.
- The coarser level's joined features are added to this level's before
  decoding, and the sum is passed on (joined once more) to the next finer level.
- The level-1 decoder's output is the image (minus 0.5), not a residual.
Values: the official code feeds RGB in [0, 1] minus 0.5 and adds 0.5 to the
level-1 output, unclamped; this module does the same, so 'restored' equals
what DMPHN_1_2_4_test.py computes before torchvision's save clamps it.
Padding: the official code has none (every patch must be a multiple of 4,
the encoder's downsampling); here H and W are reflect-padded to the multiples
the splits need (8 and 8 for 3 levels; 16 and 8 for 4 levels) and cropped
back, so images the official code accepts go through unchanged.

The XY transform (xy.py) cuts each level's network between its Encoder and
its Decoder: the whole Decoder (ResBlocks, both up-convolutions and the
output conv) runs `decoders` times on that level's features, turned by i
quarter turns, and the outputs are summed. This cut is the authors' own
module boundary and the one that reproduces XYDeblur's Table 2 exactly.
That table counts MACs as thop does (every convolution, transposed ones
included: output elements x (input channels x taps + 1 for the bias); one
per ReLU output), which gives DMPHN(1-2-4-8) 1100.18 GMACs at 1280x720, the
table's figure to the digit. A level then costs 121,064 (Encoder) + 177,379
(Decoder) per pixel, whichever patches it runs on, and doubling every
level's Decoder gives 1754.07 GMACs, the table's XY figure (1.5943x).
Since a level's decoder runs on patches, the rotation turns each patch's
features about that patch's own centre, which is what rotating kernels
computes. `decoders=1` is the untransformed network.

Table 2's wider and deeper baselines are `width` and `num_res` (variants
'dmphn_1_2_4_8_channel' and 'dmphn_1_2_4_8_layer'). num_res=3 (one more
ResBlock in each of the 6 stages) is the table's "Layer" row to the digit
(10.33M parameters, 1509.11 GMACs); no uniform width gives both of the
"Channel" row's figures (18.63M, 3060.28 GMACs), and width 52 is the closest
(19.08M, 2895.77).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from xydiff.errors import require
from xydiff.models import contract, xy
from xydiff.models.layers import Conv, ConvTranspose, ResStack, ThreeScaleEncoder

# The axis (1: H, 2: W of NHWC) on which level k+1's patches are cut from
# level k's, for k = 1, 2, 3 (DMPHN_1_2_4_8.py: H/2, then W/2, then H/4).
SPLIT_AXES = (1, 2, 1)
MAX_LEVELS = len(SPLIT_AXES) + 1
# The encoder halves H and W twice; every patch must survive that exactly.
_ENCODER_STRIDE = 4


class Decoder(nnx.Module):
  """models.Decoder: ResBlocks and a 4x4 stride-2 up-convolution twice, ResBlocks, 3x3 to RGB.

  Every layer takes `rotation` (quarter turns of its kernel), for the XY transform.
  """

  def __init__(self, width: int, num_res: int, *, dtype, upsample_impl: str, rngs: nnx.Rngs):
    self.res1 = ResStack(4 * width, num_res, dtype=dtype, rngs=rngs)
    self.up1 = ConvTranspose(4 * width, 2 * width, dtype=dtype, impl=upsample_impl, rngs=rngs)
    self.res2 = ResStack(2 * width, num_res, dtype=dtype, rngs=rngs)
    self.up2 = ConvTranspose(2 * width, width, dtype=dtype, impl=upsample_impl, rngs=rngs)
    self.res3 = ResStack(width, num_res, dtype=dtype, rngs=rngs)
    self.out = Conv(width, 3, 3, dtype=dtype, rngs=rngs)

  def __call__(self, x, rotation: int = 0):
    x = self.up1(self.res1(x, rotation), rotation)
    x = self.up2(self.res2(x, rotation), rotation)
    return self.out(self.res3(x, rotation), rotation)


class Level(nnx.Module):
  """One level of the hierarchy: the official encoder_lv{k} and decoder_lv{k}."""

  def __init__(self, width: int, num_res: int, decoders: int, share: str, *, dtype,
               upsample_impl: str, rngs: nnx.Rngs):
    # models.Encoder: no activation outside the ResBlocks (the official stem and
    # down convs have none).
    self.encoder = ThreeScaleEncoder(3, width, num_res, relu=False, dtype=dtype, rngs=rngs)
    self.decoder = xy.make_decoders(
        lambda r: Decoder(width, num_res, dtype=dtype, upsample_impl=upsample_impl, rngs=r),
        decoders, share, rngs)


def size_multiples(levels: int) -> tuple[int, int]:
  """(H, W) multiples that make every patch of every level a multiple of the encoder's stride."""
  axes = SPLIT_AXES[:levels - 1]
  return (_ENCODER_STRIDE * 2 ** axes.count(1), _ENCODER_STRIDE * 2 ** axes.count(2))


def _split(x: jax.Array, axis: int, batch: int) -> jax.Array:
  """Patches [P*N, H, W, C] (patch-major) -> [2P*N, ...]: each patch cut in two along `axis`.

  The two halves of patch p become patches 2p and 2p+1, first half first.
  """
  pn, h, w, c = x.shape
  p = pn // batch
  if axis == 1:
    x = x.reshape(p, batch, 2, h // 2, w, c).transpose(0, 2, 1, 3, 4, 5)
    return x.reshape(2 * p * batch, h // 2, w, c)
  x = x.reshape(p, batch, h, 2, w // 2, c).transpose(0, 3, 1, 2, 4, 5)
  return x.reshape(2 * p * batch, h, w // 2, c)


def _join(x: jax.Array, axis: int, batch: int) -> jax.Array:
  """The inverse of _split: patches 2p and 2p+1 concatenated along `axis` (torch.cat)."""
  pn, h, w, c = x.shape
  p = pn // (2 * batch)
  x = x.reshape(p, 2, batch, h, w, c)
  if axis == 1:
    return x.transpose(0, 2, 1, 3, 4, 5).reshape(p * batch, 2 * h, w, c)
  return x.transpose(0, 2, 3, 1, 4, 5).reshape(p * batch, h, 2 * w, c)


def _reflect_pad(x: jax.Array, multiple_h: int, multiple_w: int) -> jax.Array:
  h, w = x.shape[1], x.shape[2]
  ph, pw = (-h) % multiple_h, (-w) % multiple_w
  if ph >= h or pw >= w:
    raise ValueError(f'image of {h}x{w} pixels is too small: DMPHN needs at least '
                     f'{multiple_h // 2 + 1}x{multiple_w // 2 + 1}')
  if ph or pw:
    x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode='reflect')
  return x


class DMPHN(nnx.Module):
  """Restores a batch of blurry NHWC images in [0, 1].

  Returns {'restored': the level-1 output + 0.5 (float32, unclamped),
  'residuals': one [N, H, W, 3] array per level-1 decoder}.

  The network has no global skip: the restored image is sum_i D_i + 0.5,
  not the input plus residuals. So that, as for every XY family,
  restored = x + sum(residuals), decoder i's residual is its output plus an
  equal share of (0.5 - x); with one decoder it is simply restored - x.
  """

  def __init__(self, *, levels: int = 3, width: int = 32, num_res: int = 2, decoders: int = 1,
               share: str = 'rotate', dtype=jnp.float32, upsample_impl: str = 'auto',
               rngs: nnx.Rngs):
    if not 1 <= levels <= MAX_LEVELS:
      raise ValueError(f'levels must be in 1..{MAX_LEVELS}, got {levels!r}')
    # levels[0] is the official *_lv1 (whole image), levels[-1] the finest patches.
    self.levels = nnx.List([
        Level(width, num_res, decoders, share, dtype=dtype, upsample_impl=upsample_impl,
              rngs=rngs) for _ in range(levels)])
    self.decoders = decoders
    self.multiples = size_multiples(levels)

  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    batch, h, w = x.shape[0], x.shape[1], x.shape[2]
    image = _reflect_pad(x.astype(jnp.float32), *self.multiples) - 0.5
    # patches[k]: level k+1's patches, patch-major [2^k * N, ...].
    patches = [image]
    for axis in SPLIT_AXES[:len(self.levels) - 1]:
      patches.append(_split(patches[-1], axis, batch))

    residual = coarser = outputs = None
    for k in reversed(range(len(self.levels))):
      level = self.levels[k]
      inputs = patches[k] if residual is None else patches[k] + residual
      features = level.encoder(inputs)[0]
      if k > 0:  # Decoded on the patches of level k-1 (official torch.cat of pairs).
        features = _join(features, SPLIT_AXES[k - 1], batch)
      if coarser is not None:
        features = features + coarser
      outputs = xy.run_decoders(level.decoder, self.decoders, features)
      residual = outputs[0]
      for extra in outputs[1:]:
        residual = residual + extra
      # The features as the next finer level will add them (its own decoding layout).
      coarser = _join(features, SPLIT_AXES[k - 2], batch) if k > 1 else features

    restored = residual.astype(jnp.float32)[:, :h, :w] + 0.5
    share = -image[:, :h, :w] / len(outputs)  # (0.5 - x) / decoders.
    return {'restored': restored,
            'residuals': tuple(o.astype(jnp.float32)[:, :h, :w] + share for o in outputs)}


def mse_loss(model, batch, key):
  """The authors' loss (DMPHN_1_2_4.py): MSE of the level-1 output against the sharp image.

  Their `nn.MSELoss()(deblur_image, gt - 0.5)` is the same number on the [0, 1] scale.
  """
  del key
  restored = model(batch['blur'])['restored']
  mse = jnp.mean(jnp.square(restored - batch['sharp']))
  return mse, {'mse': mse}


# ------------------------------------------------------------------ the family

class DMPHNFamily(contract.Family):
  name = 'dmphn'
  module = DMPHN

  def defaults(self):
    return dict(
        # Levels of the patch hierarchy: 3 is DMPHN(1-2-4), the authors' DMPHN_1_2_4
        # (5.42M parameters); 4 is DMPHN(1-2-4-8) (7.23M), XYDeblur's Table 2 baseline.
        levels=3,
        width=32,  # Channels at full resolution, doubled at 1/2 and 1/4 (the authors': 32).
        num_res=2,  # ResBlocks in each of the 3 encoder and 3 decoder stages (the authors': 2).
        decoders=1,  # The XY transform (xy.py) of each level's Decoder: 1 (plain), 2 (XY), 4.
        # 'rotate': the decoders share weights, turned by quarter turns (XYDeblur);
        # 'none': independent decoders (U-Net^2D).
        share='rotate',
        upsample_impl='auto',  # layers.UPSAMPLE_IMPLS: how the up-convolutions run.
    )

  def validate(self, section, prefix):
    levels = section.levels
    require(isinstance(levels, int) and not isinstance(levels, bool) and
            1 <= levels <= MAX_LEVELS, f'{prefix}.levels',
            f'must be an integer in 1..{MAX_LEVELS} (3: DMPHN(1-2-4), 4: DMPHN(1-2-4-8))', levels)
    contract.check_positive_ints(section, prefix, 'width', 'num_res')
    contract.check_decoders(section, prefix)

  def build(self, section, *, dtype, rngs):
    return DMPHN(levels=section.levels, width=section.width, num_res=section.num_res,
                 decoders=section.decoders, share=section.share, dtype=dtype,
                 upsample_impl=section.upsample_impl, rngs=rngs)

  def size_multiple(self, section):
    return max(size_multiples(section.levels))  # Both are powers of two.

  def loss(self, section):
    return mse_loss

  def tile_safe(self, section):
    # The patch seams sit at fractions of the image's size, so a tile is split
    # where the whole image is not: tiles cannot reproduce the whole image.
    return False


FAMILY = DMPHNFamily()
