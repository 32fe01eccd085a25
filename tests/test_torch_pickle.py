"""torch.save files read without torch give torch's own tensors, and nothing but tensors.

Files torch itself writes need torch (the `torch` fixture skips without it).
Everything else — malformed and hostile files, which torch would not write —
is built here byte by byte (`write_zip`, `write_legacy`, the opcode helpers),
so those tests run without torch.
"""

import collections
import io
import os
import pickle
import struct
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

from xydiff.interop import torch_pickle
from xydiff.errors import WeightsError

FORMATS = {'zip': {}, 'legacy': {'_use_new_zipfile_serialization': False}}


@pytest.fixture
def torch():
  return pytest.importorskip('torch')


# ----------------------------------------------------------------- writing without torch

class Global:
  """A global a torch.save file names, written by name (torch need not be installed)."""

  def __init__(self, module: str, name: str):
    self.module, self.name = module, name

  def __call__(self, *args):  # The pickler wants reduce functions callable.
    raise AssertionError('never called')


REBUILD_V2 = Global('torch._utils', '_rebuild_tensor_v2')
ORDERED_DICT = Global('collections', 'OrderedDict')
STORAGE_TYPES = {'<f4': 'FloatStorage', '<f8': 'DoubleStorage', '<i8': 'LongStorage',
                 '|u1': 'ByteStorage', '<f2': 'HalfStorage'}


class Storage:
  """Raw elements under a key; `numel` may differ from the bytes (for damaged files)."""

  def __init__(self, key: str, array: np.ndarray, numel: int | None = None):
    self.key, self.array = key, np.ascontiguousarray(array).reshape(-1)
    self.numel = self.array.size if numel is None else numel
    self.type = Global('torch', STORAGE_TYPES[self.array.dtype.str])


class Tensor:
  """A tensor over a Storage, with any offset, size and stride."""

  def __init__(self, storage: Storage, offset: int, size: tuple, stride: tuple):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

  def __reduce__(self):
    return REBUILD_V2, (self.storage, self.offset, self.size, self.stride, False,
                        collections.OrderedDict())


def tensor(array: np.ndarray, key: str) -> Tensor:
  """A contiguous tensor holding `array`, on a storage of its own."""
  array = np.asarray(array)
  strides = tuple(int(np.prod(array.shape[i + 1:])) for i in range(array.ndim))
  return Tensor(Storage(key, array), 0, array.shape, strides)


class _Pickler(pickle._Pickler):  # pylint: disable=protected-access
  """Pickles Globals by name and Storages as torch's persistent ids."""

  dispatch = dict(pickle._Pickler.dispatch)  # pylint: disable=protected-access

  def __init__(self, file, *, legacy: bool):
    super().__init__(file, protocol=2)
    self.legacy = legacy
    self.storages = {}

  def persistent_id(self, obj):
    if not isinstance(obj, Storage):
      return None
    self.storages[obj.key] = obj
    return ('storage', obj.type, obj.key, 'cpu', obj.numel) + ((None,) if self.legacy else ())

  def save_global_by_name(self, obj):
    self.write(pickle.GLOBAL + f'{obj.module}\n{obj.name}\n'.encode())
    self.memoize(obj)

  dispatch[Global] = save_global_by_name


def _pickled(obj, *, legacy: bool = False) -> tuple[bytes, dict]:
  data = io.BytesIO()
  pickler = _Pickler(data, legacy=legacy)
  pickler.dump(obj)
  return data.getvalue(), pickler.storages


def write_zip(path, obj, *, raw_pickle: bytes | None = None, compress: bool = False):
  """A torch.save zip file holding `obj` (arrays as Tensors), or the pickle `raw_pickle`."""
  data, storages = _pickled(obj) if raw_pickle is None else (raw_pickle, {})
  method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
  with zipfile.ZipFile(path, 'w', compression=method) as archive:
    archive.writestr('archive/data.pkl', data)
    archive.writestr('archive/byteorder', 'little')
    archive.writestr('archive/version', '3\n')
    for key, storage in storages.items():
      archive.writestr(f'archive/data/{key}', storage.array.tobytes())
  return path


def write_legacy(path, obj, *, raw_pickle: bytes | None = None):
  """A torch.save file in the legacy (pre-1.6) format holding `obj`."""
  data, storages = _pickled(obj, legacy=True) if raw_pickle is None else (raw_pickle, {})
  with open(path, 'wb') as f:
    for header in (0x1950a86a20f9469cfc6c, 1001, {'protocol_version': 1001,
                                                   'little_endian': True}):
      f.write(pickle.dumps(header, protocol=2))
    f.write(data)
    f.write(pickle.dumps(list(storages), protocol=2))
    for storage in storages.values():
      f.write(struct.pack('<q', storage.numel) + storage.array.tobytes())
  return path


WRITERS = {'zip': write_zip, 'legacy': write_legacy}

# Opcodes for pickles no pickler writes.
PROTO2 = pickle.PROTO + b'\x02'


def glob(module, name):
  return pickle.GLOBAL + f'{module}\n{name}\n'.encode()


def text(value: str) -> bytes:
  data = value.encode()
  return pickle.BINUNICODE + struct.pack('<I', len(data)) + data


# ----------------------------------------------------------------- files torch writes

def _tensors(torch):
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
def test_every_tensor_reads_as_torch_has_it(torch, tmp_path, fmt):
  tensors = _tensors(torch)
  path = tmp_path / 'tensors.pth'
  torch.save(tensors, path, **FORMATS[fmt])
  loaded = torch_pickle.load(path)
  assert type(loaded) is collections.OrderedDict
  assert list(loaded) == list(tensors)
  for name, t in tensors.items():
    want = (t.float() if t.dtype == torch.bfloat16 else t).numpy()
    got = loaded[name]
    assert isinstance(got, np.ndarray), name
    assert got.dtype == want.dtype and got.shape == want.shape, name
    np.testing.assert_array_equal(got, want, err_msg=name)
  # Widened exactly: bfloat16 holds float32's upper 16 bits.
  assert loaded['bfloat16'].view(np.uint32).max() & 0xFFFF == 0
  assert loaded['transposed'].flags.writeable


@pytest.mark.parametrize('fmt', FORMATS)
def test_a_training_checkpoint_keeps_its_nesting(torch, tmp_path, fmt):
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
  for key, t in net.state_dict().items():
    np.testing.assert_array_equal(loaded['model'][key], t.numpy())
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


@pytest.mark.parametrize('fmt', FORMATS)
def test_truncated_files_are_one_line_errors_naming_them(torch, tmp_path, fmt):
  path = tmp_path / 'model.pth'
  torch.save({'model': _tensors(torch)}, path, **FORMATS[fmt])
  whole = path.read_bytes()
  for size in (len(whole) - 7, len(whole) // 2, 40, 1, 0):
    path.write_bytes(whole[:size])
    with pytest.raises(WeightsError, match=f'cannot read {path}') as e:
      torch_pickle.load(path)
    assert '\n' not in str(e.value)


def test_the_writer_here_writes_what_torch_reads(torch, tmp_path):
  """The torch-free writer the other tests use makes files torch itself loads the same."""
  array = np.arange(12, dtype=np.float32).reshape(3, 4)
  obj = collections.OrderedDict(w=tensor(array, '0'), nested=[tensor(np.ones(2), '1'), 7])
  for fmt, write in WRITERS.items():
    path = write(tmp_path / f'{fmt}.pth', obj)
    theirs = torch.load(path, weights_only=True)
    np.testing.assert_array_equal(theirs['w'].numpy(), array)
    ours = torch_pickle.load(path)
    np.testing.assert_array_equal(ours['w'], array)
    assert ours['nested'][1] == 7 and ours['nested'][0].dtype == np.float64


# ----------------------------------------------------------------- hostile files, no torch

class _RunsCode:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f'touch {self.marker}',)


@pytest.mark.parametrize('fmt', WRITERS)
def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, fmt):
  marker = tmp_path / 'ran'
  path = WRITERS[fmt](tmp_path / 'evil.pth', {'model': {'w': tensor(np.ones(2), '0')},
                                              'x': _RunsCode(marker)})
  with pytest.raises(WeightsError, match=rf'{path} names (posix|os)\.system, .*refused') as e:
    torch_pickle.load(path)
  assert '\n' not in str(e.value)
  assert not marker.exists()


@pytest.mark.parametrize('target', [('collections', 'Counter'), ('collections', 'OrderedDict'),
                                    ('_codecs', 'encode'), ('torch._utils', '_rebuild_tensor')])
def test_build_cannot_change_a_class_or_function(tmp_path, target):
  """The audit's 60-byte file: BUILD with slot state on a class setattr'd it for the process."""
  real = torch_pickle._ALLOWED[target]  # pylint: disable=protected-access
  before = dict(vars(real)) if hasattr(real, '__dict__') else None
  state = pickle.EMPTY_DICT + pickle.MARK + text('most_common') + glob('_codecs', 'encode') + \
      pickle.SETITEMS
  raw = PROTO2 + glob(*target) + pickle.NONE + state + pickle.TUPLE2 + pickle.BUILD + pickle.STOP
  for write in WRITERS.values():
    path = write(tmp_path / 'build.pth', None, raw_pickle=raw)
    with pytest.raises(WeightsError, match=rf'cannot read {path} .*sets the state of .*refused'):
      torch_pickle.load(path)
  assert not hasattr(real, 'most_common') or real.most_common is collections.Counter.most_common
  if before is not None:
    assert dict(vars(real)) == before  # The refused file left nothing behind.
  assert collections.Counter('aab').most_common(1) == [('a', 2)]


def test_build_on_a_container_the_file_made_is_dropped(tmp_path):
  """state_dict()s pickle their `_metadata` as BUILD state of the OrderedDict itself."""
  raw = (PROTO2 + glob('collections', 'OrderedDict') + pickle.EMPTY_TUPLE + pickle.REDUCE +
         pickle.EMPTY_DICT + text('_metadata') + pickle.EMPTY_DICT + pickle.SETITEM +
         pickle.BUILD + text('a') + pickle.NONE + pickle.SETITEM + pickle.STOP)
  loaded = torch_pickle.load(write_zip(tmp_path / 'sd.pth', None, raw_pickle=raw))
  assert loaded == collections.OrderedDict(a=None) and not hasattr(loaded, '_metadata')


@pytest.mark.parametrize('raw, why', [
    (glob('collections', 'OrderedDict'), 'holds a type'),
    (glob('_codecs', 'encode'), 'holds a function'),
    (glob('torch', 'FloatStorage'), 'holds a _StorageType'),
    (glob('collections', 'Counter') + pickle.EMPTY_TUPLE + pickle.NEWOBJ, 'NEWOBJ'),
    (pickle.MARK + glob('collections', 'Counter') + pickle.OBJ, r'\(OBJ\)'),
    (glob('_codecs', 'encode') + pickle.EMPTY_LIST + pickle.APPEND, 'appends to function'),
    (pickle.EMPTY_LIST + pickle.EMPTY_TUPLE + pickle.REDUCE, 'calls list'),
    (glob('collections', 'Counter') + text('k') + pickle.NONE + pickle.SETITEM,
     'sets items of type'),
])
def test_only_containers_tensors_and_plain_values_come_back(tmp_path, raw, why):
  path = write_zip(tmp_path / 'odd.pth', None, raw_pickle=PROTO2 + raw + pickle.STOP)
  with pytest.raises(WeightsError, match=rf'cannot read {path} as a torch.save file: .*{why}'):
    torch_pickle.load(path)


def test_shared_containers_are_built_once(tmp_path):
  """The audit's 204-byte file: each level a list holding the one below twice (2**depth paths)."""
  depth = 22
  raw = PROTO2 + pickle.EMPTY_LIST + pickle.BINPUT + b'\x00'
  for level in range(1, depth + 1):
    raw += (pickle.EMPTY_LIST + pickle.MARK + pickle.BINGET + bytes([level - 1]) +
            pickle.BINGET + bytes([level - 1]) + pickle.APPENDS + pickle.BINPUT + bytes([level]))
  path = write_zip(tmp_path / 'shared.pth', None, raw_pickle=raw + pickle.STOP)
  assert os.path.getsize(path) < 2000
  start = time.perf_counter()
  loaded = torch_pickle.load(path)
  assert time.perf_counter() - start < 2.0
  node = loaded
  for _ in range(depth):
    assert node[0] is node[1]  # Still shared: one list per level, not one per path.
    node = node[0]
  assert node == []

  cycle = PROTO2 + pickle.EMPTY_LIST + pickle.BINPUT + b'\x00' + pickle.BINGET + b'\x00' + \
      pickle.APPEND + pickle.STOP
  path = write_zip(tmp_path / 'cycle.pth', None, raw_pickle=cycle)
  with pytest.raises(WeightsError, match='a list that contains itself'):
    torch_pickle.load(path)


def test_tensors_reaching_outside_their_storage_are_refused(tmp_path):
  storage = Storage('0', np.arange(4, dtype=np.float32))
  sound = torch_pickle.load(write_zip(tmp_path / 'ok.pth', {'t': Tensor(storage, 1, (3, 2),
                                                                          (1, 0))}))
  np.testing.assert_array_equal(sound['t'], [[1, 1], [2, 2], [3, 3]])  # Crafting works.
  for offset, size, stride in ((0, (5,), (1,)), (2, (2, 2), (1, 1)), (4, (), ()), (0, (2,), (-1,)),
                               (-1, (2,), (1,)), (0, (2, 3), (1,))):
    path = write_zip(tmp_path / 'bad.pth', {'t': Tensor(storage, offset, size, stride)})
    with pytest.raises(WeightsError, match=rf'cannot read {path} as a torch.save file: .*'):
      torch_pickle.load(path)


@pytest.mark.parametrize('fmt', WRITERS)
def test_a_storage_must_hold_the_bytes_it_declares(tmp_path, fmt):
  short = Storage('0', np.zeros(3, np.float32), numel=4)
  path = WRITERS[fmt](tmp_path / 'short.pth', {'t': Tensor(short, 0, (4,), (1,))})
  with pytest.raises(WeightsError, match='(holds 12 bytes, not the 16|holds 3 elements)'):
    torch_pickle.load(path)
  huge = Storage('0', np.zeros(4, np.float32), numel=1 << 40)  # Claims 4 TiB.
  path = WRITERS[fmt](tmp_path / 'huge.pth', {'t': Tensor(huge, 0, (4,), (1,))})
  with pytest.raises(WeightsError, match=f'cannot read {path}'):
    torch_pickle.load(path)


@pytest.mark.parametrize('fmt', WRITERS)
def test_what_a_file_makes_is_capped(tmp_path, fmt):
  """The audit's 370-byte file: stride 0 over four floats made a 400 MB array."""
  storage = Storage('0', np.arange(4, dtype=np.float32))
  path = WRITERS[fmt](tmp_path / 'wide.pth', {'t': Tensor(storage, 0, (100_000, 1_000), (0, 1))})
  assert os.path.getsize(path) < 1000
  tracemalloc.start()
  try:
    with pytest.raises(WeightsError, match=r'cannot read .*takes 400,000,000 bytes, past '
                       r'max_bytes=268,435,456 .*xydiff import --max-bytes'):
      torch_pickle.load(path)
    assert tracemalloc.get_traced_memory()[1] < 10 << 20  # Refused before allocating.
  finally:
    tracemalloc.stop()
  small = WRITERS[fmt](tmp_path / 'small.pth', {'t': Tensor(storage, 0, (1000, 4), (0, 1))})
  assert torch_pickle.load(small)['t'].shape == (1000, 4)
  with pytest.raises(WeightsError, match='max_bytes=1,000'):
    torch_pickle.load(small, max_bytes=1000)


def test_zip_entries_are_checked_before_they_are_read(tmp_path):
  """The audit's 408 KB entry inflated to 829 MB of memory before any size check."""
  inflated = 64 << 20
  path = tmp_path / 'bomb.pth'
  storage = Storage('0', np.zeros(inflated // 4, np.float32))
  write_zip(path, {'big': Tensor(storage, 0, (1,), (1,))}, compress=True)
  assert os.path.getsize(path) < inflated // 500
  tracemalloc.start()
  try:
    with pytest.raises(WeightsError, match=r'would inflate .* more than 100x'):
      torch_pickle.load(path)
    assert tracemalloc.get_traced_memory()[1] < 16 << 20
  finally:
    tracemalloc.stop()

  # A deflate stream that is corrupt: one line, not a zlib.error traceback.
  write_zip(path, {'t': tensor(np.arange(4096, dtype=np.float32), '0')}, compress=True)
  data = bytearray(path.read_bytes())
  start = data.index(b'archive/data/0') + len('archive/data/0')
  data[start + 40:start + 60] = b'\xff' * 20
  path.write_bytes(bytes(data))
  with pytest.raises(WeightsError, match=f'cannot read {path}') as e:
    torch_pickle.load(path)
  assert '\n' not in str(e.value)

  # An entry marked encrypted: zipfile raises RuntimeError, here one line too.
  write_zip(path, {'t': tensor(np.arange(4, dtype=np.float32), '0')})
  data = bytearray(path.read_bytes())
  for signature, flags in ((b'PK\x03\x04', 6), (b'PK\x01\x02', 8)):
    at = data.find(signature)
    while at >= 0:
      data[at + flags] |= 1
      at = data.find(signature, at + 1)
  path.write_bytes(bytes(data))
  with pytest.raises(WeightsError, match=f'cannot read {path} as a torch.save file: .*encrypted'):
    torch_pickle.load(path)


@pytest.mark.parametrize('fmt', WRITERS)
def test_length_fields_cannot_claim_more_than_the_file(tmp_path, fmt):
  for opcode in (pickle.BYTEARRAY8, pickle.BINBYTES8, pickle.BINUNICODE8):
    # 256 MiB: a size the machine could allocate, so only the check keeps it from doing so.
    raw = pickle.PROTO + b'\x05' + opcode + struct.pack('<Q', 1 << 28) + pickle.STOP
    path = WRITERS[fmt](tmp_path / 'long.pth', None, raw_pickle=raw)
    tracemalloc.start()
    try:
      with pytest.raises(WeightsError, match=f'cannot read {path}'):
        torch_pickle.load(path)
      assert tracemalloc.get_traced_memory()[1] < 10 << 20
    finally:
      tracemalloc.stop()


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


@pytest.mark.parametrize('fmt', WRITERS)
def test_one_storage_is_one_dtype(tmp_path, fmt):
  """The audit: a legacy file naming storage 0 as FloatStorage, then as LongStorage, read the
  second tensor's int64 elements as float32. torch.save refuses to write such a file."""
  floats = Storage('0', np.arange(4, dtype=np.float32))
  longs = Storage('0', np.arange(4, dtype=np.int64))  # Written last: the file holds these.
  obj = {'a': Tensor(floats, 0, (4,), (1,)), 'b': Tensor(longs, 0, (4,), (1,))}
  path = WRITERS[fmt](tmp_path / 'two_dtypes.pth', obj)
  with pytest.raises(WeightsError, match=rf'^cannot read {path} as a torch.save file: storage 0 '
                     r'is read as float32 and as int64: one storage holds one dtype') as e:
    torch_pickle.load(path)
  assert '\n' not in str(e.value)
  # One dtype, two lengths: refused too (torch writes the storage's own length every time).
  obj = {'a': Tensor(floats, 0, (4,), (1,)),
         'b': Tensor(Storage('0', np.arange(4, dtype=np.float32), numel=3), 0, (2,), (1,))}
  path = WRITERS[fmt](tmp_path / 'two_lengths.pth', obj)
  with pytest.raises(WeightsError, match='storage 0 is declared with 4 and with 3 elements'):
    torch_pickle.load(path)
  # A storage shared by two tensors of its dtype is read once, for both.
  obj = {'a': Tensor(floats, 0, (4,), (1,)), 'b': Tensor(floats, 1, (2,), (2,))}
  loaded = torch_pickle.load(WRITERS[fmt](tmp_path / 'shared.pth', obj))
  np.testing.assert_array_equal(loaded['b'], [1, 3])
