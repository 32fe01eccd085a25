"""xydiff.metrics against skimage, an independent MATLAB-style 3-D SSIM, and
the figures documented for the GoPro sample frames."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
import scipy.ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from conftest import GOPRO_SAMPLE
from xydiff import images, metrics
from xydiff.metrics import tables

# (sequence, frame, README PSNR in dB, README 2-D SSIM), blur vs sharp.
PAIRS = [
    ('GOPR0869_11_00', '000020', 26.97, 0.780),
    ('GOPR0881_11_01', '000295', 27.75, 0.889),
]
# A 256x320 crop with edges and texture in both frames; keeps the tests fast.
CROP = (slice(232, 488), slice(480, 800))
TOL = 1e-4


def _load(sequence: str, frame: str) -> tuple[np.ndarray, np.ndarray]:
  """(blur, sharp) as HxWx3 uint8."""
  folder = GOPRO_SAMPLE / 'test' / sequence
  return (images.read_image(str(folder / 'blur' / f'{frame}.png')),
          images.read_image(str(folder / 'sharp' / f'{frame}.png')))


@functools.lru_cache(maxsize=None)
def _pairs_uint8() -> tuple[tuple[np.ndarray, np.ndarray], ...]:
  return tuple(_load(seq, frame) for seq, frame, _, _ in PAIRS)


def _crops_uint8():
  return [(blur[CROP], sharp[CROP]) for blur, sharp in _pairs_uint8()]


def _batch(image: np.ndarray) -> np.ndarray:
  """HxWx3 uint8 -> 1xHxWx3 float32 in [0, 1]."""
  return images.to_float(image)[None]


def _skimage_ssim(a, b, data_range):
  return structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
                               use_sample_covariance=False, data_range=data_range,
                               channel_axis=-1)


def _matlab_ssim3d(a: np.ndarray, b: np.ndarray, peak: float) -> float:
  """MATLAB `ssim` on an HxWx3 array as a volume, written directly in float64.

  3-D Gaussian sigma 1.5 with an 11-tap window on every axis (truncate 3.5 gives
  radius 5), replicate padding (mode='nearest'), 'same' output, mean of the map.
  """
  a, b = a.astype(np.float64), b.astype(np.float64)
  blur = functools.partial(scipy.ndimage.gaussian_filter, sigma=1.5, mode='nearest',
                           truncate=3.5)
  c1, c2 = (0.01 * peak)**2, (0.03 * peak)**2
  mu_a, mu_b = blur(a), blur(b)
  var_a = blur(a * a) - mu_a**2
  var_b = blur(b * b) - mu_b**2
  cov = blur(a * b) - mu_a * mu_b
  ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
      (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
  return float(ssim_map.mean())


def _noisy_float(image: np.ndarray, seed: int) -> np.ndarray:
  """Float image off the uint8 grid and partly outside [0, 1], to exercise quantize.

  Contrast is stretched 1.5x about mid-grey so that clipping really happens.
  """
  rng = np.random.default_rng(seed)
  noise = rng.normal(0.0, 0.02, image.shape)
  return (0.5 + 1.5 * (images.to_float(image) - 0.5) + noise).astype(np.float32)


def test_full_frames_match_readme_and_skimage():
  for (blur, sharp), (_, _, readme_psnr, readme_ssim) in zip(_pairs_uint8(), PAIRS):
    assert blur.shape == (720, 1280, 3)
    value = float(metrics.psnr_uint8(_batch(blur), _batch(sharp))[0])
    assert round(value, 2) == readme_psnr
    assert abs(value - peak_signal_noise_ratio(sharp, blur, data_range=255)) < TOL
    value = float(metrics.ssim(_batch(blur), _batch(sharp))[0])
    assert round(value, 3) == readme_ssim
    assert abs(value - _skimage_ssim(sharp, blur, 255)) < TOL


def test_psnr_uint8_matches_skimage():
  for index, (blur, sharp) in enumerate(_crops_uint8()):
    got = float(metrics.psnr_uint8(_batch(blur), _batch(sharp))[0])
    assert got == pytest.approx(peak_signal_noise_ratio(sharp, blur, data_range=255), abs=TOL)
    # Float prediction: must be clipped and rounded exactly like saving a PNG.
    pred = _noisy_float(blur, seed=index)
    assert pred.min() < 0.0 and pred.max() > 1.0
    got = float(metrics.psnr_uint8(pred[None], _batch(sharp))[0])
    want = peak_signal_noise_ratio(sharp, images.to_uint8(pred), data_range=255)
    assert got == pytest.approx(want, abs=TOL)


def test_psnr_float_matches_skimage():
  blur, sharp = _crops_uint8()[0]
  pred = np.clip(_noisy_float(blur, seed=3), 0.0, 1.0)
  target = images.to_float(sharp)
  want = peak_signal_noise_ratio(target.astype(np.float64), pred.astype(np.float64),
                                 data_range=1.0)
  assert float(metrics.psnr(pred[None], target[None])[0]) == pytest.approx(want, abs=TOL)
  # Peak 2 adds 20*log10(2) dB.
  got = float(metrics.psnr(pred[None], target[None], data_range=2.0)[0])
  assert got == pytest.approx(want + 20 * np.log10(2.0), abs=TOL)


def test_ssim_matches_skimage():
  for index, (blur, sharp) in enumerate(_crops_uint8()):
    got = float(metrics.ssim(_batch(blur), _batch(sharp))[0])
    assert got == pytest.approx(_skimage_ssim(sharp, blur, 255), abs=TOL)
    # quantized=True rounds a float prediction to uint8 first ...
    pred = _noisy_float(blur, seed=10 + index)
    got = float(metrics.ssim(pred[None], _batch(sharp))[0])
    assert got == pytest.approx(_skimage_ssim(sharp, images.to_uint8(pred), 255), abs=TOL)
    # ... and quantized=False scores the raw floats.
    pred = np.clip(pred, 0.0, 1.0)
    got = float(metrics.ssim(pred[None], _batch(sharp), quantized=False)[0])
    want = _skimage_ssim(images.to_float(sharp).astype(np.float64), pred.astype(np.float64), 1.0)
    assert got == pytest.approx(want, abs=TOL)


@pytest.mark.parametrize('bright', [False, True])
def test_ssim_map_matches_skimage_map(bright):
  """Pixel by pixel, the 'valid' map that realblur.ssim_masked weights by its mask.

  The bright case (levels 230..255) is where float32 E[x^2] - E[x]^2 cancels
  worst; the bounds hold because the moments are taken about mid-grey (a
  plain float32 formula, dm_pix.ssim's among them, misses the mean bound).
  """
  blur, sharp = _crops_uint8()[0]
  if bright:
    blur, sharp = (230 + image // 10 for image in (blur, sharp))
  _, want = structural_similarity(sharp, blur, gaussian_weights=True, sigma=1.5,
                                  use_sample_covariance=False, data_range=255,
                                  channel_axis=-1, full=True)
  want = want[5:-5, 5:-5]
  got = np.asarray(tables.ssim_map(_batch(sharp), _batch(blur)))
  assert got.shape == (1,) + want.shape
  error = np.abs(got[0] - want)
  assert error.mean() < 5e-5 and error.max() < 1e-3
  # The mean on these levels agrees as tightly as on the raw frames.
  got = float(metrics.ssim(_batch(blur), _batch(sharp))[0])
  assert got == pytest.approx(_skimage_ssim(sharp, blur, 255), abs=TOL)


def test_ssim3d_matches_direct_matlab_definition():
  for index, (blur, sharp) in enumerate(_crops_uint8()):
    got = float(metrics.ssim3d(_batch(blur), _batch(sharp))[0])
    assert got == pytest.approx(_matlab_ssim3d(blur, sharp, 255.0), abs=TOL)
    pred = np.clip(_noisy_float(blur, seed=20 + index), 0.0, 1.0)
    got = float(metrics.ssim3d(pred[None], _batch(sharp))[0])
    assert got == pytest.approx(_matlab_ssim3d(images.to_uint8(pred), sharp, 255.0), abs=TOL)
    got = float(metrics.ssim3d(pred[None], _batch(sharp), quantized=False)[0])
    assert got == pytest.approx(_matlab_ssim3d(pred, images.to_float(sharp), 1.0), abs=TOL)
  # Full frame: the figure a GoPro table reports; clearly not the 2-D number.
  blur, sharp = _pairs_uint8()[0]
  got = float(metrics.ssim3d(_batch(blur), _batch(sharp))[0])
  assert got == pytest.approx(_matlab_ssim3d(blur, sharp, 255.0), abs=TOL)
  assert abs(got - PAIRS[0][3]) > 0.05


def test_batch_matches_single_images():
  crops = _crops_uint8()
  pred = np.stack([images.to_float(blur) for blur, _ in crops])
  target = np.stack([images.to_float(sharp) for _, sharp in crops])
  for fn in (metrics.psnr, metrics.psnr_uint8, metrics.ssim, metrics.ssim3d):
    batched = np.asarray(fn(pred, target))
    assert batched.shape == (2,)
    assert batched[0] != pytest.approx(batched[1], abs=1e-3)  # A swap would show.
    for i in range(2):
      alone = np.asarray(fn(pred[i:i + 1], target[i:i + 1]))
      assert alone.shape == (1,)
      assert batched[i] == pytest.approx(alone[0], abs=1e-6)
      # A single HWC image is a batch of one.
      np.testing.assert_allclose(np.asarray(fn(pred[i], target[i])), alone, atol=1e-6)


def test_metrics_compose_under_jit():
  blur, sharp = _crops_uint8()[1]
  pred, target = _batch(blur), _batch(sharp)

  @jax.jit
  def report(p, t):
    return {'psnr': metrics.psnr_uint8(p, t), 'ssim': metrics.ssim(p, t),
            'ssim_float': metrics.ssim(p, t, quantized=False), 'ssim3d': metrics.ssim3d(p, t)}

  jitted = report(pred, target)
  eager = {'psnr': metrics.psnr_uint8(pred, target), 'ssim': metrics.ssim(pred, target),
           'ssim3d': metrics.ssim3d(pred, target)}
  for name, value in eager.items():
    assert jitted[name].shape == (1,)
    assert float(jitted[name][0]) == pytest.approx(float(value[0]), abs=1e-5)
  # On uint8-exact inputs quantizing is a no-op.
  assert float(jitted['ssim_float'][0]) == pytest.approx(float(jitted['ssim'][0]), abs=1e-6)


def test_identical_images():
  _, sharp = _crops_uint8()[0]
  target = _batch(sharp)
  # Off by less than half a uint8 level: identical once quantized.
  pred = target + np.float32(1e-3)
  assert np.isposinf(np.asarray(metrics.psnr_uint8(pred, target))).all()
  assert np.isposinf(np.asarray(metrics.psnr(target, target))).all()
  assert np.isfinite(np.asarray(metrics.psnr(pred, target))).all()
  assert float(metrics.ssim(pred, target)[0]) == pytest.approx(1.0, abs=1e-6)
  assert float(metrics.ssim3d(pred, target)[0]) == pytest.approx(1.0, abs=1e-6)


def test_rejects_bad_shapes():
  image = np.zeros((1, 32, 32, 3), np.float32)
  with pytest.raises(ValueError):
    metrics.ssim(image, image[:, :16])
  with pytest.raises(ValueError):
    metrics.psnr_uint8(image[0, 0], image[0, 0])
  with pytest.raises(ValueError):
    metrics.ssim(image[:, :8, :8], image[:, :8, :8])


def test_labels_name_the_ssim():
  assert metrics.SSIM_2D_LABEL == 'ssim (2-D, per-channel Gaussian 11/1.5, uint8)'
  assert metrics.SSIM_3D_LABEL.startswith('ssim3d')
  assert len({metrics.SSIM_2D_LABEL, metrics.SSIM_3D_LABEL, metrics.PSNR_UINT8_LABEL}) == 3
