"""The local web page of `xydiff serve`: drop photos in a browser, get them deblurred.

  xydiff serve --workdir=runs/xydeblur [--workdir=runs/dvsr ...] [--model=xydeblur_gopro]
               [--host=127.0.0.1] [--port=7860] [--share] [--max-megapixels=50]
               [--keep-minutes=60] [--auth-file=PATH]

Built on Gradio (pip install -e '.[app]'). Every model named is loaded once at
start-up; the page picks one, shown by what it is (family, training data,
step), not by its folder. Each model runs through `inference.Restorer`, the
object `xydiff deblur` and Python users call, so a photo restored here is
the Restorer's output bit for bit: EXIF orientation applied, large photos
tiled as the CLI tiles them, a 16-bit PNG restored and saved at 16 bits.
Requests wait in one queue and run one at a time on the device. Memory stays
bounded: a model keeps a Restorer for its stored settings and for the last
KEPT_SETTINGS others (each compiles its own networks), and a Restorer clears
JAX's compiled shapes once it has met more than Restorer.MAX_COMPILED_SHAPES
image shapes.

Disk stays bounded too: uploads, Gradio's cache, thumbnails and the restored
PNGs all live in one temporary folder (`xydiff-serve-*`); files older than
--keep-minutes are deleted as the server runs (Gradio's delete_cache), the
requests beyond the last KEPT_REQUESTS at once, and the whole folder when the
server stops, SIGTERM and Ctrl-C included. A --host other than a loopback
address (or --share) logs a warning at start; --auth / --auth-file make the
page ask for a login.

The page: upload one or many photos (drag and drop, or paste one), shown as
thumbnails, then a Blurry / Deblurred slider of each, the full-resolution
PNGs to download, and per image its size, time and, given a sharp target of
the same name (or one target for one photo), PSNR/SSIM/LPIPS as the
evaluator scores them. Diffusion models add the perception-distortion
control: presets explained in plain words, the sampler, steps (denoiser
calls: the time a photo takes grows with them), samples and seed; changing
the preset restores again. They also show the per-pixel std map and a
gallery of the samples. The progress bar moves by real fractions: per
photo, per tile of a tiled photo (Restorer.restore's on_tile) and per
sampling step (the samplers' xydiff.progress reports). A file
that is not an image, is damaged, or is larger than --max-megapixels is
reported once, in its row of the table, and the others are restored; the
server stays up. Photos and sharp targets alike are checked against
--max-megapixels from their headers, before a pixel is decoded. Sizes are
written width x height, in the table and in every message.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import dataclasses
import ipaddress
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from typing import Callable

import numpy as np
from absl import logging
from PIL import Image

from xydiff import configs, images, progress
from xydiff.diffusion import samplers
from xydiff.errors import USER_ERRORS, ConfigError, ImageReadError
from xydiff.evaluation import scoring
from xydiff.inference import restorer as inference, tiles

# Request folders of restored PNGs (and of upload thumbnails) kept on disk; older ones go.
KEPT_REQUESTS = 32
# Settings (preset, steps, samples, sampler) a model keeps compiled besides its stored
# one: each is a Restorer with networks compiled of its own, and the page's controls
# reach thousands of settings.
KEPT_SETTINGS = 4
# The flag that sets the page's pixel limit, named when a photo or target is refused.
LIMIT_FLAG = '--max-megapixels'
# The longest side of an upload's thumbnail, in pixels.
THUMBNAIL_SIZE = 256
# DvSR's output without sampling (models/dvsr.py PREDICTOR): a choice beside the presets.
PREDICTOR = 'predictor'

# What each family is, in a few words: (name as its paper writes it, what it does).
FAMILY_WORDS = {
    'xydeblur': ('XYDeblur', 'one pass; one encoder, two decoders that split the work along x '
                 'and y (Ji et al., CVPR 2022)'),
    'dvsr': ('DvSR', 'diffusion: a first guess by a predictor network, sharpened by sampling '
             'a denoiser (Whang et al., CVPR 2022)'),
    'unet': ('U-Net', 'one pass; an encoder-decoder'),
    'nafnet': ('NAFNet', 'one pass; blocks without nonlinear activations (Chen et al., '
               'ECCV 2022)'),
    'mimo_unet': ('MIMO-UNet', 'one pass; one U-Net fed and read at three scales (Cho et al., '
                  'ICCV 2021)'),
    'dmphn': ('DMPHN', 'one pass; a hierarchy of image patches (Zhang et al., CVPR 2019)'),
    'deepdeblur': ('DeepDeblur', 'one pass; coarse to fine over three scales (Nah et al., '
                   'CVPR 2017)'),
}
# config.data.name as a reader says it.
DATA_WORDS = {'gopro': 'GoPro', 'hide': 'HIDE', 'realblur_j': 'RealBlur-J',
              'realblur_r': 'RealBlur-R', 'synthetic': 'synthetic blur',
              'folder': 'photo pairs', 'prepared': 'prepared pairs'}
# DvSR presets in plain words, by their usual names; others are shown by their numbers.
PRESET_WORDS = {'sa': 'sharpest on average', 'perceptual': 'most realistic',
                'perceptual_ancestral': "most realistic, the paper's long chain (slow)",
                PREDICTOR: 'fastest (the first guess alone, no sampling)'}
# The samplers (diffusion.samplers.SAMPLERS) as the page offers them.
SAMPLER_WORDS = {
    'ancestral': "ancestral (the paper's: fresh noise at each step)",
    'ddim': 'DDIM',
    'dpmpp_2m': 'DPM-Solver++ 2M (good in few steps)',
    'dpmpp_2m_sde': 'DPM-Solver++ 2M SDE (few steps, adds noise)',
}
# Table headers stay whole words; the page's Markdown would break them anywhere.
PAGE_CSS = """
#xydiff-status th { white-space: nowrap; word-break: keep-all; }
#xydiff-status td { word-break: keep-all; overflow-wrap: anywhere; }
.xydiff-sides { display: flex; justify-content: space-between; font-weight: 600; }
"""


# ------------------------------------------------------------------ models

@dataclasses.dataclass(frozen=True)
class Settings:
  """What a request may change: sampling (diffusion models), seed and the ensemble."""
  preset: str | None = None
  steps: int | None = None
  samples: int | None = None
  sampler: str | None = None
  seed: int = 0
  ensemble: int = 1

  def sampling(self) -> dict:
    """Restorer.restore's sampling arguments (none for a deterministic model)."""
    if self.preset is None:
      return {}
    if self.preset == PREDICTOR:
      return dict(preset=PREDICTOR)
    return dict(preset=self.preset, steps=self.steps, samples=self.samples,
                sampler=self.sampler)


def preset_words(name: str, sampling) -> str:
  """A preset's radio label: its name, what it is for, and what it runs."""
  words = PRESET_WORDS.get(name)
  if name == PREDICTOR:
    return f'{name}: {words}'
  chains = (f'mean of {sampling.num_samples} chains' if sampling.num_samples > 1 else
            'one chain')
  run = f'{chains} of {sampling.num_steps} steps'
  return f'{name}: {words} ({run})' if words else f'{name} ({run})'


class ServedModel:
  """One model of the page: its weights, loaded once, and a Restorer per setting.

  `limit` (the page's --max-megapixels) replaces each Restorer's own
  config.inference.max_megapixels, so that the page has one limit. `about`
  says more of a named model (configs.NAMES).
  """

  def __init__(self, name: str, restorer: inference.Restorer, *,
               limit: images.PixelLimit | None = None, about: str = ''):
    self.name = name
    self.base = restorer
    self.config = restorer.config
    self.diffusion = 'presets' in self.config.inference
    self.limit = limit
    self.about = about
    if limit is not None:
      restorer.pixel_limit = limit
    # The stored settings are the base Restorer itself, always kept: the page's
    # default output is Restorer.from_workdir(...).restore(photo), nothing rebuilt.
    self._stored = restorer.settings()
    self._restorers = collections.OrderedDict()  # Other settings, least recently used first.

  # ------------------------------------------------------------ what the page shows

  @property
  def title(self) -> str:
    """The model's name in the page's model box: family, training data, step."""
    family = FAMILY_WORDS.get(self.config.model.name, (self.config.model.name, ''))[0]
    data = self.config.data.name if 'data' in self.config else ''
    trained = f', trained on {DATA_WORDS.get(data, data)}' if data else ''
    return f'{family}{trained}, step {self.base.step}'

  def describe(self) -> str:
    """What the model is and how it restores by default, in Markdown, for the page."""
    name = self.config.model.name
    family, what = FAMILY_WORDS.get(name, (name, self.base.family.describe(self._stored)))
    if name == 'dvsr':
      predictor = self.config.model.predictor.name
      what += f'; its predictor is {FAMILY_WORDS.get(predictor, (predictor,))[0]}'
    lines = [f'**{self.title}**: {what}.']
    if self.about:
      lines.append(self.about + '.')
    if self.diffusion:
      lines.append(f'Default: {self.base.family.describe(self._stored)}.')
    source = os.path.basename(os.path.normpath(self.base.source)) if self.base.source else ''
    if source:
      lines.append(f'Weights: `{source}`.')
    return ' '.join(lines)

  @property
  def presets(self) -> list[str]:
    if not self.diffusion:
      return []
    return list(self.config.inference.presets) + [PREDICTOR]

  def preset_choices(self) -> list[tuple[str, str]]:
    """(label, preset) of each preset, explained in plain words."""
    return [(preset_words(p, self.base.settings(preset=p)), p) for p in self.presets]

  def preset_defaults(self, preset: str) -> tuple[int | None, int | None, str | None]:
    """(steps, samples, sampler) a preset runs with, as the config defines it (None for
    the predictor, which does not sample)."""
    if preset == PREDICTOR:
      return None, None, None
    sampling = self.base.settings(preset=preset)
    return sampling.num_steps, sampling.num_samples, sampling.sampler

  def defaults(self) -> Settings:
    seed, ensemble = self.config.seed, self.config.inference.ensemble
    if not self.diffusion:
      return Settings(seed=seed, ensemble=ensemble)
    preset = self.config.inference.preset
    return Settings(preset, *self.preset_defaults(preset), seed=seed, ensemble=ensemble)

  # ------------------------------------------------------------ restoring

  def sampling(self, settings: Settings):
    """The family's compiled settings of a request (what one Restorer compiles)."""
    return self.base.settings(**settings.sampling())

  def describe_settings(self, settings: Settings) -> str:
    return self.base.family.describe(self.sampling(settings))

  def restorer(self, settings: Settings) -> inference.Restorer:
    """The Restorer of `settings`: the stored one, a kept one, or a new one (and the least
    recently used beyond KEPT_SETTINGS forgotten, its compiled networks freed)."""
    part = self.sampling(settings)  # Seed and ensemble are inputs, not compiles.
    if part == self._stored:
      return self.base
    if part in self._restorers:
      self._restorers.move_to_end(part)
      return self._restorers[part]
    base = self.base
    restorer = inference.Restorer(base.config, base.graphdef, base.params, base.step,
                                  source=base.source)
    if self.limit is not None:
      restorer.pixel_limit = self.limit
    self._restorers[part] = restorer
    while len(self._restorers) > KEPT_SETTINGS:
      self._restorers.popitem(last=False)[1].clear_compiled()
    return restorer

  def chains(self, settings: Settings, width: int, height: int) -> int:
    """How many times an image of this size runs the network (a sampler: its chain): once
    per tile (Restorer.tiling) and per ensemble view."""
    restorer, align = self.base, self.base.align
    size, overlap = restorer.tiling()
    if not restorer.tiles(height, width):
      return settings.ensemble
    aligned = lambda n: -(-n // align) * align
    count = lambda n: len(tiles.tile_starts(aligned(n), min(size, aligned(n)), overlap, align))
    return settings.ensemble * count(height) * count(width)

  def restore(self, image: np.ndarray, settings: Settings,
              on_tile: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
    return self.restorer(settings).restore(image, seed=settings.seed,
                                           ensemble=settings.ensemble, on_tile=on_tile,
                                           **settings.sampling())


def load_models(workdirs=(), models=(), *,
                limit: images.PixelLimit | None = None) -> dict[str, ServedModel]:
  """{key: ServedModel} of the runs and named models (or .safetensors files), each held
  to the page's pixel `limit` (None: each run's config.inference.max_megapixels).

  A key is the folder's or file's name, unique; the page shows each model's title,
  made unique by its key where two titles are the same.
  """
  loaded = {}
  sources = [(os.path.basename(os.path.normpath(w)) or w, inference.Restorer.from_workdir, w,
              '') for w in workdirs]
  for name in models:
    known = configs.NAMES.get(configs.ALIASES.get(name, name))  # An alias names one too.
    sources.append((os.path.basename(name), inference.Restorer.from_pretrained, name,
                    known.about if known else ''))
  for name, load, where, about in sources:
    unique, count = name, 1
    while unique in loaded:
      count += 1
      unique = f'{name} ({count})'
    logging.info('serve: loading %s', where)
    loaded[unique] = ServedModel(unique, load(where), limit=limit, about=about)
  return loaded


def model_choices(served: dict[str, ServedModel]) -> list[tuple[str, str]]:
  """(label, key) of each model for the model box: its title, and its key where two
  titles are the same."""
  titles = collections.Counter(model.title for model in served.values())
  return [(model.title if titles[model.title] == 1 else f'{model.title} ({key})', key)
          for key, model in served.items()]


# ------------------------------------------------------------------ one photo

@dataclasses.dataclass
class Result:
  """What the page shows of one photo; `error` set when it could not be restored."""
  name: str
  error: str = ''
  size: str = ''
  seconds: float = 0.0
  png: str | None = None  # The full-resolution PNG, at the input's bit depth.
  scores: dict = dataclasses.field(default_factory=dict)
  before: str | None = None  # 8-bit PNGs for the page.
  after: str | None = None
  std: str | None = None
  std_max: float = 0.0
  samples: list = dataclasses.field(default_factory=list)


def _short(message: str, *paths) -> str:
  """A message without the server's temporary folders: the file's name says which."""
  for path in paths:
    if path:
      message = message.replace(path, os.path.basename(path))
  return message


def _about_photo(message: str, path: str) -> str:
  """A message about the photo itself, for its row: the row names it, the message need not."""
  return message.replace(f'image {path}', 'the photo').replace(path, 'the photo')


def restore_file(model: ServedModel, path: str, settings: Settings, out_dir: str, *,
                 limit: images.PixelLimit, target: str | None = None, scorer=None,
                 on_tile: Callable[[int, int], None] | None = None,
                 on_photo: Callable[[int, int], None] | None = None) -> Result:
  """Restores one uploaded file into `out_dir`; errors become Result.error, never raised.

  The photo and its sharp `target` are both refused from their headers when over
  `limit`, and the target is read before any work is spent on the photo.
  Result.error names the target, never the photo: the page's row names that.
  `on_tile(done, total)` follows a tiled photo's tiles; `on_photo(width, height)` is
  called once the photo is read and checked, before it is restored.
  """
  name = os.path.basename(path)
  result = Result(name)
  start = time.time()
  try:
    for upload, what in ((path, 'the photo'), (target, os.path.basename(target or ''))):
      if upload is not None and not os.path.exists(upload):
        raise ImageReadError(f'{what} is no longer on the server: uploads are deleted after '
                             '--keep-minutes; upload it again')
    try:
      photo = images.read_image(path, limit=limit)  # Upright by EXIF; uint8 or uint16 RGB.
    except ImageReadError as e:
      raise ImageReadError(_about_photo(str(e), path)) from None
    bits = 16 if photo.dtype == np.uint16 else 8
    result.size = f'{photo.shape[1]}x{photo.shape[0]}, {bits}-bit'
    sharp = None
    if target is not None:
      try:
        sharp = images.read_image(target, limit=limit)
      except ImageReadError as e:
        raise ImageReadError(f'the sharp target: {_short(str(e), target)}') from None
      if sharp.shape != photo.shape:
        raise ImageReadError(f'the sharp target {os.path.basename(target)} is {sharp.shape[1]}x'
                             f'{sharp.shape[0]}, the photo {photo.shape[1]}x{photo.shape[0]}')
    if on_photo is not None:
      on_photo(photo.shape[1], photo.shape[0])
    out = model.restore(photo, settings, on_tile=on_tile)
    restored = out['image']
    stem = os.path.splitext(name)[0]
    result.png = os.path.join(out_dir, f'{stem}_deblurred.png')
    images.write_png(result.png, images.to_uint16(restored) if bits == 16 else
                     images.to_uint8(restored))
    result.before = os.path.join(out_dir, f'{stem}_before.png')
    images.write_png(result.before, images.to_uint8(images.to_float(photo)))
    result.after = result.png if bits == 8 else os.path.join(out_dir, f'{stem}_after.png')
    if bits == 16:
      images.write_png(result.after, images.to_uint8(restored))
    if 'std' in out:
      std = out['std'].mean(axis=-1)
      result.std_max = float(std.max())
      result.std = os.path.join(out_dir, f'{stem}_std.png')
      images.write_png(result.std, images.to_uint8(std / max(result.std_max, 1e-8)))
      for i, sample in enumerate(out['samples']):
        result.samples.append(os.path.join(out_dir, f'{stem}_sample{i}.png'))
        images.write_png(result.samples[-1], images.to_uint8(sample))
    if sharp is not None:
      result.scores = scorer(restored, images.to_float(sharp))
  except (ValueError, *USER_ERRORS) as e:  # Unreadable, too large or small, non-finite.
    result.error = _about_photo(_short(str(e), target), path)
  except Exception as e:  # pylint: disable=broad-except
    # The server outlives any one photo: the page says what failed, the log has the rest.
    logging.exception('serve: %s failed', name)
    result.error = f'{type(e).__name__}: {_about_photo(_short(str(e), target), path)}'
  result.seconds = time.time() - start
  return result


def restore_files(model: ServedModel, photos: list[str], settings: Settings, out_dir: str, *,
                  limit: images.PixelLimit, targets: dict[str, str] | None = None,
                  scorer=None, report: Callable[[float, str], None] | None = None
                  ) -> list[Result]:
  """Restores each of `photos`, reporting (fraction of the request done, what runs) before
  each photo, after each tile of a tiled one, at each sampling step of a diffusion model,
  and (1.0, 'done') at the end. Steps may be reported from a thread of JAX's runtime."""
  report = report or (lambda fraction, what: None)
  targets = targets or {}
  results = []
  count = len(photos)
  # The photo that runs, and its sampling chains: one per tile and ensemble view, each
  # walked step by step; `done` of them finished.
  where = {'index': 0, 'counted': '', 'chains': 1, 'done': 0}

  def on_photo(width, height):
    where.update(chains=model.chains(settings, width, height), done=0)

  def on_tile(done, total):
    report((where['index'] + done / total) / count, f"{where['counted']}: tile {done} of {total}")

  def on_step(done, total, what):
    part = min((where['done'] + done / total) / where['chains'], 1.0)
    if done >= total:
      where['done'] += 1
    report((where['index'] + part) / count, f"{where['counted']}: {what} {done} of {total}")

  with progress.forwarding(on_step):
    for index, path in enumerate(photos):
      name = os.path.basename(path)
      counted = f'{name} ({index + 1} of {count})' if count > 1 else name
      where.update(index=index, counted=counted, chains=1, done=0)
      report(index / count, counted)
      results.append(restore_file(model, path, settings, out_dir, limit=limit,
                                  target=targets.get(path), scorer=scorer, on_tile=on_tile,
                                  on_photo=on_photo))
  report(1.0, 'done')
  return results


def _escape(text: str) -> str:
  return text.replace('|', '\\|').replace('\n', ' ')


def status_table(run: int, model: ServedModel, settings: Settings, results: list[Result],
                 labels: dict) -> str:
  """The page's Markdown report of one request: what ran, and a row per photo."""
  what = [f'**Run {run}**', model.title]
  if model.diffusion:
    what.append(f'{model.describe_settings(settings)}, seed {settings.seed}')
  if settings.ensemble > 1:
    what.append(f'x{settings.ensemble} self-ensemble')
  done = sum(not r.error for r in results)
  what.append(f'{done} of {len(results)} restored')
  rows = ['| photo | size (width x height) | time | result |', '|---|---|---|---|']
  for r in results:
    if r.error:
      outcome = f'error: {r.error}'
    else:
      parts = ['restored']
      parts += [f'{k.upper()} {v:.2f} dB' if k == 'psnr' else f'{k.upper()} {v:.4f}'
                for k, v in r.scores.items() if k in labels]
      if r.std:
        parts.append(f'std max {r.std_max:.4f}')
      outcome = ', '.join(parts)
    rows.append(f'| {_escape(r.name)} | {r.size} | {r.seconds:.2f} s | {_escape(outcome)} |')
  lines = [' · '.join(what), '', *rows]
  if any(r.scores for r in results):
    lines += ['', 'Scores: ' + '; '.join(f'{k.upper()}: {v}' for k, v in labels.items())]
  return '\n'.join(lines)


def pair_targets(photos: list[str], targets: list[str]) -> dict[str, str]:
  """{photo: target}: targets by file name, or one target for one photo."""
  if len(photos) == 1 and len(targets) == 1:
    return {photos[0]: targets[0]}
  by_name = {os.path.basename(t): t for t in targets}
  return {p: by_name[os.path.basename(p)] for p in photos if os.path.basename(p) in by_name}


def thumbnails(paths: list[str], out_dir: str, *,
               limit: images.PixelLimit) -> list[tuple[str, str]]:
  """(thumbnail PNG, caption) of each upload that reads as an image, upright, at most
  THUMBNAIL_SIZE on its longer side; the others are left out (Deblur reports them)."""
  shown = []
  for index, path in enumerate(paths):
    try:
      photo = images.read_image(path, limit=limit)
    except (ValueError, *USER_ERRORS):
      continue
    thumb = Image.fromarray(images.to_uint8(images.to_float(photo)))
    thumb.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    out = os.path.join(out_dir, f'thumb{index}.png')
    thumb.save(out)
    shown.append((out, os.path.basename(path)))
  return shown


# ------------------------------------------------------------------ the page

class Outputs:
  """Every file of the page, in one temporary folder `root` (`xydiff-serve-*`).

  Gradio keeps its uploads and cache in `root` (serve sets GRADIO_TEMP_DIR to
  it), and each request writes its PNGs in a folder of `root/requests/`, the
  oldest beyond KEPT_REQUESTS removed; inside Gradio's cache, they are served
  without Gradio copying them. `parent` is where `root` is made (default: the
  system's temporary folder, TMPDIR). `remove()` deletes it all.
  """

  def __init__(self, parent: str | None = None):
    self.root = tempfile.mkdtemp(prefix='xydiff-serve-', dir=parent)
    self.requests = os.path.join(self.root, 'requests')
    os.mkdir(self.requests)
    self._count = 0

  def new(self) -> str:
    self._count += 1
    folder = os.path.join(self.requests, f'{self._count:06d}')
    os.mkdir(folder)  # Not makedirs: a request racing remove() must not make root again.
    for old in sorted(os.listdir(self.requests))[:-KEPT_REQUESTS]:
      shutil.rmtree(os.path.join(self.requests, old), ignore_errors=True)
    return folder

  def sweep(self, age_s: float) -> None:
    """Deletes the files directly in `root` older than `age_s`.

    These are Gradio's upload temporaries that it never removes itself: an
    upload refused over --max-upload-mb or cut off leaves its partial file,
    and its delete_cache only knows the uploads that completed.
    """
    now = time.time()
    try:
      entries = list(os.scandir(self.root))
    except FileNotFoundError:  # Removed as the server stops.
      return
    for entry in entries:
      try:
        if (entry.is_file(follow_symlinks=False) and
            now - entry.stat(follow_symlinks=False).st_mtime > age_s):
          os.unlink(entry.path)
      except FileNotFoundError:
        pass

  def remove(self) -> None:
    shutil.rmtree(self.root, ignore_errors=True)


def _sweep_until(stop: threading.Event, outputs: Outputs, frequency: int, age: int) -> None:
  while not stop.wait(frequency):
    outputs.sweep(age)


def cache_schedule(keep_minutes: float) -> tuple[int, int]:
  """Gradio's delete_cache (every `frequency` s, files older than `age` s) for --keep-minutes."""
  if isinstance(keep_minutes, bool) or not keep_minutes > 0:
    raise ConfigError(f'--keep-minutes={keep_minutes!r}: must be a number of minutes > 0')
  age = max(1, round(keep_minutes * 60))
  return min(max(1, age // 4), 300), age


def build_app(served: dict[str, ServedModel], *, limit: images.PixelLimit, outputs: Outputs,
              keep_minutes: float = 60.0):
  """The Gradio Blocks of the page (not launched: launch it with css=PAGE_CSS); build it
  with GRADIO_TEMP_DIR set to `outputs.root`, where its components keep their files."""
  import gradio as gr  # pylint: disable=import-outside-toplevel  # The optional `app` extra.

  keys = list(served)
  first = served[keys[0]]
  most_steps = max([m.preset_defaults(p)[0] or 1 for m in served.values() for p in m.presets]
                   + [1000])
  samplers_shown = [(SAMPLER_WORDS.get(s, s), s) for s in samplers.SAMPLERS]

  def model_updates(model: ServedModel):
    """Controls shown for `model`, set to its defaults."""
    d = model.defaults()
    return (gr.update(visible=model.diffusion),
            gr.update(choices=model.preset_choices(), value=d.preset),
            gr.update(value=d.steps or 1), gr.update(value=d.samples or 1),
            gr.update(value=d.sampler or samplers.SAMPLERS[0]), gr.update(value=d.seed),
            gr.update(value=d.ensemble == 8), model.describe(),
            gr.update(visible=model.diffusion), gr.update(visible=model.diffusion))

  def preset_updates(key, preset):
    """Steps, samples and sampler of the preset chosen (unchanged for the predictor)."""
    steps, samples, sampler = served[key].preset_defaults(preset)
    if steps is None:
      return gr.update(), gr.update(), gr.update()
    return gr.update(value=steps), gr.update(value=samples), gr.update(value=sampler)

  def shown(results: list[dict], name: str):
    """Slider, std map and samples of the photo `name` among the results."""
    chosen = next((r for r in results if r['name'] == name), None)
    if chosen is None:
      return None, None, []
    samples = [(p, f'sample {i}') for i, p in enumerate(chosen['samples'])]
    return (chosen['before'], chosen['after']), chosen['std'], samples

  def uploads(files):
    paths = [f for f in (files or []) if f]
    return thumbnails(paths, outputs.new(), limit=limit) if paths else []

  def run(key, files, pasted, targets, preset, steps, samples, sampler, seed, ensemble,
          run_number, progress=gr.Progress()):
    model = served[key]
    photos = [f for f in (files or []) if f] + ([pasted] if pasted else [])
    run_number = (run_number or 0) + 1
    if not photos:
      return (None, gr.update(choices=[], value=None), None,
              f'**Run {run_number}**: drop, choose or paste a photo first.', None, [], [],
              run_number)
    settings = Settings(seed=int(seed or 0), ensemble=8 if ensemble else 1)
    if model.diffusion:
      settings = dataclasses.replace(settings, preset=preset, steps=int(steps),
                                     samples=int(samples), sampler=sampler)
    scorer = scoring.Scorer(scoring.uses_alignment(model.config), model.config.eval.lpips)
    # Steps are reported from JAX's runtime threads: gr.Progress finds its request in
    # context variables, so each report runs in this request's context, one at a time.
    context, lock = contextvars.copy_context(), threading.Lock()

    def report(fraction, what):
      with lock:
        context.run(progress, fraction, desc=what)
    results = restore_files(model, photos, settings, outputs.new(), limit=limit,
                            targets=pair_targets(photos, [t for t in (targets or []) if t]),
                            scorer=scorer, report=report)
    # Each error is said once, in its photo's row of the table: no toast besides.
    good = [dataclasses.asdict(r) for r in results if not r.error]
    status = status_table(run_number, model, settings, results, scorer.labels)
    first_name = good[0]['name'] if good else None
    slider, std, gallery = shown(good, first_name)
    return (slider, gr.update(choices=[r['name'] for r in good], value=first_name),
            [r['png'] for r in good] or None, status, std, gallery, good, run_number)

  d = first.defaults()
  with gr.Blocks(title='xydiff: deblur', analytics_enabled=False,
                 delete_cache=cache_schedule(keep_minutes)) as page:
    gr.Markdown('# xydiff: deblur your photos\nDrop photos (PNG or TIFF 8/16-bit, JPEG), or '
                'paste one, then **Deblur**. Everything runs on this machine.')
    with gr.Row():
      model_choice = gr.Dropdown(model_choices(served), value=keys[0], label='Model',
                                 elem_id='xydiff-model', interactive=len(keys) > 1)
      model_info = gr.Markdown(first.describe(), elem_id='xydiff-model-info')
    with gr.Row():
      with gr.Column():
        files = gr.File(file_count='multiple', file_types=['image'], label='Photos',
                        elem_id='xydiff-photos')
        previews = gr.Gallery(label='Uploaded photos', columns=6, fit_columns=False,
                              object_fit='contain', height=140, allow_preview=False,
                              interactive=False, format='png', elem_id='xydiff-thumbnails')
        pasted = gr.Image(sources=['clipboard', 'upload'], type='filepath', format='png',
                          label='...or paste one', elem_id='xydiff-paste', height=160)
        targets = gr.File(file_count='multiple', file_types=['image'],
                          label='Sharp targets (optional: scores PSNR/SSIM/LPIPS)',
                          elem_id='xydiff-targets')
        with gr.Group(visible=first.diffusion) as sampling:
          preset = gr.Radio(first.preset_choices(), value=d.preset, elem_id='xydiff-preset',
                            label='Preset',
                            info='The same weights, sampled differently: most realistic '
                            '(detail that looks real, may be invented) or sharpest on '
                            'average (the highest PSNR, smoother)')
          sampler = gr.Radio(samplers_shown, value=d.sampler or samplers.SAMPLERS[0],
                             label='Sampler', elem_id='xydiff-sampler',
                             info="How each chain walks from noise to the photo; the preset's "
                             'own is chosen with it')
          num_steps = gr.Slider(1, most_steps, value=d.steps or 1, step=1,
                                label='Steps (denoiser calls; time grows with steps)',
                                elem_id='xydiff-steps')
          num_samples = gr.Slider(1, 32, value=d.samples or 1, step=1,
                                  label='Samples averaged (each a chain of its own; time grows '
                                  'with samples)', elem_id='xydiff-samples')
          seed = gr.Number(d.seed, precision=0, label='Seed', elem_id='xydiff-seed')
        ensemble = gr.Checkbox(d.ensemble == 8, label='x8 self-ensemble (flips x rot90, 8x the '
                               'time)', elem_id='xydiff-ensemble')
        button = gr.Button('Deblur', variant='primary', elem_id='xydiff-run')
      with gr.Column():
        gr.HTML('<div class="xydiff-sides"><span>◀ Blurry</span><span>Deblurred ▶</span></div>',
                elem_id='xydiff-slider-sides')
        slider = gr.ImageSlider(type='filepath', label='Blurry / Deblurred', format='png',
                                elem_id='xydiff-slider')
        which = gr.Dropdown([], label='Shown photo', elem_id='xydiff-shown')
        downloads = gr.File(file_count='multiple', label='Deblurred PNGs (full resolution)',
                            elem_id='xydiff-downloads', interactive=False)
        status = gr.Markdown(elem_id='xydiff-status')
        std_map = gr.Image(label='Per-pixel std over the samples (bright: uncertain)',
                           visible=first.diffusion, interactive=False, format='png',
                           elem_id='xydiff-std')
        gallery = gr.Gallery(label='Samples', visible=first.diffusion, columns=4,
                             format='png', elem_id='xydiff-samples-gallery')
    results = gr.State([])
    runs = gr.State(0)

    inputs = [model_choice, files, pasted, targets, preset, num_steps, num_samples, sampler,
              seed, ensemble, runs]
    outs = [slider, which, downloads, status, std_map, gallery, results, runs]
    button.click(run, inputs, outs, concurrency_id='device', api_name='deblur')
    files.change(uploads, files, previews, concurrency_id='thumbnails', api_name=False)
    model_choice.change(lambda key: model_updates(served[key]), model_choice,
                        [sampling, preset, num_steps, num_samples, sampler, seed, ensemble,
                         model_info, std_map, gallery], queue=False, api_name=False)
    # The perception-distortion control: a new preset restores again at once.
    preset.input(preset_updates, [model_choice, preset], [num_steps, num_samples, sampler],
                 queue=False, api_name=False).then(run, inputs, outs, concurrency_id='device',
                                                   api_name=False)
    which.input(shown, [results, which], [slider, std_map, gallery], queue=False,
                api_name=False)
  return page


def is_loopback(host: str) -> bool:
  """Whether `host` (an address or a name) reaches this machine only, every address it has."""
  try:
    addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
  except (OSError, UnicodeError):
    return False
  return bool(addresses) and all(
      ipaddress.ip_address(a.split('%')[0]).is_loopback for a in addresses)


def exposure(host: str, share: bool, auth) -> str | None:
  """The start-up warning of a page that other machines can reach; None on loopback only."""
  reach = []
  if not is_loopback(host):
    reach.append(f'--host={host} serves it to every machine that can reach this one')
  if share:
    reach.append("--share gives it a public link through Gradio's servers")
  if not reach:
    return None
  login = ('it asks for a login (--auth/--auth-file), sent over plain HTTP' if auth else
           'with no login: anyone there can run models on this machine (give --auth-file=PATH)')
  return f"serve: the page is not private: {'; '.join(reach)}; {login}"


def read_auth(pairs=(), auth_file: str | None = None) -> list[tuple[str, str]]:
  """Gradio's auth, [(user, password)], from --auth USER:PASSWORD values and the lines of
  --auth-file (blank lines and # comments skipped). Errors name the flag, file and line,
  never a password."""
  entries = [('--auth', value) for value in pairs]
  if auth_file:
    try:
      with open(auth_file, encoding='utf-8') as f:
        lines = f.read().splitlines()
    except OSError as e:
      raise FileNotFoundError(f'--auth-file {auth_file}: {e.strerror}') from None
    entries += [(f'--auth-file {auth_file} line {n}', line.strip())
                for n, line in enumerate(lines, 1) if line.strip() and
                not line.strip().startswith('#')]
    if not any(where.startswith('--auth-file') for where, _ in entries):
      raise ConfigError(f'--auth-file {auth_file} holds no user:password line')
  users = []
  for where, entry in entries:
    user, colon, password = entry.partition(':')
    if not (user and colon and password):
      raise ConfigError(f'{where}: expected user:password, both non-empty')
    users.append((user, password))
  return users


def _interrupt(signum, frame):  # pylint: disable=unused-argument
  # Python's default for SIGTERM ends the process at once, skipping every `finally`.
  raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def page_files():
  """Outputs holding every file of the page, all removed on exit, SIGTERM and Ctrl-C included.

  GRADIO_TEMP_DIR points into it while the context lasts, so Gradio keeps its
  uploads and cache there; enter it before Gradio is imported, which fixes
  some of its folders then. A GRADIO_TEMP_DIR the user set is where the
  folder is made.
  """
  main = threading.current_thread() is threading.main_thread()
  previous = signal.signal(signal.SIGTERM, _interrupt) if main else None
  user_temp = os.environ.get('GRADIO_TEMP_DIR')
  outputs = Outputs(user_temp)
  os.environ['GRADIO_TEMP_DIR'] = outputs.root
  try:
    yield outputs
  finally:
    outputs.remove()
    if user_temp is None:
      os.environ.pop('GRADIO_TEMP_DIR', None)
    else:
      os.environ['GRADIO_TEMP_DIR'] = user_temp
    if main:
      signal.signal(signal.SIGTERM, previous)


def serve(served: dict[str, ServedModel], *, host: str = '127.0.0.1', port: int = 7860,
          share: bool = False, limit: images.PixelLimit | None = None,
          max_upload_mb: int = 500, keep_minutes: float = 60.0, auth=None,
          outputs: Outputs | None = None, warn: bool = True) -> None:
  """Builds and launches the page; blocks until the server stops (SIGTERM and Ctrl-C stop it
  cleanly). Its files go in `outputs` (from page_files), or in a page_files() of its own.
  `warn` False: the caller has logged exposure()'s warning already."""
  limit = limit or images.PixelLimit(images.DEFAULT_MAX_MEGAPIXELS, LIMIT_FLAG)
  cache_schedule(keep_minutes)  # A bad value is refused before anything is made.
  warning = exposure(host, share, auth) if warn else None
  if warning:
    logging.warning('%s', warning)
  with contextlib.ExitStack() as stack:
    if outputs is None:
      outputs = stack.enter_context(page_files())
    page = build_app(served, limit=limit, outputs=outputs, keep_minutes=keep_minutes)
    # One request at a time on the device; the others wait in Gradio's queue.
    page.queue(default_concurrency_limit=1)
    stop = threading.Event()
    stack.callback(stop.set)
    threading.Thread(target=_sweep_until, args=(stop, outputs, *cache_schedule(keep_minutes)),
                     daemon=True, name='xydiff-sweep').start()
    page.launch(server_name=host, server_port=port, share=share, ssr_mode=False,
                max_file_size=f'{max_upload_mb}mb', auth=auth or None, css=PAGE_CSS)
