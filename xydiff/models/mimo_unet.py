"""MIMO-UNet and MIMO-UNet+ (Cho et al., ICCV 2021, "Rethinking Coarse-to-Fine
Approach in Single Image Deblurring").

Layer for layer the official PyTorch network (github.com/chosj95/MIMO-UNet,
models/MIMOUNet.py and models/layers.py at 8c85e56): one U-Net whose encoder
also takes the blurry image at 1/2 and 1/4 scale (shallow convolution modules,
SCM, merged by feature attention, FAM), whose skips are asymmetric fusions of
all three encoder scales (AFF), and whose decoder emits a restored image at
every scale. With the defaults (width 32, num_res 8) it has 6,807,171
parameters, 3,280,489 of them in the decoder; MIMO-UNet+ (num_res 20, channel
dropout 0.1 on the fused skips during training) has 16,107,651 (decoder
7,930,729).

Conventions of the official eval.py: RGB in [0, 1] in, no normalisation; the
full-scale output is the restored image, unclamped (the test clamps to [0, 1]
and saves with +0.5/255 rounding). The official network needs H and W to be
multiples of 4 (its nearest-neighbour halvings and stride-2 convolutions must
agree); this module reflect-pads other sizes and crops the outputs back, so on
multiples of 4 it computes exactly what the official test does.

XY transform (xy.py): the cut is where the official code's features stop
flowing forward. The encoder is everything up to and including the AFFs (and
MIMO-UNet+'s dropout): SCMs, FAMs, feat_extract[0..2], Encoder[0..2], AFFs.
It hands the decoder three tensors: the 1/4-scale encoder output and the two
fused skips. The decoder is everything after: Decoder[0..2] (ResBlocks),
ConvsOut[0..1] (the coarse-scale output convs), feat_extract[3..4] (4x4
stride-2 transposed convs), Convs[0..1] (1x1 fusions) and feat_extract[5] (the
full-scale output conv). There is no feature attention on the up path, so every
decoder layer is a 'same' convolution, a 1x1 convolution or the 4x4 stride-2
transposed convolution, all of which turn exactly by turning their kernels.
The AFFs stay in the encoder: they read only encoder features and run once.
Each decoder emits residuals at all three scales; the decoders' residuals of a
scale are summed and added to the (nearest-neighbour) downscaled input.
At 1280x720, by thop's rules (Table 2's convention: xydiff.models.complexity.gmacs),
MIMO-UNet costs 944.6 GMACs, its XY form (2 decoders) 1419.2 (1.50x, the
~1.5x of XYDeblur's Table 2) and 4 decoders 2368.6; MIMO-UNet+ 2171.4, XY
3259.4 (1.50x), 4 decoders 5435.5. Counting true multiply-accumulates of the
convolutions only, MIMO-UNet is 896.2 GMACs, 428.0 of them in the decoder.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from xydiff.errors import require
from xydiff.models import contract, xy
from xydiff.models.layers import Conv, ConvTranspose, ResStack, pad_to_multiple
# The official ResBlock is XYDeblur's: x + conv3x3(relu(conv3x3(x))), no norm.


def _halve(x: jax.Array) -> jax.Array:
  """F.interpolate(x, scale_factor=0.5) (mode 'nearest'): every other pixel from the first."""
  return x[:, ::2, ::2]


def _double(x: jax.Array) -> jax.Array:
  """F.interpolate(x, scale_factor=2) (mode 'nearest'): each pixel repeated 2x2."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def _channel_dropout(x: jax.Array, rate: float, key: jax.Array) -> jax.Array:
  """nn.Dropout2d in training mode: whole channels of each image zeroed, the rest / (1 - rate)."""
  keep = jax.random.bernoulli(key, 1.0 - rate, (x.shape[0], 1, 1, x.shape[-1]))
  return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


class ShallowConvModule(nnx.Module):
  """SCM: features of a downscaled blurry image, with the image itself kept as 3 channels.

  conv3x3 3->c/4, conv1x1 ->c/2, conv3x3 ->c/2, conv1x1 ->c-3 (ReLU after
  each); the image concatenated in front; conv1x1 c->c (no ReLU).
  """

  def __init__(self, features: int, *, dtype, rngs: nnx.Rngs):
    quarter, half = features // 4, features // 2
    self.convs = nnx.List([
        Conv(3, quarter, 3, dtype=dtype, rngs=rngs),
        Conv(quarter, half, 1, dtype=dtype, rngs=rngs),
        Conv(half, half, 3, dtype=dtype, rngs=rngs),
        Conv(half, features - 3, 1, dtype=dtype, rngs=rngs),
    ])
    self.merge = Conv(features, features, 1, dtype=dtype, rngs=rngs)
    self.dtype = dtype

  def __call__(self, image):
    image = image.astype(self.dtype)
    x = image
    for conv in self.convs:
      x = jax.nn.relu(conv(x))
    return self.merge(jnp.concatenate([image, x], axis=-1))


class FeatureAttention(nnx.Module):
  """FAM: x + conv3x3(x * scm), the SCM features gating the encoder's."""

  def __init__(self, features: int, *, dtype, rngs: nnx.Rngs):
    self.merge = Conv(features, features, 3, dtype=dtype, rngs=rngs)

  def __call__(self, x, scm):
    return x + self.merge(x * scm)


class AsymmetricFusion(nnx.Module):
  """AFF: the three encoder scales, resized to one, concatenated (full, half, quarter order)
  and fused by conv1x1 + ReLU, conv3x3."""

  def __init__(self, in_features: int, out_features: int, *, dtype, rngs: nnx.Rngs):
    self.squeeze = Conv(in_features, out_features, 1, dtype=dtype, rngs=rngs)
    self.mix = Conv(out_features, out_features, 3, dtype=dtype, rngs=rngs)

  def __call__(self, full, half, quarter):
    x = jnp.concatenate([full, half, quarter], axis=-1)
    return self.mix(jax.nn.relu(self.squeeze(x)))


class Encoder(nnx.Module):
  """Everything before the XY cut: feat_extract[0..2], Encoder[0..2], SCM1/2, FAM1/2, AFFs."""

  def __init__(self, width: int, num_res: int, *, dtype, rngs: nnx.Rngs):
    self.stem = Conv(3, width, 3, dtype=dtype, rngs=rngs)                         # feat_extract[0]
    self.res_full = ResStack(width, num_res, dtype=dtype, rngs=rngs)              # Encoder[0]
    self.down_to_half = Conv(width, 2 * width, 3, stride=2, dtype=dtype, rngs=rngs)  # [1]
    self.scm_half = ShallowConvModule(2 * width, dtype=dtype, rngs=rngs)          # SCM2
    self.fam_half = FeatureAttention(2 * width, dtype=dtype, rngs=rngs)           # FAM2
    self.res_half = ResStack(2 * width, num_res, dtype=dtype, rngs=rngs)          # Encoder[1]
    self.down_to_quarter = Conv(2 * width, 4 * width, 3, stride=2, dtype=dtype,   # [2]
                                rngs=rngs)
    self.scm_quarter = ShallowConvModule(4 * width, dtype=dtype, rngs=rngs)       # SCM1
    self.fam_quarter = FeatureAttention(4 * width, dtype=dtype, rngs=rngs)        # FAM1
    self.res_quarter = ResStack(4 * width, num_res, dtype=dtype, rngs=rngs)       # Encoder[2]
    self.aff_full = AsymmetricFusion(7 * width, width, dtype=dtype, rngs=rngs)    # AFFs[0]
    self.aff_half = AsymmetricFusion(7 * width, 2 * width, dtype=dtype, rngs=rngs)  # AFFs[1]

  def __call__(self, x, x_half, x_quarter):
    """(z, skip_half, skip_full): the 1/4-scale features and the two fused skips."""
    e_full = self.res_full(jax.nn.relu(self.stem(x)))
    z = jax.nn.relu(self.down_to_half(e_full))
    e_half = self.res_half(self.fam_half(z, self.scm_half(x_half)))
    z = jax.nn.relu(self.down_to_quarter(e_half))
    z = self.res_quarter(self.fam_quarter(z, self.scm_quarter(x_quarter)))
    z_double = _double(z)
    skip_half = self.aff_half(_halve(e_full), e_half, z_double)
    skip_full = self.aff_full(e_full, _double(e_half), _double(z_double))
    return z, skip_half, skip_full


class Decoder(nnx.Module):
  """Everything after the XY cut: Decoder[0..2], ConvsOut, feat_extract[3..5], Convs.

  Returns the residuals at 1/4, 1/2 and full scale (official outputs[0..2]
  less the downscaled input).
  """

  def __init__(self, width: int, num_res: int, *, dtype, upsample_impl, rngs: nnx.Rngs):
    self.res_quarter = ResStack(4 * width, num_res, dtype=dtype, rngs=rngs)       # Decoder[0]
    self.out_quarter = Conv(4 * width, 3, 3, dtype=dtype, rngs=rngs)              # ConvsOut[0]
    self.up_to_half = ConvTranspose(4 * width, 2 * width, dtype=dtype,            # feat_extract[3]
                                    impl=upsample_impl, rngs=rngs)
    self.fuse_half = Conv(4 * width, 2 * width, 1, dtype=dtype, rngs=rngs)        # Convs[0]
    self.res_half = ResStack(2 * width, num_res, dtype=dtype, rngs=rngs)          # Decoder[1]
    self.out_half = Conv(2 * width, 3, 3, dtype=dtype, rngs=rngs)                 # ConvsOut[1]
    self.up_to_full = ConvTranspose(2 * width, width, dtype=dtype,                # feat_extract[4]
                                    impl=upsample_impl, rngs=rngs)
    self.fuse_full = Conv(2 * width, width, 1, dtype=dtype, rngs=rngs)            # Convs[1]
    self.res_full = ResStack(width, num_res, dtype=dtype, rngs=rngs)              # Decoder[2]
    self.out_full = Conv(width, 3, 3, dtype=dtype, rngs=rngs)                     # feat_extract[5]

  def __call__(self, z, skip_half, skip_full, rotation: int = 0):
    z = self.res_quarter(z, rotation)
    r_quarter = self.out_quarter(z, rotation)
    z = jax.nn.relu(self.up_to_half(z, rotation))
    # Decoder feature first, skip second, as the official torch.cat.
    z = jax.nn.relu(self.fuse_half(jnp.concatenate([z, skip_half], axis=-1), rotation))
    z = self.res_half(z, rotation)
    r_half = self.out_half(z, rotation)
    z = jax.nn.relu(self.up_to_full(z, rotation))
    z = jax.nn.relu(self.fuse_full(jnp.concatenate([z, skip_full], axis=-1), rotation))
    r_full = self.out_full(self.res_full(z, rotation), rotation)
    return r_quarter, r_half, r_full


class MIMOUNet(nnx.Module):
  """Restores NHWC images in [0, 1] at three scales.

  Returns {'restored': full scale, 'restored_half', 'restored_quarter' (the
  coarse outputs the multi-scale loss trains), 'residuals': the full-scale
  residual of each decoder}. `dropout_key` turns on MIMO-UNet+'s training-mode
  channel dropout (nn.Dropout2d) of the skips; without it the network is in
  eval mode, as the official test runs it.
  """

  size_multiple = 4

  def __init__(self, *, width: int = 32, num_res: int = 8, dropout: float = 0.0,
               decoders: int = 1, share: str = 'rotate', dtype=jnp.float32,
               upsample_impl: str = 'auto', rngs: nnx.Rngs):
    self.encoder = Encoder(width, num_res, dtype=dtype, rngs=rngs)
    self.decoder = xy.make_decoders(
        lambda r: Decoder(width, num_res, dtype=dtype, upsample_impl=upsample_impl, rngs=r),
        decoders, share, rngs)
    self.decoders = decoders
    self.dropout = dropout

  def __call__(self, x: jax.Array, *, dropout_key: jax.Array | None = None
               ) -> dict[str, jax.Array]:
    padded, (h, w) = pad_to_multiple(x.astype(jnp.float32), self.size_multiple)
    x_half = _halve(padded)
    x_quarter = _halve(x_half)
    z, skip_half, skip_full = self.encoder(padded, x_half, x_quarter)
    if dropout_key is not None and self.dropout > 0:
      # Official order: drop2 on the half-scale skip, drop1 on the full-scale one.
      key_half, key_full = jax.random.split(dropout_key)
      skip_half = _channel_dropout(skip_half, self.dropout, key_half)
      skip_full = _channel_dropout(skip_full, self.dropout, key_full)
    per_decoder = xy.run_decoders(self.decoder, self.decoders, z, skip_half, skip_full)
    restored = []
    for scale, base in enumerate((x_quarter, x_half, padded)):
      out = base
      for residuals in per_decoder:  # Official: residual + downscaled input.
        out = out + residuals[scale].astype(jnp.float32)
      restored.append(out)
    return {'restored': restored[2][:, :h, :w],
            'restored_half': restored[1][:, :h // 2, :w // 2],
            'restored_quarter': restored[0][:, :h // 4, :w // 4],
            'residuals': tuple(r[2][:, :h, :w].astype(jnp.float32) for r in per_decoder)}


# ------------------------------------------------------------------ the training loss

def torch_bilinear_downscale(x: jax.Array, factor: int) -> jax.Array:
  """F.interpolate(x, scale_factor=1/factor, mode='bilinear') (align_corners=False, no
  antialiasing) on NHWC: output floor(size/factor), source (i + 0.5) * factor - 0.5.

  For factor 2 that is the mean of each 2x2 block; for 4, of the central 2x2
  of each 4x4 block (the other 12 pixels get weight 0), as the official
  train.py downscales its targets.
  """
  def along(x, axis):
    size = x.shape[axis]
    src = jnp.maximum((jnp.arange(size // factor) + 0.5) * factor - 0.5, 0.0)
    lo = jnp.floor(src).astype(jnp.int32)
    hi = jnp.minimum(lo + 1, size - 1)
    frac = (src - lo).reshape([-1 if a == axis else 1 for a in range(x.ndim)])
    return (1 - frac) * jnp.take(x, lo, axis=axis) + frac * jnp.take(x, hi, axis=axis)
  return along(along(x, 1), 2)


def _fft_l1(prediction, target):
  """L1Loss between torch.rfft(·, signal_ndim=2, normalized=False, onesided=False) of both:
  the mean |difference| over the real and imaginary parts of the full, unnormalised 2-D
  FFT over H and W (by linearity, the FFT of the difference)."""
  spectrum = jnp.fft.fft2(prediction - target, axes=(1, 2))
  return 0.5 * (jnp.mean(jnp.abs(spectrum.real)) + jnp.mean(jnp.abs(spectrum.imag)))


def multiscale_loss(model, batch, key):
  """The paper's loss (official train.py): sum over the three scales of
  L1(output, target) + 0.1 * L1(FFT(output), FFT(target)), targets bilinearly downscaled.
  `key` draws MIMO-UNet+'s training dropout."""
  out = model(batch['blur'], dropout_key=key)
  sharp = batch['sharp'].astype(jnp.float32)
  pairs = ((out['restored_quarter'], torch_bilinear_downscale(sharp, 4)),
           (out['restored_half'], torch_bilinear_downscale(sharp, 2)),
           (out['restored'], sharp))
  content = sum(jnp.mean(jnp.abs(p - t)) for p, t in pairs)
  frequency = sum(_fft_l1(p, t) for p, t in pairs)
  return content + 0.1 * frequency, {'content': content, 'fft': frequency}


# ------------------------------------------------------------------ the family

class MIMOUNetFamily(contract.Family):
  name = 'mimo_unet'
  module = MIMOUNet

  def defaults(self):
    return dict(
        width=32,  # base_channel: features at full scale (x2, x4 at 1/2, 1/4); 32 officially.
        num_res=8,  # ResBlocks per EBlock/DBlock: 8 for MIMO-UNet, 20 for MIMO-UNet+.
        dropout=0.0,  # Training-mode Dropout2d on the fused skips: 0 MIMO-UNet, 0.1 MIMO-UNet+.
        decoders=1,  # XY transform (xy.py): 1 is the official network, 2 XY, 4 four rotations.
        share='rotate',  # 'rotate': decoders share weights turned by 90 degrees; 'none': U-Net^2D.
        upsample_impl='auto',  # layers.UPSAMPLE_IMPLS: how the up-convolutions run.
    )

  def validate(self, section, prefix):
    contract.check_positive_ints(section, prefix, 'width', 'num_res')
    # The SCM of the half scale has 2*width//4 and 2*width-3 channels.
    require(section.width >= 2, f'{prefix}.width', 'must be at least 2', section.width)
    require(isinstance(section.dropout, (int, float)) and 0 <= section.dropout < 1,
            f'{prefix}.dropout', 'must be in [0, 1)', section.dropout)
    contract.check_decoders(section, prefix)

  def build(self, section, *, dtype, rngs):
    return MIMOUNet(width=section.width, num_res=section.num_res, dropout=section.dropout,
                    decoders=section.decoders, share=section.share, dtype=dtype,
                    upsample_impl=section.upsample_impl, rngs=rngs)

  def size_multiple(self, section):
    return MIMOUNet.size_multiple

  def loss(self, section):
    return multiscale_loss

  # Convolutions and nearest-neighbour resizing on a grid of 4: tiles aligned to 4
  # agree with the whole image (the default tile_safe).


FAMILY = MIMOUNetFamily()
