"""NIQE, the no-reference naturalness score, as the authors' MATLAB release computes it.

Lower is better. Every score says which luminance it was computed on
(`NIQE_LABEL`, `NIQE_GRAY_LABEL`).
"""

from __future__ import annotations

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from xydiff.images import quantize
from xydiff.metrics.tables import PRECISION, filter_hw_valid, gaussian_taps

NIQE_LABEL = 'niqe (MATLAB release model, Y of BT.601 YCbCr, uint8, 96x96 blocks)'
NIQE_GRAY_LABEL = 'niqe (MATLAB release model, MATLAB rgb2gray, uint8, 96x96 blocks)'

# --- NIQE -------------------------------------------------------------------
#
# Mittal, Soundararajan, Bovik, "Making a 'completely blind' image quality
# analyzer", IEEE SPL 2013, computed as the authors' MATLAB release
# (niqe_release.zip: computequality.m, computefeature.m, estimateaggdparam.m,
# modelparameters.mat) computes it. The pristine model in niqe_pris_params.npz
# (`mu_prisparam` 1x36, `cov_prisparam` 36x36, float64) is the release's
# modelparameters.mat, taken from BasicSR 1.4.2 on PyPI
# (basicsr/metrics/niqe_pris_params.npz, Apache-2.0); NIQE_PARAMS.md says how
# it was extracted and checked.

_NIQE_PARAMS_FILE = pathlib.Path(__file__).resolve().parent / 'niqe_pris_params.npz'
_NIQE_BLOCK = 96  # blocksizerow = blocksizecol = 96, no overlap (the release's call).
_NIQE_WINDOW = 7  # fspecial('gaussian', 7, 7/6)
_NIQE_SIGMA = 7.0 / 6.0
_NIQE_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))  # computefeature.m's circshifts.
# MATLAB's rgb2gray weights: the first row of inv() of the NTSC RGB->YIQ matrix.
# They differ from cv2's 0.299/0.587/0.114 in the third decimal.
_RGB2GRAY_WEIGHTS = (0.298936021293775, 0.587043074451121, 0.114020904255103)
# MATLAB's rgb2ycbcr Y row on uint8 (ITU-R BT.601, studio range 16..235),
# x1000 on 0..255 levels: Y = 16 + (65481 R + 128553 G + 24966 B) / 255000.
_RGB2Y_THOUSANDTHS = (65481, 128553, 24966)
_RGB2Y_OFFSET = 16
# Fixed point for the rgb2gray sum: 40 fractional bits in two 20-bit limbs.
_LIMB_BITS = 20


@functools.lru_cache(maxsize=None)
def _niqe_model() -> tuple[np.ndarray, np.ndarray]:
  """The release's pristine MVG: mean [36] and covariance [36, 36], float64."""
  with np.load(_NIQE_PARAMS_FILE) as params:
    mu = np.asarray(params['mu_prisparam'], np.float64).reshape(-1)
    cov = np.asarray(params['cov_prisparam'], np.float64)
  if mu.shape != (36,) or cov.shape != (36, 36):
    raise ValueError(f'{_NIQE_PARAMS_FILE} holds shapes {mu.shape}, {cov.shape}; '
                     'expected (36,) and (36, 36)')
  return mu, cov


@functools.lru_cache(maxsize=None)
def _aggd_tables() -> dict[str, np.ndarray]:
  """estimateaggdparam.m's shape grid and the Gamma-function ratios on it.

  The release picks alpha from gam = 0.2:0.001:10 by the nearest
  r(gam) = Gamma(2/gam)^2 / (Gamma(1/gam) Gamma(3/gam)). r is strictly
  increasing on the grid, so that argmin over 9801 entries is a binary search
  against the midpoints between neighbours (ties go to the lower entry, as
  MATLAB's `min` does). The Gamma ratios the features need are tabulated in
  float64 once, so nothing calls a Gamma function under jit.
  """
  from scipy.special import gamma  # Local: only NIQE needs it.
  shape = np.round(np.arange(200, 10001) * 0.001, 3)
  ratio = gamma(2.0 / shape)**2 / (gamma(1.0 / shape) * gamma(3.0 / shape))
  if not np.all(np.diff(ratio) > 0):
    raise AssertionError('r(gam) is expected to increase along the grid')
  return {
      'shape': shape.astype(np.float32),
      'midpoints': ((ratio[1:] + ratio[:-1]) / 2.0).astype(np.float32),
      # beta = std * sqrt(Gamma(1/alpha) / Gamma(3/alpha)).
      'std_to_beta': np.sqrt(gamma(1.0 / shape) / gamma(3.0 / shape)).astype(np.float32),
      # AGGD mean = (beta_r - beta_l) * Gamma(2/alpha) / Gamma(1/alpha).
      'beta_to_mean': (gamma(2.0 / shape) / gamma(1.0 / shape)).astype(np.float32),
  }


def _imresize_half_taps() -> np.ndarray:
  """The 8 taps of MATLAB's imresize(x, 0.5) (bicubic, antialiasing on).

  Shrinking by s = 1/2, MATLAB widens Keys' cubic (a = -0.5) to
  h(d) = s * cubic(s * d); output pixel i (0-based) sits at input coordinate
  2i + 0.5, so its neighbours 2i-3 .. 2i+4 are at distances +-0.5 .. +-3.5 (the
  two at +-4.5 get weight 0). The taps are dyadic rationals summing to 1, so
  MATLAB's renormalisation changes nothing.
  """
  def cubic(x):
    x = np.abs(x)
    return np.where(x <= 1, 1.5 * x**3 - 2.5 * x**2 + 1,
                    np.where(x <= 2, -0.5 * x**3 + 2.5 * x**2 - 4 * x + 2, 0.0))
  distance = np.arange(8) - 3.5
  taps = 0.5 * cubic(0.5 * distance)
  return taps / taps.sum()


def _imresize_half(x: jax.Array) -> jax.Array:
  """MATLAB imresize(x, 0.5) of [N, H, W] images with even H and W.

  Bicubic with antialiasing; borders mirrored half-sample symmetrically (what
  imresize's index folding does); rows first, then columns, as imresize orders
  equal scales. Output is [N, H/2, W/2], not rounded.
  """
  taps = [float(t) for t in _imresize_half_taps()]
  radius = len(taps) // 2 - 1  # 3 mirrored samples per side are read.
  for axis in (1, 2):
    out_len = x.shape[axis] // 2
    pad = [(0, 0)] * x.ndim
    pad[axis] = (radius, radius)
    padded = jnp.pad(x, pad, mode='symmetric')
    x = sum(tap * jax.lax.slice_in_dim(padded, k, k + 2 * out_len - 1, stride=2, axis=axis)
            for k, tap in enumerate(taps))
  return x


def _round_weighted_sum(levels: jax.Array, weights) -> jax.Array:
  """round(sum_c weights[c] * levels[..., c]), halves up, as int32.

  This is the uint8 luminance MATLAB's rgb2gray returns for uint8 input
  (computed in double, rounded). In float32 the sum is only good to ~3e-5 of
  a level, and a few pixels per frame would round the other way, so it runs in
  int32 fixed point instead: each weight is scaled by 2^40 and split into two
  20-bit limbs, which keeps every partial sum below 2^31 for 8-bit levels and
  the total within ~4e-10 of a level of the exact sum.
  """
  mask = (1 << _LIMB_BITS) - 1
  high = low = 0
  for channel, weight in enumerate(weights):
    fixed = int(round(weight * 2.0**(2 * _LIMB_BITS)))
    high = high + (fixed >> _LIMB_BITS) * levels[..., channel]
    low = low + (fixed & mask) * levels[..., channel]
  # floor(sum * 2^20), then round to a whole level; the discarded low bits
  # cannot move a value across a rounding boundary.
  scaled = high + (low >> _LIMB_BITS)
  return (scaled + (1 << (_LIMB_BITS - 1))) >> _LIMB_BITS


def _niqe_luminance(image: jax.Array, convert_to: str) -> jax.Array:
  """[N, H, W, 3] floats in [0, 1] -> [N, H, W] uint8-valued float32 luminance.

  'y' is rgb2ycbcr's Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 on uint8
  levels, rounded: computed exactly in integers (a numerator over 255000).
  About 200 of the 2^24 RGB triples land exactly on a half level; they round
  up here, as MATLAB's round does for an exact half, whereas double-precision
  rounding noise sends about half of them down in MATLAB and numpy.
  """
  levels = jnp.round(quantize(image) * 255.0).astype(jnp.int32)
  if convert_to == 'y':
    numerator = sum(weight * levels[..., c] for c, weight in enumerate(_RGB2Y_THOUSANDTHS))
    luma = (numerator + 255 * 1000 // 2) // (255 * 1000) + _RGB2Y_OFFSET
  else:
    luma = _round_weighted_sum(levels, _RGB2GRAY_WEIGHTS)
  return luma.astype(jnp.float32)


def _mscn(x: jax.Array) -> jax.Array:
  """computequality.m's structdis = (im - mu) ./ (sigma + 1) of [N, H, W].

  mu and sigma^2 are the 7x7 Gaussian (sigma 7/6) local mean and variance,
  replicate borders. Two float issues decide the numbers here:

  * MATLAB forms sigma^2 = E[x^2] - mu^2 in double; on 0..255 values that
    cancels ~1e-3 of float32 precision away, which matters in flat regions
    where sigma is tiny. So every window term is taken relative to its centre
    pixel, d = x_k - x_centre: im - mu = -E[d] and sigma^2 = E[d^2] - E[d]^2,
    algebraically the same and accurate in float32.
  * In flat or point-symmetric neighbourhoods im - mu is exactly 0, but
    MATLAB's double imfilter can leave ~1e-14 of rounding noise there, of
    either sign, and estimateaggdparam.m counts signs (its left/right means
    are over the negative/positive values). That noise is an artefact, not
    the method, so here those values are exactly 0: the d's are first summed
    over each class of offsets sharing a window weight ({|di|, |dj|}), which
    is exact on integer levels (and on the half-scale image, whose values are
    multiples of 2^-16 and exact in float32 below 256), and a neighbourhood
    gives 0 exactly when every class sum is 0. Nonzero class sums do not
    cancel exactly: the weights q^(di^2 + dj^2) with transcendental q admit
    no integer relation.
  """
  taps = gaussian_taps(_NIQE_WINDOW, _NIQE_SIGMA)  # fspecial's window is outer(taps, taps).
  radius = _NIQE_WINDOW // 2
  height, width = x.shape[1:]
  padded = jnp.pad(x, ((0, 0), (radius, radius), (radius, radius)), mode='edge')
  sums = {}  # {|di|, |dj|} -> (sum of d, sum of d^2)
  for i in range(_NIQE_WINDOW):
    for j in range(_NIQE_WINDOW):
      key = tuple(sorted((abs(i - radius), abs(j - radius))))
      if key == (0, 0):
        continue  # d = 0 at the centre.
      d = padded[:, i:i + height, j:j + width] - x
      total, total_sq = sums.get(key, (0.0, 0.0))
      sums[key] = (total + d, total_sq + d * d)
  mean_d = mean_d2 = 0.0
  for (a, b), (total, total_sq) in sorted(sums.items()):
    weight = float(taps[radius + a] * taps[radius + b])
    mean_d = mean_d + weight * total
    mean_d2 = mean_d2 + weight * total_sq
  sigma = jnp.sqrt(jnp.abs(mean_d2 - mean_d * mean_d))
  return -mean_d / (sigma + 1.0)


def _blocks(x: jax.Array, size: int) -> jax.Array:
  """[N, H, W] with H, W multiples of `size` -> [N, B, size, size] blocks.

  Block order differs from blkproc's column-major order; NIQE only takes the
  mean and covariance over blocks, so order does not matter.
  """
  n, height, width = x.shape
  x = x.reshape(n, height // size, size, width // size, size).transpose(0, 1, 3, 2, 4)
  return x.reshape(n, -1, size, size)


def _aggd_fit(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """estimateaggdparam.m over the last axis: (grid index of alpha, beta_l, beta_r).

  A block with no negative (or no positive) values gives NaN betas, as MATLAB's
  mean of an empty set does; if the ratio itself is NaN, MATLAB's `min` returns
  the first grid entry, and so does this.
  """
  tables = _aggd_tables()
  negative, positive = x < 0, x > 0
  square = x * x
  left_std = jnp.sqrt(jnp.sum(jnp.where(negative, square, 0.0), -1) / jnp.sum(negative, -1))
  right_std = jnp.sqrt(jnp.sum(jnp.where(positive, square, 0.0), -1) / jnp.sum(positive, -1))
  gammahat = left_std / right_std
  rhat = jnp.mean(jnp.abs(x), -1)**2 / jnp.mean(square, -1)
  rhatnorm = rhat * (gammahat**3 + 1) * (gammahat + 1) / (gammahat**2 + 1)**2
  index = jnp.searchsorted(jnp.asarray(tables['midpoints']), rhatnorm, side='left')
  index = jnp.where(jnp.isnan(rhatnorm), 0, index)
  std_to_beta = jnp.asarray(tables['std_to_beta'])[index]
  return index, left_std * std_to_beta, right_std * std_to_beta


def _niqe_block_features(blocks: jax.Array) -> jax.Array:
  """computefeature.m: the 18 features of each [..., s, s] block.

  [alpha, (beta_l + beta_r) / 2] of the MSCN values, then [alpha, mean,
  beta_l, beta_r] of the products with the right, lower, lower-right and
  lower-left neighbours, wrapping around inside the block (circshift).
  """
  tables = _aggd_tables()
  shape = jnp.asarray(tables['shape'])
  beta_to_mean = jnp.asarray(tables['beta_to_mean'])
  flat = blocks.reshape(blocks.shape[:-2] + (-1,))
  index, beta_l, beta_r = _aggd_fit(flat)
  features = [shape[index], (beta_l + beta_r) / 2.0]
  for shift in _NIQE_SHIFTS:
    pair = blocks * jnp.roll(blocks, shift, axis=(-2, -1))
    index, beta_l, beta_r = _aggd_fit(pair.reshape(flat.shape))
    features += [shape[index], (beta_r - beta_l) * beta_to_mean[index], beta_l, beta_r]
  return jnp.stack(features, axis=-1)


def _mvg_distance(features: jax.Array) -> jax.Array:
  """computequality.m's last step for [N, B, 36] features -> [N].

  nanmean over blocks; nancov over the blocks without NaN (N - 1
  normalisation); sqrt(d' pinv((cov_pris + cov) / 2) d). The averaged
  covariance is positive definite (the pristine one is), so pinv is the
  inverse; it is applied by a Cholesky solve after scaling to unit diagonal,
  because the matrix has condition ~1e5 and float32 pinv would cut its
  smallest singular values (jnp's default rcond is ~4e-5).
  """
  mu_pris, cov_pris = _niqe_model()
  mean = jnp.nanmean(features, axis=1)
  complete = ~jnp.any(jnp.isnan(features), axis=-1, keepdims=True)
  count = jnp.sum(complete, axis=1)
  complete_mean = jnp.sum(jnp.where(complete, features, 0.0), axis=1) / count
  centered = jnp.where(complete, features - complete_mean[:, None], 0.0)
  cov = jnp.einsum('nbi,nbj->nij', centered, centered, precision=PRECISION) / (count[:, None] - 1)
  pooled = (jnp.asarray(cov_pris, jnp.float32) + cov) / 2.0
  diff = jnp.asarray(mu_pris, jnp.float32) - mean
  scale = jax.lax.rsqrt(jnp.diagonal(pooled, axis1=1, axis2=2))
  pooled = pooled * scale[:, :, None] * scale[:, None, :]
  lower = jnp.linalg.cholesky(pooled)
  whitened = jax.scipy.linalg.solve_triangular(lower, (diff * scale)[..., None], lower=True)
  return jnp.sqrt(jnp.sum(jnp.square(whitened[..., 0]), axis=-1))


@functools.partial(jax.jit, static_argnames=('convert_to',))
def niqe(image, convert_to: str = 'y') -> jax.Array:
  """NIQE per image, as the original MATLAB release computes it; lower is better.

  No reference image: each image's patch statistics are compared with the
  release's model of pristine natural images (`modelparameters.mat`, stored
  here as niqe_pris_params.npz). Steps, after computequality.m with the
  release's call `computequality(im, 96, 96, 0, 0, mu_prisparam, cov_prisparam)`:

  1. The image is clipped and rounded to uint8 levels (`quantize`), like the
     other metrics, and reduced to uint8 luminance (see `convert_to`).
  2. It is cropped at the bottom/right to whole 96x96 blocks.
  3. Two scales: MSCN coefficients (7x7 Gaussian, sigma 7/6, replicate
     borders, (x - mu) / (sigma + 1)), 18 AGGD features per block (96x96,
     then 48x48), then MATLAB's imresize(im, 0.5) (bicubic, antialiasing) of
     the unrounded luminance for the second scale.
  4. A Gaussian is fitted to the 36-D block features (nanmean, nancov) and
     its distance to the pristine one is sqrt(d' ((C_pris + C) / 2)^-1 d).

  Every block is used. The release's 0.75 sharpness threshold only selects
  the pristine training patches (estimatemodelparam.m); computequality.m
  computes the sharpness and ignores it, and so does this.

  Everything runs in JAX, batched and jit-able, in float32: the luminance in
  exact integer arithmetic, the local variance and the final solve arranged to
  avoid float32 cancellation. Against a float64 transcription of the MATLAB
  code it agrees within 2e-4 relative on the 12 GoPro sample frames (mostly
  ~1e-6; the rest is alpha, picked on a 0.001 grid, landing on the
  neighbouring grid point in a few blocks), and within 3e-4 of BasicSR 1.4.2's
  `calculate_niqe`.

  Exactly flat (or point-symmetric) 7x7 neighbourhoods have MSCN value 0,
  and here it is exactly 0 (see `_mscn`). MATLAB's double imfilter leaves
  rounding noise of either sign there, which the AGGD fit counts as negative
  or positive samples, so on frames with flat areas MATLAB's own number
  depends on its summation order: a float64 transcription that keeps such
  noise moves these GoPro scores by up to 1.8%. The exact value is the
  reproducible one (BasicSR's float32 filtering rounds the noise away too).

  Args:
    image: NHWC (or HWC) float RGB in [0, 1]. After cropping to multiples of
      96 it must hold at least two blocks (e.g. 96x192), since a covariance
      needs two samples.
    convert_to: 'y' (default) scores the Y channel of BT.601 YCbCr on 0..255,
      as MATLAB's rgb2ycbcr returns it for uint8 (16..235): the field's
      convention for SR / deblurring tables (BasicSR's `calculate_niqe` with
      crop_border=0, convert_to='y'; label `NIQE_LABEL`). 'gray' is what the
      MATLAB release itself does with an RGB image: MATLAB's rgb2gray
      (weights 0.298936, 0.587043, 0.114021, rounded to uint8; label
      `NIQE_GRAY_LABEL`). Note BasicSR's 'gray' uses OpenCV's 0.299 / 0.587 /
      0.114 weights and so differs slightly from both. The two conventions
      give different numbers (Y is a contrast-compressed luminance), so a
      reported NIQE must name its label.

  Returns:
    NIQE per image, shape [N], float32.
  """
  if convert_to not in ('y', 'gray'):
    raise ValueError(f"convert_to must be 'y' or 'gray', got {convert_to!r}")
  image = jnp.asarray(image, jnp.float32)
  if image.ndim == 3:
    image = image[None]
  if image.ndim != 4 or image.shape[-1] != 3:
    raise ValueError(f'expected NHWC or HWC RGB images, got shape {image.shape}')
  rows, cols = image.shape[1] // _NIQE_BLOCK, image.shape[2] // _NIQE_BLOCK
  if rows * cols < 2:
    raise ValueError(f'niqe needs at least two {_NIQE_BLOCK}x{_NIQE_BLOCK} blocks, '
                     f'got images of {image.shape[1]}x{image.shape[2]}')
  luma = _niqe_luminance(image[:, :rows * _NIQE_BLOCK, :cols * _NIQE_BLOCK], convert_to)
  features = []
  for scale in (1, 2):
    if scale == 2:
      luma = _imresize_half(luma)
    blocks = _blocks(_mscn(luma), _NIQE_BLOCK // scale)
    features.append(_niqe_block_features(blocks))
  return _mvg_distance(jnp.concatenate(features, axis=-1))
