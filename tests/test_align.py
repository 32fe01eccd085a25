"""xydiff.align (RealBlur's ECC alignment protocol) against OpenCV and skimage.

The reference here is RealBlur's `evaluate_RealBlur.py` written out with cv2 +
skimage, on 160x200 crops of the real GoPro sample frames. Tolerances are ~10x
what was measured with opencv-python-headless 5.0.0 (noted beside each).
"""

from __future__ import annotations

import functools

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from conftest import GOPRO_SAMPLE
from xydiff import align, images, metrics

FRAMES = [('GOPR0869_11_00', '000020'), ('GOPR0881_11_01', '000295')]
# A textured 160x200 region of both frames; small enough for a fast CPU test.
TOP, LEFT, HEIGHT, WIDTH = 260, 520, 160, 200
# A small homography in crop pixel coordinates (template -> input, the way
# findTransformECC reports it): a (1.6, -2.2) pixel shift, ~0.4% scale,
# ~0.3 degree rotation and a small perspective term.
TRUE_WARP = np.array([[1.004, 0.006, 1.6],
                      [-0.005, 0.997, -2.2],
                      [2e-5, -1.5e-5, 1.0]])
ECC_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 0)


@functools.lru_cache(maxsize=None)
def _frame(sequence: str, frame: str, kind: str) -> np.ndarray:
  """A full 1280x720 frame, HxWx3 float32 in [0, 1]."""
  path = GOPRO_SAMPLE / 'test' / sequence / kind / f'{frame}.png'
  return images.to_float(images.read_image(str(path)))


def _crop(image: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(image[TOP:TOP + HEIGHT, LEFT:LEFT + WIDTH])


def _moved_crop(full: np.ndarray, warp: np.ndarray) -> np.ndarray:
  """The crop seen through `warp`: out(warp(x)) = crop(x), sampled from the full frame.

  Sampling the full frame (not the crop) keeps real image content at the
  crop's borders.
  """
  to_full = np.array([[1.0, 0.0, LEFT], [0.0, 1.0, TOP], [0.0, 0.0, 1.0]])
  out_to_full = to_full @ np.linalg.inv(warp)
  out_to_full /= out_to_full[2, 2]
  return cv2.warpPerspective(full, out_to_full.astype(np.float32), (WIDTH, HEIGHT),
                             flags=cv2.INTER_CUBIC + cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_REFLECT)


def _gray(image: np.ndarray) -> np.ndarray:
  return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def _cv2_ecc(template: np.ndarray, moving: np.ndarray) -> np.ndarray:
  _, warp = cv2.findTransformECC(template, moving, np.eye(3, dtype=np.float32),
                                 cv2.MOTION_HOMOGRAPHY, ECC_CRITERIA, inputMask=None,
                                 gaussFiltSize=5)
  return warp


def _reference_scores(deblurred: np.ndarray, gt: np.ndarray):
  """evaluate_RealBlur.py's image_align + compute_psnr + compute_ssim: (psnr, ssim, warp)."""
  z, x = deblurred, gt
  zs = (np.sum(x * z) / np.sum(z * z)) * z
  warp = _cv2_ecc(_gray(x), _gray(zs))
  size = (x.shape[1], x.shape[0])
  zr = cv2.warpPerspective(zs, warp, size, flags=cv2.INTER_CUBIC + cv2.WARP_INVERSE_MAP,
                           borderMode=cv2.BORDER_REFLECT)
  cr = cv2.warpPerspective(np.ones_like(zs, dtype='float32'), warp, size,
                           flags=cv2.INTER_NEAREST + cv2.WARP_INVERSE_MAP,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
  zr, xr = zr * cr, x * cr
  psnr = 10 * np.log10(1.0 / (np.sum((xr - zr)**2, dtype=np.float64) / np.sum(cr)))
  ssim = _reference_masked_ssim(zr, xr, cr)
  return psnr, ssim, warp


def _reference_masked_ssim(pred, target, mask) -> float:
  """compute_ssim of evaluate_RealBlur.py (mask HxWx3)."""
  _, ssim_map = structural_similarity(target, pred, channel_axis=2, gaussian_weights=True,
                                      use_sample_covariance=False, data_range=1.0, full=True)
  ssim_map = ssim_map * mask
  pad = 5  # r = int(3.5 * 1.5 + 0.5)
  ssim_map, mask = ssim_map[pad:-pad, pad:-pad], mask[pad:-pad, pad:-pad]
  return float(np.mean(ssim_map.sum(axis=(0, 1)) / mask.sum(axis=(0, 1))))


def _displacements(warp, height=HEIGHT, width=WIDTH) -> np.ndarray:
  """Where `warp` sends every pixel centre, HxWx2, in float64."""
  ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
  points = np.stack([xs, ys, np.ones_like(xs)], axis=-1) @ np.asarray(warp, np.float64).T
  return points[..., :2] / points[..., 2:]


@pytest.mark.parametrize('sequence,frame', FRAMES)
def test_ecc_homography_matches_opencv_and_recovers_the_warp(sequence, frame):
  full = _gray(_frame(sequence, frame, 'sharp'))
  template = _crop(full)
  moving = _moved_crop(full, TRUE_WARP)
  expected = _cv2_ecc(template, moving)
  warp, converged = align.ecc_homography(template, moving)
  warp = np.asarray(warp)
  assert bool(converged)
  assert warp.dtype == np.float32
  # Same warp as OpenCV's. Measured: translation within 5e-6 px, linear terms
  # 7e-8, perspective 6e-10, displacement field within 1e-5 px (and within
  # 1.6e-5 px over 12 random small homographies on other crops).
  np.testing.assert_allclose(warp[:2, 2], expected[:2, 2], rtol=0, atol=1e-4)
  np.testing.assert_allclose(warp[:2, :2], expected[:2, :2], rtol=0, atol=3e-6)
  np.testing.assert_allclose(warp[2, :2], expected[2, :2], rtol=0, atol=2e-8)
  assert warp[2, 2] == 1.0
  field_gap = np.abs(_displacements(warp) - _displacements(expected)).max()
  assert field_gap < 2e-4
  # Both recover the true warp up to ECC's own bias. With bilinear resampling,
  # ECC is pulled towards whole-pixel shifts ("pixel locking"); over random
  # small homographies on these 160x200 crops OpenCV lands 0.05-0.35 px from
  # the truth at the worst corner (here: 0.25 and 0.12 px), < 0.05 px on average.
  error = np.abs(_displacements(expected) - _displacements(TRUE_WARP))
  assert error.max() < 0.4 and error.mean() < 0.08
  error = np.abs(_displacements(warp) - _displacements(TRUE_WARP))
  assert error.max() < 0.4 and error.mean() < 0.08


@pytest.mark.parametrize('sequence,frame', FRAMES)
@pytest.mark.parametrize('kind', ['blur', 'sharp'])
def test_realblur_scores_match_the_reference_script(sequence, frame, kind):
  """(blurred or sharp frame, moved by TRUE_WARP) scored against the sharp crop."""
  gt = _crop(_frame(sequence, frame, 'sharp'))
  deblurred = _moved_crop(_frame(sequence, frame, kind), TRUE_WARP)
  expected_psnr, expected_ssim, expected_warp = _reference_scores(deblurred, gt)
  psnr, ssim, converged = align.realblur_scores(deblurred, gt)
  assert bool(converged)
  # Measured: PSNR within 3e-6 dB, warp within 7e-6. SSIM within 2e-5: that is the float32
  # rounding of skimage itself (the script feeds it float32 images), which on
  # the sharp pairs (SSIM ~0.997) is ~2e-5 from skimage in float64; ours is
  # within 1e-6 of float64 skimage on the same aligned images.
  assert abs(float(psnr) - expected_psnr) < 2e-4
  assert abs(float(ssim) - expected_ssim) < 6e-5
  zr, xr, mask, warp, _ = align.realblur_align(deblurred, gt)
  np.testing.assert_allclose(np.asarray(warp), expected_warp, rtol=0, atol=1e-4)
  float64_ssim = _reference_masked_ssim(*(np.asarray(a, np.float64) for a in (zr, xr, mask)))
  assert abs(float(ssim) - float64_ssim) < 5e-6
  assert np.asarray(mask).shape == gt.shape
  assert 0.9 < float(np.mean(mask)) < 1.0  # The shift uncovers a border strip.
  np.testing.assert_array_equal(np.asarray(xr), gt * np.asarray(mask))
  assert np.all(np.asarray(zr)[np.asarray(mask) == 0] == 0)


def test_identical_images_align_to_the_identity():
  gt = _crop(_frame(*FRAMES[0], 'sharp'))
  zr, xr, mask, warp, converged = align.realblur_align(gt, gt)
  assert bool(converged)
  np.testing.assert_array_equal(np.asarray(warp), np.eye(3, dtype=np.float32))
  np.testing.assert_array_equal(np.asarray(mask), np.ones_like(gt))
  np.testing.assert_array_equal(np.asarray(zr), gt)
  np.testing.assert_array_equal(np.asarray(xr), gt)
  psnr, ssim, converged = align.realblur_scores(gt, gt)
  assert bool(converged)
  assert np.isinf(float(psnr)) and float(psnr) > 0
  assert abs(float(ssim) - 1.0) < 1e-6


@pytest.mark.parametrize('name', ['noise', 'flat'])
def test_uncorrelated_inputs_report_failure_without_nan(name):
  """Where OpenCV raises, converged is False and nothing is NaN."""
  gt = _crop(_frame(*FRAMES[0], 'sharp'))
  if name == 'noise':
    deblurred = np.random.default_rng(0).random(gt.shape, dtype=np.float32)
  else:  # A flat image: zero variance, OpenCV's "NaN encountered" branch.
    deblurred = np.full_like(gt, 0.5)
  zs = (np.sum(gt * deblurred) / np.sum(deblurred * deblurred)) * deblurred
  with pytest.raises(cv2.error):
    _cv2_ecc(_gray(gt), _gray(zs))
  zr, _, mask, warp, converged = align.realblur_align(deblurred, gt)
  assert not bool(converged)
  for array in (zr, mask, warp):
    assert np.all(np.isfinite(np.asarray(array)))
  psnr, ssim, converged = align.realblur_scores(deblurred, gt)
  assert not bool(converged)
  assert np.isfinite(float(psnr)) and np.isfinite(float(ssim))


@pytest.mark.parametrize('order,border,flag,border_mode', [
    ('linear', 'constant', cv2.INTER_LINEAR, cv2.BORDER_CONSTANT),
    ('cubic', 'reflect', cv2.INTER_CUBIC, cv2.BORDER_REFLECT),
    ('linear', 'reflect101', cv2.INTER_LINEAR, cv2.BORDER_REFLECT_101),
    ('cubic', 'edge', cv2.INTER_CUBIC, cv2.BORDER_REPLICATE),
    ('nearest', 'constant', cv2.INTER_NEAREST, cv2.BORDER_CONSTANT),
])
def test_warp_perspective_matches_opencv(order, border, flag, border_mode):
  image = _crop(_frame(*FRAMES[1], 'sharp'))
  # Moves content by up to ~6 px, so every border rule is exercised.
  # Irregular entries, so that no pixel maps onto an exact half-pixel tie.
  warp = np.array([[1.0103, 0.0217, -3.319], [-0.0153, 0.9911, 2.733], [1.03e-4, -8.1e-5, 1.0]],
                  np.float32)
  expected = cv2.warpPerspective(image, warp, (WIDTH, HEIGHT), flags=flag + cv2.WARP_INVERSE_MAP,
                                 borderMode=border_mode, borderValue=0)
  got = np.asarray(align.warp_perspective(image, warp, order=order, border=border))
  # Measured 1e-5 (OpenCV 5 samples at exact coordinates, like this; the rest
  # is float32 rounding of the coordinates on either side).
  np.testing.assert_allclose(got, expected, rtol=0, atol=5e-5)
  mask = cv2.warpPerspective(np.ones((HEIGHT, WIDTH), np.float32), warp, (WIDTH, HEIGHT),
                             flags=cv2.INTER_NEAREST + cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0)
  np.testing.assert_array_equal(np.asarray(align.warp_mask(warp, (HEIGHT, WIDTH))), mask)
  gray = np.asarray(align.warp_perspective(image[..., 0], warp, order=order, border=border))
  np.testing.assert_array_equal(gray, got[..., 0])


def test_masked_metrics_match_the_reference_formulas():
  gt = _crop(_frame(*FRAMES[0], 'sharp'))
  pred = _crop(_frame(*FRAMES[0], 'blur'))
  warp = np.array([[1.0, 0.0, 4.4], [0.0, 1.0, -3.6], [0.0, 0.0, 1.0]], np.float32)
  mask = np.asarray(align.warp_mask(warp, (HEIGHT, WIDTH)))
  mask3 = np.repeat(mask[..., None], 3, axis=-1)
  pred_m, gt_m = pred * mask3, gt * mask3
  expected_psnr = 10 * np.log10(1.0 / (np.sum((gt_m - pred_m)**2, dtype=np.float64)
                                       / np.sum(mask3)))
  expected_ssim = _reference_masked_ssim(pred_m.astype(np.float64), gt_m.astype(np.float64),
                                         mask3.astype(np.float64))
  for m in (mask, mask[..., None], mask3):  # HxW, HxWx1 and HxWx3 masks are all accepted.
    psnr = metrics.psnr_masked(pred, gt, m)
    ssim = metrics.ssim_masked(pred, gt, m)
    assert psnr.shape == ssim.shape == (1,)
    assert abs(float(psnr[0]) - expected_psnr) < 1e-5  # Measured 3e-7 dB.
    assert abs(float(ssim[0]) - expected_ssim) < 2e-6  # Measured 2e-7.
  # Batched, and an all-ones mask gives the unmasked float metrics.
  batch = np.stack([pred, gt])
  ones = np.ones(batch.shape[:3], np.float32)
  np.testing.assert_allclose(metrics.ssim_masked(batch, batch[::-1], ones),
                             metrics.ssim(batch, batch[::-1], quantized=False), atol=1e-6)
  np.testing.assert_allclose(metrics.psnr_masked(batch, batch[::-1], ones),
                             metrics.psnr(batch, batch[::-1]), atol=1e-4)
  with pytest.raises(ValueError, match='mask shape'):
    metrics.psnr_masked(pred, gt, mask[:-1])


def test_realblur_scores_vmap():
  """Per-image ECC loops run batched: each stops or fails on its own."""
  gt = _crop(_frame(*FRAMES[0], 'sharp'))[:64, :80]
  moved = _moved_crop(_frame(*FRAMES[0], 'sharp'), TRUE_WARP)[:64, :80]
  flat = np.full_like(gt, 0.5)
  pred = np.stack([moved, flat, gt])
  target = np.stack([gt, gt, gt])
  psnr, ssim, converged = jax.vmap(align.realblur_scores)(pred, target)
  assert np.asarray(converged).tolist() == [True, False, True]
  for i in range(3):
    single = align.realblur_scores(pred[i], target[i])
    np.testing.assert_allclose(float(psnr[i]), float(single[0]), rtol=1e-5)
    np.testing.assert_allclose(float(ssim[i]), float(single[1]), atol=1e-6)


def test_realblur_evaluation_aligns_by_default_and_gopro_does_not(tmp_path):
  """The Evaluator on a misregistered pair: RealBlur's scores see through the shift."""
  from configs import xydeblur_gopro
  from conftest import tiny
  from flax import nnx
  from xydiff import evaluate, models

  sharp = _crop(_frame(*FRAMES[0], 'sharp'))
  moved = _moved_crop(_frame(*FRAMES[0], 'sharp'), TRUE_WARP)

  class Pair:  # A one-pair source, misregistered like a RealBlur pair.
    names = ['scene/000001']

    def __len__(self):
      return 1

    def load(self, index):
      return images.to_uint8(moved), images.to_uint8(sharp)

  config = tiny(xydeblur_gopro.get_config())
  config.eval.num_image_summaries = 0
  model = models.build_model(config.model)
  model.decoder.out.kernel[...] = jnp.zeros_like(model.decoder.out.kernel[...])
  model.decoder.out.bias[...] = jnp.zeros_like(model.decoder.out.bias[...])
  graphdef, params = nnx.split(model, nnx.Param)  # Restores x as x: output == input.
  summaries = {}
  for name in ('realblur_j', 'gopro'):
    config.data.name = name
    summaries[name] = evaluate.Evaluator(config, str(tmp_path / name), Pair()).run(
        graphdef, params, 0)
  realblur, gopro = summaries['realblur_j'], summaries['gopro']
  assert realblur['metrics'] == {'psnr': metrics.REALBLUR_LABEL, 'ssim': metrics.REALBLUR_LABEL}
  assert realblur['alignment_failures'] == 0
  assert gopro['metrics']['psnr'] == metrics.PSNR_UINT8_LABEL and 'alignment_failures' not in gopro
  expected_psnr, _, _ = align.realblur_scores(images.quantize(moved), images.quantize(sharp))
  assert realblur['outputs']['restored']['psnr'] == pytest.approx(float(expected_psnr), abs=1e-3)
  # Aligned, the shifted copy of the sharp frame scores far better than unaligned.
  assert realblur['outputs']['restored']['psnr'] > gopro['outputs']['restored']['psnr'] + 8
  # The MPRNet/Restormer test layout of RealBlur is aligned too; forcing wins.
  config.data.update(dict(name='prepared', tfds_config='realblur_r'))
  assert evaluate.Evaluator(config, str(tmp_path / 'prepared'), Pair()).aligned
  config.eval.align = 'none'
  config.data.update(dict(name='realblur_j', tfds_config=''))
  assert not evaluate.Evaluator(config, str(tmp_path / 'off'), Pair()).aligned
  assert evaluate.eval_subdir(config) == 'eval_realblur_j_test_align-none'
