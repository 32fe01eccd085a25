"""Official weights by name: downloaded once, verified by hash, imported; failures leave nothing.

A local HTTP server (127.0.0.1, an ephemeral port) stands in for GitHub. The
served files are official-format checkpoints of a reduced XYDeblur, written
without torch (test_torch_pickle's writer), so every test but the comparison
with the PyTorch network runs without torch.
"""

import collections
import dataclasses
import hashlib
import http.server
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.parse

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, traverse_util

from conftest import REPO, run_xydiff
from test_torch_pickle import tensor, write_legacy
from xydiff import configs
from xydiff.inference import restorer as inference
from xydiff.interop import download, keymaps, official, pretrained
from xydiff.runs import checkpoint, state as state_lib
from xydiff.errors import CheckpointImportError, WeightsError

WIDTH, NUM_RES = 4, 1
OVERRIDES = [f'--config.model.width={WIDTH}', f'--config.model.num_res={NUM_RES}']
BLOB = 'b8f9e2d569cc169f788d23a7756e547249d6c7bb'  # The registry's pin of xydeblur_gopro.


class _Server:
  """Serves `files` ({path: bytes}) and a few misbehaving routes (see do_GET)."""

  def __init__(self):
    self.files = {}
    self.requests = []
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def do_GET(self):  # noqa: N802 (http.server's name)
        server.requests.append(self.path)
        path = urllib.parse.urlparse(self.path).path
        try:
          if path == '/truncated':  # Promises more bytes than it sends.
            self._head(1000)
            self.wfile.write(b'x' * 10)
          elif path == '/trickle':  # A byte every 0.1 s for 6 s: no read waits long.
            self._head(100_000)
            for _ in range(60):
              self.wfile.write(b'x')
              self.wfile.flush()
              time.sleep(0.1)
          elif path == '/trickle_headers':  # The same, before the headers end.
            self.wfile.write(b'HTTP/1.1 200 OK\r\n')
            for _ in range(60):
              self.wfile.write(b'X-Slow: 1\r\n')
              self.wfile.flush()
              time.sleep(0.1)
          elif path == '/huge':  # Says it is a terabyte.
            self._head(1 << 40)
          elif path == '/endless':  # No length, never ends.
            self.send_response(200)
            self.end_headers()
            while True:
              self.wfile.write(b'\0' * 65536)
          elif path in server.files:
            self._head(len(server.files[path]))
            self.wfile.write(server.files[path])
          else:
            self.send_error(404)
        except (BrokenPipeError, ConnectionResetError):
          pass

      def _head(self, length):
        self.send_response(200)
        self.send_header('Content-Length', str(length))
        self.end_headers()

      def log_message(self, *args):  # Quiet test output.
        pass

    self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    self.httpd.daemon_threads = True
    self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
    self.thread.start()

  def url(self, path):
    return f'http://127.0.0.1:{self.httpd.server_address[1]}/{path}'

  def close(self):
    self.httpd.shutdown()
    self.httpd.server_close()
    self.thread.join()


@pytest.fixture
def server():
  s = _Server()
  yield s
  s.close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
  folder = tmp_path / 'cache'
  monkeypatch.setenv('XYDIFF_CACHE', str(folder))
  return folder


def _config():
  config = pretrained.config_for('xydeblur_gopro')
  config.model.update(dict(width=WIDTH, num_res=NUM_RES))
  return config


def official_state_dict(config, seed=0) -> dict[str, np.ndarray]:
  """Random weights under the official XYDeblur keys and PyTorch layouts of `config`'s model."""
  key_map = keymaps.FORMATS[config.model.name].key_map(config.model)
  _, state = jax.eval_shape(lambda: state_lib.init_state(config))
  flat = traverse_util.flatten_dict(state['params'])
  rng = np.random.default_rng(seed)
  state_dict = collections.OrderedDict()
  for key, (path, _) in key_map.items():
    shape = flat[path].shape
    torch_shape = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape
    state_dict[key] = rng.normal(0, 0.2, torch_shape).astype(np.float32)
  return state_dict


def official_file(path, config=None, seed=0) -> bytes:
  """An official-format checkpoint (torch.save({'model': state_dict}), legacy), no torch."""
  state_dict = official_state_dict(config or _config(), seed)
  write_legacy(path, {'model': collections.OrderedDict(
      (k, tensor(v, str(i))) for i, (k, v) in enumerate(state_dict.items()))})
  return path.read_bytes()


def _nothing_left(*folders):
  for folder in folders:
    assert not folder.exists() or not list(folder.rglob('*')), list(folder.rglob('*'))


def test_git_blob_sha1_and_sha256_are_git_and_hashlib_digests(tmp_path):
  for name, content in (('empty', b''), ('text', b'hello\nworld\n'),
                        ('big', np.random.default_rng(0).bytes(3 << 20))):
    path = tmp_path / name
    path.write_bytes(content)
    git = subprocess.run(['git', 'hash-object', '--no-filters', str(path)], capture_output=True,
                         text=True, check=True).stdout.strip()
    assert download.git_blob_sha1(str(path)) == git, name
    assert download.sha256(str(path)) == hashlib.sha256(content).hexdigest(), name


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
  monkeypatch.delenv('XYDIFF_CACHE', raising=False)
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
  assert download.cache_dir() == str(tmp_path / 'xdg' / 'xydiff')
  monkeypatch.delenv('XDG_CACHE_HOME')
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  assert download.cache_dir() == str(tmp_path / 'home' / '.cache' / 'xydiff')
  monkeypatch.setenv('XYDIFF_CACHE', str(tmp_path / 'mine'))
  assert download.cache_dir() == str(tmp_path / 'mine')


def test_every_download_needs_a_whole_hash(tmp_path, server):
  """The audit: sha256_prefix='' accepted any file. An empty or partial pin is a bug."""
  server.files['/w.pth'] = b'weights'
  digest = hashlib.sha256(b'weights').hexdigest()
  url = server.url('w.pth')
  for pins in ({}, {'sha256': ''}, {'sha256': digest[:8]}, {'git_blob_sha1': ''},
               {'git_blob_sha1': 'z' * 40}, {'sha256': digest + '0'}):
    with pytest.raises(ValueError, match='(whole hash|needs git_blob_sha1 or sha256)'):
      download.fetch(url, 'w.pth', cache=str(tmp_path / 'cache'), **pins)
  assert server.requests == []  # Refused before asking.
  path = download.fetch(url, 'w.pth', sha256=digest.upper(), cache=str(tmp_path / 'cache'))
  assert open(path, 'rb').read() == b'weights'
  with pytest.raises(WeightsError, match=rf'sha256 expected {"0" * 64}, got {digest}'):
    download.fetch(url, 'v.pth', sha256='0' * 64, cache=str(tmp_path / 'cache'))
  assert os.listdir(tmp_path / 'cache') == ['w.pth']


def test_the_fid_inception_weights_are_pinned_whole():
  from xydiff.interop import inception
  assert len(inception.INCEPTION_SHA256) == 64 and download.check_pin(
      'sha256', inception.INCEPTION_SHA256)
  # torch.hub's convention: the hex after the last '-' of the name starts the sha256.
  assert inception.INCEPTION_SHA256.startswith(
      inception.INCEPTION_FILENAME.rsplit('-', 1)[1][:-len('.pth')])


def test_the_registry_holds_every_file_of_each_set():
  for name, entry in pretrained.WEIGHTS.items():
    # Weights are named by their model's name, whose packaged config they fill.
    assert name in configs.NAMES, name
    assert pretrained.config_for(name).to_dict() == configs.get_config(name).to_dict(), name
    assert len({f.name for f in entry.files}) == len(entry.files), name
    for file in entry.files:
      assert download.check_pin('git_blob_sha1', file.git_blob_sha1) == file.git_blob_sha1
      assert file.url.startswith('https://raw.githubusercontent.com/') and \
          file.url.endswith('/' + file.name), (name, file)
  dmphn = pretrained.WEIGHTS['dmphn_1_2_4_8_gopro']
  assert [f.name for f in dmphn.files] == [f'{n}_lv{k}.pkl' for n in ('encoder', 'decoder')
                                           for k in (1, 2, 3, 4)]
  assert dmphn.files[0].url == ('https://raw.githubusercontent.com/HongguangZhang/'
                                'DMPHN-cvpr19-master/master/checkpoints/DMPHN_1_2_4_8/'
                                'encoder_lv1.pkl')
  assert len(pretrained.WEIGHTS['dmphn_1_2_4_gopro'].files) == 6
  # The earlier name is an alias of the model's.
  assert pretrained.canonical('dmphn_1_2_4') == 'dmphn_1_2_4_gopro'
  assert pretrained.weights_entry('dmphn_1_2_4') is pretrained.WEIGHTS['dmphn_1_2_4_gopro']


def test_fetched_weights_restore_images_like_pytorch(tmp_path, server, cache, monkeypatch):
  torch = pytest.importorskip('torch')
  from torch_refs.xydeblur import OfficialXYDeblur
  torch.manual_seed(0)
  net = OfficialXYDeblur(width=WIDTH, num_res=NUM_RES).eval()
  file = tmp_path / 'pretrained_model.pkl'
  torch.save({'model': net.state_dict()}, file, _use_new_zipfile_serialization=False)
  content = file.read_bytes()
  server.files['/pretrained_model.pkl'] = content
  blob = download.git_blob_sha1(str(file))
  url = server.url('pretrained_model.pkl')
  workdir = tmp_path / 'run'
  step_dir = pretrained.fetch_weights('xydeblur_gopro', str(workdir), url=url, blob_sha1=blob,
                                      config=_config())
  assert step_dir == str(workdir / 'checkpoints' / '0') and os.path.isdir(step_dir)
  folder = cache / 'weights' / f'xydeblur_gopro-{hashlib.sha1(blob.encode()).hexdigest()[:12]}'
  cached = folder / 'pretrained_model.pkl'
  assert list(cache.rglob('*.pkl')) == [cached] and cached.read_bytes() == content

  config = _config()
  graphdef, params, step = checkpoint.load_params(config, str(workdir))
  assert step == 0
  image = np.random.default_rng(0).uniform(size=(32, 48, 3)).astype(np.float32)
  ours = nnx.merge(graphdef, params)(jnp.asarray(image)[None])
  with torch.no_grad():
    theirs = net(torch.from_numpy(image).permute(2, 0, 1)[None])
  np.testing.assert_allclose(np.asarray(ours['restored'][0]),
                             theirs[2][0].permute(1, 2, 0).numpy(), atol=1e-4)
  assert np.abs(np.asarray(ours['restored'][0]) - image).max() > 0.05  # Not two no-ops.

  # A verified cached file is not downloaded again; a damaged one is.
  assert len(server.requests) == 1
  assert download.fetch(url, cached.name, git_blob_sha1=blob, cache=str(folder)) == str(cached)
  assert len(server.requests) == 1
  cached.write_bytes(content[:-1] + b'!')
  assert download.fetch(url, cached.name, git_blob_sha1=blob, cache=str(folder)) == str(cached)
  assert len(server.requests) == 2 and cached.read_bytes() == content

  # By name alone (Restorer.from_pretrained): imported into the cache once, then reused.
  entry = pretrained.WEIGHTS['xydeblur_gopro']
  files = (dataclasses.replace(entry.files[0], url=url, git_blob_sha1=blob),)
  monkeypatch.setitem(pretrained.WEIGHTS, 'xydeblur_gopro', dataclasses.replace(entry, files=files))
  tiny = _config()
  monkeypatch.setattr(pretrained, 'config_for', lambda name: tiny)
  restorer = inference.Restorer.from_pretrained('xydeblur_gopro')
  run = cache / 'runs' / 'xydeblur_gopro'
  assert pretrained.pretrained_workdir('xydeblur_gopro') == str(run)
  assert sorted(os.listdir(run)) == ['checkpoints', 'config.json']
  assert len(server.requests) == 2  # Both served from the cache.
  with torch.no_grad():
    crop = np.random.default_rng(1).uniform(size=(16, 24, 3)).astype(np.float32)
    want = net(torch.from_numpy(crop).permute(2, 0, 1)[None])[2][0].permute(1, 2, 0).numpy()
  np.testing.assert_allclose(restorer.restore(crop)['image'], want, atol=1e-4)


def test_a_wrong_hash_keeps_nothing_and_names_both_hashes(tmp_path, server, cache):
  server.files['/pretrained_model.pkl'] = official_file(tmp_path / 'pretrained_model.pkl')
  blob = download.git_blob_sha1(str(tmp_path / 'pretrained_model.pkl'))
  url = server.url('pretrained_model.pkl')
  workdir = tmp_path / 'run'
  with pytest.raises(WeightsError) as e:
    pretrained.fetch_weights('xydeblur_gopro', str(workdir), url=url, config=_config())
  message = str(e.value)
  assert url in message and blob in message and BLOB in message
  assert '\n' not in message
  assert not workdir.exists() and not cache.exists()  # Not even the folders fetch made.


def test_a_failed_import_keeps_the_verified_file_and_nothing_else(tmp_path, server, cache,
                                                                  monkeypatch):
  server.files['/pretrained_model.pkl'] = official_file(tmp_path / 'pretrained_model.pkl')
  blob = download.git_blob_sha1(str(tmp_path / 'pretrained_model.pkl'))
  url = server.url('pretrained_model.pkl')
  with pytest.raises(CheckpointImportError, match=r"does not fit config\.model \(.*'width': 32"):
    pretrained.fetch_weights('xydeblur_gopro', str(tmp_path / 'run'), url=url, blob_sha1=blob)
  assert not (tmp_path / 'run').exists()
  assert [p.name for p in cache.rglob('*') if p.is_file()] == ['pretrained_model.pkl']

  def interrupted(self, step, state):  # The import dies while writing its checkpoint.
    raise KeyboardInterrupt

  monkeypatch.setattr(checkpoint.Checkpointer, 'save', interrupted)
  with pytest.raises(KeyboardInterrupt):
    pretrained.fetch_weights('xydeblur_gopro', str(tmp_path / 'run'), url=url, blob_sha1=blob,
                             config=_config())
  assert sorted(os.listdir(tmp_path)) == ['cache', 'pretrained_model.pkl']  # No run, no staging.
  mine = tmp_path / 'mine'
  (mine / 'notes').mkdir(parents=True)
  with pytest.raises(CheckpointImportError, match=f'{mine} already holds files'):
    pretrained.fetch_weights('xydeblur_gopro', str(mine), url=url, blob_sha1=blob,
                             config=_config())
  assert os.listdir(mine) == ['notes']  # A folder the user made is left as it was.
  assert len(server.requests) == 1  # The verified file was reused.


def test_download_failures_are_one_line_naming_the_url_and_keep_nothing(tmp_path, server):
  cache = tmp_path / 'made' / 'by' / 'fetch'  # Parents the download creates, and must remove.
  missing = server.url('nope/pretrained_model.pkl')
  with pytest.raises(WeightsError, match=rf'^cannot download {missing}: HTTP 404 '):
    download.fetch(missing, 'x.pkl', git_blob_sha1='0' * 40, cache=str(cache))
  assert os.listdir(tmp_path) == []

  truncated = server.url('truncated')
  with pytest.raises(WeightsError, match=rf'^cannot download {truncated}: got 10 of 1000 bytes$'):
    download.fetch(truncated, 'x.pkl', git_blob_sha1='0' * 40, cache=str(cache))
  assert os.listdir(tmp_path) == []

  with socket.socket() as closed:  # A port nobody listens on.
    closed.bind(('127.0.0.1', 0))
    refused = f'http://127.0.0.1:{closed.getsockname()[1]}/x.pkl'
  with pytest.raises(WeightsError, match=rf'^cannot download {refused}: .*refused'):
    download.fetch(refused, 'x.pkl', git_blob_sha1='0' * 40, cache=str(cache))
  assert os.listdir(tmp_path) == []

  with socket.socket() as silent:  # Accepts connections, never answers.
    silent.bind(('127.0.0.1', 0))
    silent.listen()
    stalled = f'http://127.0.0.1:{silent.getsockname()[1]}/x.pkl'
    with pytest.raises(WeightsError, match=rf'^cannot download {stalled}: no answer within 0.3 s'):
      download.fetch(stalled, 'x.pkl', git_blob_sha1='0' * 40, timeout=0.3, cache=str(cache))
  assert os.listdir(tmp_path) == []

  with pytest.raises(WeightsError, match=r"unknown model 'gopro': downloadable weights are "
                     'dmphn_1_2_4'):
    pretrained.fetch_weights('gopro', str(tmp_path / 'run'))
  with pytest.raises(WeightsError, match='xydiff_gopro has no weights xydiff can download'):
    pretrained.fetch_weights('xydiff_gopro', str(tmp_path / 'run'))
  assert os.listdir(tmp_path) == []


MALFORMED_URLS = {
    # The audit: a host IDNA cannot encode (a label over 63 characters) gave a traceback.
    'http://' + 'ü' * 70 + '.example/pretrained_model.pkl': 'its host .* is not a domain name',
    'http://a..b/pretrained_model.pkl': 'its host a..b is not a domain name',
    'http://127.0.0.1:1/modèles/pretrained_model.pkl': 'its path holds non-ASCII characters; '
                                                       r'percent-encode them \(%C3%BC\)',
    'http://exa mple.com/pretrained_model.pkl': 'it holds spaces or control characters',
    'http://[::1/pretrained_model.pkl': r'not a URL \(Invalid IPv6 URL\)',
    'http://127.0.0.1:99999/pretrained_model.pkl': 'not a URL .*Port out of range',
    'ftp://example.com/pretrained_model.pkl': 'not an http:// or https:// URL with a host',
    'pretrained_model.pkl': 'not an http:// or https:// URL with a host',
}


@pytest.mark.parametrize('url', MALFORMED_URLS)
def test_a_malformed_url_is_one_line_naming_it_and_keeps_nothing(tmp_path, cache, url):
  with pytest.raises(WeightsError, match=rf'^cannot download {re.escape(url)}: '
                     f'{MALFORMED_URLS[url]}') as e:
    download.fetch(url, 'x.pkl', git_blob_sha1='0' * 40, cache=str(tmp_path / 'made' / 'here'))
  assert '\n' not in str(e.value)
  workdir = tmp_path / 'run'
  with pytest.raises(WeightsError, match=rf'^cannot download {re.escape(url)}: '):
    pretrained.fetch_weights('xydeblur_gopro', str(workdir), url=url)
  assert os.listdir(tmp_path) == []  # No cache folder, no workdir.


def test_a_state_dict_keyed_by_ints_is_one_line_and_writes_nothing(tmp_path):
  """The audit: import_weights on a state dict with an int key gave a traceback."""
  state_dict = official_state_dict(_config())
  first = next(iter(state_dict))
  keyed = collections.OrderedDict((0 if k == first else k, tensor(v, str(i)))
                                  for i, (k, v) in enumerate(state_dict.items()))
  path = write_legacy(tmp_path / 'int_key.pkl', {'model': keyed})
  workdir = tmp_path / 'run'
  with pytest.raises(CheckpointImportError, match=rf'^{path} holds no state dict: 1 of its '
                     rf'{len(keyed)} keys is not a parameter name \(the first: int 0\)$'):
    official.import_official('xydeblur', str(path), str(workdir), _config())
  assert not workdir.exists()


@pytest.mark.parametrize('route', ['trickle', 'trickle_headers'])
def test_a_trickling_server_is_cut_off_by_the_deadline(tmp_path, server, route):
  """The audit: the timeout bounded each read, so a byte every 0.2 s was never cut off."""
  url = server.url(route)
  start = time.monotonic()
  with pytest.raises(WeightsError, match=rf'^cannot download {url}: not complete within 1.5 s'):
    download.fetch(url, 'x.pkl', git_blob_sha1='0' * 40, timeout=1.0, deadline=1.5,
                   cache=str(tmp_path / 'cache'))
  assert time.monotonic() - start < 4
  assert os.listdir(tmp_path) == []


def test_downloads_are_capped_in_size(tmp_path, server):
  huge = server.url('huge')
  with pytest.raises(WeightsError, match=rf'^cannot download {huge}: it is 1,099,511,627,776 '
                     'bytes, more than the 1,073,741,824 expected'):
    download.fetch(huge, 'x.pkl', git_blob_sha1='0' * 40, cache=str(tmp_path / 'cache'))
  endless = server.url('endless')
  with pytest.raises(WeightsError, match=rf'^cannot download {endless}: more than the 1,000,000 '):
    download.fetch(endless, 'x.pkl', git_blob_sha1='0' * 40, max_bytes=1_000_000,
                   deadline=20, cache=str(tmp_path / 'cache'))
  assert os.listdir(tmp_path) == []


_KILLED_DOWNLOAD = textwrap.dedent('''
    import sys
    from xydiff.interop import download
    download.fetch(sys.argv[1], 'x.pkl', git_blob_sha1='0' * 40, cache=sys.argv[2])
''')


def test_a_killed_download_leaves_a_part_file_the_next_start_removes(tmp_path, server):
  cache = tmp_path / 'cache'
  proc = subprocess.Popen([sys.executable, '-c', _KILLED_DOWNLOAD, server.url('trickle'),
                           str(cache)], cwd=REPO, stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 60
  while not (cache.exists() and any(n.endswith('.part') for n in os.listdir(cache))):
    if proc.poll() is not None:
      pytest.fail(proc.stderr.read()[-3000:])
    assert time.monotonic() < deadline
    time.sleep(0.05)
  # While the download lives, a second fetch leaves its .part alone.
  (part,) = cache.glob('.x.pkl.*.part')
  old = time.time() - 3600
  os.utime(part, (old, old))
  server.files['/other.pkl'] = b'other'
  blob = hashlib.sha1(b'blob 5\0other').hexdigest()
  download.fetch(server.url('other.pkl'), 'x.pkl', git_blob_sha1=blob, cache=str(cache))
  assert part.exists()
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=30)
  os.utime(part, (old, old))
  # Killed: its .part stays until the next fetch of the same file, which removes it.
  assert part.exists()
  download.fetch(server.url('other.pkl'), 'x.pkl', git_blob_sha1=blob, cache=str(cache))
  assert sorted(os.listdir(cache)) == ['x.pkl']


def test_weights_of_several_files_download_into_one_folder(tmp_path, server, cache, monkeypatch):
  files = {'encoder.pkl': b'first file', 'decoder.pkl': b'second file'}
  entry = pretrained.Weights(
      files=tuple(pretrained.WeightFile(name, server.url(f'mirror/{name}'),
                                        hashlib.sha1(b'blob %d\0' % len(data) + data).hexdigest())
                  for name, data in files.items()),
      about='two files', licence='none')
  monkeypatch.setitem(pretrained.WEIGHTS, 'two', entry)
  server.files['/mirror/encoder.pkl'] = files['encoder.pkl']
  with pytest.raises(WeightsError, match=rf'cannot download {server.url("mirror/decoder.pkl")}'):
    pretrained.fetch_files('two')
  (folder,) = (cache / 'weights').iterdir()
  assert os.listdir(folder) == ['encoder.pkl']  # Verified: kept. The failed one: nothing.
  server.files['/mirror/decoder.pkl'] = files['decoder.pkl']
  assert pretrained.fetch_files('two') == str(folder)
  assert {p.name: p.read_bytes() for p in folder.iterdir()} == files
  # A mirror of a several-file set is the folder that holds them.
  server.files['/other/encoder.pkl'] = files['encoder.pkl']
  server.files['/other/decoder.pkl'] = files['decoder.pkl']
  os.remove(folder / 'decoder.pkl')
  assert pretrained.fetch_files('two', url=server.url('other/')) == str(folder)
  assert server.requests[-1] == '/other/decoder.pkl'
  with pytest.raises(WeightsError, match='--blob_sha1 pins one file, and two has 2'):
    pretrained.fetch_files('two', blob_sha1='0' * 40)
  with pytest.raises(WeightsError, match='--blob_sha1=abc: not a git blob id'):
    pretrained.fetch_files('xydeblur_gopro', blob_sha1='abc')


_RACER = textwrap.dedent('''
    import dataclasses, os, sys, time
    from xydiff.runs import checkpoint
    from xydiff.interop import pretrained
    url, blob, barrier = sys.argv[1], sys.argv[2], sys.argv[3]
    entry = pretrained.WEIGHTS['xydeblur_gopro']
    pretrained.WEIGHTS['xydeblur_gopro'] = dataclasses.replace(
        entry, files=(dataclasses.replace(entry.files[0], url=url, git_blob_sha1=blob),))
    config = pretrained.config_for('xydeblur_gopro')
    config.model.update(dict(width=4, num_res=1))
    pretrained.config_for = lambda name: config
    write = checkpoint.write_imported_run

    def together(*args):  # Both processes import at the same moment.
        open(f'{barrier}.{os.getpid()}', 'w').close()
        while len([n for n in os.listdir(os.path.dirname(barrier)) if n.startswith('go.')]) < 2:
            time.sleep(0.01)
        return write(*args)

    checkpoint.write_imported_run = together
    print('RUN', pretrained.pretrained_workdir('xydeblur_gopro'))
''')


def test_concurrent_first_uses_import_once_and_both_use_it(tmp_path, server, cache):
  """The audit: the loser's cleanup deleted the winner's import."""
  server.files['/pretrained_model.pkl'] = official_file(tmp_path / 'pretrained_model.pkl')
  blob = download.git_blob_sha1(str(tmp_path / 'pretrained_model.pkl'))
  (tmp_path / 'sync').mkdir()
  env = dict(os.environ, XYDIFF_CACHE=str(cache))
  procs = [subprocess.Popen([sys.executable, '-c', _RACER, server.url('pretrained_model.pkl'),
                             blob, str(tmp_path / 'sync' / 'go')], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for _ in range(2)]
  outputs = [p.communicate(timeout=300) for p in procs]
  run = cache / 'runs' / 'xydeblur_gopro'
  for proc, (out, err) in zip(procs, outputs):
    assert proc.returncode == 0, err[-3000:]
    assert out.strip().splitlines()[-1] == f'RUN {run}'
  assert sorted(os.listdir(run)) == ['checkpoints', 'config.json']
  assert sorted(os.listdir(cache / 'runs')) == ['xydeblur_gopro']  # No staging folder left.
  restorer = inference.Restorer.from_workdir(str(run))
  assert restorer.step == 0 and restorer.config.model.width == WIDTH


def _cli(*args, cwd):
  return run_xydiff('fetch', *args, cwd=cwd, timeout=300)


def test_the_command_line_prints_one_line_and_keeps_nothing(tmp_path, server, cache):
  # Its success path imports as fetch_weights does (tested above); a subprocess
  # that imports jax and writes a checkpoint costs more than this file's budget.
  server.files['/pretrained_model.pkl'] = official_file(tmp_path / 'pretrained_model.pkl')
  url = server.url('pretrained_model.pkl')
  blob = download.git_blob_sha1(str(tmp_path / 'pretrained_model.pkl'))
  workdir = tmp_path / 'run'

  wrong = _cli('xydeblur_gopro', f'--workdir={workdir}', f'--url={url}', *OVERRIDES, cwd=tmp_path)
  assert wrong.returncode == 1
  assert 'Traceback' not in wrong.stderr
  last = wrong.stderr.strip().splitlines()[-1]
  assert last.startswith(f'error: {url} is not the expected file') and blob in last
  assert 'carries no licence' in wrong.stdout
  assert not workdir.exists() and not cache.exists()

  unknown = _cli('gopro', f'--workdir={workdir}', cwd=tmp_path)
  assert unknown.returncode == 1
  assert unknown.stderr.strip().splitlines()[-1] == (
      "error: unknown model 'gopro': downloadable weights are dmphn_1_2_4_8_gopro, "
      f'dmphn_1_2_4_gopro, xydeblur_gopro; models: {", ".join(configs.NAMES)}')

  malformed = _cli('xydeblur_gopro', f'--workdir={workdir}', '--blob_sha1=123', cwd=tmp_path)
  assert malformed.returncode == 1
  assert malformed.stderr.strip().splitlines()[-1].startswith(
      'error: --blob_sha1=123: not a git blob id')

  misspelt = _cli('xydeblur_gopro', f'--workdir={workdir}', '--config.model.widht=4',
                  cwd=tmp_path)
  assert misspelt.returncode == 1
  assert misspelt.stderr.strip().splitlines()[-1] == (
      "error: --config.model.widht=4: the config has no field 'widht'; did you mean 'width'?")
  assert not workdir.exists() and not cache.exists()
