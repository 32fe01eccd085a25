"""FID / KID against pytorch-fid's own network and formulas (random weights, offline).

pytorch-fid imports torchvision for the plain Inception blocks it patches;
torchvision is not installed here (its PyPI wheels pin other torch builds), so
`_torchvision_stub` supplies those blocks, transcribed from
torchvision/models/inception.py. pytorch-fid's own FIDInceptionA/C/E_1/E_2,
`fid_inception_v3` and `InceptionV3` wrapper then run unchanged.
"""

import sys
import types

import numpy as np
import pytest

try:
  import torch
except ImportError:  # The FID/KID maths and the fetch test below need no torch.
  torch = None
else:
  nn = torch.nn
  F = torch.nn.functional
needs_torch = pytest.mark.skipif(torch is None, reason='compares with PyTorch')


def _torchvision_stub():
  """A `torchvision` module with just what pytorch_fid.inception needs."""

  class BasicConv2d(nn.Module):

    def __init__(self, cin, cout, **kwargs):
      super().__init__()
      self.conv = nn.Conv2d(cin, cout, bias=False, **kwargs)
      self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
      return F.relu(self.bn(self.conv(x)))

  class InceptionA(nn.Module):

    def __init__(self, cin, pool_features):
      super().__init__()
      self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
      self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
      self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
      self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
      self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
      self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
      self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

  class InceptionB(nn.Module):

    def __init__(self, cin):
      super().__init__()
      self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
      self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
      self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
      self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
      b3 = self.branch3x3(x)
      b3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
      return torch.cat([b3, b3dbl, F.max_pool2d(x, kernel_size=3, stride=2)], 1)

  class InceptionC(nn.Module):

    def __init__(self, cin, channels_7x7):
      super().__init__()
      c7 = channels_7x7
      self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
      self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
      self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
      self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
      self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
      self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
      self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
      self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
      self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
      self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

  class InceptionD(nn.Module):

    def __init__(self, cin):
      super().__init__()
      self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
      self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
      self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
      self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
      self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
      self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
      b3 = self.branch3x3_2(self.branch3x3_1(x))
      b7 = x
      for i in range(1, 5):
        b7 = getattr(self, f'branch7x7x3_{i}')(b7)
      return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)

  class InceptionE(nn.Module):

    def __init__(self, cin):
      super().__init__()
      self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
      self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
      self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
      self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
      self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
      self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
      self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
      self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
      self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

  class Inception3(nn.Module):
    """torchvision's Inception3 layout (aux_logits=False), up to fc."""

    def __init__(self, num_classes=1000, aux_logits=True, init_weights=None):
      super().__init__()
      assert not aux_logits
      self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
      self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
      self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
      self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2)
      self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
      self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
      self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)
      self.Mixed_5b = InceptionA(192, pool_features=32)
      self.Mixed_5c = InceptionA(256, pool_features=64)
      self.Mixed_5d = InceptionA(288, pool_features=64)
      self.Mixed_6a = InceptionB(288)
      self.Mixed_6b = InceptionC(768, channels_7x7=128)
      self.Mixed_6c = InceptionC(768, channels_7x7=160)
      self.Mixed_6d = InceptionC(768, channels_7x7=160)
      self.Mixed_6e = InceptionC(768, channels_7x7=192)
      self.Mixed_7a = InceptionD(768)
      self.Mixed_7b = InceptionE(1280)
      self.Mixed_7c = InceptionE(2048)
      self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
      self.fc = nn.Linear(2048, num_classes)

  built = []

  def inception_v3(weights=None, **kwargs):
    assert weights is None
    built.append(Inception3(**kwargs))
    return built[-1]

  tv = types.ModuleType('torchvision')
  tv.__version__ = '0.20.0'
  tv.models = types.ModuleType('torchvision.models')
  tv.models.inception = types.ModuleType('torchvision.models.inception')
  tv.models.inception.InceptionA = InceptionA
  tv.models.inception.InceptionC = InceptionC
  tv.models.inception.InceptionE = InceptionE
  tv.models.inception_v3 = inception_v3
  tv.transforms = types.ModuleType('torchvision.transforms')
  tv.built = built  # Test hook: every Inception3 made, to reach its state dict.
  return tv


@pytest.fixture(scope='module')
def pytorch_fid(monkeypatch_module):
  """pytorch_fid.inception and .fid_score, importable without torchvision."""
  if torch is None:
    pytest.skip('compares with PyTorch')
  pytest.importorskip('pytorch_fid')
  try:
    import torchvision  # noqa: F401
  except Exception:  # Absent, or a wheel built for another torch.
    tv = _torchvision_stub()
    for name in ('torchvision', 'torchvision.models', 'torchvision.models.inception',
                 'torchvision.transforms'):
      monkeypatch_module.delitem(sys.modules, name, raising=False)
    monkeypatch_module.setitem(sys.modules, 'torchvision', tv)
    monkeypatch_module.setitem(sys.modules, 'torchvision.models', tv.models)
    monkeypatch_module.setitem(sys.modules, 'torchvision.models.inception', tv.models.inception)
    monkeypatch_module.setitem(sys.modules, 'torchvision.transforms', tv.transforms)
  for name in ('pytorch_fid.inception', 'pytorch_fid.fid_score'):
    monkeypatch_module.delitem(sys.modules, name, raising=False)
  from pytorch_fid import fid_score, inception
  return types.SimpleNamespace(inception=inception, fid_score=fid_score)


@pytest.fixture(scope='module')
def monkeypatch_module():
  mp = pytest.MonkeyPatch()
  yield mp
  mp.undo()
  for name in ('pytorch_fid.inception', 'pytorch_fid.fid_score'):
    sys.modules.pop(name, None)  # They hold the stub.


def _images(seed, n, h, w):
  """Smooth random colour images with edges, float32 NHWC in [0, 1]."""
  rng = np.random.default_rng(seed)
  coarse = rng.uniform(0, 1, (n, 3, h // 8 + 1, w // 8 + 1)).astype(np.float32)
  smooth = F.interpolate(torch.from_numpy(coarse), size=(h, w), mode='bicubic',
                         align_corners=False).numpy()
  noise = rng.normal(0, 0.05, smooth.shape).astype(np.float32)
  return np.clip(smooth + noise, 0, 1).transpose(0, 2, 3, 1)


@pytest.fixture(scope='module')
def random_fid_inception(pytorch_fid, tmp_path_factory):
  """pytorch-fid's InceptionV3 (FID variant) with random weights, and its saved file.

  Conv weights keep torch's default init. Every BatchNorm gets running
  statistics measured on random images, so activations stay O(1) through the
  network, and a random scale and a positive shift small enough that most
  ReLUs stay on: a unit-gain random network would amplify float32 rounding
  from layer to layer until torch itself missed its float64 result by more
  than the tolerance. Returns the InceptionV3 wrapper, its Inception3 (whose
  state dict, with `fc`, is what the release file holds) and that state dict
  saved by torch.save in the legacy (pre-1.6) format.
  """
  torch.manual_seed(0)
  built = sys.modules['torchvision'].built
  monkey = pytest.MonkeyPatch()
  # fid_inception_v3 loads the release weights; hand it the network's own.
  monkey.setattr(pytorch_fid.inception, 'load_state_dict_from_url',
                 lambda *a, **k: built[-1].state_dict())
  fid_net = pytorch_fid.inception.InceptionV3([3]).eval()
  monkey.undo()
  inception3 = built[-1]
  with torch.no_grad():
    for m in fid_net.modules():
      if isinstance(m, nn.BatchNorm2d):
        m.weight.uniform_(0.3, 0.6)
        m.bias.uniform_(0.2, 0.6)
        m.momentum = None  # Cumulative running averages.
    fid_net.train()
    fid_net(torch.from_numpy(_images(1, 4, 120, 160).transpose(0, 3, 1, 2)))
    fid_net.eval()
    for m in fid_net.modules():
      if isinstance(m, nn.BatchNorm2d):  # No near-dead channel scales rounding up to 1/sqrt(eps).
        m.running_var.clamp_(min=0.25 * float(m.running_var.mean()))
  path = tmp_path_factory.mktemp('weights') / 'pt_inception-random.pth'
  torch.save(inception3.state_dict(), path, _use_new_zipfile_serialization=False)
  return fid_net, inception3, path


def test_features_match_pytorch_fid(random_fid_inception):
  """The saved file, read without torch, gives pytorch-fid's pool3 features."""
  from xydiff.interop import inception
  from xydiff.metrics import fid
  fid_net, _, path = random_fid_inception
  params = inception.load_inception(str(path))
  images = _images(2, 2, 96, 128)
  with torch.no_grad():
    want = fid_net(torch.from_numpy(images.transpose(0, 3, 1, 2)))[0][:, :, 0, 0].numpy()
  got = np.asarray(fid.inception_features(params, images, quantized=False))
  assert got.shape == (2, fid.FEATURE_DIM)
  assert np.abs(want).max() > 0.5  # The random network keeps O(1) activations.
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


@needs_torch
def test_resize_and_input_match_pytorch():
  """Bilinear without antialias both ways (the FID protocol), then [-1, 1]; uint8 first."""
  from xydiff.images import to_uint8
  from xydiff.metrics import fid
  for h, w in ((150, 400), (37, 50)):  # Shrinks one axis and grows the other; grows both.
    images = _images(3, 2, h, w)
    want = F.interpolate(torch.from_numpy(images.transpose(0, 3, 1, 2)), size=(299, 299),
                         mode='bilinear', align_corners=False).numpy().transpose(0, 2, 3, 1)
    got = np.asarray(fid.resize_bilinear(images))
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    rounded = to_uint8(images).astype(np.float32) / 255.0
    np.testing.assert_allclose(np.asarray(fid.inception_input(images)),
                               2 * np.asarray(fid.resize_bilinear(rounded)) - 1, atol=1e-6, rtol=0)
    np.testing.assert_allclose(np.asarray(fid.inception_input(images, quantized=False)),
                               2 * want - 1, atol=2e-6, rtol=0)


def test_weights_errors_name_the_file(random_fid_inception, tmp_path):
  from xydiff.errors import WeightsError
  from xydiff.interop import inception
  _, inception3, path = random_fid_inception
  state = {k: v.detach().numpy() for k, v in inception3.state_dict().items()}
  del state['Mixed_6c.branch7x7dbl_3.bn.running_var']
  with pytest.raises(WeightsError, match=r'w\.pth.*Mixed_6c\.branch7x7dbl_3\.bn\.running_var'):
    inception.inception_params(state, source='w.pth')
  state = {k: v.detach().numpy() for k, v in inception3.state_dict().items()}
  state['Mixed_7b.branch3x3_2a.conv.weight'] = state['Mixed_7b.branch3x3_2b.conv.weight']
  with pytest.raises(WeightsError, match=r'Mixed_7b\.branch3x3_2a\.conv\.weight.*shape'):
    inception.inception_params(state, source='w.pth')
  with pytest.raises(WeightsError, match='inception_weights'):
    inception.load_inception(str(tmp_path / 'missing.pth'))
  zipped = tmp_path / 'zip.pth'  # The current torch.save format reads the same.
  torch.save(inception3.state_dict(), zipped)
  want = inception.load_inception(str(path))
  for name, p in inception.load_inception(str(zipped)).items():
    np.testing.assert_array_equal(p['kernel'], want[name]['kernel'])
    np.testing.assert_array_equal(p['bias'], want[name]['bias'])
  torch.save([1, 2], tmp_path / 'list.pth')
  with pytest.raises(WeightsError, match='list.pth'):
    inception.load_inception(str(tmp_path / 'list.pth'))


def test_fetch_pins_the_whole_hash_and_a_failed_fetch_turns_the_metric_off(monkeypatch,
                                                                          tmp_path):
  from test_torch_pickle import tensor, write_zip
  from xydiff.interop import download, inception
  from xydiff.errors import WeightsError
  weights = write_zip(tmp_path / 'w.pth', {'Conv2d_1a_3x3.conv.weight': tensor(
      np.ones((2, 2), np.float32), '0')})
  calls = []

  def fake_fetch(url, filename, **kwargs):
    calls.append((url, filename, kwargs))
    return str(weights)

  monkeypatch.setattr(download, 'fetch', fake_fetch)
  monkeypatch.setattr(inception, 'inception_params', lambda state, source: {'keys': sorted(state),
                                                                       'source': source})
  params, note = inception.load_inception_or_note(None, cache=str(tmp_path))
  assert note is None and params == {'keys': ['Conv2d_1a_3x3.conv.weight'], 'source': str(weights)}
  assert calls == [(inception.INCEPTION_URL, 'pt_inception-2015-12-05-6726825d.pth',
                    {'sha256': inception.INCEPTION_SHA256, 'max_bytes': inception.INCEPTION_BYTES,
                     'cache': str(tmp_path)})]
  assert inception.INCEPTION_URL.endswith('/' + calls[0][1])
  assert len(inception.INCEPTION_SHA256) == 64  # The whole digest, not the name's 8 hex digits.

  def offline(url, filename, **kwargs):
    raise WeightsError(f'{url}: network unreachable')

  monkeypatch.setattr(download, 'fetch', offline)
  params, note = inception.load_inception_or_note('')
  assert params is None
  assert '\n' not in note and 'FID/KID off' in note and 'config.eval.inception_weights' in note
  with pytest.raises(WeightsError):  # A file the user names must load.
    inception.load_inception_or_note(str(tmp_path / 'missing.pth'))


def _features(seed, n, d, shift=0.0):
  """Correlated non-negative rows, like pooled ReLU features."""
  rng = np.random.default_rng(seed)
  mix = rng.normal(size=(d // 2, d)) / np.sqrt(d)
  return np.maximum(rng.normal(size=(n, d // 2)) @ mix + 0.3 + shift, 0).astype(np.float32)


@pytest.mark.filterwarnings('ignore:The `disp` argument:DeprecationWarning')  # pytorch-fid's.
@pytest.mark.parametrize('n', [300, 40])  # More rows than dimensions; fewer (singular).
def test_frechet_distance_matches_pytorch_fid(pytorch_fid, n):
  from xydiff.metrics import fid
  a, b = _features(0, n, 64).astype(np.float64), _features(1, n + 7, 64, 0.05).astype(np.float64)
  want = pytorch_fid.fid_score.calculate_frechet_distance(
      np.mean(a, axis=0), np.cov(a, rowvar=False), np.mean(b, axis=0), np.cov(b, rowvar=False))
  stats_a, stats_b = fid.FeatureStats(64), fid.FeatureStats(64)
  stats_a.add(a)
  stats_b.add(b)
  np.testing.assert_allclose(stats_a.mean(), np.mean(a, axis=0), rtol=0, atol=1e-12)
  np.testing.assert_allclose(stats_a.cov(), np.cov(a, rowvar=False), rtol=0, atol=1e-12)
  assert want > 0.1
  assert abs(stats_a.fid(stats_b) - want) < 1e-3
  assert abs(fid.frechet_distance(np.mean(a, axis=0), np.cov(a, rowvar=False),
                                  np.mean(b, axis=0), np.cov(b, rowvar=False)) - want) < 1e-3


def _kid_torch_fidelity(f1, f2, subsets, subset_size, seed):
  """torch-fidelity's kid_features_to_metric / mmd2 (degree 3, gamma 1/d, coef0 1), in numpy."""
  n1, n2 = len(f1), len(f2)
  rng = np.random.RandomState(seed)
  mmds = np.zeros(subsets)
  for i in range(subsets):
    x = f1[rng.choice(n1, subset_size, replace=False)]
    y = f2[rng.choice(n2, subset_size, replace=False)]
    kernel = lambda p, q: (p @ q.T / p.shape[1] + 1) ** 3
    k11, k22, k12 = kernel(x, x), kernel(y, y), kernel(x, y)
    m = x.shape[0]
    kt_xx = (k11.sum(axis=-1) - np.diag(k11)).sum()
    kt_yy = (k22.sum(axis=-1) - np.diag(k22)).sum()
    mmds[i] = (kt_xx + kt_yy) / (m * (m - 1)) - 2 * k12.sum(axis=0).sum() / m**2
  return float(np.mean(mmds))


def _kid_clean_fid(feats1, feats2, num_subsets, max_subset_size, seed):
  """clean-fid's kernel_distance, its subsets drawn in torch-fidelity's order."""
  rng = np.random.RandomState(seed)
  n = feats1.shape[1]
  m = min(min(feats1.shape[0], feats2.shape[0]), max_subset_size)
  t = 0
  for _ in range(num_subsets):
    y = feats1[rng.choice(feats1.shape[0], m, replace=False)]
    x = feats2[rng.choice(feats2.shape[0], m, replace=False)]
    a = (x @ x.T / n + 1) ** 3 + (y @ y.T / n + 1) ** 3
    b = (x @ y.T / n + 1) ** 3
    t += (a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m
  return float(t / num_subsets / m)


@pytest.mark.parametrize('full_gram', [True, False])
def test_kid_matches_torch_fidelity_and_clean_fid(monkeypatch, full_gram):
  from xydiff.metrics import fid
  if not full_gram:
    monkeypatch.setattr(fid, '_KID_FULL_GRAM_MAX_ROWS', 0)
  a, b = _features(2, 70, 32).astype(np.float64), _features(3, 55, 32, 0.1).astype(np.float64)
  got = fid.kid(a, b, num_subsets=12, subset_size=30, seed=7)
  assert got > 1e-4
  np.testing.assert_allclose(got, _kid_torch_fidelity(a, b, 12, 30, 7), rtol=1e-9, atol=0)
  np.testing.assert_allclose(got, _kid_clean_fid(a, b, 12, 30, 7), rtol=1e-9, atol=0)
  # subset_size above the row counts is capped at the smaller set (clean-fid).
  np.testing.assert_allclose(fid.kid(a, b, num_subsets=3, seed=1),
                             _kid_clean_fid(a, b, 3, 1000, 1), rtol=1e-9, atol=0)


def test_accumulating_in_chunks_equals_all_at_once():
  from xydiff.metrics import fid
  a, b = _features(4, 90, 48), _features(5, 80, 48, 0.1)
  whole_a, whole_b = fid.FeatureStats(48), fid.FeatureStats(48)
  whole_a.add(a)
  whole_b.add(b)
  chunked = fid.FeatureStats(48)
  chunked.add(a[:37])
  for row in a[37:]:  # Image by image.
    chunked.add(row)
  assert chunked.count == 90
  np.testing.assert_array_equal(chunked.rows(), a)
  np.testing.assert_allclose(chunked.mean(), whole_a.mean(), rtol=0, atol=1e-12)
  np.testing.assert_allclose(chunked.cov(), whole_a.cov(), rtol=0, atol=1e-12)
  assert abs(chunked.fid(whole_b) - whole_a.fid(whole_b)) < 1e-9
  assert chunked.kid(whole_b, num_subsets=5, subset_size=40) == whole_a.kid(
      whole_b, num_subsets=5, subset_size=40)


def test_feature_stats_refuses_what_it_cannot_score():
  from xydiff.metrics import fid
  stats = fid.FeatureStats(8, keep_rows=False)
  with pytest.raises(ValueError, match=r'\[n, 8\]'):
    stats.add(np.zeros((2, 9)))
  with pytest.raises(FloatingPointError):
    stats.add(np.full((1, 8), np.nan))
  stats.add(np.ones((1, 8)))
  with pytest.raises(ValueError, match='2 or more'):
    stats.cov()
  with pytest.raises(ValueError, match='keep_rows'):
    stats.kid(stats)
  assert stats.count == 1
