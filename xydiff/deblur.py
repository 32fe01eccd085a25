"""--mode=deblur: restores a user's own photos with a trained or imported model.

  python launch.py --config=configs/xydeblur_gopro.py --workdir=DIR --mode=deblur \
      --input=photos/ --output=restored/ [--checkpoint=DIR/checkpoints/STEP]

`--input` is an image file, a folder (its .png/.jpg/.jpeg files, not
recursive) or a glob. Each image is written to `--output` as `<stem>.png` in
the format it came in:

- Bit depth: an 8-bit input gives an 8-bit PNG, a 16-bit PNG a 16-bit PNG.
- Grayscale: the networks are trained on RGB, so the grey image is restored
  as three equal channels and the result (the mean of the three restored
  channels) is saved grey again, like the input.
- Alpha (RGBA, grey + alpha): the colour is restored and the alpha channel is
  copied unchanged; deblurring a matte would invent edges the user never drew.

Images of any size go through: the networks reflect-pad H and W to their
downsampling factor and crop back. An image larger than `config.deblur.tile`
on either side is restored in overlapping tiles (`config.deblur.tile_overlap`)
blended with raised-cosine ramps, so memory stays bounded and no seam shows.
An image too small for the network (e.g. 2x2 for XYDeblur) is reported as a
failed file with the network's minimum size; upscaling it would restore an
image the user never took.

Diffusion models (config.model.name == 'dvsr') sample with the preset
`config.deblur.preset`, average `config.deblur.num_samples` samples (0: the
preset's own count) and also write `<stem>_std.png`, the per-pixel standard
deviation over the samples (mean over RGB), scaled to its own maximum so the
uncertain regions are visible; the maximum is logged for each image. A tiled
image draws independent noise in each tile, so its overlaps blend two samples.

A file that cannot be read or written is reported on stderr and the others go
on; `run` then returns 1, so scripts can tell that something was skipped.
"""

from __future__ import annotations

import glob
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from xydiff import evaluate, images, models, train
from xydiff.config_check import validate_model
from xydiff.errors import ConfigError, DataError, ImageReadError
from xydiff.models.layers import pad_to_multiple


class _FileFailed(Exception):
  """One input could not be restored; the message names it and says why."""


# ------------------------------------------------------------------ tiling

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


def _window(size: int, before: int, after: int) -> np.ndarray:
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
  return [_window(size, shared[i - 1] if i > 0 else 0, shared[i] if i < len(shared) else 0)
          for i in range(len(starts))]


def restore_image(fn, params, image: np.ndarray, key: jax.Array, *, align: int,
                  tile: int = 0, overlap: int = 0) -> dict[str, np.ndarray]:
  """Runs `fn` (an evaluate.make_restore_fns / make_sampler function) on one HxWx3 image.

  The image is reflect-padded to a multiple of `align` exactly as the networks
  pad internally, so a single pass equals calling the model on the image.
  When the padded image is larger than `tile` (> 0) on either side it is cut
  into aligned tiles that share at least `overlap` pixels, each restored on
  its own and blended with `_window`. Returns float32 HxWx3 arrays: 'image',
  and 'std' when `fn` samples a diffusion model. Raises ValueError ('too
  small') for an image below the network's minimum size.
  """
  padded, (h, w) = pad_to_multiple(jnp.asarray(image, jnp.float32)[None], align)
  padded = np.asarray(padded)
  height, width = padded.shape[1:3]
  tile_h = min(tile, height) if tile > 0 else height
  tile_w = min(tile, width) if tile > 0 else width
  if (tile_h, tile_w) == (height, width):
    out = fn(params, jnp.asarray(padded), key)
    return {name: np.asarray(out[name][0, :h, :w]) for name in ('image', 'std') if name in out}

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
      for name in ('image', 'std'):
        if name in out:
          acc = sums.setdefault(name, np.zeros((height, width, 3), np.float32))
          acc[y0:y0 + tile_h, x0:x0 + tile_w] += weight * np.asarray(out[name][0])
  return {name: (acc / total)[:h, :w] for name, acc in sums.items()}


def size_multiple(model: nnx.Module) -> int:
  """The factor every network inside `model` pads H and W to (their least common multiple)."""
  multiple = 1
  for _, node in nnx.iter_graph(model):
    factor = getattr(node, 'size_multiple', None)
    if isinstance(factor, int):
      multiple = math.lcm(multiple, factor)
  return multiple


# ------------------------------------------------------------------ inputs

def list_inputs(pattern: str) -> list[str]:
  """The files `--input` names: one file, a folder's images (not recursive), or a glob's."""
  is_image = lambda p: os.path.isfile(p) and p.lower().endswith(images.IMAGE_EXTENSIONS)
  kinds = '/'.join(images.IMAGE_EXTENSIONS)
  if os.path.isdir(pattern):
    files = sorted(p for p in (os.path.join(pattern, n) for n in os.listdir(pattern))
                   if is_image(p))
    if not files:
      raise FileNotFoundError(f'--input {pattern} is a folder without {kinds} images')
    return files
  if os.path.isfile(pattern):
    return [pattern]
  if any(c in pattern for c in '*?['):
    files = sorted(p for p in glob.glob(pattern) if is_image(p))
    if not files:
      raise FileNotFoundError(f'--input {pattern} matches no {kinds} images')
    return files
  raise FileNotFoundError(f'--input {pattern} does not exist')


def output_paths(files: list[str], output: str, *, std_maps: bool = False) -> list[str]:
  """`<output>/<stem>.png` for each input; refuses names that would collide or overwrite.

  With `std_maps` the `<stem>_std.png` beside each output counts too, so an
  input named `a_std.png` cannot be overwritten by the std map of `a.png`.
  """
  if os.path.exists(output) and not os.path.isdir(output):
    raise DataError(f'--output {output} is a file; it must be a folder')
  paths, by_stem = [], {}
  for path in files:
    stem = os.path.splitext(os.path.basename(path))[0]
    by_stem.setdefault(stem, []).append(path)
    if std_maps:
      by_stem.setdefault(f'{stem}_std', []).append(f'{path} (its std map)')
    paths.append(os.path.join(output, f'{stem}.png'))
    if os.path.abspath(paths[-1]) == os.path.abspath(path):
      raise DataError(f'--output {output} would overwrite the input {path}; '
                      'choose another output folder')
  clashes = {s: p for s, p in by_stem.items() if len(p) > 1}
  if clashes:
    names = '; '.join(', '.join(p) for p in clashes.values())
    raise DataError(f'--input has images that share a name and would be written to the same '
                    f'output: {names}')
  return paths


def resolve_checkpoint(workdir: str, checkpoint: str | None) -> tuple[str, int | None]:
  """(workdir, step) to restore: the workdir's latest, or the `--checkpoint` folder given."""
  if checkpoint is None:
    if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
      raise FileNotFoundError(
          f'no checkpoint in {workdir}: train there, import official weights '
          '(python -m xydiff.tools.import_xydeblur), or pass --checkpoint')
    return workdir, None
  path = os.path.abspath(checkpoint)
  if not os.path.isdir(path):
    raise FileNotFoundError(f'--checkpoint {checkpoint} does not exist')
  step, parent = os.path.basename(path), os.path.dirname(path)
  if not step.isdigit() or os.path.basename(parent) != 'checkpoints':
    raise FileNotFoundError(f'--checkpoint {checkpoint} is not a checkpoint folder '
                            '<workdir>/checkpoints/<step>')
  return os.path.dirname(parent), int(step)


# ------------------------------------------------------------------ run

def _settings(config) -> tuple[int, int, int | None]:
  """(tile, overlap, num_samples) from config.deblur, checked; num_samples None if deterministic.

  The model fields are checked as every mode checks them (validate_model); not
  the rest of config_check.validate, which also insists on a training data
  folder that deblurring does not need.
  """
  db = config.deblur
  validate_model(config)
  if not (isinstance(db.tile, int) and db.tile >= 0):
    raise ConfigError(f'config.deblur.tile={db.tile!r}: must be an integer >= 0 (0: never tile)')
  if not (isinstance(db.tile_overlap, int) and db.tile_overlap >= 0):
    raise ConfigError(f'config.deblur.tile_overlap={db.tile_overlap!r}: must be an integer >= 0')
  if not models.is_diffusion(config.model):
    return db.tile, db.tile_overlap, None
  if db.preset not in config.diffusion.presets:
    raise ConfigError(f'config.deblur.preset={db.preset!r}: must be one of '
                      f'{tuple(config.diffusion.presets)}')
  if not (isinstance(db.num_samples, int) and db.num_samples >= 0):
    raise ConfigError(f'config.deblur.num_samples={db.num_samples!r}: must be an integer >= 0 '
                      "(0: the preset's)")
  return db.tile, db.tile_overlap, db.num_samples or config.diffusion.presets[db.preset].num_samples


def _aligned_tiling(tile: int, overlap: int, align: int) -> tuple[int, int]:
  """config.deblur.tile rounded down and tile_overlap up to multiples of `align`."""
  if tile == 0:
    return 0, 0
  tile_a, overlap_a = tile // align * align, -(-overlap // align) * align
  if tile_a - overlap_a < align:
    raise ConfigError(
        f'config.deblur.tile={tile} with tile_overlap={overlap}: this model works on multiples '
        f'of {align} pixels, so the tile ({tile_a}) must exceed the overlap ({overlap_a}) by at '
        f'least {align}')
  return tile_a, overlap_a


def _load(config, workdir: str, checkpoint: str | None):
  """(graphdef, eval params, step) of the checkpoint to restore from."""
  ckpt_workdir, step = resolve_checkpoint(workdir, checkpoint)
  return train.load_for_inference(config, ckpt_workdir, step)


def _restore_file(path: str, out_path: str, restore, key) -> dict:
  """Reads, restores and writes one image; raises _FileFailed saying why it could not."""
  try:
    stored = images.read_image(path, keep_channels=True)
  except ImageReadError as e:
    raise _FileFailed(str(e)) from None
  channels = stored.shape[-1]
  bit_depth = 16 if stored.dtype == np.uint16 else 8
  rgb = stored[..., :1].repeat(3, axis=-1) if channels <= 2 else stored[..., :3]
  try:
    out = restore(images.to_float(rgb), key)
  except ValueError as e:  # pad_to_multiple: below the network's minimum size.
    if 'too small' not in str(e):
      raise
    raise _FileFailed(f'{path}: {e}') from None
  restored = out['image']
  if channels <= 2:  # Saved grey, like the input.
    restored = restored.mean(axis=-1, keepdims=True)
  result = images.to_uint16(restored) if bit_depth == 16 else images.to_uint8(restored)
  if channels in (2, 4):  # The alpha channel, unchanged.
    result = np.concatenate([result, stored[..., -1:]], axis=-1)
  info = {}
  try:
    images.write_png(out_path, result)
    if 'std' in out:
      std = out['std'].mean(axis=-1, keepdims=True)
      info['std_max'] = float(std.max())
      std_path = f'{os.path.splitext(out_path)[0]}_std.png'
      images.write_image(std_path, std / max(info['std_max'], 1e-8), bit_depth=bit_depth)
  except OSError as e:
    raise _FileFailed(f'cannot write {out_path}: {e}') from None
  return info


def run(config, workdir: str, input: str, output: str,  # pylint: disable=redefined-builtin
        checkpoint: str | None = None) -> int:
  """Restores every image `input` names into the folder `output`; returns the exit status.

  0 when every image was restored, 1 when any failed (each failure is printed
  on stderr as it happens, and the remaining images are still restored).
  Problems that concern the whole run (no such input, no checkpoint, a bad
  config.deblur field) raise one of xydiff.errors.USER_ERRORS before any work.
  """
  from tqdm import tqdm  # Comes with tensorflow-datasets.

  tile, overlap, num_samples = _settings(config)
  files = list_inputs(input)
  out_paths = output_paths(files, output, std_maps=num_samples is not None)
  graphdef, params, step = _load(config, workdir, checkpoint)
  if num_samples is None:
    fn = evaluate.make_restore_fns(config, graphdef)['restored']
    what = 'restored'
  else:
    preset = config.diffusion.presets[config.deblur.preset]
    fn = evaluate.make_sampler(graphdef, evaluate.preset_schedule(preset), num_samples,
                               config.diffusion.residual_scale)
    what = f"preset '{config.deblur.preset}', mean of {num_samples} samples"
  align = size_multiple(nnx.merge(graphdef, params))
  tile, overlap = _aligned_tiling(tile, overlap, align)
  os.makedirs(output, exist_ok=True)
  logging.info('deblur: %d images with the step-%d %s model (%s) into %s', len(files), step,
               config.model.name, what, output)

  def restore(image, key):
    return restore_image(fn, params, image, key, align=align, tile=tile, overlap=overlap)

  base_key = jax.random.key(config.seed)
  failed = 0
  bar = tqdm(zip(files, out_paths), total=len(files), desc='deblur', unit='image',
             file=sys.stderr, disable=None)
  for index, (path, out_path) in enumerate(bar):
    start = time.time()
    try:
      info = _restore_file(path, out_path, restore, jax.random.fold_in(base_key, index))
    except _FileFailed as e:
      failed += 1
      tqdm.write(f'error: {e}', file=sys.stderr)
      continue
    if bar.disable:  # No terminal for a progress bar: one log line per image instead.
      extra = f", std max {info['std_max']:.4f}" if 'std_max' in info else ''
      logging.info('%s -> %s (%.1f s%s)', path, out_path, time.time() - start, extra)
  bar.close()
  logging.info('deblur: restored %d of %d images into %s', len(files) - failed, len(files), output)
  return 1 if failed else 0
