"""Synthetic camera-shake blur: sharp photographs in, (blurred, sharp) pairs out.

A deblurring model can only be checked against ground truth when the blur is
known, so this module makes the blur itself. Two kernel families are offered:

* random-trajectory kernels, the camera-shake model of Boracchi & Foi (2012,
  "Modeling the performance of image restoration from motion blur") in the form
  DeblurGAN's `motion_blur` generator popularised for training data;
* straight uniform lines along x or y, for the XYDeblur study of whether the
  two decoders really split horizontal from vertical blur.

Everything is numpy/scipy (the input pipeline must not pull in jax) and
deterministic given a `np.random.Generator`, so a pair is a function of
(seed, index) and can be regenerated instead of stored.
"""

from __future__ import annotations

import math
import operator
import os
from typing import Sequence

import numpy as np
import scipy.fft

from xydiff import images

# Boracchi & Foi's reference setting (and DeblurGAN's): a 60-pixel path on a
# 64-pixel canvas. The trajectory dynamics are simulated at this scale and the
# result is resized, so the inertia/centripetal balance, which depends on
# absolute coordinates, gives the same family of shapes at every kernel size.
_REFERENCE_LENGTH = 60.0
_REFERENCE_CANVAS = 64.0

# Keeps bilinear splats strictly inside the window (see _splat_bilinear).
_EDGE_MARGIN = 1e-3

Photo = tuple[str, np.ndarray]


def _check_odd_size(size: int, what: str) -> int:
  size = operator.index(size)
  if size < 3 or size % 2 == 0:
    raise ValueError(f'{what} must be an odd integer >= 3 so the kernel has a '
                     f'centre pixel, got {size}')
  return size


def _shake_trajectory(rng: np.random.Generator, iters: int,
                      anxiety: float) -> np.ndarray:
  """Samples a 2-D camera path at the reference scale, as complex x + iy.

  The particle keeps a constant speed (so equal exposures give equal path
  lengths) while its velocity is nudged at every step by a Gaussian shake, a
  centripetal pull back towards the start point and, rarely, an impulsive
  near-reversal (the user pressing the button or over-correcting). All three
  are scaled by `anxiety`; anxiety 0 gives a straight line (uniform linear
  blur, Boracchi & Foi 2011).
  """
  centripetal = 0.7 * rng.uniform()
  prob_big_shake = 0.2 * rng.uniform()
  gaussian_shake = 10.0 * rng.uniform()
  init_angle = 2.0 * math.pi * rng.uniform()
  # Random numbers are drawn in bulk (fast, and the draw order is fixed, which
  # is what makes the kernel a function of the generator state alone).
  big_shake = (rng.uniform(size=iters - 1) < prob_big_shake * anxiety).tolist()
  shake_angle = (rng.uniform(size=iters - 1) - 0.5).tolist()
  gauss = rng.standard_normal((iters - 1, 2))
  gauss = (gauss[:, 0] + 1j * gauss[:, 1]).tolist()

  step = _REFERENCE_LENGTH / (iters - 1)
  # DeblurGAN starts from v0 * expl; starting at the normalised speed instead
  # only changes the first of `iters` steps, so we keep units consistent.
  v = step * complex(math.cos(init_angle), math.sin(init_angle))
  pos = 0j
  path = [pos]
  for t in range(iters - 1):
    dv = anxiety * (gaussian_shake * gauss[t] - centripetal * pos) * step
    if big_shake[t]:
      dv += 2.0 * v * complex(math.cos(math.pi + shake_angle[t]),
                              math.sin(math.pi + shake_angle[t]))
    new_v = v + dv
    speed = abs(new_v)
    if speed > 0.0:  # A perfectly cancelled velocity keeps its old direction.
      v = new_v * (step / speed)
    pos = pos + v
    path.append(pos)
  return np.asarray(path, dtype=np.complex128)


def _exposure_weights(iters: int, exposure: float) -> np.ndarray:
  """Weight of each trajectory sample when integrating over [0, exposure].

  Samples inside the exposure count fully and the first one past it counts
  by the fraction of its interval that was exposed, so the PSF varies
  continuously with the exposure instead of in 1/iters jumps.
  """
  end = exposure * (iters - 1)
  t = np.arange(iters, dtype=np.float64)
  return np.clip(end + 1.0 - t, 0.0, 1.0)


def _splat_bilinear(points: np.ndarray, weights: np.ndarray,
                    size: int) -> np.ndarray:
  """Rasterises weighted sub-pixel points by bilinear (tent) splatting.

  Bilinear splatting preserves both the total mass and the centroid of the
  points, which is what lets the caller centre the kernel exactly before
  rasterising. `points` must lie in [0, size - 1) on both axes.
  """
  x, y = points.real, points.imag
  ix, iy = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
  fx, fy = x - ix, y - iy
  flat = np.zeros(size * size, dtype=np.float64)
  for dy, wy in ((0, 1.0 - fy), (1, fy)):
    for dx, wx in ((0, 1.0 - fx), (1, fx)):
      flat += np.bincount((iy + dy) * size + (ix + dx), weights=weights * wy * wx,
                          minlength=size * size)
  return flat.reshape(size, size)


def random_trajectory_kernel(rng: np.random.Generator,
                             size: int = 31,
                             *,
                             exposure: float | None = None,
                             anxiety: float | None = None,
                             length: float | None = None,
                             iters: int = 2000) -> np.ndarray:
  """A random camera-shake PSF (Boracchi & Foi 2012, DeblurGAN's generator).

  A random walk with inertia, Gaussian shake, impulsive shakes and a
  centripetal pull is sampled at `iters` points, the first `exposure` fraction
  of it is splatted bilinearly onto a size x size grid, and the result is
  normalised. The path is shifted so the kernel's centroid is the centre
  pixel: blurring with it then does not translate the image, so the sharp
  image stays pixel-aligned with its blurred version.

  Args:
    rng: source of all randomness; the kernel is a function of its state.
    size: odd side of the kernel window.
    exposure: fraction of the trajectory integrated, in (0, 1]. None draws it
      uniformly from [0.1, 1], a continuum over DeblurGAN's exposure fractions
      1/10, 1/2 and 1 (short exposures give mild blur, long ones strong).
    anxiety: strength of all perturbations (DeblurGAN's `expl`); 0 gives a
      straight line. None draws it uniformly from [0.001, 0.01], the range
      DeblurGAN's dataset script samples. (Boracchi & Foi's own default,
      0.1 * U(0, 1), mostly gives tight curls of a few pixels: at that anxiety
      the centripetal pull dominates the inertia.)
    length: path length in pixels of the full-exposure trajectory. None uses
      the reference ratio 60/64 of the window. A path whose extent does not fit
      the window is shrunk about its centroid (its shape is kept; the
      alternative, cropping, would cut the shake short arbitrarily).
    iters: number of trajectory samples; 2000 as in the reference.

  Returns:
    float32 (size, size), non-negative, summing to 1.
  """
  size = _check_odd_size(size, 'size')
  iters = operator.index(iters)
  if iters < 2:
    raise ValueError(f'iters must be >= 2, got {iters}')
  if exposure is None:
    exposure = rng.uniform(0.1, 1.0)
  if not 0.0 < exposure <= 1.0:
    raise ValueError(f'exposure must be in (0, 1], got {exposure}')
  if anxiety is None:
    anxiety = rng.uniform(0.001, 0.01)
  if anxiety < 0.0:
    raise ValueError(f'anxiety must be >= 0, got {anxiety}')
  if length is None:
    length = size * _REFERENCE_LENGTH / _REFERENCE_CANVAS
  if length < 0.0:
    raise ValueError(f'length must be >= 0, got {length}')

  path = _shake_trajectory(rng, iters, float(anxiety))
  path = path * (length / _REFERENCE_LENGTH)
  weights = _exposure_weights(iters, float(exposure))
  keep = weights > 0.0
  path, weights = path[keep], weights[keep]

  centre = (size - 1) / 2.0
  centroid = np.sum(weights * path) / np.sum(weights)
  offsets = path - centroid
  reach = max(np.max(np.abs(offsets.real)), np.max(np.abs(offsets.imag)))
  limit = centre - _EDGE_MARGIN
  if reach > limit:
    offsets = offsets * (limit / reach)
  points = offsets + complex(centre, centre)

  psf = _splat_bilinear(points, weights, size)
  psf /= psf.sum()
  return psf.astype(np.float32)


def directional_kernel(length: float, axis: str,
                       size: int | None = None) -> np.ndarray:
  """A centred uniform line kernel along 'x' (image width) or 'y' (height).

  The line covers [-length/2, length/2] around the centre pixel and each pixel
  gets the length of line inside it, so a non-integer or even length gives
  partial end pixels rather than an off-centre kernel: the blur stays
  symmetric and never shifts the image.

  Args:
    length: line length in pixels, > 0.
    axis: 'x' for horizontal blur (the kernel is a row), 'y' for vertical.
    size: odd window side; None picks the smallest that holds the line.

  Returns:
    float32 (size, size), non-negative, summing to 1.
  """
  if axis not in ('x', 'y'):
    raise ValueError(f"axis must be 'x' or 'y', got {axis!r}")
  length = float(length)
  if not length > 0.0:
    raise ValueError(f'length must be > 0, got {length}')
  # Pixel k (offset from centre) is touched when |k| - 1/2 < length / 2.
  reach = math.ceil((length + 1.0) / 2.0) - 1
  if size is None:
    size = 2 * reach + 1
  size = operator.index(size)
  if size < 1 or size % 2 == 0:
    raise ValueError(f'size must be a positive odd integer, got {size}')
  if size < 2 * reach + 1:
    raise ValueError(f'a line of length {length} needs size >= {2 * reach + 1}, '
                     f'got {size}')
  half = size // 2
  k = np.arange(-half, half + 1, dtype=np.float64)
  line = np.clip(np.minimum(k + 0.5, length / 2) - np.maximum(k - 0.5, -length / 2),
                 0.0, None)
  line /= line.sum()
  kernel = np.zeros((size, size), dtype=np.float64)
  if axis == 'x':
    kernel[half, :] = line
  else:
    kernel[:, half] = line
  return kernel.astype(np.float32)


def blur(image: np.ndarray,
         kernel: np.ndarray,
         *,
         noise_std: float = 0.0,
         rng: np.random.Generator | None = None) -> np.ndarray:
  """Convolves an image with a kernel, optionally adding Gaussian noise.

  This is a true convolution (the kernel is the PSF, so an off-centre impulse
  moves the image towards its offset), computed per channel with FFTs so a
  31x31 kernel on a 1280x720 frame costs tens of milliseconds. The image is
  extended by whole-sample symmetric reflection (`d c b a | a b c d`, i.e.
  scipy.ndimage mode='reflect'), so the output has the input's size and the
  borders are not darkened the way zero padding would darken them.

  The result is clipped to [0, 1]: a blurred photograph is still a photograph,
  and a sensor saturates rather than recording negative light, so noise is
  clipped the same way. (Without noise the convolution of a [0, 1] image with
  a non-negative, unit-sum kernel is already in [0, 1]; the clip then only
  removes FFT round-off.)

  Args:
    image: HxW or HxWxC float image in [0, 1].
    kernel: 2-D kernel with odd sides; the centre pixel is the origin.
    noise_std: standard deviation of additive Gaussian noise, in [0, 1] units.
    rng: required when noise_std > 0, so noise is reproducible.

  Returns:
    float32 array with the image's shape.
  """
  image = np.asarray(image, dtype=np.float32)
  kernel = np.asarray(kernel, dtype=np.float32)
  if image.ndim not in (2, 3):
    raise ValueError(f'expected an HxW or HxWxC image, got shape {image.shape}')
  if kernel.ndim != 2 or kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0:
    raise ValueError(f'expected a 2-D kernel with odd sides, got {kernel.shape}')
  if noise_std < 0.0:
    raise ValueError(f'noise_std must be >= 0, got {noise_std}')
  if noise_std > 0.0 and rng is None:
    raise ValueError('noise_std > 0 needs an rng so the noise is reproducible')

  squeeze = image.ndim == 2
  if squeeze:
    image = image[..., None]
  height, width = image.shape[:2]
  kh, kw = kernel.shape
  ry, rx = kh // 2, kw // 2
  padded = np.pad(image, ((ry, ry), (rx, rx), (0, 0)), mode='symmetric')
  # Circular convolution of the padded image equals the linear one at indices
  # >= kernel size - 1, and those are exactly the `valid` outputs we keep;
  # extra zero padding up to a fast FFT length does not change that.
  fft_shape = (scipy.fft.next_fast_len(padded.shape[0], real=True),
               scipy.fft.next_fast_len(padded.shape[1], real=True))
  spectrum = scipy.fft.rfft2(padded, s=fft_shape, axes=(0, 1))
  spectrum *= scipy.fft.rfft2(kernel, s=fft_shape)[..., None]
  full = scipy.fft.irfft2(spectrum, s=fft_shape, axes=(0, 1))
  out = full[kh - 1:kh - 1 + height, kw - 1:kw - 1 + width]
  out = np.ascontiguousarray(out, dtype=np.float32)
  if noise_std > 0.0:
    out += rng.normal(0.0, noise_std, size=out.shape).astype(np.float32)
  np.clip(out, 0.0, 1.0, out=out)
  return out[..., 0] if squeeze else out


# scikit-image's sharp colour photographs. All of these are bundled with the
# 0.26 wheel (no pooch download); stereo_motorcycle yields two views.
_SKIMAGE_PHOTOS = ('astronaut', 'chelsea', 'coffee', 'rocket', 'hubble_deep_field',
                   'immunohistochemistry', 'retina', 'stereo_motorcycle')


def _is_rgb_uint8(image) -> bool:
  return (isinstance(image, np.ndarray) and image.dtype == np.uint8 and
          image.ndim == 3 and image.shape[-1] == 3)


def skimage_photos() -> list[Photo]:
  """The sharp RGB photographs scikit-image ships, as (name, uint8 HxWx3).

  They give a demo or a test real image statistics without any dataset on
  disk. A photo that this install cannot load offline (an older or trimmed
  scikit-image would try to download it) is skipped rather than failing, so
  callers must not assume a fixed count.
  """
  import skimage.data  # Local: only this helper needs scikit-image.
  photos = []
  for name in _SKIMAGE_PHOTOS:
    try:
      loaded = getattr(skimage.data, name)()
    except (AttributeError, ImportError, OSError, ValueError):
      continue  # Missing from this version, or needs pooch / the network.
    if name == 'stereo_motorcycle':
      left, right = loaded[0], loaded[1]
      candidates = [(f'{name}_left', left), (f'{name}_right', right)]
    else:
      candidates = [(name, loaded)]
    photos.extend((n, img) for n, img in candidates if _is_rgb_uint8(img))
  return photos


def load_sharp_folder(folder: str | os.PathLike) -> list[Photo]:
  """Every PNG/JPEG directly in `folder`, sorted by file name, as uint8 RGB.

  Names are file stems (the file name where two files share a stem, e.g.
  a.png and a.jpg). 16-bit files are converted to 8 bits, because the pairs
  and the field's metrics are 8-bit.

  Raises:
    ValueError: the folder holds no PNG or JPEG file (an empty training set
      should fail here, by name, not later as an empty batch).
  """
  folder = os.fspath(folder)
  files = sorted(f for f in os.listdir(folder)
                 if f.lower().endswith(images.IMAGE_EXTENSIONS) and
                 os.path.isfile(os.path.join(folder, f)))
  if not files:
    raise ValueError(f'no .png/.jpg/.jpeg images in folder {folder}')
  stems = [os.path.splitext(f)[0] for f in files]
  photos = []
  for file_name, stem in zip(files, stems):
    image = images.read_image(os.path.join(folder, file_name))
    if image.dtype != np.uint8:
      image = images.to_uint8(images.to_float(image))
    name = stem if stems.count(stem) == 1 else file_name
    photos.append((name, image))
  return photos


def _unique_names(names: Sequence[str]) -> list[str]:
  """Makes names unique by suffixing repeats, keeping first occurrences as is."""
  seen = set(names)
  counts: dict[str, int] = {}
  out = []
  for name in names:
    if name not in counts:
      counts[name] = 1
      out.append(name)
      continue
    while True:
      counts[name] += 1
      candidate = f'{name}_{counts[name]}'
      if candidate not in seen:
        break
    seen.add(candidate)
    out.append(candidate)
  return out


KERNEL_TYPES = ('random', 'x', 'y', 'xy')


class SyntheticPairs:
  """(blurred, sharp) uint8 pairs made on the fly from sharp photographs.

  Pair i is the i-th photo blurred with a kernel drawn from
  `np.random.default_rng([seed, i])`, then (optionally) noised with the same
  generator, so a pair depends only on (seed, i): not on load order, worker
  count or which other pairs were loaded. Blurred results are cached per index
  because a training loop revisits every pair each epoch.

  Attributes:
    names: one unique name per pair (photo names; repeats get a suffix).
  """

  def __init__(self,
               photos: Sequence[Photo],
               *,
               kernel: str = 'random',
               kernel_size: int = 31,
               kernel_length: tuple[float, float] = (5.0, 25.0),
               noise_std: float = 0.0,
               seed: int = 0,
               crop: int | None = None,
               pairs_per_photo: int = 1):
    """Builds the source.

    Args:
      photos: (name, uint8 HxWx3) sharp images.
      kernel: 'random' for camera-shake trajectories, 'x' or 'y' for straight
        horizontal or vertical lines, 'xy' for either (drawn per pair).
      kernel_size: odd kernel window side, for every kernel type.
      kernel_length: (low, high) range a directional kernel's length is drawn
        from uniformly; ignored for 'random'. Must fit in kernel_size.
      noise_std: Gaussian noise added after blurring, in [0, 1] units.
      seed: non-negative integer; with the index it fixes each pair.
      crop: if set, centre-crop each photo to at most crop x crop, which keeps
        demos and tests small.
      pairs_per_photo: each photo appears with this many different kernels
        (pair i is photo i % len(photos)), so a few photos teach many blurs.
    """
    if kernel not in KERNEL_TYPES:
      raise ValueError(f'kernel must be one of {KERNEL_TYPES}, got {kernel!r}')
    if operator.index(pairs_per_photo) < 1:
      raise ValueError(f'pairs_per_photo must be >= 1, got {pairs_per_photo}')
    self._pairs_per_photo = operator.index(pairs_per_photo)
    self._kernel_type = kernel
    self._kernel_size = _check_odd_size(kernel_size, 'kernel_size')
    low, high = (float(v) for v in kernel_length)
    if not 0.0 < low <= high <= self._kernel_size:
      raise ValueError(f'kernel_length must satisfy 0 < low <= high <= kernel_size '
                       f'({self._kernel_size}), got {kernel_length}')
    self._length_range = (low, high)
    if noise_std < 0.0:
      raise ValueError(f'noise_std must be >= 0, got {noise_std}')
    self._noise_std = float(noise_std)
    self._seed = operator.index(seed)
    if self._seed < 0:
      raise ValueError(f'seed must be >= 0, got {seed}')
    if crop is not None:
      crop = operator.index(crop)
      if crop < 1:
        raise ValueError(f'crop must be >= 1, got {crop}')
    if not photos:
      raise ValueError('SyntheticPairs needs at least one photo')

    sharp = []
    for name, image in photos:
      if not _is_rgb_uint8(image):
        raise ValueError(f'photo {name!r} must be uint8 HxWx3, got '
                         f'{getattr(image, "dtype", type(image))} '
                         f'{getattr(image, "shape", "")}')
      if crop is not None:
        height, width = image.shape[:2]
        top, left = (height - min(height, crop)) // 2, (width - min(width, crop)) // 2
        image = image[top:top + crop, left:left + crop]
      # Own copy: later edits to the caller's arrays must not change the pairs.
      sharp.append(np.array(image, dtype=np.uint8, copy=True))
    self._sharp = sharp
    photo_names = _unique_names([name for name, _ in photos])
    self.names = (photo_names if self._pairs_per_photo == 1 else
                  [f'{photo_names[i % len(sharp)]}_k{i // len(sharp)}'
                   for i in range(len(sharp) * self._pairs_per_photo)])
    self._kernels: dict[int, np.ndarray] = {}
    self._blurred: dict[int, np.ndarray] = {}

  def __len__(self) -> int:
    return len(self.names)

  def _index(self, i) -> int:
    i = operator.index(i)
    if not 0 <= i < len(self):
      raise IndexError(f'pair index {i} out of range [0, {len(self)})')
    return i

  def _draw_kernel(self, rng: np.random.Generator) -> np.ndarray:
    if self._kernel_type == 'random':
      return random_trajectory_kernel(rng, self._kernel_size)
    length = rng.uniform(*self._length_range)
    axis = self._kernel_type if self._kernel_type != 'xy' else ('x', 'y')[rng.integers(2)]
    return directional_kernel(length, axis, self._kernel_size)

  def kernel(self, i: int) -> np.ndarray:
    """The kernel pair i is blurred with (a copy; the source keeps its own)."""
    i = self._index(i)
    if i not in self._kernels:
      self._kernels[i] = self._draw_kernel(np.random.default_rng([self._seed, i]))
    return self._kernels[i].copy()

  def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns (blurred, sharp), both uint8 HxWx3 with the same shape.

    The arrays are copies, so a caller augmenting them in place cannot corrupt
    the cache.
    """
    i = self._index(i)
    if i not in self._blurred:
      # One generator per pair: the kernel is drawn first, then the noise, so
      # kernel(i) can regenerate the kernel without blurring.
      rng = np.random.default_rng([self._seed, i])
      kernel = self._draw_kernel(rng)
      self._kernels.setdefault(i, kernel)
      sharp = self._sharp[i % len(self._sharp)]
      blurred = blur(images.to_float(sharp), kernel, noise_std=self._noise_std, rng=rng)
      self._blurred[i] = images.to_uint8(blurred)
    return self._blurred[i].copy(), self._sharp[i % len(self._sharp)].copy()
