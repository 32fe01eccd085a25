"""RealBlur's evaluation protocol (xydiff.metrics.realblur) against the reference script.

The reference here is RealBlur's `evaluate_RealBlur.py` (image_align,
compute_psnr, compute_ssim) written out with cv2 + skimage, on 160x200 crops
of the real GoPro sample frames moved by a known small homography.
"""

from __future__ import annotations

import functools

import cv2
import jax.numpy as jnp
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from conftest import GOPRO_SAMPLE
from xydiff import images, metrics
from xydiff.metrics import realblur

FRAMES = [('GOPR0869_11_00', '000020'), ('GOPR0881_11_01', '000295')]
# A textured 160x200 region of both frames; small enough for a fast CPU test.
TOP, LEFT, HEIGHT, WIDTH = 260, 520, 160, 200
# A small homography in crop pixel coordinates (template -> input, the way
# findTransformECC reports it): a (1.6, -2.2) pixel shift, ~0.4% scale,
# ~0.3 degree rotation and a small perspective term.
TRUE_WARP = np.array([[1.004, 0.006, 1.6],
                      [-0.005, 0.997, -2.2],
                      [2e-5, -1.5e-5, 1.0]])


@functools.lru_cache(maxsize=None)
def _frame(sequence: str, frame: str, kind: str) -> np.ndarray:
  """A full 1280x720 frame, HxWx3 float32 in [0, 1]."""
  path = GOPRO_SAMPLE / 'test' / sequence / kind / f'{frame}.png'
  return images.to_float(images.read_image(str(path)))


def _crop(image: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(image[TOP:TOP + HEIGHT, LEFT:LEFT + WIDTH])


def _moved_crop(full: np.ndarray, warp: np.ndarray) -> np.ndarray:
  """The crop seen through `warp`, sampled from the full frame (real content at the borders)."""
  to_full = np.array([[1.0, 0.0, LEFT], [0.0, 1.0, TOP], [0.0, 0.0, 1.0]])
  out_to_full = to_full @ np.linalg.inv(warp)
  out_to_full /= out_to_full[2, 2]
  return cv2.warpPerspective(full, out_to_full.astype(np.float32), (WIDTH, HEIGHT),
                             flags=cv2.INTER_CUBIC + cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_REFLECT)


def _saved(image: np.ndarray) -> np.ndarray:
  """What the script reads back from an 8-bit PNG: imread(...).astype(float32) / 255."""
  return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8).astype(np.float32) / 255.0


def _gray(image: np.ndarray) -> np.ndarray:
  return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def _reference_align(deblurred: np.ndarray, gt: np.ndarray):
  """evaluate_RealBlur.py's image_align: (zr, xr, cr, warp); raises cv2.error like it."""
  z, x = deblurred, gt
  zs = (np.sum(x * z) / np.sum(z * z)) * z
  criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 0)
  _, warp = cv2.findTransformECC(_gray(x), _gray(zs), np.eye(3, 3, dtype=np.float32),
                                 cv2.MOTION_HOMOGRAPHY, criteria, inputMask=None,
                                 gaussFiltSize=5)
  size = (x.shape[1], x.shape[0])
  zr = cv2.warpPerspective(zs, warp, size, flags=cv2.INTER_CUBIC + cv2.WARP_INVERSE_MAP,
                           borderMode=cv2.BORDER_REFLECT)
  cr = cv2.warpPerspective(np.ones_like(zs, dtype='float32'), warp, size,
                           flags=cv2.INTER_NEAREST + cv2.WARP_INVERSE_MAP,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
  return zr * cr, x * cr, cr, warp


def _reference_psnr(zr, xr, cr) -> float:
  """compute_psnr of evaluate_RealBlur.py (data_range 1)."""
  return float(10 * np.log10(1.0 / (np.sum((xr - zr)**2, dtype=np.float64) / np.sum(cr))))


def _reference_ssim(zr, xr, cr) -> float:
  """compute_ssim of evaluate_RealBlur.py (mask HxWx3)."""
  _, ssim_map = structural_similarity(xr, zr, channel_axis=2, gaussian_weights=True,
                                      use_sample_covariance=False, data_range=1.0, full=True)
  ssim_map = ssim_map * cr
  pad = 5  # r = int(3.5 * 1.5 + 0.5)
  ssim_map, cr = ssim_map[pad:-pad, pad:-pad], cr[pad:-pad, pad:-pad]
  return float(np.mean(ssim_map.sum(axis=(0, 1)) / cr.sum(axis=(0, 1))))


def _reference_scores(pred: np.ndarray, target: np.ndarray) -> tuple[float, float, float]:
  """The script run on the two images as given (no rounding): (psnr, ssim, float64 ssim).

  The script hands skimage float32 images; skimage then computes in float32,
  which near SSIM 1 is ~1e-4 from the same SSIM in float64 (ours is float32
  too but sums in an order that stays within ~1e-6 of float64). The third
  value is skimage in float64 on the script's aligned images.
  """
  zr, xr, cr, _ = _reference_align(pred, target)
  ssim64 = _reference_ssim(*(a.astype(np.float64) for a in (zr, xr, cr)))
  return _reference_psnr(zr, xr, cr), _reference_ssim(zr, xr, cr), ssim64


@pytest.mark.parametrize('sequence,frame', FRAMES)
@pytest.mark.parametrize('kind', ['blur', 'sharp'])
def test_scores_match_the_reference_script_on_the_saved_pngs(sequence, frame, kind):
  """(blurred or sharp frame, moved by TRUE_WARP) scored against the sharp crop."""
  gt = _crop(_frame(sequence, frame, 'sharp'))
  deblurred = _moved_crop(_frame(sequence, frame, kind), TRUE_WARP)
  expected_psnr, expected_ssim, ssim64 = _reference_scores(_saved(deblurred), _saved(gt))
  scores = realblur.realblur_scores(deblurred, gt)
  assert scores['aligned'] is True
  assert isinstance(scores['psnr'], float) and isinstance(scores['ssim'], float)
  # PSNR: float32 sums here, float64 in the script.
  assert scores['psnr'] == pytest.approx(expected_psnr, abs=2e-4)
  assert scores['ssim'] == pytest.approx(expected_ssim, abs=2e-4)
  assert scores['ssim'] == pytest.approx(ssim64, abs=5e-6)
  # The alignment is what makes the scores: unaligned, the shift costs several dB.
  unaligned = 10 * np.log10(1.0 / np.mean((_saved(deblurred) - _saved(gt))**2))
  assert scores['psnr'] > unaligned + (4 if kind == 'sharp' else 0.5)


@pytest.mark.parametrize('kind', ['blur', 'sharp'])
def test_align_is_the_reference_image_align(kind):
  gt = _crop(_frame(*FRAMES[1], 'sharp'))
  deblurred = _moved_crop(_frame(*FRAMES[1], kind), TRUE_WARP)
  zr, xr, mask, converged = realblur.realblur_align(deblurred, gt)
  expected_zr, expected_xr, expected_mask, warp = _reference_align(deblurred, gt)
  assert converged is True
  for got, expected in ((zr, expected_zr), (xr, expected_xr), (mask, expected_mask)):
    assert got.dtype == np.float32 and got.shape == gt.shape
    np.testing.assert_array_equal(got, expected)
  assert 0.9 < float(np.mean(mask)) < 1.0  # The shift uncovers a border strip.
  if kind == 'blur':  # Blur against sharp: ECC's warp is only roughly the true one.
    return
  # ECC recovers the true warp up to its bias towards whole-pixel shifts.
  ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH]
  points = np.stack([xs, ys, np.ones_like(xs)], axis=-1).astype(np.float64)

  def moved(w):
    p = points @ np.asarray(w, np.float64).T
    return p[..., :2] / p[..., 2:]

  assert np.abs(moved(warp) - moved(TRUE_WARP)).max() < 0.4


def test_scores_are_computed_on_the_8_bit_output_not_the_floats():
  """Noise of up to 0.7 levels: rounding turns it into 0 or +-1 levels, which PSNR sees.

  The prediction is the ground truth plus that noise, so that the noise is
  all the scores see (ECC lands within 0.01 px of the identity).
  """
  gt = _crop(_frame(*FRAMES[0], 'sharp'))
  noise = np.random.default_rng(0).uniform(-0.7, 0.7, gt.shape).astype(np.float32) / 255
  pred = gt + noise
  scores = realblur.realblur_scores(pred, gt)
  rounded_psnr, _, rounded_ssim = _reference_scores(_saved(pred), _saved(gt))
  float_psnr, _, float_ssim = _reference_scores(pred, gt)
  # The choice matters on these inputs (in theory 53.6 against 56.0 dB)...
  assert abs(rounded_psnr - float_psnr) > 1.0 and abs(rounded_ssim - float_ssim) > 3e-4
  assert scores['psnr'] == pytest.approx(rounded_psnr, abs=2e-4)  # ...and rounding is made.
  assert scores['ssim'] == pytest.approx(rounded_ssim, abs=5e-6)
  # JAX arrays and values outside [0, 1] (clipped before rounding) are accepted.
  assert realblur.realblur_scores(jnp.asarray(pred), jnp.asarray(gt)) == scores
  brighter = realblur.realblur_scores(np.where(gt > 0.99, 1.5, pred), gt)
  assert brighter['psnr'] != scores['psnr'] and np.isfinite(brighter['psnr'])


@pytest.mark.parametrize('name', ['noise', 'flat', 'black'])
def test_alignment_failures_are_reported_not_raised(name):
  """Where the script's findTransformECC raises, aligned is False and the scores are finite."""
  gt = _crop(_frame(*FRAMES[0], 'sharp'))
  if name == 'noise':
    deblurred = np.random.default_rng(0).random(gt.shape, dtype=np.float32)
  else:  # Zero variance: no correlation to maximise.
    deblurred = np.full_like(gt, 0.5 if name == 'flat' else 0.0)
  with np.errstate(all='ignore'), pytest.raises(cv2.error):
    _reference_align(deblurred, gt)
  zr, xr, mask, converged = realblur.realblur_align(deblurred, gt)
  assert converged is False
  np.testing.assert_array_equal(mask, np.ones_like(gt))  # The identity warp.
  np.testing.assert_array_equal(xr, gt)
  gain = 0.0 if name == 'black' else np.sum(gt * deblurred) / np.sum(deblurred * deblurred)
  np.testing.assert_allclose(zr, gain * deblurred, rtol=1e-6, atol=1e-6)
  scores = realblur.realblur_scores(deblurred, gt)
  assert scores['aligned'] is False
  assert np.isfinite(scores['psnr']) and np.isfinite(scores['ssim'])


def test_identical_images_align_to_the_identity():
  gt = _saved(_crop(_frame(*FRAMES[0], 'sharp')))
  zr, xr, mask, converged = realblur.realblur_align(gt, gt)
  assert converged is True
  np.testing.assert_array_equal(mask, np.ones_like(gt))
  np.testing.assert_array_equal(xr, gt)
  np.testing.assert_allclose(zr, gt, atol=1e-6)
  scores = realblur.realblur_scores(gt, gt)
  assert scores['aligned'] is True and scores['psnr'] > 100 and scores['ssim'] > 0.99999
  with pytest.raises(ValueError, match='HxWx3'):
    realblur.realblur_align(gt, gt[:-1])


def test_masked_metrics_match_the_reference_formulas():
  gt = _crop(_frame(*FRAMES[0], 'sharp'))
  pred = _crop(_frame(*FRAMES[0], 'blur'))
  warp = np.array([[1.0, 0.0, 4.4], [0.0, 1.0, -3.6], [0.0, 0.0, 1.0]], np.float32)
  mask = cv2.warpPerspective(np.ones((HEIGHT, WIDTH), np.float32), warp, (WIDTH, HEIGHT),
                             flags=cv2.INTER_NEAREST + cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0)
  mask3 = np.repeat(mask[..., None], 3, axis=-1)
  pred_m, gt_m = pred * mask3, gt * mask3
  expected_psnr = _reference_psnr(pred_m, gt_m, mask3)
  expected_ssim = _reference_ssim(*(a.astype(np.float64) for a in (pred_m, gt_m, mask3)))
  for m in (mask, mask[..., None], mask3):  # HxW, HxWx1 and HxWx3 masks are all accepted.
    psnr = realblur.psnr_masked(pred, gt, m)
    ssim = realblur.ssim_masked(pred, gt, m)
    assert psnr.shape == ssim.shape == (1,)
    assert abs(float(psnr[0]) - expected_psnr) < 1e-5
    assert abs(float(ssim[0]) - expected_ssim) < 2e-6
  # Batched, and an all-ones mask gives the unmasked float metrics.
  batch = np.stack([pred, gt])
  ones = np.ones(batch.shape[:3], np.float32)
  np.testing.assert_allclose(realblur.ssim_masked(batch, batch[::-1], ones),
                             metrics.ssim(batch, batch[::-1], quantized=False), atol=1e-6)
  np.testing.assert_allclose(realblur.psnr_masked(batch, batch[::-1], ones),
                             metrics.psnr(batch, batch[::-1]), atol=1e-4)
  with pytest.raises(ValueError, match='mask shape'):
    realblur.psnr_masked(pred, gt, mask[:-1])
