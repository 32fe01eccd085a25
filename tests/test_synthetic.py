"""Tests for xydiff.data.synthetic: kernels, the blur operator and pair sources."""

import numpy as np
import pytest
import scipy.ndimage as ndi

from conftest import GOPRO_SAMPLE
from xydiff import images
from xydiff.data import synthetic

GOPRO_FRAME = GOPRO_SAMPLE / 'train' / 'GOPR0372_07_00' / 'sharp' / '000047.png'


@pytest.fixture(scope='module')
def photo_crop():
  """A 96x128 float crop of a real photograph (textured, so blur is visible)."""
  image = images.to_float(images.read_image(str(GOPRO_FRAME)))
  return image[300:396, 500:628]


@pytest.fixture(scope='module')
def small_photos():
  return synthetic.skimage_photos()[:3]


def _centroid(kernel):
  yy, xx = np.mgrid[:kernel.shape[0], :kernel.shape[1]]
  k = kernel.astype(np.float64)
  return (k * yy).sum() / k.sum(), (k * xx).sum() / k.sum()


def _high_frequency_energy(image):
  return np.mean([np.mean(ndi.laplace(image[..., c].astype(np.float64))**2)
                  for c in range(image.shape[-1])])


# --- random_trajectory_kernel ------------------------------------------------


@pytest.mark.parametrize('size', [15, 31])
@pytest.mark.parametrize('seed', range(5))
def test_random_kernel_is_a_centred_psf(size, seed):
  kernel = synthetic.random_trajectory_kernel(np.random.default_rng(seed), size)
  assert kernel.shape == (size, size)
  assert kernel.dtype == np.float32
  assert np.all(kernel >= 0)
  assert abs(float(kernel.sum(dtype=np.float64)) - 1.0) < 1e-6
  centre = (size - 1) / 2
  np.testing.assert_allclose(_centroid(kernel), (centre, centre), atol=1e-3)


def test_random_kernel_is_reproducible_and_seed_dependent():
  a = synthetic.random_trajectory_kernel(np.random.default_rng(7))
  b = synthetic.random_trajectory_kernel(np.random.default_rng(7))
  np.testing.assert_array_equal(a, b)
  others = [synthetic.random_trajectory_kernel(np.random.default_rng(s)) for s in range(7)]
  for s, other in enumerate(others):
    assert np.abs(other - a).max() > 1e-3, f'seed {s} gave the same kernel as seed 7'
  # The path itself must be random, not just the drawn exposure and anxiety.
  fixed = [synthetic.random_trajectory_kernel(np.random.default_rng(s), exposure=1.0,
                                              anxiety=0.005) for s in range(2)]
  assert np.abs(fixed[0] - fixed[1]).max() > 1e-3


def test_random_kernel_without_anxiety_is_a_straight_line():
  # anxiety 0 switches off every perturbation: a uniform segment of the given
  # length, whose second moment along the line is length**2 / 12.
  for seed in range(3):
    kernel = synthetic.random_trajectory_kernel(
        np.random.default_rng(seed), 31, exposure=1.0, anxiety=0.0, length=20.0)
    yy, xx = np.mgrid[:31, :31] - 15.0
    k = kernel.astype(np.float64)
    cov = np.array([[(k * xx * xx).sum(), (k * xx * yy).sum()],
                    [(k * xx * yy).sum(), (k * yy * yy).sum()]])
    small, large = np.linalg.eigvalsh(cov)
    assert large == pytest.approx(20.0**2 / 12, abs=0.5)
    assert small < 0.3  # Only the bilinear splat's sub-pixel spread.


def test_random_kernel_exposure_shortens_the_blur():
  def spread(exposure):
    k = synthetic.random_trajectory_kernel(np.random.default_rng(3), 31, exposure=exposure,
                                           anxiety=0.0)
    cy, cx = _centroid(k)
    yy, xx = np.mgrid[:31, :31]
    return (k * ((yy - cy)**2 + (xx - cx)**2)).sum()
  assert spread(0.2) < 0.1 * spread(1.0)


def test_random_kernel_rejects_even_size():
  with pytest.raises(ValueError):
    synthetic.random_trajectory_kernel(np.random.default_rng(0), 30)


# --- directional_kernel ------------------------------------------------------


@pytest.mark.parametrize('axis', ['x', 'y'])
@pytest.mark.parametrize('length', [1, 4, 7.5, 9])
def test_directional_kernel_shape_and_mass(axis, length):
  kernel = synthetic.directional_kernel(length, axis, 15)
  assert kernel.shape == (15, 15)
  assert np.all(kernel >= 0)
  assert abs(float(kernel.sum(dtype=np.float64)) - 1.0) < 1e-6
  np.testing.assert_allclose(_centroid(kernel), (7, 7), atol=1e-5)
  line = kernel[7, :] if axis == 'x' else kernel[:, 7]
  assert line.sum() == pytest.approx(1.0, abs=1e-6)  # All mass on the centre line.


def test_directional_kernel_values():
  np.testing.assert_allclose(synthetic.directional_kernel(5, 'x')[2], [0.2] * 5, atol=1e-7)
  np.testing.assert_allclose(synthetic.directional_kernel(4, 'y')[:, 2],
                             [0.125, 0.25, 0.25, 0.25, 0.125], atol=1e-7)
  assert synthetic.directional_kernel(9, 'x').shape == (9, 9)
  with pytest.raises(ValueError):
    synthetic.directional_kernel(9, 'x', size=7)
  with pytest.raises(ValueError):
    synthetic.directional_kernel(5, 'z')


def _stripes(varying_axis):
  """Period-6 stripes that vary only along `varying_axis` (0 = rows, 1 = cols)."""
  profile = (np.arange(64) % 6 < 3).astype(np.float32) * 0.8 + 0.1
  shape = [64, 64]
  view = [1, 1]
  view[varying_axis] = 64
  return np.broadcast_to(profile.reshape(view), shape)[..., None].repeat(3, -1).copy()


@pytest.mark.parametrize('axis,blur_axis_index', [('x', 1), ('y', 0)])
def test_directional_blur_acts_only_along_its_axis(axis, blur_axis_index):
  kernel = synthetic.directional_kernel(9, axis, 15)
  across = _stripes(1 - blur_axis_index)  # Constant along the blur direction.
  along = _stripes(blur_axis_index)  # Varies along the blur direction.
  inner = (slice(8, -8), slice(8, -8))
  np.testing.assert_allclose(synthetic.blur(across, kernel)[inner], across[inner], atol=1e-5)
  assert np.abs(synthetic.blur(along, kernel)[inner] - along[inner]).max() > 0.1


# --- blur --------------------------------------------------------------------


def test_blur_matches_ndimage_convolve(photo_crop):
  # A trajectory kernel is asymmetric, so this also tells convolution from
  # correlation; mode='reflect' is scipy's name for symmetric extension.
  kernel = synthetic.random_trajectory_kernel(np.random.default_rng(11), 31, exposure=1.0)
  assert np.abs(kernel - kernel[::-1, ::-1]).max() > 1e-3
  ours = synthetic.blur(photo_crop, kernel)
  assert ours.shape == photo_crop.shape and ours.dtype == np.float32
  for c in range(3):
    ref = ndi.convolve(photo_crop[..., c].astype(np.float64), kernel.astype(np.float64),
                       mode='reflect')
    np.testing.assert_allclose(ours[..., c], ref, atol=1e-4, rtol=0)


def test_blur_matches_ndimage_when_kernel_exceeds_image():
  image = np.random.default_rng(0).uniform(size=(7, 5, 3)).astype(np.float32)
  kernel = synthetic.random_trajectory_kernel(np.random.default_rng(1), 15, exposure=1.0)
  ours = synthetic.blur(image, kernel)
  for c in range(3):
    ref = ndi.convolve(image[..., c].astype(np.float64), kernel.astype(np.float64),
                       mode='reflect')
    np.testing.assert_allclose(ours[..., c], ref, atol=1e-5, rtol=0)


def test_blur_is_convolution_not_correlation():
  # A PSF with all its mass 2 pixels right of centre moves content right.
  image = np.zeros((20, 20), dtype=np.float32)
  image[10, 8] = 1.0
  kernel = np.zeros((5, 5), dtype=np.float32)
  kernel[2, 4] = 1.0
  out = synthetic.blur(image, kernel)
  assert out.shape == image.shape
  assert np.unravel_index(np.argmax(out), out.shape) == (10, 10)


def test_blur_removes_high_frequencies(photo_crop):
  sharp = _high_frequency_energy(photo_crop)
  for seed in range(5):
    kernel = synthetic.random_trajectory_kernel(np.random.default_rng(seed))
    blurred = _high_frequency_energy(synthetic.blur(photo_crop, kernel))
    assert blurred < 0.6 * sharp, f'seed {seed}: {blurred} vs sharp {sharp}'


def test_blur_noise_is_reproducible_and_clipped(photo_crop):
  kernel = synthetic.directional_kernel(5, 'x')
  a = synthetic.blur(photo_crop, kernel, noise_std=0.05, rng=np.random.default_rng(3))
  b = synthetic.blur(photo_crop, kernel, noise_std=0.05, rng=np.random.default_rng(3))
  clean = synthetic.blur(photo_crop, kernel)
  np.testing.assert_array_equal(a, b)
  assert a.min() >= 0.0 and a.max() <= 1.0
  assert 0.02 < np.std(a - clean) < 0.06
  with pytest.raises(ValueError):
    synthetic.blur(photo_crop, kernel, noise_std=0.05)


# --- photo sources -----------------------------------------------------------


def test_skimage_photos_are_rgb_uint8():
  photos = synthetic.skimage_photos()
  assert len(photos) >= 8
  names = [name for name, _ in photos]
  assert len(set(names)) == len(names)
  assert {'astronaut', 'stereo_motorcycle_left', 'stereo_motorcycle_right'} <= set(names)
  for name, image in photos:
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3, name


def test_load_sharp_folder(tmp_path):
  rng = np.random.default_rng(0)
  first = rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)
  second = rng.integers(0, 256, (6, 4, 3), dtype=np.uint8)
  images.write_png(str(tmp_path / 'b.png'), first)
  images.write_png(str(tmp_path / 'a.PNG'), second)
  (tmp_path / 'notes.txt').write_text('not an image')
  (tmp_path / 'sub').mkdir()
  images.write_png(str(tmp_path / 'sub' / 'c.png'), first)  # Not recursive.
  photos = synthetic.load_sharp_folder(tmp_path)
  assert [name for name, _ in photos] == ['a', 'b']
  np.testing.assert_array_equal(photos[0][1], second)
  np.testing.assert_array_equal(photos[1][1], first)


def test_load_sharp_folder_empty_names_folder(tmp_path):
  (tmp_path / 'readme.txt').write_text('no images here')
  with pytest.raises(ValueError, match=str(tmp_path)):
    synthetic.load_sharp_folder(tmp_path)


# --- SyntheticPairs ----------------------------------------------------------


@pytest.mark.parametrize('kernel', ['random', 'x', 'y'])
def test_pairs_are_deterministic_and_shaped(small_photos, kernel):
  pairs = synthetic.SyntheticPairs(small_photos, kernel=kernel, seed=3, crop=64)
  again = synthetic.SyntheticPairs(small_photos, kernel=kernel, seed=3, crop=64)
  assert len(pairs) == len(small_photos) == len(pairs.names)
  assert len(set(pairs.names)) == len(pairs.names)
  for i in reversed(range(len(pairs))):  # Order of loading must not matter.
    blurred, sharp = pairs.load(i)
    assert blurred.dtype == sharp.dtype == np.uint8
    assert blurred.shape == sharp.shape and sharp.shape[-1] == 3
    assert max(sharp.shape[:2]) <= 64
    assert np.abs(blurred.astype(int) - sharp.astype(int)).max() > 0
    blurred[...] = 0  # Callers editing results must not corrupt the cache.
    np.testing.assert_array_equal(pairs.load(i)[0], again.load(i)[0])
    np.testing.assert_array_equal(pairs.load(i)[0], synthetic.SyntheticPairs(
        small_photos, kernel=kernel, seed=3, crop=64).load(i)[0])


def test_pairs_kernel_is_the_one_used(small_photos):
  pairs = synthetic.SyntheticPairs(small_photos, kernel='x', seed=5, crop=48,
                                   kernel_length=(7, 15))
  fresh = synthetic.SyntheticPairs(small_photos, kernel='x', seed=5, crop=48,
                                   kernel_length=(7, 15))
  for i in range(len(pairs)):
    kernel = fresh.kernel(i)  # Before any load: must agree with load's draw.
    assert kernel.shape == (31, 31)
    assert kernel[15].sum() == pytest.approx(1.0, abs=1e-6)  # A horizontal line.
    blurred, sharp = pairs.load(i)
    expected = images.to_uint8(synthetic.blur(images.to_float(sharp), kernel))
    np.testing.assert_array_equal(blurred, expected)
    np.testing.assert_array_equal(pairs.kernel(i), kernel)


def test_pairs_depend_on_seed_and_noise(small_photos):
  a = synthetic.SyntheticPairs(small_photos, seed=0, crop=64)
  b = synthetic.SyntheticPairs(small_photos, seed=1, crop=64)
  assert np.abs(a.kernel(0) - b.kernel(0)).max() > 1e-3
  noisy = synthetic.SyntheticPairs(small_photos, seed=0, crop=64, noise_std=0.05)
  np.testing.assert_array_equal(noisy.kernel(0), a.kernel(0))
  np.testing.assert_array_equal(noisy.load(0)[0], noisy.load(0)[0])
  assert np.abs(noisy.load(0)[0].astype(int) - a.load(0)[0].astype(int)).mean() > 2


def test_pairs_unique_names_and_validation():
  image = np.zeros((10, 12, 3), dtype=np.uint8)
  pairs = synthetic.SyntheticPairs([('a', image), ('a', image), ('a_2', image)], crop=8)
  assert len(set(pairs.names)) == 3 and pairs.names[0] == 'a'
  assert pairs.load(1)[1].shape == (8, 8, 3)
  with pytest.raises(IndexError):
    pairs.load(3)
  with pytest.raises(ValueError):
    synthetic.SyntheticPairs([('f', image.astype(np.float32))])
  with pytest.raises(ValueError):
    synthetic.SyntheticPairs([('a', image)], kernel='x', kernel_length=(5, 40))
  with pytest.raises(ValueError):
    synthetic.SyntheticPairs([('a', image)], kernel='diagonal')


def test_pairs_per_photo_and_mixed_xy_kernels():
  photo = ('flat', np.tile(np.linspace(0, 255, 40, dtype=np.uint8)[None, :, None], (40, 1, 3)))
  other = ('other', np.full((40, 40, 3), 128, np.uint8))
  pairs = synthetic.SyntheticPairs([photo, other], kernel='xy', kernel_size=9,
                                   kernel_length=(5.0, 9.0), pairs_per_photo=6, seed=2)
  assert len(pairs) == 12
  assert pairs.names[:3] == ['flat_k0', 'other_k0', 'flat_k1']
  # Pair i shows photo i % 2, each time with its own kernel.
  np.testing.assert_array_equal(pairs.load(4)[1], photo[1])
  axes = set()
  for i in range(len(pairs)):
    k = pairs.kernel(i)
    rows, cols = np.nonzero(k)
    axes.add('x' if len(set(rows)) == 1 else 'y' if len(set(cols)) == 1 else '?')
  assert axes == {'x', 'y'}  # Both directions occur, and nothing else.
