"""RealBlur's evaluation protocol (Rim et al., ECCV 2020): align, then masked PSNR/SSIM."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from xydiff.metrics.tables import WINDOW_SIZE, as_batch, per_image_mean, ssim_map

# --- RealBlur's masked scores -------------------------------------------------
#
# RealBlur (Rim et al., ECCV 2020) scores a deblurred image only after aligning
# it to the ground truth with an ECC homography (`xydiff.align`); pixels the
# warp leaves uncovered are masked out. These are steps 4 and 5 of its
# `evaluate_RealBlur.py`, on float images (no uint8 rounding).

REALBLUR_LABEL = ('psnr/ssim after RealBlur ECC homography alignment (masked; the evaluator '
                  'scores the uint8-rounded output)')


def _as_masked_batch(pred, target, mask):
  """NHWC (or HWC) pred, target and a mask broadcast to their shape, masked.

  The mask may be [N,] H, W or [N,] H, W, 1 or [N,] H, W, C. Both images are
  multiplied by it, as the RealBlur script does before scoring (a no-op for
  images that are already masked with a 0/1 mask).
  """
  single = jnp.ndim(pred) == 3
  pred, target = as_batch(pred, target)
  mask = jnp.asarray(mask, jnp.float32)
  if single:
    mask = mask[None]
  if mask.ndim == 3:
    mask = mask[..., None]
  if mask.ndim != 4 or mask.shape[:3] != pred.shape[:3] or mask.shape[3] not in (1, pred.shape[3]):
    raise ValueError(f'mask shape {mask.shape} does not fit images of shape {pred.shape}')
  mask = jnp.broadcast_to(mask, pred.shape)
  return pred * mask, target * mask, mask


@jax.jit
def psnr_masked(pred, target, mask, data_range=1.0) -> jax.Array:
  """PSNR in dB per image over the mask (RealBlur's `compute_psnr`).

  10 log10(data_range^2 / (sum((target - pred)^2 mask) / sum(mask))), the sums
  over pixels and channels. Identical images give +inf.

  Args:
    pred: NHWC (or HWC) float images.
    target: same shape as `pred`.
    mask: 0/1 weights, [N,] H, W[, 1 or C]; a channel-less mask counts once
      per channel, as RealBlur's HxWx3 mask does.
    data_range: peak value.

  Returns:
    PSNR per image, shape [N].
  """
  pred, target, mask = _as_masked_batch(pred, target, mask)
  mse = per_image_mean(jnp.square(target - pred)) / per_image_mean(mask)
  return 10.0 * jnp.log10(jnp.square(jnp.asarray(data_range, jnp.float32)) / mse)


@jax.jit
def ssim_masked(pred, target, mask) -> jax.Array:
  """2-D SSIM per image over the mask (RealBlur's `compute_ssim`).

  The SSIM map is skimage's (`structural_similarity(gaussian_weights=True,
  use_sample_covariance=False, data_range=1.0, full=True)`, 11x11 Gaussian
  sigma 1.5) of the masked images, on the floats. RealBlur crops 5 pixels off
  each side of the full map, which leaves exactly the 'valid' map computed
  here, and averages it per channel weighted by the cropped mask:
  sum(map mask) / sum(mask), then the mean over channels.

  Args:
    pred: NHWC (or HWC) float images in [0, 1], at least 11x11.
    target: same shape as `pred`.
    mask: 0/1 weights, [N,] H, W[, 1 or C].

  Returns:
    SSIM per image, shape [N].
  """
  pred, target, mask = _as_masked_batch(pred, target, mask)
  if min(pred.shape[1:3]) < WINDOW_SIZE:
    raise ValueError(
        f'ssim needs images of at least {WINDOW_SIZE}x{WINDOW_SIZE}, got {pred.shape}')
  scores = ssim_map(pred, target)
  pad = WINDOW_SIZE // 2
  mask = mask[:, pad:-pad, pad:-pad, :]

  def spatial_mean(x):
    return jnp.mean(jnp.mean(x, axis=2), axis=1)  # [N, C], two float32 stages.

  per_channel = spatial_mean(scores * mask) / spatial_mean(mask)
  return jnp.mean(per_channel, axis=-1)
