"""`xydiff deblur`: restores a user's own photos with a trained, imported or fetched model.

  xydiff deblur photos/ more.jpg -o restored/ --workdir=DIR [--step=N] [--tile=1024 ...]
  xydiff deblur photo.jpg -o restored/ --model=xydeblur_gopro

The work is done by `inference.Restorer`, the same object Python users
call; `restore_files` runs it over files, `run` builds it from a workdir.

Each input is an image file, a folder (its .png/.jpg/.jpeg/.tif/.tiff
files, not recursive) or a glob. Each image is written to the output folder as
`<stem>_deblurred.png` (`suffix` chooses what follows the stem, the empty
one included) in the format it came in:

- Bit depth: an 8-bit input gives an 8-bit PNG, a 16-bit PNG or TIFF a
  16-bit PNG.
- Grayscale: the networks are trained on RGB, so the grey image is restored
  as three equal channels and the result (the mean of the three restored
  channels) is saved grey again, like the input.
- Alpha (RGBA, grey + alpha): the colour is restored and the alpha channel is
  copied unchanged; deblurring a matte would invent edges the user never drew.

Nothing is overwritten unasked: outputs that exist already are refused in
one line listing them, unless `existing` is 'overwrite' (--overwrite) or
'skip' (--skip-existing: only the inputs without outputs are restored). An
input is never overwritten, however it is reached (a symlinked folder, a
hard link), and two inputs that would write the same output are refused.

Photos are turned upright by their EXIF orientation first (every format), as
a viewer shows them. Images of any size go through: the networks reflect-pad
H and W to their size multiple and crop back, so an image that is a multiple
already is restored exactly as the network computes it. Each new size
compiles the network once; JAX's persistent compilation cache (in the user's
cache folder, `compilation_cache`) keeps those compiles for later runs.
Opt-in `config.inference.size_bucket` > 0 pads untiled images further, up to
a multiple of it, so photos of nearby sizes share one compiled shape
(outputs then differ near the bottom and right edges). An image larger than
the tile size (`config.inference.tile`, --tile) on either side is restored
in overlapping tiles blended with raised-cosine ramps, so memory stays
bounded and no seam shows. An image too small for the network (e.g. 2x2 for
XYDeblur) is reported as a failed file with the network's minimum size;
upscaling it would restore an image the user never took. A file whose header
says it has more pixels than `config.inference.max_megapixels` (default 50;
0: no limit) is refused before it is decoded, naming the file, its width x
height and the field.

Diffusion models (e.g. 'dvsr') sample with the preset (--preset, default
`config.inference.preset`), average its samples (--samples) and also write
`<stem><suffix>_std.png`, the per-pixel standard deviation over the samples
(mean over RGB), scaled to its own maximum so the uncertain regions are
visible; the maximum is logged for each image. A tiled image draws
independent noise in each tile, so its overlaps blend two samples.

Progress shows on a terminal (xydiff.progress): a bar over the images, and
one over the tiles of a tiled image. A file that cannot be read or written,
is over the pixel limit, is too small, or restores to NaN or infinite
values (never saved as a black PNG) is reported on stderr, naming it, and
the others go on; the run then exits 1, so scripts can tell that something
was skipped.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import time
from collections.abc import Sequence

import jax
import numpy as np
from absl import logging

from xydiff import images, progress
from xydiff.interop import download
from xydiff.inference import restorer as inference
from xydiff.errors import DataError, ImageReadError, ImageValueError, NonFiniteOutputError

# What follows an input's stem in its output's name, as the page names them too.
DEFAULT_SUFFIX = '_deblurred'
# What to do with outputs that exist already: refuse the run, overwrite them, or skip
# their inputs.
EXISTING = ('refuse', 'overwrite', 'skip')


class _FileFailed(Exception):
  """One input could not be restored; the message names it and says why."""


# ------------------------------------------------------------------ inputs

def list_inputs(inputs: str | Sequence[str]) -> list[str]:
  """The files `inputs` name, in order: each a file, a folder's images (not recursive) or
  a glob's. A file named twice is restored once."""
  is_image = lambda p: os.path.isfile(p) and p.lower().endswith(images.IMAGE_EXTENSIONS)
  kinds = '/'.join(images.IMAGE_EXTENSIONS)
  found = []
  for pattern in [inputs] if isinstance(inputs, str) else inputs:
    if os.path.isdir(pattern):
      files = sorted(p for p in (os.path.join(pattern, n) for n in os.listdir(pattern))
                     if is_image(p))
      if not files:
        raise FileNotFoundError(f'input {pattern} is a folder without {kinds} images')
    elif os.path.isfile(pattern):
      files = [pattern]
    elif any(c in pattern for c in '*?['):
      files = sorted(p for p in glob.glob(pattern) if is_image(p))
      if not files:
        raise FileNotFoundError(f'input {pattern} matches no {kinds} images')
    else:
      raise FileNotFoundError(f'input {pattern} does not exist')
    found += files
  if not found:
    raise FileNotFoundError('no input given: name image files, folders or globs')
  unique = {os.path.abspath(p): p for p in reversed(found)}  # The first spelling of each.
  return [p for p in found if unique.get(os.path.abspath(p)) is p]


def output_name(path: str, suffix: str = DEFAULT_SUFFIX) -> str:
  """`<stem><suffix>.png`: what the input `path` is written as."""
  return f'{os.path.splitext(os.path.basename(path))[0]}{suffix}.png'


def std_name(out_path: str) -> str:
  """The std map written beside an output: `<output stem>_std.png`."""
  return f'{os.path.splitext(out_path)[0]}_std.png'


def _identity(path: str):
  """(device, inode) of an existing file, or None: a file however reached (symlinked
  folders, hard links, bind mounts) is compared by what it is, not by its path."""
  try:
    st = os.stat(path)
  except OSError:
    return None
  return st.st_dev, st.st_ino


@dataclasses.dataclass
class Plan:
  """What a run writes: (input, output) pairs to restore, and the inputs skipped."""
  todo: list[tuple[int, str, str]]  # (index among the inputs, input path, output path)
  skipped: list[str]


def plan_outputs(files: list[str], output: str, *, suffix: str = DEFAULT_SUFFIX,
                 std_maps: bool = False, existing: str = 'refuse') -> Plan:
  """Where each input goes in the folder `output`; refuses what would lose a file.

  Refused in one line (DataError): `output` being a file; an output (or, with
  `std_maps`, the std map beside it) that is one of the inputs; two inputs
  whose outputs share a name; and with existing='refuse', outputs that exist
  already (all of them listed). existing='skip' leaves out the inputs whose
  output exists; 'overwrite' replaces them.
  """
  if existing not in EXISTING:
    raise ValueError(f'existing={existing!r}: must be one of {EXISTING}')
  if os.sep in suffix or (os.altsep and os.altsep in suffix):
    raise DataError(f'--suffix={suffix}: must not hold a path separator')
  if os.path.exists(output) and not os.path.isdir(output):
    raise DataError(f'--output {output} is a file; it must be a folder')
  inputs = {identity: p for p in files if (identity := _identity(p)) is not None}
  plan, written_by, present = Plan([], []), {}, []
  for index, path in enumerate(files):
    out_path = os.path.join(output, output_name(path, suffix))
    writes = [out_path, std_name(out_path)] if std_maps else [out_path]
    for written in writes:
      name = os.path.basename(written)
      written_by.setdefault(name, []).append(
          path if written == out_path else f'{path} (its std map)')
      same = inputs.get(_identity(written) or ())
      if same is not None:
        whose = '' if same == path else f' with the result of {path}'
        raise DataError(f'--output {output} would overwrite the input {same}{whose}; choose '
                        'another output folder or --suffix')
    if os.path.exists(out_path):
      if existing == 'skip':
        plan.skipped.append(path)
        continue
      present += [w for w in writes if os.path.exists(w)]
    elif std_maps and os.path.exists(writes[1]):
      present.append(writes[1])
    plan.todo.append((index, path, out_path))
  clashes = [sources for sources in written_by.values() if len(sources) > 1]
  if clashes:
    names = '; '.join(', '.join(sources) for sources in clashes)
    raise DataError(f'inputs that share a name would be written to the same output: {names}; '
                    'rename them or restore them into separate folders')
  if present and existing == 'refuse':
    raise DataError(f'{len(present)} output{"s exist" if len(present) > 1 else " exists"} already: '
                    f'{", ".join(present)}; pass --overwrite to replace them or '
                    '--skip-existing to restore only the other inputs')
  return plan


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


def check_workdir(workdir: str) -> None:
  """Raises FileNotFoundError, saying what to do, unless `workdir` holds checkpoints."""
  if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    raise FileNotFoundError(
        f'no checkpoint in {workdir}: train there, fetch or import weights into it '
        '(xydiff fetch xydeblur_gopro --workdir=DIR), or deblur with --model=NAME')


# ------------------------------------------------------------------ run

# What sets deblur's pixel limit, named when a file is refused.
LIMIT_FLAG = '--config.inference.max_megapixels'


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
      images.write_image(std_name(out_path), std / max(info['std_max'], 1e-8),
                         bit_depth=bit_depth)
  except OSError as e:
    raise _FileFailed(f'cannot write {out_path}: {e}') from None
  return info


@dataclasses.dataclass
class Report:
  """What a run did: outputs written, inputs that failed (each printed) and inputs skipped."""
  written: list[str]
  failed: int
  skipped: int

  @property
  def status(self) -> int:
    """The exit status: 1 when any input failed."""
    return 1 if self.failed else 0


def restore_files(restorer, inputs, output: str, *, suffix: str = DEFAULT_SUFFIX,
                  existing: str = 'refuse', preset: str | None = None,
                  steps: int | None = None, samples: int | None = None,
                  sampler: str | None = None, seed: int | None = None,
                  tile: int | None = None, ensemble: int | None = None) -> Report:
  """Restores every image `inputs` name into the folder `output` with `restorer`.

  The settings are Restorer.restore's (None: the config's). Image n of the
  inputs draws its noise from fold_in(key(seed), n), whether or not others
  are skipped. Each failure is printed on stderr as it happens and the other
  images are still restored. Problems that concern the whole run (no such
  input, a bad setting, outputs in the way) raise one of
  xydiff.errors.USER_ERRORS before any work.
  """
  files = list_inputs(inputs)
  sampling = dict(preset=preset, steps=steps, samples=samples, sampler=sampler)
  restorer.settings(**sampling)  # A bad setting is named before any image is read.
  restorer.tiling(tile)
  plan = plan_outputs(files, output, suffix=suffix, std_maps=restorer.samples(**sampling),
                      existing=existing)
  compilation_cache()
  os.makedirs(output, exist_ok=True)
  logging.info('deblur: %d images with the step-%d %s model (%s) into %s', len(plan.todo),
               restorer.step, restorer.config.model.name,
               restorer.family.describe(restorer.settings(**sampling)), output)
  limit = images.PixelLimit(restorer.pixel_limit.megapixels, LIMIT_FLAG)
  base_key = jax.random.key(restorer.config.seed if seed is None else seed)
  report = Report([], 0, len(plan.skipped))
  with progress.task('deblur', total=len(plan.todo), unit='image') as bar:
    for index, path, out_path in plan.todo:
      bar.describe(os.path.basename(path))
      start = time.time()
      key = jax.random.fold_in(base_key, index)
      restore = lambda image: restorer.restore(  # pylint: disable=cell-var-from-loop
          image, key=key, tile=tile, ensemble=ensemble,
          on_tile=lambda done, total: bar.substep(done, total, 'tile'), **sampling)
      try:
        info = _restore_file(path, out_path, restore, limit)
      except _FileFailed as e:
        report.failed += 1
        progress.write(f'error: {e}')
        bar.update()
        continue
      report.written.append(out_path)
      bar.update()
      extra = f", std max {info['std_max']:.4f}" if 'std_max' in info else ''
      logging.info('%s -> %s (%.1f s%s)', path, out_path, time.time() - start, extra)
  return report


def run(config, workdir: str, inputs, output: str, *, step: int | None = None,
        config_from_user: bool | None = None, **options) -> int:
  """Restores `inputs` into `output` with the run in `workdir`; returns the exit status.

  `config` may be None: the workdir's stored config is used. `step`: the
  checkpoint (default the latest). `options` are restore_files'. 0 when
  every image was restored, 1 when any failed.
  """
  check_workdir(workdir)
  restorer = inference.Restorer.from_workdir(workdir, step=step, config=config,
                                             config_from_user=config_from_user)
  return restore_files(restorer, inputs, output, **options).status
