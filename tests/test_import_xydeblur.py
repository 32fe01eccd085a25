"""Official XYDeblur (PyTorch) checkpoints imported into xydiff restore the same images.

The PyTorch network below is built from the official architecture as
../shared/METHOD.md §2 describes it (models/XYDeblur.py of Seowon-Ji/XYDeblur):
same module names, so its state dict has the official keys, and the same
forward pass, with the second decoder run on features rotated by
`t.transpose(2, 3).flip(2)` and its residual rotated back.
"""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, traverse_util

from conftest import GOPRO_SAMPLE, REPO
from xydiff import checkpoint, images, train
from xydiff.tools import import_xydeblur
from xydiff.tools.import_xydeblur import CheckpointImportError

torch = pytest.importorskip('torch')
nn = torch.nn

FRAME = GOPRO_SAMPLE / 'test' / 'GOPR0869_11_00' / 'blur' / '000020.png'


class BasicConv(nn.Module):
  """conv (or 4x4 stride-2 transposed conv) + optional ReLU, held in `.main`."""

  def __init__(self, cin, cout, kernel_size, stride=1, relu=True, transpose=False):
    super().__init__()
    if transpose:
      conv = nn.ConvTranspose2d(cin, cout, kernel_size, stride=stride,
                                padding=kernel_size // 2 - 1)
    else:
      conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=kernel_size // 2)
    self.main = nn.Sequential(conv, nn.ReLU()) if relu else nn.Sequential(conv)

  def forward(self, x):
    return self.main(x)


class ResBlock(nn.Module):

  def __init__(self, channels):
    super().__init__()
    self.main = nn.Sequential(BasicConv(channels, channels, 3),
                              BasicConv(channels, channels, 3, relu=False))

  def forward(self, x):
    return x + self.main(x)


class Stage(nn.Module):
  """EBlock / DBlock: a `.layers` Sequential."""

  def __init__(self, layers):
    super().__init__()
    self.layers = nn.Sequential(*layers)

  def forward(self, x):
    return self.layers(x)


class OfficialXYDeblur(nn.Module):

  def __init__(self, width=32, num_res=6):
    super().__init__()
    w = width
    res = lambda c: [ResBlock(c) for _ in range(num_res)]
    self.Encoder1 = Stage([BasicConv(3, w, 3), *res(w)])
    self.Encoder2 = Stage([BasicConv(w, 2 * w, 3, stride=2), *res(2 * w)])
    self.Encoder3 = Stage([BasicConv(2 * w, 4 * w, 3, stride=2), *res(4 * w)])
    self.Convs1_1 = BasicConv(4 * w, 2 * w, 1)
    self.Convs1_2 = BasicConv(2 * w, w, 1)
    self.Decoder1_1 = Stage([*res(4 * w), BasicConv(4 * w, 2 * w, 4, stride=2, transpose=True)])
    self.Decoder1_2 = Stage([*res(2 * w), BasicConv(2 * w, w, 4, stride=2, transpose=True)])
    self.Decoder1_3 = Stage(res(w))
    self.Decoder1_4 = BasicConv(w, 3, 3, relu=False)

  def decode(self, z, e2, e1):
    d = self.Convs1_1(torch.cat([self.Decoder1_1(z), e2], dim=1))
    d = self.Convs1_2(torch.cat([self.Decoder1_2(d), e1], dim=1))
    return self.Decoder1_4(self.Decoder1_3(d))

  def forward(self, x):
    e1 = self.Encoder1(x)
    e2 = self.Encoder2(e1)
    z = self.Encoder3(e2)
    r1 = self.decode(z, e2, e1)
    rot = lambda t: t.transpose(2, 3).flip(2)
    r2 = self.decode(rot(z), rot(e2), rot(e1)).transpose(2, 3).flip(3)
    return [r1, r2, x + r1 + r2]


def _config(width, num_res, ema_rate=0.0):
  from configs import xydeblur_gopro
  config = xydeblur_gopro.get_config()
  config.model.xydeblur.update(dict(width=width, num_res=num_res))
  config.train.ema_rate = ema_rate
  return config


def _save_official(path, net, *, with_training_state=False):
  """As the official train.py does: Final.pkl holds only 'model'; model_N.pkl more."""
  payload = {'model': net.state_dict()}
  if with_training_state:
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [500, 1000], 0.5)
    payload.update(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), epoch=3)
  torch.save(payload, str(path))


def test_imported_checkpoint_restores_a_gopro_crop_like_pytorch(tmp_path):
  torch.manual_seed(0)
  net = OfficialXYDeblur(width=8, num_res=2).eval()
  pkl = tmp_path / 'model_3.pkl'
  _save_official(pkl, net, with_training_state=True)
  workdir = tmp_path / 'imported'
  # As a user runs it; the EMA config checks that evaluation's weights are the imported ones.
  result = subprocess.run(
      [sys.executable, '-m', 'xydiff.tools.import_xydeblur', str(pkl), f'--workdir={workdir}',
       '--config.model.xydeblur.width=8', '--config.model.xydeblur.num_res=2',
       '--config.train.ema_rate=0.999'],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert f'{workdir}/checkpoints/0' in result.stdout

  config = _config(8, 2, ema_rate=0.999)
  graphdef, target = jax.eval_shape(lambda: train.init_state(config))
  ckpt = checkpoint.Checkpointer(str(workdir), config.model)
  state = ckpt.restore(target)
  ckpt.close()
  assert int(state['step']) == 0
  model = nnx.merge(graphdef, train.eval_params(state))

  crop = images.to_float(images.read_image(str(FRAME)))[300:364, 500:596]  # 64x96.
  ours = model(jnp.asarray(crop)[None])
  with torch.no_grad():
    theirs = net(torch.from_numpy(crop).permute(2, 0, 1)[None])
  for name, reference in zip(('horizontal', 'vertical', 'restored'), theirs):
    reference = reference[0].permute(1, 2, 0).numpy()
    assert np.abs(np.asarray(ours[name][0]) - reference).max() <= 1e-4, name
  # A random network still changes the image: the comparison is not of two no-ops.
  assert np.abs(np.asarray(ours['restored'][0]) - crop).max() > 0.05

  with pytest.raises(CheckpointImportError, match='already has checkpoints'):
    import_xydeblur.import_checkpoint(str(pkl), str(workdir), config)


def test_full_size_checkpoint_maps_every_tensor_with_its_shape():
  net = OfficialXYDeblur()
  state_dict = {k: v.numpy() for k, v in net.state_dict().items()}
  assert sum(v.size for v in state_dict.values()) == 4_918_627
  _, state = jax.eval_shape(lambda: train.init_state(_config(32, 6)))
  params = import_xydeblur.convert(state_dict, state['params'], 6)
  ours = traverse_util.flatten_dict(params)
  target = traverse_util.flatten_dict(state['params'])
  assert ours.keys() == target.keys()
  assert all(ours[k].shape == target[k].shape for k in target)
  # Conv kernels OIHW -> HWIO; the transposed conv [in, out, kh, kw] -> HWOI.
  np.testing.assert_array_equal(
      params['encoder']['res2']['blocks'][5]['conv2']['kernel'],
      state_dict['Encoder2.layers.6.main.1.main.0.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(
      params['decoder']['up1']['kernel'],
      state_dict['Decoder1_1.layers.6.main.0.weight'].transpose(2, 3, 1, 0))
  assert params['decoder']['up1']['kernel'].shape == (4, 4, 64, 128)


def test_every_missing_extra_and_misshaped_tensor_is_listed_in_one_error(tmp_path):
  net = OfficialXYDeblur(width=4, num_res=2)
  state_dict = dict(net.state_dict())
  del state_dict['Decoder1_3.layers.1.main.0.main.0.bias']
  state_dict['Decoder1_5.main.0.weight'] = torch.zeros(3, 4, 3, 3)
  state_dict['Convs1_2.main.0.weight'] = torch.zeros(4, 8, 3, 3)
  pkl = tmp_path / 'bad.pkl'
  torch.save({'model': state_dict}, str(pkl))
  workdir = tmp_path / 'run'
  with pytest.raises(CheckpointImportError) as error:
    import_xydeblur.import_checkpoint(str(pkl), str(workdir), _config(4, 2))
  message = str(error.value)
  assert 'missing: Decoder1_3.layers.1.main.0.main.0.bias' in message
  assert 'unexpected: Decoder1_5.main.0.weight' in message
  assert 'wrong shape: Convs1_2.main.0.weight (4, 8, 3, 3) (expected (4, 8, 1, 1))' in message
  assert not workdir.exists()  # Nothing written for a checkpoint that does not fit.

  # A checkpoint of another size says which overrides would fit it.
  torch.save({'model': OfficialXYDeblur(width=4, num_res=2).state_dict()}, str(pkl))
  with pytest.raises(CheckpointImportError, match=r'looks like width=4, num_res=2.*unexpected: '
                     r'.*Encoder1\.layers\.2\.main\.0\.main\.0\.weight'):
    import_xydeblur.import_checkpoint(str(pkl), str(workdir), _config(4, 1))

  pkl.write_bytes(b'not a torch file')
  with pytest.raises(CheckpointImportError, match='cannot read .*bad.pkl'):
    import_xydeblur.import_checkpoint(str(pkl), str(workdir), _config(4, 2))


def test_missing_torch_says_how_to_install_it(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'torch', None)  # `import torch` now raises ImportError.
  with pytest.raises(CheckpointImportError, match=r"pip install -e '\.\[torch\]'"):
    import_xydeblur.load_state_dict(str(tmp_path / 'any.pkl'))


def test_a_misspelt_override_is_one_line_naming_it(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'xydiff.tools.import_xydeblur', str(tmp_path / 'x.pkl'),
       f'--workdir={tmp_path / "w"}', '--config.model.xydeblur.widht=8'],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
      'error: bad config override (--config.model.xydeblur.widht=8): '
      "'widht' Did you mean \"width\" instead of \"widht\"?")
  assert 'Traceback' not in result.stderr
