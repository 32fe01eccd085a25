"""RealBlur's evaluation protocol (Rim et al., ECCV 2020): align, then masked PSNR/SSIM.

RealBlur pairs real blurred photos with sharp ones taken through a second
camera, so a pair is only roughly registered. Its benchmark therefore scores a
deblurred image only after aligning it to the ground truth; the authors'
`evaluate_RealBlur.py` (also shipped with MPRNet and Restormer, based on
Koehler et al.'s evaluation code) reads both saved 8-bit PNGs as float32 RGB
/ 255 and, for x = ground truth, z = deblurred:

1. Intensity matching: zs = (sum(x z) / sum(z z)) z.
2. A homography from OpenCV's `findTransformECC(gray(x), gray(zs), eye(3),
   MOTION_HOMOGRAPHY, (COUNT | EPS, 100, 0), None, 5)` (Evangelidis &
   Psarakis, IEEE TPAMI 2008), gray = cvtColor(RGB2GRAY).
3. zr = warpPerspective(zs, warp, INTER_CUBIC + WARP_INVERSE_MAP,
   BORDER_REFLECT); cr = the same warp of ones with INTER_NEAREST and
   BORDER_CONSTANT 0; zr = zr cr, xr = x cr.
4. PSNR = 10 log10(1 / (sum (xr - zr)^2 / sum cr)).
5. SSIM: skimage's full Gaussian SSIM map of (xr, zr), times cr, cropped by 5
   pixels per side, per channel sum(map) / sum(cr), mean over channels.

`realblur_align` is steps 1-3 with the same OpenCV calls (host code, numpy);
`psnr_masked` and `ssim_masked` are steps 4 and 5 in JAX; `realblur_scores`
chains them on the 8-bit levels of a float output. One deliberate
difference: where findTransformECC raises (no convergence: the correlation
would decrease, or a flat / empty overlap), the script stops with an OpenCV
error; here the identity warp is kept and the failure is reported, so that an
evaluation counts such images instead of crashing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from xydiff import images
from xydiff.metrics.tables import WINDOW_SIZE, as_batch, per_image_mean, ssim_map

REALBLUR_LABEL = ('psnr/ssim after RealBlur ECC homography alignment (masked; the evaluator '
                  'scores the uint8-rounded output)')
# findTransformECC's iterations in evaluate_RealBlur.py; its termination eps is 0,
# so all of them run unless ECC fails first.
ECC_ITERATIONS = 100
ECC_GAUSS_FILTER_SIZE = 5


def realblur_align(deblurred, gt) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
  """Steps 1-3 of RealBlur's protocol: `image_align` of evaluate_RealBlur.py.

  Args:
    deblurred: HxWx3 float RGB in [0, 1], the image to score (z).
    gt: HxWx3 float RGB in [0, 1], the ground truth (x), same shape.

  Returns:
    (aligned, aligned_gt, mask, converged), float32 HxWx3 arrays and a bool:
    zr, the intensity-matched `deblurred` warped onto `gt` (cubic,
    BORDER_REFLECT) times the mask; xr = gt times the mask; the mask cr (0/1,
    the nearest-neighbour footprint of the warp); and whether ECC converged.
    Where it did not (OpenCV raised), or returned a warp that is not finite or
    covers no pixel, the identity warp is used: zr is then the intensity-matched
    image itself and the mask is all ones.
  """
  import cv2  # Local: only RealBlur evaluations need OpenCV.
  z = np.asarray(deblurred, np.float32)
  x = np.asarray(gt, np.float32)
  if z.shape != x.shape or z.ndim != 3 or z.shape[-1] != 3:
    raise ValueError(f'expected two HxWx3 images of one shape, got {z.shape} and {x.shape}')
  energy = np.sum(z * z)
  # The script's float32 sums; an all-black output (energy 0) stays black.
  zs = (np.sum(x * z) / energy) * z if energy > 0 else np.zeros_like(z)
  criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, ECC_ITERATIONS, 0)
  identity = np.eye(3, dtype=np.float32)
  try:
    _, warp = cv2.findTransformECC(cv2.cvtColor(x, cv2.COLOR_RGB2GRAY),
                                   cv2.cvtColor(zs, cv2.COLOR_RGB2GRAY), identity.copy(),
                                   cv2.MOTION_HOMOGRAPHY, criteria, inputMask=None,
                                   gaussFiltSize=ECC_GAUSS_FILTER_SIZE)
    converged = bool(np.all(np.isfinite(warp)))
  except cv2.error:  # "The algorithm stopped before its convergence", "NaN encountered".
    converged = False
  size = (x.shape[1], x.shape[0])

  def warped(warp):
    zr = cv2.warpPerspective(zs, warp, size, flags=cv2.INTER_CUBIC + cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_REFLECT)
    cr = cv2.warpPerspective(np.ones_like(zs), warp, size,
                             flags=cv2.INTER_NEAREST + cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return zr, cr

  if converged:
    zr, cr = warped(warp)
    converged = bool(np.any(cr))
  if not converged:
    zr, cr = warped(identity)
  return zr * cr, x * cr, cr, converged


def realblur_scores(pred, target) -> dict:
  """RealBlur PSNR and SSIM of one pair, as the script scores the saved 8-bit PNG.

  Both images are first rounded to uint8 levels (`images.to_uint8` / 255, what
  the script reads back from the PNGs a method saves), then aligned
  (`realblur_align`), then scored on the mask. Host code: call it outside jit.

  Args:
    pred: HxWx3 float RGB in [0, 1] (numpy or JAX), the deblurred image.
    target: HxWx3 float RGB in [0, 1], the ground truth.

  Returns:
    {'psnr': float dB, 'ssim': float, 'aligned': bool}; where aligned is False
    the scores are those of the identity warp (see `realblur_align`), where
    the script would have stopped with an OpenCV error. Label:
    `REALBLUR_LABEL`.
  """
  pred8 = images.to_uint8(pred).astype(np.float32) / images.UINT8_PEAK
  target8 = images.to_uint8(target).astype(np.float32) / images.UINT8_PEAK
  zr, xr, mask, converged = realblur_align(pred8, target8)
  return {'psnr': float(psnr_masked(zr, xr, mask)[0]),
          'ssim': float(ssim_masked(zr, xr, mask)[0]),
          'aligned': converged}


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
