"""The local web page of `xydiff serve`: drop photos in a browser, get them deblurred.

  xydiff serve --workdir=runs/xydeblur [--workdir=runs/dvsr ...] [--pretrained=xydeblur_gopro]
               [--host=127.0.0.1] [--port=7860] [--share] [--max_megapixels=50]
               [--keep_minutes=60] [--auth_file=PATH]

Built on Gradio (pip install -e '.[app]'). Every model named is loaded once at
start-up; the page picks one. Each model runs through `inference.Restorer`,
the object `--mode=deblur` and Python users call, so a photo restored here is
the Restorer's output bit for bit: EXIF orientation applied, large photos
tiled as the CLI tiles them, a 16-bit PNG restored and saved at 16 bits.
Requests wait in one queue and run one at a time on the device. Memory stays
bounded: a model keeps the Restorers of its last KEPT_SETTINGS settings
besides its stored one, and a Restorer clears JAX's compiled shapes once it
has met more than Restorer.MAX_COMPILED_SHAPES image shapes.

Disk stays bounded too: uploads, Gradio's cache and the restored PNGs all live
in one temporary folder (`xydiff-serve-*`); files older than --keep_minutes
are deleted as the server runs (Gradio's delete_cache), the requests beyond the
last KEPT_REQUESTS at once, and the whole folder when the server stops,
SIGTERM and Ctrl-C included. A --host other than a loopback address (or
--share) logs a warning at start; --auth / --auth_file make the page ask for a
login.

The page: upload one or many photos (drag and drop, or paste one), then a
before/after slider of each, the full-resolution PNGs to download, and per
image its size, time and, given a sharp target of the same name (or one
target for one photo), PSNR/SSIM/LPIPS as the evaluator scores them.
Diffusion models add the perception-distortion control (preset, steps,
samples, seed; changing the preset restores again), the per-pixel std map
and a gallery of the samples. A file that is not an image, is damaged, or is
larger than --max_megapixels is reported in the page, and the others are
restored; the server stays up. Photos and sharp targets alike are checked
against --max_megapixels from their headers, before a pixel is decoded.
Sizes are written width x height, in the table and in every message.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import ipaddress
import os
import shutil
import signal
import socket
import tempfile
import threading
import time

import jax
import numpy as np
from absl import logging

from xydiff import images
from xydiff.inference import restorer as inference
from xydiff import config as run_config
from xydiff.evaluation import scoring
from xydiff.runs import state as state_lib
from xydiff.errors import USER_ERRORS, ConfigError, ImageReadError

# Request folders of restored PNGs kept on disk; older ones are removed.
KEPT_REQUESTS = 32
# Settings (preset, steps, samples, ensemble) a model keeps compiled besides its stored
# one: each is a Restorer with networks compiled of its own, and the page's sliders
# reach thousands of settings.
KEPT_SETTINGS = 4
# The flag that sets the page's pixel limit, named when a photo or target is refused.
LIMIT_FLAG = '--max_megapixels'


# ------------------------------------------------------------------ models

@dataclasses.dataclass(frozen=True)
class Settings:
  """What a request may change: sampling (diffusion models), seed and the ensemble."""
  preset: str | None = None
  num_steps: int | None = None
  num_samples: int | None = None
  seed: int = 0
  ensemble: int = 1


class ServedModel:
  """One model of the page: its weights, loaded once, and a Restorer per setting.

  `limit` (the page's --max_megapixels) replaces each Restorer's own
  config.deblur.max_megapixels, so that the page has one limit.
  """

  def __init__(self, name: str, restorer: inference.Restorer, *,
               limit: images.PixelLimit | None = None):
    self.name = name
    self.base = restorer
    self.config = restorer.config
    self.diffusion = restorer.num_samples is not None
    self.limit = limit
    if limit is not None:
      restorer.pixel_limit = limit
    self._graphdef = None
    # The stored settings are the base Restorer itself, always kept: the page's
    # default output is Restorer.from_workdir(...).restore(photo), nothing rebuilt.
    self._stored = self._compiled_part(self.defaults())
    self._restorers = collections.OrderedDict()  # Other settings, least recently used first.

  def defaults(self) -> Settings:
    db, seed, ensemble = self.config.deblur, self.config.seed, self.base.ensemble
    if not self.diffusion:
      return Settings(seed=seed, ensemble=ensemble)
    return Settings(db.preset, self.config.diffusion.presets[db.preset].num_steps,
                    self.base.num_samples, seed, ensemble)

  @property
  def presets(self) -> list[str]:
    return list(self.config.diffusion.presets) if self.diffusion else []

  def preset_defaults(self, preset: str) -> tuple[int, int]:
    """(num_steps, num_samples) of a preset, as the config defines it."""
    values = self.config.diffusion.presets[preset]
    return values.num_steps, values.num_samples

  def describe(self) -> str:
    family = self.config.model.name
    kind = 'diffusion' if self.diffusion else 'deterministic'
    return f'{family} ({kind}), step {self.base.step}'

  @staticmethod
  def _compiled_part(settings: Settings) -> Settings:
    return dataclasses.replace(settings, seed=0)  # The seed is an input, not a compile.

  def restorer(self, settings: Settings) -> inference.Restorer:
    """The Restorer of `settings`: the stored one, a kept one, or a new one (and the least
    recently used beyond KEPT_SETTINGS forgotten, its compiled networks freed)."""
    part = self._compiled_part(settings)
    if part == self._stored:
      return self.base
    if part in self._restorers:
      self._restorers.move_to_end(part)
      return self._restorers[part]
    config = run_config.from_plain(run_config.to_plain(self.config))
    config.deblur.ensemble = settings.ensemble
    if self.diffusion:
      config.deblur.preset = settings.preset
      config.deblur.num_samples = settings.num_samples
      config.diffusion.presets[settings.preset].num_steps = settings.num_steps
    if self._graphdef is None:
      self._graphdef = state_lib.abstract_state(self.config)[0]
    restorer = inference.Restorer(config, self._graphdef, self.base.params, self.base.step)
    if self.limit is not None:
      restorer.pixel_limit = self.limit
    self._restorers[part] = restorer
    while len(self._restorers) > KEPT_SETTINGS:
      self._restorers.popitem(last=False)[1].clear_compiled()
    return restorer

  def restore(self, image: np.ndarray, settings: Settings) -> dict[str, np.ndarray]:
    return self.restorer(settings).restore(image, key=jax.random.key(settings.seed))


def load_models(workdirs=(), pretrained=(), *,
                limit: images.PixelLimit | None = None) -> dict[str, ServedModel]:
  """{name in the page: ServedModel} of the runs and pretrained names (or .safetensors files),
  each held to the page's pixel `limit` (None: each run's config.deblur.max_megapixels)."""
  loaded = {}
  sources = [(os.path.basename(os.path.normpath(w)) or w, inference.Restorer.from_workdir, w)
             for w in workdirs]
  sources += [(os.path.basename(p), inference.Restorer.from_pretrained, p) for p in pretrained]
  for name, load, where in sources:
    unique, count = name, 1
    while unique in loaded:
      count += 1
      unique = f'{name} ({count})'
    logging.info('serve: loading %s', where)
    loaded[unique] = ServedModel(unique, load(where), limit=limit)
  return loaded


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


def restore_file(model: ServedModel, path: str, settings: Settings, out_dir: str, *,
                 limit: images.PixelLimit, target: str | None = None, scorer=None) -> Result:
  """Restores one uploaded file into `out_dir`; errors become Result.error, never raised.

  The photo and its sharp `target` are both refused from their headers when over
  `limit`, and the target is read before any work is spent on the photo.
  """
  name = os.path.basename(path)
  result = Result(name)
  start = time.time()
  try:
    for upload in (path, target):
      if upload is not None and not os.path.exists(upload):
        raise ImageReadError(f'{os.path.basename(upload)} is no longer on the server: uploads '
                             'are deleted after --keep_minutes; upload it again')
    photo = images.read_image(path, limit=limit)  # Upright by EXIF; uint8 or uint16 RGB.
    bits = 16 if photo.dtype == np.uint16 else 8
    result.size = f'{photo.shape[1]}x{photo.shape[0]}, {bits}-bit'
    sharp = None
    if target is not None:
      try:
        sharp = images.read_image(target, limit=limit)
      except ImageReadError as e:
        raise ImageReadError(f'the sharp target: {e}') from None
      if sharp.shape != photo.shape:
        raise ImageReadError(f'target {os.path.basename(target)} is {sharp.shape[1]}x'
                             f'{sharp.shape[0]}, the photo {photo.shape[1]}x{photo.shape[0]}')
    out = model.restore(photo, settings)
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
    result.error = _short(str(e), path, target)
  except Exception as e:  # pylint: disable=broad-except
    # The server outlives any one photo: the page says what failed, the log has the rest.
    logging.exception('serve: %s failed', name)
    result.error = f'{type(e).__name__}: {_short(str(e), path, target)}'
  result.seconds = time.time() - start
  return result


def _escape(text: str) -> str:
  return text.replace('|', '\\|').replace('\n', ' ')


def status_table(run: int, model: ServedModel, settings: Settings, results: list[Result],
                 labels: dict) -> str:
  """The page's Markdown report of one request: what ran, and a row per photo."""
  what = [f'**Run {run}**', f'model `{model.name}`']
  if model.diffusion:
    what.append(f'preset {settings.preset}, {settings.num_steps} steps, '
                f'{settings.num_samples} samples, seed {settings.seed}')
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
    upload refused over --max_upload_mb or cut off leaves its partial file,
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
  """Gradio's delete_cache (every `frequency` s, files older than `age` s) for --keep_minutes."""
  if isinstance(keep_minutes, bool) or not keep_minutes > 0:
    raise ConfigError(f'--keep_minutes={keep_minutes!r}: must be a number of minutes > 0')
  age = max(1, round(keep_minutes * 60))
  return min(max(1, age // 4), 300), age


def build_app(served: dict[str, ServedModel], *, limit: images.PixelLimit, outputs: Outputs,
              keep_minutes: float = 60.0):
  """The Gradio Blocks of the page (not launched); build it with GRADIO_TEMP_DIR set to
  `outputs.root`, where its components keep their files."""
  import gradio as gr  # pylint: disable=import-outside-toplevel

  names = list(served)
  first = served[names[0]]
  max_steps = max([m.preset_defaults(p)[0] for m in served.values() for p in m.presets] + [1])

  def diffusion_updates(model: ServedModel):
    """Controls shown for `model`, set to its defaults."""
    d = model.defaults()
    return (gr.update(visible=model.diffusion),
            gr.update(choices=model.presets, value=d.preset),
            gr.update(value=d.num_steps or 1, maximum=max(max_steps, 1000)),
            gr.update(value=d.num_samples or 1), gr.update(value=d.seed),
            gr.update(value=d.ensemble == 8), f'`{model.name}`: {model.describe()}',
            gr.update(visible=model.diffusion), gr.update(visible=model.diffusion))

  def shown(results: list[dict], name: str):
    """Slider, std map and samples of the photo `name` among the results."""
    chosen = next((r for r in results if r['name'] == name), None)
    if chosen is None:
      return None, None, []
    std = (chosen['std'], f"std, max {chosen['std_max']:.4f}") if chosen['std'] else None
    samples = [(p, f'sample {i}') for i, p in enumerate(chosen['samples'])]
    return (chosen['before'], chosen['after']), (std[0] if std else None), samples

  def run(model_name, files, pasted, targets, preset, num_steps, num_samples, seed, ensemble,
          run_number, progress=gr.Progress()):
    model = served[model_name]
    photos = [f for f in (files or []) if f] + ([pasted] if pasted else [])
    run_number = (run_number or 0) + 1
    if not photos:
      return (None, gr.update(choices=[], value=None), None,
              f'**Run {run_number}**: drop, choose or paste a photo first.', None, [], [],
              run_number)
    settings = Settings(seed=int(seed or 0), ensemble=8 if ensemble else 1)
    if model.diffusion:
      settings = dataclasses.replace(settings, preset=preset, num_steps=int(num_steps),
                                     num_samples=int(num_samples))
    scorer = scoring.Scorer(scoring.uses_alignment(model.config), model.config.eval.lpips)
    paired = pair_targets(photos, [t for t in (targets or []) if t])
    folder = outputs.new()
    results = []
    for index, path in enumerate(photos):
      progress((index, len(photos)), desc=f'{os.path.basename(path)}')
      results.append(restore_file(model, path, settings, folder, limit=limit,
                                  target=paired.get(path), scorer=scorer))
    good = [dataclasses.asdict(r) for r in results if not r.error]
    for r in results:
      if r.error:
        gr.Warning(f'{r.name}: {r.error}')
    status = status_table(run_number, model, settings, results, scorer.labels)
    first_name = good[0]['name'] if good else None
    slider, std, samples = shown(good, first_name)
    return (slider, gr.update(choices=[r['name'] for r in good], value=first_name),
            [r['png'] for r in good] or None, status, std, samples, good, run_number)

  with gr.Blocks(title='xydiff: deblur', analytics_enabled=False,
                 delete_cache=cache_schedule(keep_minutes)) as page:
    gr.Markdown('# xydiff: deblur your photos\nDrop photos (PNG or TIFF 8/16-bit, JPEG), or '
                'paste one, then **Deblur**. Everything runs on this machine.')
    with gr.Row():
      model_choice = gr.Dropdown(names, value=names[0], label='Model', elem_id='xydiff-model',
                                 interactive=len(names) > 1)
      model_info = gr.Markdown(f'`{first.name}`: {first.describe()}', elem_id='xydiff-model-info')
    with gr.Row():
      with gr.Column():
        files = gr.File(file_count='multiple', file_types=['image'], label='Photos',
                        elem_id='xydiff-photos')
        pasted = gr.Image(sources=['clipboard', 'upload'], type='filepath', format='png',
                          label='...or paste one', elem_id='xydiff-paste', height=160)
        targets = gr.File(file_count='multiple', file_types=['image'],
                          label='Sharp targets (optional: scores PSNR/SSIM/LPIPS)',
                          elem_id='xydiff-targets')
        d = first.defaults()
        with gr.Group(visible=first.diffusion) as sampling:
          preset = gr.Radio(first.presets, value=d.preset, elem_id='xydiff-preset',
                            label='Preset: perceptual (realistic) <-> sa (faithful)')
          num_steps = gr.Slider(1, max(max_steps, 1000), value=d.num_steps or 1, step=1,
                                label='Steps', elem_id='xydiff-steps')
          num_samples = gr.Slider(1, 32, value=d.num_samples or 1, step=1,
                                  label='Samples averaged', elem_id='xydiff-samples')
          seed = gr.Number(d.seed, precision=0, label='Seed', elem_id='xydiff-seed')
        ensemble = gr.Checkbox(d.ensemble == 8, label='x8 self-ensemble (flips x rot90, 8x the '
                               'compute)', elem_id='xydiff-ensemble')
        button = gr.Button('Deblur', variant='primary', elem_id='xydiff-run')
      with gr.Column():
        slider = gr.ImageSlider(type='filepath', label='Before / after', format='png',
                                elem_id='xydiff-slider')
        which = gr.Dropdown([], label='Shown photo', elem_id='xydiff-shown')
        downloads = gr.File(file_count='multiple', label='Restored PNGs (full resolution)',
                            elem_id='xydiff-downloads', interactive=False)
        status = gr.Markdown(elem_id='xydiff-status')
        std_map = gr.Image(label='Per-pixel std over the samples', visible=first.diffusion,
                           interactive=False, format='png', elem_id='xydiff-std')
        gallery = gr.Gallery(label='Samples', visible=first.diffusion, columns=4,
                             format='png', elem_id='xydiff-samples-gallery')
    results = gr.State([])
    runs = gr.State(0)

    inputs = [model_choice, files, pasted, targets, preset, num_steps, num_samples, seed,
              ensemble, runs]
    outs = [slider, which, downloads, status, std_map, gallery, results, runs]
    button.click(run, inputs, outs, concurrency_id='device', api_name='deblur')
    model_choice.change(lambda name: diffusion_updates(served[name]), model_choice,
                        [sampling, preset, num_steps, num_samples, seed, ensemble, model_info,
                         std_map, gallery], queue=False)
    # The perception-distortion control: a new preset restores again at once.
    preset.input(lambda name, p: served[name].preset_defaults(p), [model_choice, preset],
                 [num_steps, num_samples], queue=False).then(
                     run, inputs, outs, concurrency_id='device')
    which.input(shown, [results, which], [slider, std_map, gallery], queue=False)
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
  login = ('it asks for a login (--auth/--auth_file), sent over plain HTTP' if auth else
           'with no login: anyone there can run models on this machine (give --auth_file=PATH)')
  return f"serve: the page is not private: {'; '.join(reach)}; {login}"


def read_auth(pairs=(), auth_file: str | None = None) -> list[tuple[str, str]]:
  """Gradio's auth, [(user, password)], from --auth USER:PASSWORD values and the lines of
  --auth_file (blank lines and # comments skipped). Errors name the flag, file and line,
  never a password."""
  entries = [('--auth', value) for value in pairs]
  if auth_file:
    try:
      with open(auth_file, encoding='utf-8') as f:
        lines = f.read().splitlines()
    except OSError as e:
      raise FileNotFoundError(f'--auth_file {auth_file}: {e.strerror}') from None
    entries += [(f'--auth_file {auth_file} line {n}', line.strip())
                for n, line in enumerate(lines, 1) if line.strip() and
                not line.strip().startswith('#')]
    if not any(where.startswith('--auth_file') for where, _ in entries):
      raise ConfigError(f'--auth_file {auth_file} holds no user:password line')
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
          outputs: Outputs | None = None) -> None:
  """Builds and launches the page; blocks until the server stops (SIGTERM and Ctrl-C stop it
  cleanly). Its files go in `outputs` (from page_files), or in a page_files() of its own."""
  limit = limit or images.PixelLimit(images.DEFAULT_MAX_MEGAPIXELS, LIMIT_FLAG)
  cache_schedule(keep_minutes)  # A bad value is refused before anything is made.
  warning = exposure(host, share, auth)
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
                max_file_size=f'{max_upload_mb}mb', auth=auth or None)
