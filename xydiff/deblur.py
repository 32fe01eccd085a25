"""--mode=deblur: restores a user's own photos with a trained, imported or fetched model.

  python launch.py --workdir=DIR --mode=deblur --input=photos/ --output=restored/ \
      [--checkpoint=DIR/checkpoints/STEP] [--config.deblur.tile=1024 ...]

The workdir's stored config is used (`--config` may be given, differing from
it in inference fields only); the work is done by `inference.Restorer`, the
same object Python users call.

`--input` is an image file, a folder (its .png/.jpg/.jpeg/.tif/.tiff files,
not recursive) or a glob. Each image is written to `--output` as `<stem>.png`
in the format it came in:

- Bit depth: an 8-bit input gives an 8-bit PNG, a 16-bit PNG or TIFF a 16-bit PNG.
- Grayscale: the networks are trained on RGB, so the grey image is restored
  as three equal channels and the result (the mean of the three restored
  channels) is saved grey again, like the input.
- Alpha (RGBA, grey + alpha): the colour is restored and the alpha channel is
  copied unchanged; deblurring a matte would invent edges the user never drew.

Photos are turned upright by their EXIF orientation first (every format), as
a viewer shows them. Images of any size go through: the networks reflect-pad
H and W to their size multiple and crop back, so an image that is a multiple
already is restored exactly as the network computes it. Each new size
compiles the network once; JAX's persistent compilation cache (in the user's
cache folder, `compilation_cache`) keeps those compiles for later runs.
Opt-in `config.deblur.size_bucket` > 0 pads untiled images further, up to a
multiple of it, so photos of nearby sizes share one compiled shape (outputs
then differ near the bottom and right edges). An image larger than `config.deblur.tile`
on either side is restored in overlapping tiles (`config.deblur.tile_overlap`)
blended with raised-cosine ramps, so memory stays bounded and no seam shows.
An image too small for the network (e.g. 2x2 for XYDeblur) is reported as a
failed file with the network's minimum size; upscaling it would restore an
image the user never took. A file whose header says it has more pixels than
`config.deblur.max_megapixels` (default 50; 0: no limit) is refused before it
is decoded, naming the file, its width x height and the field.

Diffusion models (models.is_diffusion, e.g. 'dvsr') sample with the preset
`config.deblur.preset`, average `config.deblur.num_samples` samples (0: the
preset's own count) and also write `<stem>_std.png`, the per-pixel standard
deviation over the samples (mean over RGB), scaled to its own maximum so the
uncertain regions are visible; the maximum is logged for each image. A tiled
image draws independent noise in each tile, so its overlaps blend two samples.

A file that cannot be read or written, is over the pixel limit, is too small,
or restores to NaN or infinite values (never saved as a black PNG) is reported
on stderr, naming it, and the others go on; `run` then returns 1, so scripts
can tell that something was skipped.
"""

from __future__ import annotations

import glob
import os
import sys
import time

import jax
import numpy as np
from absl import logging

from xydiff import download, images, inference
from xydiff.errors import DataError, ImageReadError, ImageValueError, NonFiniteOutputError


class _FileFailed(Exception):
  """One input could not be restored; the message names it and says why."""


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
    if _same_file(paths[-1], path):
      raise DataError(f'--output {output} would overwrite the input {path}; '
                      'choose another output folder')
  clashes = {s: p for s, p in by_stem.items() if len(p) > 1}
  if clashes:
    names = '; '.join(', '.join(p) for p in clashes.values())
    raise DataError(f'--input has images that share a name and would be written to the same '
                    f'output: {names}')
  return paths


def _same_file(a: str, b: str) -> bool:
  """Whether writing `a` would overwrite `b`: the same file however reached (symlinked
  folders, hard links, bind mounts), compared by device and inode, not by path."""
  try:
    return os.path.samefile(a, b)
  except OSError:  # `a` does not exist yet: writing it overwrites nothing.
    return False


def compilation_cache() -> str:
  """Turns on JAX's persistent compilation cache, in <user cache>/jax unless set already.

  Every new image size compiles the network (seconds for XYDeblur on a CPU);
  the cache keeps those executables on disk, so later runs on photos of the
  same sizes load them instead. JAX_COMPILATION_CACHE_DIR or jax.config
  choose another folder. Returns the folder.
  """
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir', os.path.join(download.cache_dir(), 'jax'))
  return jax.config.jax_compilation_cache_dir


def resolve_checkpoint(workdir: str, checkpoint: str | None) -> tuple[str, int | None]:
  """(workdir, step) to restore: the workdir's latest, or the `--checkpoint` folder given."""
  if checkpoint is None:
    if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
      raise FileNotFoundError(
          f'no checkpoint in {workdir}: train there, fetch official weights '
          '(python -m xydiff.tools.fetch_weights xydeblur_gopro --workdir=DIR), or pass '
          '--checkpoint')
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

# The flag that sets the pixel limit of --mode=deblur, named when a file is refused.
LIMIT_FLAG = '--config.deblur.max_megapixels'


def _restore_file(path: str, out_path: str, restore, limit: images.PixelLimit) -> dict:
  """Reads, restores and writes one image; raises _FileFailed saying why it could not."""
  try:
    stored = images.read_image(path, keep_channels=True, limit=limit)
  except ImageReadError as e:  # Damaged, not an image, or over the limit (by its header).
    raise _FileFailed(str(e)) from None
  channels = stored.shape[-1]
  bit_depth = 16 if stored.dtype == np.uint16 else 8
  rgb = stored[..., :1].repeat(3, axis=-1) if channels <= 2 else stored[..., :3]
  try:
    out = restore(images.to_float(rgb))
  except (ImageValueError, NonFiniteOutputError) as e:  # Too small, or a non-finite output.
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
        checkpoint: str | None = None, *, config_from_user: bool | None = None) -> int:
  """Restores every image `input` names into the folder `output`; returns the exit status.

  `config` may be None: the workdir's stored config is used (inference.Restorer).
  0 when every image was restored, 1 when any failed (each failure is printed
  on stderr as it happens, and the remaining images are still restored).
  Problems that concern the whole run (no such input, no checkpoint, a bad
  config.deblur field) raise one of xydiff.errors.USER_ERRORS before any work.
  """
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel

  files = list_inputs(input)
  ckpt_workdir, step = resolve_checkpoint(workdir, checkpoint)
  compilation_cache()
  restorer = inference.Restorer.from_workdir(ckpt_workdir, step=step, config=config,
                                             config_from_user=config_from_user)
  out_paths = output_paths(files, output, std_maps=restorer.num_samples is not None)
  os.makedirs(output, exist_ok=True)
  logging.info('deblur: %d images with the step-%d %s model (%s) into %s', len(files),
               restorer.step, restorer.config.model.name, restorer.description, output)

  limit = images.PixelLimit(restorer.pixel_limit.megapixels, LIMIT_FLAG)
  base_key = jax.random.key(restorer.config.seed)
  failed = 0
  bar = tqdm(zip(files, out_paths), total=len(files), desc='deblur', unit='image',
             file=sys.stderr, disable=None)
  for index, (path, out_path) in enumerate(bar):
    start = time.time()
    key = jax.random.fold_in(base_key, index)
    try:
      info = _restore_file(path, out_path, lambda image: restorer.restore(image, key=key), limit)
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
