"""Large images in tiles, and size buckets: how one image becomes the network's inputs.

`restore_image` runs a restore function (`fn(params, blur [1, H, W, 3], key)`)
on one image: reflect-padded to the network's size multiple exactly as the
networks pad internally, optionally padded further to a size bucket, and cut
into aligned, overlapping tiles blended with raised-cosine ramps when it is
larger than the tile size, so memory stays bounded and no seam shows.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from xydiff.errors import ConfigError
from xydiff.inference import ensemble as ensemble_lib


def tile_starts(length: int, tile: int, overlap: int, align: int) -> list[int]:
  """Offsets of tiles of `tile` pixels covering [0, length); neighbours share >= `overlap`.

  `length`, `tile` and `overlap` are multiples of `align`, the network's
  downsampling factor. Strided networks are translation-equivariant only under
  shifts by that factor, so a tile starting on a multiple of it computes, away
  from its own edges, exactly what the whole image would. The tiles are spread
  evenly: no overlap is much wider than the others.
  """
  if tile >= length:
    return [0]
  stride = tile - overlap
  count = 1 + math.ceil((length - tile) / stride)
  return [(i * (length - tile) // (count - 1)) // align * align for i in range(count)]


def blend_window(size: int, before: int, after: int) -> np.ndarray:
  """1-D blending weights of one tile that shares `before`/`after` pixels with its neighbours.

  Raised-cosine ramps over each shared stretch: the neighbour's ramp is the
  complement (sin^2 + cos^2 = 1), so two tiles blend into a partition of
  unity, and each tile's weight fades to almost nothing at its own edge, where
  its output is least reliable. The half-pixel offset keeps every weight
  positive, so every pixel has a defined blend.
  """
  weights = np.ones(size, np.float32)
  for shared, side in ((before, 1), (after, -1)):
    shared = min(shared, size)
    if shared:
      ramp = np.sin(0.5 * np.pi * (np.arange(shared) + 0.5) / shared) ** 2
      if side > 0:
        weights[:shared] = np.minimum(weights[:shared], ramp)
      else:
        weights[size - shared:] = np.minimum(weights[size - shared:], ramp[::-1])
  return weights


def _windows(starts: list[int], size: int) -> list[np.ndarray]:
  shared = [prev + size - start for prev, start in zip(starts, starts[1:])]
  return [blend_window(size, shared[i - 1] if i > 0 else 0, shared[i] if i < len(shared) else 0)
          for i in range(len(starts))]


def bucketed(length: int, align: int, bucket: int) -> int:
  """`length` padded up to the next multiple of `bucket` (itself a multiple of `align`).

  Opt-in (config.inference.size_bucket > 0): each distinct input shape compiles
  the network once, and rounding sizes up to buckets lets a folder of photos
  of nearby sizes share a few compiled shapes, but the extra border changes
  outputs near the bottom and right edges. Bucket 0 keeps the network's own
  multiple `align`: a size that is one already is not padded at all.
  """
  step = math.lcm(align, bucket) if bucket > 0 else align
  return -(-length // step) * step


_OUTPUTS = ('image', 'std', 'samples')


def restore_image(fn, params, image: np.ndarray, key: jax.Array, *, align: int,
                  tile: int = 0, overlap: int = 0, bucket: int = 0,
                  ensemble: int = 1, on_tile=None) -> dict[str, np.ndarray]:
  """Runs `fn` (restorer.restore_fn) on one HxWx3 float image.

  The image is reflect-padded to a multiple of `align` exactly as the networks
  pad internally, so a single pass equals calling the model on the image; with
  `bucket` > 0 further, to a multiple of `bucket`, so that nearby sizes reuse
  one compiled shape (the extra reflected border changes outputs only within
  the network's receptive field of the bottom and right edges). When the
  padded image is larger than `tile` (> 0) on either side it is cut into
  aligned tiles that share at least `overlap` pixels, each restored on its own
  and blended with `blend_window`. Returns float32 arrays cropped back to HxW:
  'image', and 'std' and 'samples' ([N, H, W, 3]) when `fn` samples a
  diffusion model. Raises ValueError ('too small') for an image below the
  network's minimum size. `ensemble` 8 wraps all of this in the x8
  self-ensemble (`ensemble.ensembled`), with the same `key` for every transform.
  `on_tile(done, total)`, if given, is called after each tile of a tiled
  image (the ensemble's 8 passes counted as one run of 8x the tiles).
  """
  if ensemble != 1:
    passes = []  # Finished passes, so that tiles count on across the ensemble's views.

    def view_tile(done, total):
      on_tile(len(passes) * total + done, ensemble * total)
      if done == total:
        passes.append(total)
    return ensemble_lib.ensembled(
        lambda view: restore_image(fn, params, view, key, align=align, tile=tile,
                                   overlap=overlap, bucket=bucket,
                                   on_tile=view_tile if on_tile else None), image, ensemble)
  image = np.asarray(image, np.float32)
  h, w = image.shape[:2]
  ph, pw = (-h) % align, (-w) % align
  if (ph or pw) and (ph >= h or pw >= w):
    raise ValueError(f'image of {w}x{h} pixels is too small: the network needs at least '
                     f'{align // 2 + 1}x{align // 2 + 1}')
  # numpy's reflect, which jnp.pad (layers.pad_to_multiple) copies: an eager jax op would
  # compile, and keep for good, an executable for every image shape.
  padded = np.pad(image, ((0, ph), (0, pw), (0, 0)), mode='reflect')[None]
  height, width = padded.shape[1:3]
  if bucket > 0:
    extra_h, extra_w = bucketed(height, align, bucket) - height, bucketed(width, align, bucket) - width
    if tile > 0:  # Tiles already have one shape: bucket only what stays whole.
      extra_h, extra_w = (extra_h if height < tile else 0), (extra_w if width < tile else 0)
    padded = np.pad(padded, ((0, 0), (0, extra_h), (0, extra_w), (0, 0)), mode='symmetric')
    height, width = padded.shape[1:3]
  tile_h = min(tile, height) if tile > 0 else height
  tile_w = min(tile, width) if tile > 0 else width
  if (tile_h, tile_w) == (height, width):
    out = fn(params, jnp.asarray(padded), key)
    # Cropped on the host: a jax slice would compile per shape too.
    result = {name: np.ascontiguousarray(np.asarray(out[name])[0, :h, :w])
              for name in ('image', 'std') if name in out}
    if 'samples' in out:
      result['samples'] = np.ascontiguousarray(np.asarray(out['samples'])[:, 0, :h, :w])
    return result

  ys, xs = tile_starts(height, tile_h, overlap, align), tile_starts(width, tile_w, overlap, align)
  wys, wxs = _windows(ys, tile_h), _windows(xs, tile_w)
  total = np.zeros((height, width, 1), np.float32)
  sums = {}
  for i, (y0, wy) in enumerate(zip(ys, wys)):
    for j, (x0, wx) in enumerate(zip(xs, wxs)):
      crop = padded[:, y0:y0 + tile_h, x0:x0 + tile_w]
      out = fn(params, jnp.asarray(crop), jax.random.fold_in(key, i * len(xs) + j))
      weight = (wy[:, None] * wx[None, :])[..., None]
      total[y0:y0 + tile_h, x0:x0 + tile_w] += weight
      for name in _OUTPUTS:
        if name in out:
          value = np.asarray(out[name])[:, 0] if name == 'samples' else np.asarray(out[name])[0]
          acc = sums.setdefault(name, np.zeros(value.shape[:-3] + (height, width, 3), np.float32))
          acc[..., y0:y0 + tile_h, x0:x0 + tile_w, :] += weight * value
      if on_tile is not None:
        on_tile(i * len(xs) + j + 1, len(ys) * len(xs))
  return {name: (acc / total)[..., :h, :w, :] for name, acc in sums.items()}


def aligned_tiling(tile: int, overlap: int, align: int) -> tuple[int, int]:
  """config.inference.tile rounded down and tile_overlap up to multiples of `align`."""
  if tile == 0:
    return 0, 0
  tile_a, overlap_a = tile // align * align, -(-overlap // align) * align
  if tile_a - overlap_a < align:
    raise ConfigError(
        f'config.inference.tile={tile} with tile_overlap={overlap}: this model works on multiples '
        f'of {align} pixels, so the tile ({tile_a}) must exceed the overlap ({overlap_a}) by at '
        f'least {align}')
  return tile_a, overlap_a
