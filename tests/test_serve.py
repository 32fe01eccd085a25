"""`xydiff serve` without a browser: limits, memory and disk bounds, login, clean stops, and
what the page says (model titles, presets in plain words, labels, progress).

The page in a real browser is tests/test_serve_browser.py; here its pieces are
called directly (the page's own request function included, found in the
built Blocks), and one server runs as a subprocess, driven through Gradio's
own client, to check what only a running server shows: the warning and login
of a page other machines can reach, files pruned while it runs, and nothing
left behind after SIGTERM.
"""

import glob
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest

from conftest import REPO, tiny
from test_ensemble import random_state, save_run
from test_images import claim_size
from xydiff import config as run_config
from xydiff import images
from xydiff.cli import page as serve
from xydiff.diffusion import samplers
from xydiff.errors import ConfigError
from xydiff.inference import restorer as inference

pytest.importorskip('gradio')


def _served(variant='', name='tiny', **inference_fields):
  from xydiff.configs import demo
  config = tiny(demo.get_config(variant))
  config.inference.size_bucket = 0
  config.inference.update(inference_fields)
  graphdef, state = random_state(config)
  return serve.ServedModel(name, inference.Restorer(config, graphdef, state['params'], 0),
                           limit=images.PixelLimit(50, serve.LIMIT_FLAG))


def _compiled(restorer):
  """The jitted functions a Restorer holds (one per setting and tiling)."""
  return list(restorer._compiled.values())  # pylint: disable=protected-access


def test_a_model_keeps_its_stored_settings_and_the_last_few_others():
  model = _served('diffusion')
  defaults = model.defaults()
  assert model.restorer(defaults) is model.base
  assert model.restorer(serve.Settings('sa', 2, 2, 'ancestral', 7, 8)) is model.base  # Seed,
  # ensemble: inputs of the stored function, not settings of their own.
  # One sample each: never the stored settings (the tiny 'sa' preset's 2 steps, 2 samples).
  settings = [serve.Settings('sa', steps, 1, 'ancestral', 0, 1)
              for steps in range(1, serve.KEPT_SETTINGS + 3)]
  first = model.restorer(settings[0])
  assert first.pixel_limit.source == '--max-megapixels'  # The page's one limit.
  first.restore(np.zeros((8, 8, 3), np.uint8))
  assert [fn._cache_size() for fn in _compiled(first)] == [1]  # pylint: disable=protected-access
  second = model.restorer(settings[1])
  for setting in settings[2:]:
    model.restorer(setting)
    assert model.restorer(settings[1]) is second  # Used again: kept, as the most recent.
  kept = model._restorers  # pylint: disable=protected-access
  assert list(kept) == [model.sampling(s) for s in (settings[3], settings[4], settings[5],
                                                    settings[1])]
  assert len(kept) == serve.KEPT_SETTINGS
  # pylint: disable-next=protected-access
  assert [fn._cache_size() for fn in _compiled(first)] == [0]  # Its compiles freed.
  assert model.restorer(defaults) is model.base  # The stored settings are never forgotten.
  assert model.restorer(serve.Settings('sa', 1, 1, 'ancestral', 7, 1)) is not first  # Made again.


@pytest.fixture(scope='module')
def xydeblur():
  return _served()


@pytest.fixture(scope='module')
def dvsr():
  return _served('diffusion')


def test_a_target_over_the_limit_is_refused_from_its_header_before_any_work(
    tmp_path, xydeblur, monkeypatch):
  import cv2
  photo, target = tmp_path / 'shot.png', tmp_path / 'sharp.png'
  images.write_png(str(photo), np.zeros((16, 16, 3), np.uint8))
  images.write_png(str(target), np.zeros((16, 16, 3), np.uint16))
  target.write_bytes(claim_size(target.read_bytes(), 12000, 12000))  # 861 KB took 1.7 GB.

  def refused(*args, **kwargs):
    raise AssertionError('work was done on a request that had to be refused')
  monkeypatch.setattr(cv2, 'imdecode', refused)
  monkeypatch.setattr(xydeblur, 'restore', refused)
  result = serve.restore_file(xydeblur, str(photo), xydeblur.defaults(), str(tmp_path),
                              limit=images.PixelLimit(50, serve.LIMIT_FLAG), target=str(target))
  assert result.error == ('the sharp target: sharp.png is 12000x12000 = 144.0 MP, over the limit '
                          'of 50 MP (--max-megapixels)')
  assert result.png is None


def test_an_upload_pruned_before_its_rerun_is_one_clear_line(tmp_path, xydeblur):
  images.write_png(str(tmp_path / 'sharp.png'), np.zeros((8, 8, 3), np.uint8))
  limit = images.PixelLimit(50, serve.LIMIT_FLAG)
  for photo, target, what in ((tmp_path / 'gone.png', None, 'the photo'),
                              (tmp_path / 'sharp.png', tmp_path / 'x.png', 'x.png')):
    result = serve.restore_file(xydeblur, str(photo), xydeblur.defaults(), str(tmp_path),
                                limit=limit, target=target and str(target))
    assert result.error == (f'{what} is no longer on the server: uploads are deleted after '
                            '--keep-minutes; upload it again')


def test_sizes_read_width_x_height_in_the_table_and_in_errors(tmp_path, xydeblur):
  images.write_png(str(tmp_path / 'strip.png'), np.zeros((1, 56, 3), np.uint8))  # 56 wide.
  images.write_png(str(tmp_path / 'wide.png'), np.zeros((5, 9, 3), np.uint8))
  limit = images.PixelLimit(50, serve.LIMIT_FLAG)
  results = [serve.restore_file(xydeblur, str(tmp_path / name), xydeblur.defaults(),
                                str(tmp_path), limit=limit) for name in ('strip.png', 'wide.png')]
  assert results[0].size == '56x1, 8-bit' and results[1].size == '9x5, 8-bit'
  assert results[0].error == 'image of 56x1 pixels is too small: xydeblur needs at least 3x3'
  table = serve.status_table(1, xydeblur, xydeblur.defaults(), results, {})
  assert '| photo | size (width x height) |' in table
  assert '| strip.png | 56x1, 8-bit |' in table and 'error: image of 56x1 pixels' in table
  assert '| wide.png | 9x5, 8-bit |' in table


def test_a_photo_error_names_the_photo_once_in_its_row(tmp_path, xydeblur):
  (tmp_path / 'notes.png').write_text('not an image, despite its name')
  images.write_png(str(tmp_path / 'huge.png'), np.zeros((900, 1200, 3), np.uint8))
  limit = images.PixelLimit(1, serve.LIMIT_FLAG)
  results = [serve.restore_file(xydeblur, str(tmp_path / name), xydeblur.defaults(),
                                str(tmp_path), limit=limit) for name in ('notes.png', 'huge.png')]
  assert results[0].error.startswith('cannot read the photo: not a PNG, JPEG or TIFF'), results
  assert results[1].error == ('the photo is 1200x900 = 1.1 MP, over the limit of 1 MP '
                              '(--max-megapixels)')
  table = serve.status_table(1, xydeblur, xydeblur.defaults(), results, {})
  for name in ('notes.png', 'huge.png'):
    assert table.count(name) == 1, table
  assert str(tmp_path) not in table


def test_logins_come_from_flags_and_files_and_errors_never_show_a_password(tmp_path):
  users = tmp_path / 'users'
  users.write_text('# who may log in\nana:s3cret:with:colons\n\n  bo:pw  \n')
  assert serve.read_auth(['cy:x'], str(users)) == [('cy', 'x'), ('ana', 's3cret:with:colons'),
                                                    ('bo', 'pw')]
  assert serve.read_auth() == []
  users.write_text('ana:s3cret\nbo-without-password\n')
  with pytest.raises(ConfigError, match=rf'^--auth-file {users} line 2: expected user:password'):
    serve.read_auth(auth_file=str(users))
  with pytest.raises(ConfigError) as e:
    serve.read_auth([':hunter2'])
  assert str(e.value) == '--auth: expected user:password, both non-empty'
  users.write_text('# nobody\n')
  with pytest.raises(ConfigError, match='holds no user:password line'):
    serve.read_auth(auth_file=str(users))
  with pytest.raises(FileNotFoundError, match=rf'--auth-file {tmp_path}/nope: No such file'):
    serve.read_auth(auth_file=str(tmp_path / 'nope'))


def test_only_a_page_other_machines_can_reach_is_warned_about():
  for host in ('127.0.0.1', 'localhost', '::1', '127.0.0.2'):
    assert serve.exposure(host, False, None) is None, host
  assert serve.exposure('0.0.0.0', False, None) == (
      'serve: the page is not private: --host=0.0.0.0 serves it to every machine that can reach '
      'this one; with no login: anyone there can run models on this machine (give '
      '--auth-file=PATH)')
  assert serve.exposure('0.0.0.0', False, [('a', 'b')]).endswith(
      'it asks for a login (--auth/--auth-file), sent over plain HTTP')
  assert "--share gives it a public link" in serve.exposure('127.0.0.1', True, None)


def test_request_folders_live_in_one_folder_that_goes_as_a_whole(tmp_path, monkeypatch):
  monkeypatch.setattr(serve, 'KEPT_REQUESTS', 2)
  outputs = serve.Outputs(str(tmp_path))
  folders = [outputs.new() for _ in range(4)]
  assert all(f.startswith(os.path.join(outputs.root, 'requests')) for f in folders)
  assert sorted(os.listdir(outputs.requests)) == ['000003', '000004']
  stale, fresh = os.path.join(outputs.root, 'tmpold'), os.path.join(outputs.root, 'tmpnew')
  for path in (stale, fresh):
    open(path, 'wb').close()
  os.utime(stale, (time.time() - 60, time.time() - 60))  # An upload Gradio refused a minute ago.
  outputs.sweep(30)
  assert sorted(os.listdir(outputs.root)) == ['requests', 'tmpnew']
  assert sorted(os.listdir(outputs.requests)) == ['000003', '000004']
  outputs.remove()
  assert os.listdir(tmp_path) == []
  assert serve.cache_schedule(60) == (300, 3600)
  assert serve.cache_schedule(0.05) == (1, 3)
  with pytest.raises(ConfigError, match=r'--keep-minutes=0: must be a number of minutes > 0'):
    serve.cache_schedule(0)


# ------------------------------------------------------------------ what the page says

def test_models_are_named_by_what_they_are_and_presets_in_plain_words(xydeblur, dvsr):
  assert xydeblur.title == 'XYDeblur, trained on synthetic blur, step 0'
  assert 'tiny' not in xydeblur.title  # The served key (a folder's name) is not the title.
  assert xydeblur.describe().startswith('**XYDeblur, trained on synthetic blur, step 0**: '
                                        'one pass;')
  assert dvsr.title == 'DvSR, trained on synthetic blur, step 0'
  assert 'diffusion' in dvsr.describe() and 'its predictor is U-Net' in dvsr.describe()
  assert ("Default: preset 'sa', ancestral, 2 denoiser calls, mean of 2 samples."
          in dvsr.describe())
  assert dvsr.preset_choices() == [
      ('perceptual: most realistic (one chain of 3 steps)', 'perceptual'),
      ("perceptual_ancestral: most realistic, the paper's long chain (slow) "
       '(one chain of 3 steps)', 'perceptual_ancestral'),
      ('sa: sharpest on average (mean of 2 chains of 2 steps)', 'sa'),
      ('predictor: fastest (the first guess alone, no sampling)', 'predictor')]
  assert xydeblur.preset_choices() == []
  assert dvsr.preset_defaults('perceptual') == (3, 1, 'ancestral')  # The demo's long chain.
  # Two runs of one kind keep their titles apart by their keys; a lone title stays as it is.
  served = {'a': xydeblur, 'b': _served(name='b'), 'c': dvsr}
  assert serve.model_choices(served) == [
      ('XYDeblur, trained on synthetic blur, step 0 (a)', 'a'),
      ('XYDeblur, trained on synthetic blur, step 0 (b)', 'b'),
      ('DvSR, trained on synthetic blur, step 0', 'c')]


def _components(app) -> dict:
  """{elem_id: component} of a built page."""
  return {b.elem_id: b for b in app.blocks.values() if getattr(b, 'elem_id', None)}


def _request(app):
  """The page's request function (what the Deblur button runs)."""
  (fn,) = [f.fn for f in app.fns.values() if f.api_name == 'deblur']
  return fn


class Progress:
  """gr.Progress as the page calls it: the fractions and descriptions, in order."""

  def __init__(self):
    self.calls = []

  def __call__(self, fraction, desc=None):
    self.calls.append((fraction, desc))


@pytest.fixture(scope='module')
def app(xydeblur, dvsr):
  """The built page (not launched) with both models, and its file folder."""
  with serve.page_files() as outputs:
    yield serve.build_app({'xydeblur_run': xydeblur, 'dvsr_run': dvsr},
                          limit=images.PixelLimit(1, serve.LIMIT_FLAG), outputs=outputs), outputs


def test_the_page_labels_its_controls_for_what_they_cost_and_show(app):
  components = _components(app[0])
  model = components['xydiff-model']
  assert [tuple(c) for c in model.choices] == [
      ('XYDeblur, trained on synthetic blur, step 0', 'xydeblur_run'),
      ('DvSR, trained on synthetic blur, step 0', 'dvsr_run')]
  assert components['xydiff-steps'].label == 'Steps (denoiser calls; time grows with steps)'
  assert [value for _, value in components['xydiff-sampler'].choices] == list(samplers.SAMPLERS)
  assert [value for _, value in components['xydiff-preset'].choices] == []  # XYDeblur first.
  assert components['xydiff-slider'].label == 'Blurry / Deblurred'
  assert '◀ Blurry' in components['xydiff-slider-sides'].value
  assert 'Deblurred ▶' in components['xydiff-slider-sides'].value
  assert type(components['xydiff-thumbnails']).__name__ == 'Gallery'  # Uploads as pictures.
  assert 'white-space: nowrap' in serve.PAGE_CSS and 'word-break: keep-all' in serve.PAGE_CSS
  assert '#xydiff-status th' in serve.PAGE_CSS


def test_uploads_show_as_upright_thumbnails_and_bad_files_are_left_out(tmp_path):
  from PIL import Image
  photo = np.random.default_rng(0).integers(0, 256, (300, 600, 3), np.uint8)
  exif = Image.Exif()
  exif[0x0112] = 6  # Stored sideways: upright, it is 300 wide and 600 tall.
  Image.fromarray(photo).save(tmp_path / 'phone.jpg', exif=exif, quality=95)
  (tmp_path / 'notes.png').write_text('not an image')
  shown = serve.thumbnails([str(tmp_path / 'phone.jpg'), str(tmp_path / 'notes.png')],
                           str(tmp_path), limit=images.PixelLimit(1, serve.LIMIT_FLAG))
  assert [caption for _, caption in shown] == ['phone.jpg']
  assert images.read_image(shown[0][0]).shape == (serve.THUMBNAIL_SIZE,
                                                  serve.THUMBNAIL_SIZE // 2, 3)


def test_a_request_reports_real_fractions_per_photo_and_tile_and_errors_once(
    app, tmp_path, monkeypatch):
  import gradio as gr
  warned = []
  for toast in ('Warning', 'Info'):
    monkeypatch.setattr(gr, toast, lambda *a, **k: warned.append(a))
  rng = np.random.default_rng(0)
  paths = [str(tmp_path / name) for name in ('a.png', 'b.png', 'bad.png')]
  images.write_png(paths[0], rng.integers(0, 256, (24, 32, 3), np.uint8))  # Whole.
  images.write_png(paths[1], rng.integers(0, 256, (48, 40, 3), np.uint8))  # In 4 tiles.
  open(paths[2], 'w').write('no image')
  page, _ = app
  restorer = page_model(page, 'xydeblur_run').base
  monkeypatch.setattr(restorer, 'config', _with(restorer.config, tile=32, tile_overlap=8))
  progress = Progress()
  outputs = _request(page)('xydeblur_run', paths, None, None, None, 1, 1, 'ancestral', 0, False,
                           0, progress=progress)
  status = outputs[3]
  assert '2 of 3 restored' in status, status
  assert status.count('bad.png') == 1 and 'error: cannot read the photo' in status, status
  assert not warned  # The table says it; no toast besides.
  fractions = [f for f, _ in progress.calls]
  assert fractions == [0, 1 / 3, (1 + 1 / 4) / 3, (1 + 2 / 4) / 3, (1 + 3 / 4) / 3, 2 / 3,
                       2 / 3, 1.0], progress.calls
  assert progress.calls[0][1] == 'a.png (1 of 3)'
  assert progress.calls[2][1] == 'b.png (2 of 3): tile 1 of 4'


def test_a_diffusion_request_reports_each_sampling_step_of_each_chain(app, tmp_path):
  images.write_png(str(tmp_path / 'shot.png'),  # A shape no other test compiles.
                   np.random.default_rng(2).integers(0, 256, (24, 24, 3), np.uint8))
  page, _ = app
  progress = Progress()
  outputs = _request(page)('dvsr_run', [str(tmp_path / 'shot.png')], None, None, 'sa', 2, 2,
                           'ancestral', 0, True, 0, progress=progress)
  assert '1 of 1 restored' in outputs[3], outputs[3]
  # x8 ensemble: 8 chains (one per view) of 2 steps each, in order; the bar never goes back.
  expected = [(0, 'shot.png')]
  expected += [((chain + step / 2) / 8, f'shot.png: step {step} of 2')
               for chain in range(8) for step in (1, 2)]
  assert progress.calls == expected + [(1.0, 'done')], progress.calls


def page_model(page, key):
  """The ServedModel behind the page's model `key` (from the request function's closure)."""
  fn = _request(page)
  served = dict(zip(fn.__code__.co_freevars, (c.cell_contents for c in fn.__closure__)))['served']
  return served[key]


def _with(config, **inference_fields):
  copy = run_config.from_plain(run_config.to_plain(config))
  copy.inference.update(inference_fields)
  return copy


def test_the_chosen_sampler_preset_and_steps_reach_the_restorer(app, tmp_path, monkeypatch):
  calls = []
  restore = inference.Restorer.restore

  def spy(self, image, **kwargs):
    calls.append(kwargs)
    return restore(self, image, **kwargs)
  monkeypatch.setattr(inference.Restorer, 'restore', spy)
  images.write_png(str(tmp_path / 'shot.png'),
                   np.random.default_rng(1).integers(0, 256, (16, 16, 3), np.uint8))
  page, _ = app
  outputs = _request(page)('dvsr_run', [str(tmp_path / 'shot.png')], None, None, 'sa', 3, 1,
                           'dpmpp_2m', 5, True, 0, progress=Progress())
  assert '1 of 1 restored' in outputs[3], outputs[3]
  assert ("preset 'sa', dpmpp_2m, 3 denoiser calls, mean of 1 sample, seed 5 · "
          'x8 self-ensemble') in outputs[3]
  (call,) = calls
  assert {k: call[k] for k in ('preset', 'steps', 'samples', 'sampler', 'seed', 'ensemble')} == \
      dict(preset='sa', steps=3, samples=1, sampler='dpmpp_2m', seed=5, ensemble=8)
  model = page_model(page, 'dvsr_run')
  (compiled,) = [s for s, _ in model.restorer(serve.Settings('sa', 3, 1, 'dpmpp_2m'))._compiled]
  assert compiled.sampler == 'dpmpp_2m' and compiled.num_steps == 3


# ------------------------------------------------------------------ a running server

STARTUP_S = 300


@pytest.fixture(scope='module')
def running(tmp_path_factory):
  """`xydiff serve` on every interface, with a login, files kept 15 s, in a TMPDIR of its own."""
  from xydiff.configs import demo
  root = tmp_path_factory.mktemp('running')
  config = tiny(demo.get_config())
  config.inference.size_bucket = 0
  run = save_run(root / 'run', config, random_state(config)[1])
  (root / 'users').write_text('ana:hunter2\n')
  (root / 'tmp').mkdir()
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  log_path = root / 'server.log'
  log = open(log_path, 'w')
  env = dict(os.environ, TMPDIR=str(root / 'tmp'), GRADIO_ANALYTICS_ENABLED='False')
  env.pop('GRADIO_TEMP_DIR', None)
  process = subprocess.Popen(
      [sys.executable, '-c', 'from xydiff.cli import main; main()', 'serve', f'--workdir={run}',
       '--host=0.0.0.0', f'--port={port}', f'--auth-file={root / "users"}',
       '--keep-minutes=0.25', '--max-upload-mb=1'],
      cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
  url = f'http://127.0.0.1:{port}/'
  deadline = time.time() + STARTUP_S
  try:
    while True:
      if process.poll() is not None:
        pytest.fail(f'xydiff serve exited with {process.returncode}:\n{log_path.read_text()}')
      try:
        with urllib.request.urlopen(url, timeout=5):
          break
      except urllib.error.HTTPError:
        break  # Up, and asking for a login.
      except OSError:
        pass
      if time.time() > deadline:
        pytest.fail(f'xydiff serve did not answer at {url}:\n{log_path.read_text()[-3000:]}')
      time.sleep(1)
    yield dict(url=url, process=process, log=log_path, tmp=root / 'tmp', root=root,
               name=os.path.basename(run))
  finally:
    if process.poll() is None:
      process.kill()
      process.wait()
    log.close()


def _files(folder) -> list[str]:
  return sorted(os.path.relpath(os.path.join(d, f), folder)
                for d, _, names in os.walk(folder) for f in names)


def test_a_server_on_every_interface_warns_asks_for_a_login_prunes_and_cleans_up(running,
                                                                                 tmp_path):
  from gradio_client import Client, handle_file
  log = running['log'].read_text()
  assert ('serve: the page is not private: --host=0.0.0.0 serves it to every machine that can '
          'reach this one; it asks for a login (--auth/--auth-file), sent over plain HTTP') in log
  with pytest.raises(urllib.error.HTTPError) as e:  # No login, no page's API.
    urllib.request.urlopen(running['url'] + 'config', timeout=10)
  assert e.value.code == 401

  (served_root,) = glob.glob(str(running['tmp'] / 'xydiff-serve-*'))
  assert os.listdir(running['tmp']) == [os.path.basename(served_root)]  # Gradio's files inside.
  images.write_png(str(tmp_path / 'shot.png'), np.random.default_rng(0).integers(
      0, 256, (24, 32, 3), np.uint8))
  client = Client(running['url'], auth=('ana', 'hunter2'), verbose=False,
                  download_files=str(tmp_path / 'downloads'))
  outputs = client.predict(running['name'], [handle_file(str(tmp_path / 'shot.png'))], None, None,
                           None, 1, 1, 'ancestral', 0, False, api_name='/deblur')
  status = outputs[3]
  assert '1 of 1 restored' in status and '| shot.png | 32x24, 8-bit |' in status, status
  kept = _files(served_root)
  assert any(f.endswith('shot.png') and not f.startswith('requests') for f in kept), kept
  assert any(f.startswith('requests/') and f.endswith('/shot_deblurred.png') for f in kept), kept
  # An upload over --max-upload-mb=1, sent as a browser does (Gradio's client refuses it
  # before sending): Gradio answers 413; it leaves upload temporaries in its folder.
  browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
  browser.open(running['url'] + 'login', urllib.parse.urlencode(
      {'username': 'ana', 'password': 'hunter2'}).encode(), timeout=30)
  boundary = 'xydiff-test-boundary'
  body = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="large.png"'
          '\r\nContent-Type: image/png\r\n\r\n').encode() + os.urandom(3_000_000) + \
      f'\r\n--{boundary}--\r\n'.encode()
  with pytest.raises(urllib.error.HTTPError) as e:
    browser.open(urllib.request.Request(
        running['url'] + 'gradio_api/upload', body,
        {'Content-Type': f'multipart/form-data; boundary={boundary}'}), timeout=60)
  assert e.value.code == 413
  assert any(os.sep not in f for f in _files(served_root)), _files(served_root)  # Its leftover.
  deadline = time.time() + 90  # Files older than --keep-minutes (15 s) go within 3 s more.
  while _files(served_root) and time.time() < deadline:
    time.sleep(0.5)
  assert _files(served_root) == []

  running['process'].send_signal(signal.SIGTERM)
  assert running['process'].wait(timeout=60) == 0
  assert os.listdir(running['tmp']) == []  # Neither xydiff-serve-* nor Gradio's cache is left.
  assert 'hunter2' not in running['log'].read_text()


def test_serve_checks_its_flags_before_any_model_loads(tmp_path, capsys):
  from xydiff import cli
  for flags, message in (
      (['--keep-minutes=0'], 'error: --keep-minutes=0.0: must be a number of minutes > 0'),
      (['--auth=ana'], 'error: --auth: expected user:password, both non-empty'),
      ([f'--auth-file={tmp_path}/none'], f'error: --auth-file {tmp_path}/none: No such file'),
      (['--max-megapixels=-1'], 'error: --max-megapixels=-1.0: must be a number of megapixels')):
    # The run does not exist: a flag refused first never gets to read it.
    with pytest.raises(SystemExit) as e:
      cli.main(['serve', f'--workdir={tmp_path}/no_run', *flags])
    assert e.value.code == 1
    assert capsys.readouterr().err.startswith(message), flags
