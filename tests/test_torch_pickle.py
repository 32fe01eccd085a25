"""torch.save files read without torch give torch's own tensors, and nothing but tensors."""

import collections
import io
import os
import pickle
import zipfile

import numpy as np
import pytest

from xydiff import torch_pickle
from xydiff.errors import WeightsError

torch = pytest.importorskip('torch')

FORMATS = {'zip': {}, 'legacy': {'_use_new_zipfile_serialization': False}}


def _tensors():
  """Tensors of several dtypes, and views whose strides and offsets are not the defaults."""
  g = torch.Generator().manual_seed(0)
  base = torch.randn(5, 6, generator=g)
  return collections.OrderedDict(
      float32=base,
      transposed=base.t(),
      offset=base[2:, 1:4],
      stepped=base[::2, ::3],
      column=base[:, 4],
      expanded=base[0:1].expand(3, 6),  # Stride 0.
      scalar=base[3, 3],
      empty=base[:0],
      float64=torch.randn(3, 2, dtype=torch.float64, generator=g),
      float16=torch.randn(4, dtype=torch.float16, generator=g)[1:],
      bfloat16=torch.randn(2, 3, generator=g).to(torch.bfloat16),
      int64=torch.arange(-5, 7).reshape(3, 4)[:, 1::2],
      int32=torch.arange(10, dtype=torch.int32) * 1000,
      int16=torch.tensor([-300, 7], dtype=torch.int16),
      int8=torch.tensor([-3, 7], dtype=torch.int8),
      uint8=torch.arange(250, 256, dtype=torch.uint8),
      bool=torch.tensor([[True, False], [False, True]]).t(),
      complex64=torch.randn(3, dtype=torch.complex64, generator=g),
  )


@pytest.mark.parametrize('fmt', FORMATS)
def test_every_tensor_reads_as_torch_has_it(tmp_path, fmt):
  tensors = _tensors()
  path = tmp_path / 'tensors.pth'
  torch.save(tensors, path, **FORMATS[fmt])
  loaded = torch_pickle.load(path)
  assert type(loaded) is collections.OrderedDict
  assert list(loaded) == list(tensors)
  for name, tensor in tensors.items():
    want = (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()
    got = loaded[name]
    assert isinstance(got, np.ndarray), name
    assert got.dtype == want.dtype and got.shape == want.shape, name
    np.testing.assert_array_equal(got, want, err_msg=name)
  # Widened exactly: bfloat16 holds float32's upper 16 bits.
  assert loaded['bfloat16'].view(np.uint32).max() & 0xFFFF == 0
  assert loaded['transposed'].flags.writeable


@pytest.mark.parametrize('fmt', FORMATS)
def test_a_training_checkpoint_keeps_its_nesting(tmp_path, fmt):
  net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
  optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
  net(torch.randn(1, 3, 8, 8)).sum().backward()
  optimizer.step()
  scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [500, 1000], 0.5)
  shared = torch.arange(4.0)
  payload = {'model': net.state_dict(), 'optimizer': optimizer.state_dict(),
             'scheduler': scheduler.state_dict(), 'epoch': 3, 'name': 'run',
             'blob': b'\x00\xffbytes', 'tags': {'a', 'b'}, 'pair': (shared, [shared[1:], 2.5]),
             'weight': torch.nn.Parameter(torch.ones(2, 2)), 'nothing': None}
  path = tmp_path / 'model_3.pkl'
  torch.save(payload, path, **FORMATS[fmt])
  loaded = torch_pickle.load(path)

  assert type(loaded['model']) is collections.OrderedDict
  assert list(loaded['model']) == ['0.weight', '0.bias', '2.weight', '2.bias']
  for key, tensor in net.state_dict().items():
    np.testing.assert_array_equal(loaded['model'][key], tensor.numpy())
  adam = loaded['optimizer']['state'][0]
  np.testing.assert_array_equal(adam['exp_avg'], optimizer.state_dict()['state'][0]['exp_avg'])
  assert loaded['optimizer']['param_groups'][0]['betas'] == (0.9, 0.999)
  assert loaded['scheduler']['milestones'] == collections.Counter({500: 1, 1000: 1})
  assert (loaded['epoch'], loaded['name'], loaded['blob'], loaded['tags'], loaded['nothing']) == (
      3, 'run', b'\x00\xffbytes', {'a', 'b'}, None)
  first, (second, number) = loaded['pair']
  np.testing.assert_array_equal(first, [0, 1, 2, 3])
  np.testing.assert_array_equal(second, [1, 2, 3])
  assert number == 2.5
  np.testing.assert_array_equal(loaded['weight'], np.ones((2, 2), np.float32))


class _RunsCode:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f'touch {self.marker}',)


@pytest.mark.parametrize('fmt', FORMATS)
def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, fmt):
  marker = tmp_path / 'ran'
  path = tmp_path / 'evil.pth'
  torch.save({'model': {'w': torch.ones(2)}, 'x': _RunsCode(marker)}, path, **FORMATS[fmt])
  with pytest.raises(WeightsError, match=rf'{path} names (posix|os)\.system, .*refused') as e:
    torch_pickle.load(path)
  assert '\n' not in str(e.value)
  assert not marker.exists()


class _Fake:
  """Pickles as a tensor of any size, stride and offset over a 4-float storage."""

  def __init__(self, offset, size, stride):
    self.args = (offset, size, stride)

  def __reduce__(self):
    offset, size, stride = self.args
    return torch._utils._rebuild_tensor_v2, (_STORAGE, offset, size, stride, False,
                                             collections.OrderedDict())


_STORAGE = object()


class _Pickler(pickle.Pickler):
  def persistent_id(self, obj):
    return ('storage', torch.FloatStorage, '0', 'cpu', 4) if obj is _STORAGE else None


def _zip_file(path, obj, storage_bytes=np.arange(4, dtype='<f4').tobytes()):
  """A zip-format torch.save file holding `obj`, for tensors torch itself would not write."""
  data = io.BytesIO()
  _Pickler(data, protocol=2).dump(obj)
  with zipfile.ZipFile(path, 'w') as archive:
    archive.writestr('archive/data.pkl', data.getvalue())
    archive.writestr('archive/byteorder', 'little')
    archive.writestr('archive/data/0', storage_bytes)
  return path


def test_tensors_reaching_outside_their_storage_are_refused(tmp_path):
  sound = torch_pickle.load(_zip_file(tmp_path / 'ok.pth', {'t': _Fake(1, (3, 2), (1, 0))}))
  np.testing.assert_array_equal(sound['t'], [[1, 1], [2, 2], [3, 3]])  # Crafting works.
  for offset, size, stride in ((0, (5,), (1,)), (2, (2, 2), (1, 1)), (4, (), ()), (0, (2,), (-1,))):
    path = _zip_file(tmp_path / 'bad.pth', {'t': _Fake(offset, size, stride)})
    with pytest.raises(WeightsError, match=rf'cannot read {path} as a torch.save file: .*'):
      torch_pickle.load(path)
  path = _zip_file(tmp_path / 'short.pth', {'t': _Fake(0, (4,), (1,))}, storage_bytes=b'\0' * 12)
  with pytest.raises(WeightsError, match=r'holds 12 bytes, not the 16'):
    torch_pickle.load(path)


@pytest.mark.parametrize('fmt', FORMATS)
def test_truncated_files_are_one_line_errors_naming_them(tmp_path, fmt):
  path = tmp_path / 'model.pth'
  torch.save({'model': _tensors()}, path, **FORMATS[fmt])
  whole = path.read_bytes()
  for size in (len(whole) - 7, len(whole) // 2, 40, 1, 0):
    path.write_bytes(whole[:size])
    with pytest.raises(WeightsError, match=f'cannot read {path}') as e:
      torch_pickle.load(path)
    assert '\n' not in str(e.value)


def test_foreign_and_missing_files_are_one_line_errors_naming_them(tmp_path):
  rng = np.random.default_rng(0)
  path = tmp_path / 'random.bin'
  for content in (rng.bytes(4096), b'\x80\x02' + rng.bytes(4096), pickle.dumps({'a': 1}),
                  b'not a torch file'):
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=f'cannot read {path}') as e:
      torch_pickle.load(path)
    assert '\n' not in str(e.value)
  with zipfile.ZipFile(path, 'w') as archive:  # A zip, but not torch's.
    archive.writestr('readme.txt', 'hello')
  with pytest.raises(WeightsError, match=f'cannot read {path} .*data.pkl'):
    torch_pickle.load(path)
  with pytest.raises(WeightsError, match=f'cannot read {tmp_path / "absent.pth"}: No such file'):
    torch_pickle.load(tmp_path / 'absent.pth')
