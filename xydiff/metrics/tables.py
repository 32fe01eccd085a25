"""Image-quality metrics (PSNR, SSIM) computed the way deblurring papers do.

Inputs are float32 RGB in [0, 1], NHWC; every function returns one value per
image, shape [N]. A single HWC image is treated as a batch of one (shape [1]).
All functions are jit-ed and can also be called inside other jit-ed code.

Two different SSIMs circulate in GoPro/HIDE tables and their numbers are not
comparable (blur vs sharp of GoPro GOPR0869_11_00/000020: 0.780 2-D, 0.868
3-D), so every reported SSIM must say which one it is (use the `*_LABEL`
constants):

* `ssim`: the common 2-D SSIM (skimage, BasicSR's `calculate_ssim`): each
  channel separately, 11x11 Gaussian window sigma 1.5, 'valid' region only,
  averaged over channels and pixels.
* `ssim3d`: MATLAB's `ssim` on an HxWx3 uint8 array, which MATLAB treats as a
  volume (MPRNet / Restormer / BasicSR `_ssim_3d`): 11x11x11 Gaussian window,
  replicate padding, 'same' output, averaged over the whole map.

Both run on the image quantized to uint8 levels by default, because papers
score the 8-bit PNGs they save.

SSIM is invariant to scaling the pixel values together with C1 and C2, so
SSIM on 0..255 values with C = (k * 255)^2 is computed here on [0, 1] values
with C = k^2.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from xydiff.images import quantize

PSNR_UINT8_LABEL = 'psnr (uint8 RGB, peak 255, no crop)'
SSIM_2D_LABEL = 'ssim (2-D, per-channel Gaussian 11/1.5, uint8)'
SSIM_3D_LABEL = 'ssim3d (MATLAB 3-D Gaussian 11x11x11/1.5, replicate pad, uint8)'

WINDOW_SIZE = 11
_SIGMA = 1.5
_K1 = 0.01
_K2 = 0.03
# The channel-mixing einsum must not drop to bf16/tf32 on accelerators.
PRECISION = jax.lax.Precision.HIGHEST


def as_batch(pred, target):
  """Checks shapes and turns a single HWC image into a batch of one."""
  pred = jnp.asarray(pred, jnp.float32)
  target = jnp.asarray(target, jnp.float32)
  if pred.shape != target.shape:
    raise ValueError(f'pred and target shapes differ: {pred.shape} vs {target.shape}')
  if pred.ndim == 3:
    pred, target = pred[None], target[None]
  if pred.ndim != 4:
    raise ValueError(f'expected NHWC or HWC images, got shape {pred.shape}')
  return pred, target


def per_image_mean(x: jax.Array) -> jax.Array:
  """Mean over H, W, C in two stages, keeping float32 sums over ~1e6 pixels accurate."""
  return jnp.mean(jnp.mean(x, axis=(2, 3)), axis=1)


def gaussian_taps(size: int = WINDOW_SIZE, sigma: float = _SIGMA) -> np.ndarray:
  """Normalised 1-D Gaussian, the same taps as cv2.getGaussianKernel(11, 1.5)."""
  offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
  taps = np.exp(-offsets**2 / (2.0 * sigma**2))
  return taps / taps.sum()


def filter_hw_valid(x: jax.Array, taps: np.ndarray) -> jax.Array:
  """Separable Gaussian over H then W of an NHWC array, 'valid' output.

  Each 1-D pass is 11 shifted multiply-adds, which XLA fuses into one
  elementwise loop: on CPU far faster than a depthwise `conv_general_dilated`
  (feature_group_count=C), and than dm-pix's filter (README, "Metrics").
  """
  taps = [float(t) for t in taps]
  size = len(taps)
  for axis in (1, 2):
    out_len = x.shape[axis] - size + 1
    x = sum(tap * jax.lax.slice_in_dim(x, i, i + out_len, axis=axis)
            for i, tap in enumerate(taps))
  return x


def _replicate_mixing(channels: int, taps: np.ndarray) -> np.ndarray:
  """The channel-axis Gaussian with replicate padding, as a CxC matrix.

  With 3 channels and an 11-tap window, replicate padding folds the window's
  tails onto the edge channels: out[c] = sum_k taps[k] * x[clip(c + k - 5)].
  """
  radius = len(taps) // 2
  mixing = np.zeros((channels, channels), np.float64)
  for c in range(channels):
    for k, tap in enumerate(taps):
      mixing[c, min(max(c + k - radius, 0), channels - 1)] += tap
  return mixing


def _moment_stack(x: jax.Array, y: jax.Array) -> jax.Array:
  """[x, y, x^2, y^2, xy] stacked on the channel axis, filtered in one pass.

  Values are shifted by -0.5 first: SSIM's variances and covariance do not
  change, and the float32 cancellation in E[x^2] - E[x]^2 shrinks.
  """
  x, y = x - 0.5, y - 0.5
  return jnp.concatenate([x, y, x * x, y * y, x * y], axis=-1)


def _ssim_from_stack(filtered: jax.Array) -> jax.Array:
  """SSIM map from the filtered moment stack of `_moment_stack`."""
  mu_x, mu_y, xx, yy, xy = jnp.split(filtered, 5, axis=-1)
  var_x = xx - mu_x * mu_x
  var_y = yy - mu_y * mu_y
  cov = xy - mu_x * mu_y
  mu_x, mu_y = mu_x + 0.5, mu_y + 0.5  # Luminance needs the unshifted means.
  c1, c2 = _K1**2, _K2**2
  numerator = (2.0 * mu_x * mu_y + c1) * (2.0 * cov + c2)
  denominator = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
  return numerator / denominator


def ssim_map(pred, target) -> jax.Array:
  """The 2-D SSIM map of NHWC float images, 'valid' region ([N, H-10, W-10, C])."""
  return _ssim_from_stack(filter_hw_valid(_moment_stack(pred, target), gaussian_taps()))


@jax.jit
def psnr(pred, target, data_range=1.0) -> jax.Array:
  """Float PSNR in dB per image; identical images give +inf (like skimage)."""
  pred, target = as_batch(pred, target)
  mse = per_image_mean(jnp.square(pred - target))
  return 10.0 * jnp.log10(jnp.square(jnp.asarray(data_range, jnp.float32)) / mse)


@jax.jit
def psnr_uint8(pred, target) -> jax.Array:
  """PSNR per image on the GoPro/HIDE table protocol.

  Both images are clipped and rounded to uint8 levels (`quantize`), PSNR is
  taken with peak 255 over all RGB pixels, no border crop. Identical images
  give +inf, as skimage and BasicSR do; averaging over a set is the caller's
  business.
  """
  pred, target = as_batch(pred, target)
  return psnr(quantize(pred), quantize(target), 1.0)


@functools.partial(jax.jit, static_argnames=('quantized',))
def ssim(pred, target, quantized: bool = True) -> jax.Array:
  """2-D SSIM per image (label `SSIM_2D_LABEL`).

  Matches skimage's `structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1.0, channel_axis=-1)`: each channel
  separately, 11x11 Gaussian sigma 1.5, C1 = 0.01^2, C2 = 0.03^2 on [0, 1]
  values, averaged over the 'valid' region (5 pixels cropped per side) and the
  channels. Images must be at least 11x11.

  Args:
    pred: NHWC (or HWC) float images in [0, 1].
    target: same shape as `pred`.
    quantized: round both images to uint8 levels first (`quantize`), since the
      field scores the 8-bit images it saves. False scores the raw floats.

  Returns:
    SSIM per image, shape [N].
  """
  pred, target = as_batch(pred, target)
  if quantized:
    pred, target = quantize(pred), quantize(target)
  if min(pred.shape[1:3]) < WINDOW_SIZE:
    raise ValueError(
        f'ssim needs images of at least {WINDOW_SIZE}x{WINDOW_SIZE}, got {pred.shape}')
  return per_image_mean(ssim_map(pred, target))


@functools.partial(jax.jit, static_argnames=('quantized',))
def ssim3d(pred, target, quantized: bool = True) -> jax.Array:
  """MATLAB-style 3-D SSIM per image (label `SSIM_3D_LABEL`).

  This is what MATLAB's `ssim` gives for an HxWx3 uint8 image, and what
  MPRNet / Restormer / BasicSR's `_ssim_3d` report on GoPro and HIDE: the
  image is a volume, the window is an 11x11x11 Gaussian (sigma 1.5) over
  (H, W, C), borders are replicate-padded, the output is 'same' size, and the
  map is averaged over every pixel and channel. C1 = (0.01 * 255)^2 and
  C2 = (0.03 * 255)^2 on 0..255 values (equivalently 0.01^2, 0.03^2 on [0, 1]).

  Along the 3-long channel axis the full 11-tap window is kept; replicate
  padding folds its tails onto the edge channels, so that axis reduces to a
  fixed 3x3 channel-mixing matrix.

  Args:
    pred: NHWC (or HWC) float images in [0, 1].
    target: same shape as `pred`.
    quantized: round both images to uint8 levels first (`quantize`), as the
      MATLAB/BasicSR scripts score uint8 images. False scores the raw floats.

  Returns:
    SSIM per image, shape [N].
  """
  pred, target = as_batch(pred, target)
  if quantized:
    pred, target = quantize(pred), quantize(target)
  channels = pred.shape[-1]
  taps = gaussian_taps()
  radius = WINDOW_SIZE // 2
  stack = _moment_stack(pred, target)
  stack = jnp.pad(stack, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode='edge')
  filtered = filter_hw_valid(stack, taps)
  mixing = jnp.asarray(_replicate_mixing(channels, taps), jnp.float32)
  grouped = filtered.reshape(filtered.shape[:3] + (5, channels))
  grouped = jnp.einsum('nhwgc,dc->nhwgd', grouped, mixing, precision=PRECISION)
  filtered = grouped.reshape(filtered.shape)
  return per_image_mean(_ssim_from_stack(filtered))
