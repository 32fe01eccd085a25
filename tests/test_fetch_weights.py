"""Official weights by name: downloaded once, verified by hash, imported; failures leave nothing.

A local HTTP server (127.0.0.1, an ephemeral port) stands in for GitHub; the
served file is an official-format checkpoint of a reduced XYDeblur
(xydiff/tools/torch_xydeblur.py), so the imported run must restore images as
the PyTorch network does.
"""

import dataclasses
import hashlib
import http.server
import os
import socket
import subprocess
import sys
import threading
import urllib.parse

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from xydiff import download, inference
from xydiff.errors import CheckpointImportError, WeightsError
from xydiff.tools import fetch_weights, import_xydeblur

torch = pytest.importorskip('torch')
from xydiff.tools.torch_xydeblur import OfficialXYDeblur  # noqa: E402

WIDTH, NUM_RES = 4, 1
OVERRIDES = [f'--config.model.xydeblur.width={WIDTH}', f'--config.model.xydeblur.num_res={NUM_RES}']


class _Server:
  """Serves `files` ({path: bytes}); '/truncated' promises more bytes than it sends."""

  def __init__(self):
    self.files = {}
    self.requests = []
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def do_GET(self):  # noqa: N802 (http.server's name)
        server.requests.append(self.path)
        body = server.files.get(urllib.parse.urlparse(self.path).path)
        if self.path == '/truncated':
          self.send_response(200)
          self.send_header('Content-Length', '1000')
          self.end_headers()
          self.wfile.write(b'x' * 10)
          return
        if body is None:
          self.send_error(404)
          return
        self.send_response(200)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

      def log_message(self, *args):  # Quiet test output.
        pass

    self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                   daemon=True)
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
  config = fetch_weights._config_for('xydeblur_gopro')
  config.model.xydeblur.update(dict(width=WIDTH, num_res=NUM_RES))
  return config


def _official_file(tmp_path):
  """(net, bytes) of an official-format checkpoint, in torch.save's legacy format."""
  torch.manual_seed(0)
  net = OfficialXYDeblur(width=WIDTH, num_res=NUM_RES).eval()
  path = tmp_path / 'pretrained_model.pkl'
  torch.save({'model': net.state_dict()}, path, _use_new_zipfile_serialization=False)
  return net, path.read_bytes()


def _nothing_left(cache, workdir):
  assert not workdir.exists()
  assert not cache.exists() or not list(cache.iterdir())


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


def test_fetched_weights_restore_images_like_pytorch(tmp_path, server, cache, monkeypatch):
  net, content = _official_file(tmp_path)
  server.files['/pretrained_model.pkl'] = content
  blob = download.git_blob_sha1(str(tmp_path / 'pretrained_model.pkl'))
  url = server.url('pretrained_model.pkl')
  workdir = tmp_path / 'run'
  step_dir = fetch_weights.fetch_weights('xydeblur_gopro', str(workdir), url=url, blob_sha1=blob,
                                         config=_config())
  assert step_dir == str(workdir / 'checkpoints' / '0') and os.path.isdir(step_dir)
  cached = cache / f'xydeblur_gopro-{blob[:12]}.pkl'
  assert [p.name for p in cache.iterdir()] == [cached.name]
  assert cached.read_bytes() == content

  config = _config()
  graphdef, params, step = inference.load_for_inference(config, str(workdir))
  assert step == 0
  image = np.random.default_rng(0).uniform(size=(32, 48, 3)).astype(np.float32)
  ours = nnx.merge(graphdef, params)(jnp.asarray(image)[None])
  with torch.no_grad():
    theirs = net(torch.from_numpy(image).permute(2, 0, 1)[None])
  for name, reference in zip(('horizontal', 'vertical', 'restored'), theirs):
    np.testing.assert_allclose(np.asarray(ours[name][0]), reference[0].permute(1, 2, 0).numpy(),
                               atol=1e-4, err_msg=name)
  assert np.abs(np.asarray(ours['restored'][0]) - image).max() > 0.05  # Not two no-ops.

  # A verified cached file is not downloaded again; a damaged one is.
  assert len(server.requests) == 1
  assert download.fetch(url, cached.name, git_blob_sha1=blob) == str(cached)
  assert len(server.requests) == 1
  cached.write_bytes(content[:-1] + b'!')
  assert download.fetch(url, cached.name, git_blob_sha1=blob) == str(cached)
  assert len(server.requests) == 2 and cached.read_bytes() == content

  # By name alone (Restorer.from_pretrained): imported into the cache once, then reused.
  entry = dataclasses.replace(fetch_weights.WEIGHTS['xydeblur_gopro'], url=url, git_blob_sha1=blob)
  monkeypatch.setitem(fetch_weights.WEIGHTS, 'xydeblur_gopro', entry)
  tiny = _config()
  monkeypatch.setattr(fetch_weights, '_config_for', lambda name: tiny)
  run = fetch_weights.pretrained_workdir('xydeblur_gopro')
  assert run == str(cache / 'runs' / 'xydeblur_gopro')
  assert os.path.isdir(os.path.join(run, 'checkpoints', '0'))
  assert fetch_weights.pretrained_workdir('xydeblur_gopro') == run
  assert len(server.requests) == 2  # Both served from the cache.


def test_a_wrong_hash_keeps_nothing_and_names_both_hashes(tmp_path, server, cache):
  _, content = _official_file(tmp_path)
  server.files['/pretrained_model.pkl'] = content
  blob = download.git_blob_sha1(str(tmp_path / 'pretrained_model.pkl'))
  url = server.url('pretrained_model.pkl')
  workdir = tmp_path / 'run'
  with pytest.raises(WeightsError) as e:
    fetch_weights.fetch_weights('xydeblur_gopro', str(workdir), url=url, config=_config())
  message = str(e.value)
  assert url in message and blob in message
  assert fetch_weights.WEIGHTS['xydeblur_gopro'].git_blob_sha1 in message
  assert '\n' not in message
  _nothing_left(cache, workdir)


def test_a_failed_import_keeps_the_verified_file_and_removes_only_its_workdir(
    tmp_path, server, cache, monkeypatch):
  _, content = _official_file(tmp_path)
  server.files['/pretrained_model.pkl'] = content
  blob = download.git_blob_sha1(str(tmp_path / 'pretrained_model.pkl'))
  url = server.url('pretrained_model.pkl')
  with pytest.raises(CheckpointImportError, match=r'does not fit config.model.xydeblur '
                     r'\(width=32, num_res=6\) \(the checkpoint looks like width=4, num_res=1'):
    fetch_weights.fetch_weights('xydeblur_gopro', str(tmp_path / 'run'), url=url, blob_sha1=blob)
  assert not (tmp_path / 'run').exists()
  assert [p.name for p in cache.iterdir()] == [f'xydeblur_gopro-{blob[:12]}.pkl']

  def interrupted(path, workdir, config):  # An import that fails after writing.
    os.makedirs(os.path.join(workdir, 'checkpoints', 'tmp'))
    raise KeyboardInterrupt

  monkeypatch.setattr(import_xydeblur, 'import_checkpoint', interrupted)
  with pytest.raises(KeyboardInterrupt):
    fetch_weights.fetch_weights('xydeblur_gopro', str(tmp_path / 'run'), url=url, blob_sha1=blob)
  assert not (tmp_path / 'run').exists()
  mine = tmp_path / 'mine'
  (mine / 'notes').mkdir(parents=True)
  with pytest.raises(KeyboardInterrupt):
    fetch_weights.fetch_weights('xydeblur_gopro', str(mine), url=url, blob_sha1=blob)
  assert (mine / 'notes').is_dir()  # A workdir the user made is not deleted.
  assert len(server.requests) == 1  # The verified file was reused.


def test_download_failures_are_one_line_naming_the_url_and_keep_nothing(tmp_path, server, cache):
  workdir = tmp_path / 'run'
  missing = server.url('nope/pretrained_model.pkl')
  with pytest.raises(WeightsError, match=rf'^cannot download {missing}: HTTP 404 '):
    fetch_weights.fetch_weights('xydeblur_gopro', str(workdir), url=missing, config=_config())
  _nothing_left(cache, workdir)

  truncated = server.url('truncated')
  with pytest.raises(WeightsError, match=rf'^cannot download {truncated}: got 10 of 1000 bytes$'):
    download.fetch(truncated, 'x.pkl', git_blob_sha1='0' * 40)
  _nothing_left(cache, workdir)

  with socket.socket() as closed:  # A port nobody listens on.
    closed.bind(('127.0.0.1', 0))
    refused = f'http://127.0.0.1:{closed.getsockname()[1]}/x.pkl'
  with pytest.raises(WeightsError, match=rf'^cannot download {refused}: .*refused'):
    download.fetch(refused, 'x.pkl', git_blob_sha1='0' * 40)
  _nothing_left(cache, workdir)

  with socket.socket() as silent:  # Accepts connections, never answers.
    silent.bind(('127.0.0.1', 0))
    silent.listen()
    stalled = f'http://127.0.0.1:{silent.getsockname()[1]}/x.pkl'
    with pytest.raises(WeightsError, match=rf'^cannot download {stalled}: no answer within 0.3 s'):
      download.fetch(stalled, 'x.pkl', git_blob_sha1='0' * 40, timeout=0.3)
  _nothing_left(cache, workdir)

  with pytest.raises(WeightsError, match=r"unknown weights 'gopro': known names are xydeblur_gopro"):
    fetch_weights.fetch_weights('gopro', str(workdir))
  _nothing_left(cache, workdir)


def test_sha256_prefix_verifies_as_torch_hub_names_files(tmp_path, server, cache):
  server.files['/w.pth'] = b'weights'
  digest = hashlib.sha256(b'weights').hexdigest()
  path = download.fetch(server.url('w.pth'), f'w-{digest[:8]}.pth', sha256_prefix=digest[:8])
  assert open(path, 'rb').read() == b'weights'
  with pytest.raises(WeightsError, match=rf'sha256 expected 00000000..., got {digest}'):
    download.fetch(server.url('w.pth'), 'v.pth', sha256_prefix='00000000')
  assert os.listdir(cache) == [os.path.basename(path)]


def _cli(*args, cwd):
  return subprocess.run([sys.executable, '-m', 'xydiff.tools.fetch_weights', *args], cwd=cwd,
                        capture_output=True, text=True, timeout=300)


def test_the_command_line_prints_one_line_and_keeps_nothing(tmp_path, server, cache):
  # Its success path imports as fetch_weights does (tested above); a subprocess
  # that imports jax and writes a checkpoint costs more than this file's budget.
  _, content = _official_file(tmp_path)
  server.files['/pretrained_model.pkl'] = content
  url = server.url('pretrained_model.pkl')
  blob = download.git_blob_sha1(str(tmp_path / 'pretrained_model.pkl'))
  workdir = tmp_path / 'run'

  wrong = _cli('xydeblur_gopro', f'--workdir={workdir}', f'--url={url}', *OVERRIDES, cwd=tmp_path)
  assert wrong.returncode == 1
  assert 'Traceback' not in wrong.stderr
  last = wrong.stderr.strip().splitlines()[-1]
  assert last.startswith(f'error: {url} is not the expected file') and blob in last
  assert 'carries no licence' in wrong.stdout
  _nothing_left(cache, workdir)

  unknown = _cli('gopro', f'--workdir={workdir}', cwd=tmp_path)
  assert unknown.returncode == 1
  assert unknown.stderr.strip().splitlines()[-1] == (
      "error: unknown weights 'gopro': known names are xydeblur_gopro")

  misspelt = _cli('xydeblur_gopro', f'--workdir={workdir}', '--config.model.xydeblur.widht=4',
                  cwd=tmp_path)
  assert misspelt.returncode == 1
  assert misspelt.stderr.strip().splitlines()[-1] == (
      'error: bad config override (--config.model.xydeblur.widht=4): '
      '\'widht\' Did you mean "width" instead of "widht"?')
  _nothing_left(cache, workdir)
