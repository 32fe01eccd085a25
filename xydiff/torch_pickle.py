"""Reads files written by `torch.save` without torch: nested containers of numpy arrays.

Official XYDeblur weights and the pytorch-fid Inception weights are PyTorch
pickles; reading them here means importing them needs neither torch (a large
install) nor trust: the unpickler builds only containers, numbers, strings
and tensors, and refuses every other global, so a downloaded checkpoint
cannot run code (`torch.load` without `weights_only` would run it).

Both formats `torch.save` writes are read:
  * zip (torch >= 1.6): `<root>/data.pkl` names storages by key, each stored
    raw as `<root>/data/<key>`, in the order `<root>/byteorder` gives.
  * legacy (`_use_new_zipfile_serialization=False`, and every file from
    torch < 1.6): pickles of a magic number, a protocol version and the
    writer's sys info, then the object, then the list of storage keys, then
    each storage as an int64 element count followed by its raw elements.
Each tensor becomes a numpy array of its dtype, shape, strides and offset
(bfloat16, which numpy lacks, becomes float32, exactly); dicts, OrderedDicts,
lists and tuples keep their nesting.
"""

from __future__ import annotations

import collections
import io
import operator
import os
import pickle
import struct
import zipfile

import numpy as np

from xydiff.errors import WeightsError

_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
_LEGACY_PROTOCOL = 1001

# torch's storage classes by name (`torch.cuda.*` too: legacy files of GPU
# models may name them) and the element type of their raw bytes.
_STORAGE_DTYPES = {
    'DoubleStorage': 'f8', 'FloatStorage': 'f4', 'HalfStorage': 'f2', 'BFloat16Storage': 'bf16',
    'LongStorage': 'i8', 'IntStorage': 'i4', 'ShortStorage': 'i2', 'CharStorage': 'i1',
    'ByteStorage': 'u1', 'BoolStorage': '?', 'ComplexFloatStorage': 'c8',
    'ComplexDoubleStorage': 'c16',
}

# Exceptions that a damaged or hostile file makes the parser raise.
_PARSE_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
                 AttributeError, OverflowError, MemoryError, RecursionError, struct.error,
                 zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError)


class _StorageType:
  """What `torch.FloatStorage` etc. unpickle to: only a name for an element type."""
  __slots__ = ('name', 'dtype')

  def __init__(self, name: str):
    self.name = name
    self.dtype = _STORAGE_DTYPES[name]


class _Storage:
  """A storage named by the pickle; its elements (`array`) arrive once the file gives them."""
  __slots__ = ('dtype', 'numel', 'array')

  def __init__(self, dtype: str, numel: int):
    self.dtype = dtype
    self.numel = numel
    self.array = None


class _Tensor:
  """A tensor as the pickle describes it, made a numpy array after every storage is read."""
  __slots__ = ('storage', 'offset', 'size', 'stride')

  def __init__(self, storage, offset, size, stride):
    if not isinstance(storage, _Storage):
      raise ValueError(f'a tensor is built on {type(storage).__name__}, not on a storage')
    self.storage = storage
    self.offset = operator.index(offset)
    self.size = tuple(operator.index(n) for n in size)
    self.stride = tuple(operator.index(s) for s in stride)
    if len(self.size) != len(self.stride):
      raise ValueError(f'a tensor has size {self.size} but stride {self.stride}')


def _rebuild_tensor(storage, storage_offset, size, stride):
  return _Tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  del requires_grad, backward_hooks, metadata  # Autograd state: meaningless for an array.
  return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
  del requires_grad, backward_hooks, state
  if not isinstance(data, _Tensor):
    raise ValueError(f'a parameter wraps {type(data).__name__}, not a tensor')
  return data


def _encode(text, encoding='latin1'):
  """`_codecs.encode`, which protocol-2 pickles call to make bytes; only latin-1 is needed."""
  if not isinstance(text, str) or encoding not in ('latin1', 'latin-1'):
    raise ValueError(f'_codecs.encode called with {type(text).__name__}, {encoding!r}')
  return text.encode('latin1')


# Every global a torch.save file of tensors, state dicts and optimizer states
# names. Python-2-era names ('__builtin__') appear because the pickles are
# protocol 2 and find_class sees them before any renaming.
_ALLOWED = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('collections', 'Counter'): collections.Counter,  # MultiStepLR's milestones.
    ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor_v2,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter,
    ('_codecs', 'encode'): _encode,
    ('builtins', 'set'): set, ('__builtin__', 'set'): set,
    ('builtins', 'frozenset'): frozenset, ('__builtin__', 'frozenset'): frozenset,
}


class _Unpickler(pickle.Unpickler):
  """Builds only what `_ALLOWED` and the storage types name; storages come from `storage`."""

  def __init__(self, file, path: str, storage):
    super().__init__(file)
    self._path = path
    self._storage = storage

  def find_class(self, module, name):
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    if module in ('torch', 'torch.cuda') and name in _STORAGE_DTYPES:
      return _StorageType(name)
    raise WeightsError(f'{self._path} names {module}.{name}, which is not a tensor, dict or '
                       'list: refused, as loading it could run code')

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == 'storage'
            and isinstance(pid[1], _StorageType)):
      raise ValueError(f'unknown persistent id {str(pid)[:80]}')
    if len(pid) == 6 and pid[5] is not None:
      raise ValueError('storage views (files from torch < 0.4) are not supported')
    _, storage_type, key, _, numel = pid[:5]  # The location (cpu, cuda:0) does not matter here.
    return self._storage(str(key), storage_type.dtype, operator.index(numel))


def _elements(raw: bytes, dtype: str, numel: int, byteorder: str) -> np.ndarray:
  """The first `numel` elements of `raw`, native order; bfloat16 widened to float32."""
  code = '<' if byteorder == 'little' else '>'
  base = np.dtype(code + ('u2' if dtype == 'bf16' else dtype))
  if len(raw) < numel * base.itemsize:
    raise ValueError(f'a storage holds {len(raw)} bytes, not the {numel * base.itemsize} '
                     'its tensors need (truncated?)')
  array = np.frombuffer(raw, base, count=numel).astype(base.newbyteorder('='))
  if dtype == 'bf16':  # bfloat16 is float32's upper half: widening is exact.
    array = (array.astype(np.uint32) << 16).view(np.float32)
  return array


def _to_array(tensor: _Tensor) -> np.ndarray:
  data = tensor.storage.array
  if data is None:
    raise ValueError('a tensor names a storage that the file never gives')
  if any(n < 0 for n in tensor.size) or any(s < 0 for s in tensor.stride) or tensor.offset < 0:
    raise ValueError(f'a tensor has negative size, stride or offset {tensor.size}, '
                     f'{tensor.stride}, {tensor.offset}')
  if 0 in tensor.size:
    return np.zeros(tensor.size, data.dtype)
  last = tensor.offset + sum((n - 1) * s for n, s in zip(tensor.size, tensor.stride))
  # as_strided reads whatever memory the strides reach: a hostile file must not choose it.
  if last >= data.size:
    raise ValueError(f'a tensor of size {tensor.size}, stride {tensor.stride} and offset '
                     f'{tensor.offset} runs past its storage of {data.size} elements')
  view = np.lib.stride_tricks.as_strided(
      data[tensor.offset:], tensor.size, tuple(s * data.itemsize for s in tensor.stride))
  return np.array(view)  # A copy: contiguous, writeable and independent of the storage.


def _materialize(obj, arrays: dict):
  """`obj` with every _Tensor replaced by its array, containers rebuilt with their types."""
  if isinstance(obj, _Tensor):
    if id(obj) not in arrays:  # A tensor pickled twice is one object: one array.
      arrays[id(obj)] = _to_array(obj)
    return arrays[id(obj)]
  if isinstance(obj, dict):
    out = type(obj)()  # Filled item by item: Counter(pairs) would count the pairs.
    for k, v in obj.items():
      out[k] = _materialize(v, arrays)
    return out
  if isinstance(obj, (list, tuple, set, frozenset)):
    return type(obj)(_materialize(v, arrays) for v in obj)
  if isinstance(obj, (_Storage, _StorageType)):
    raise ValueError('a bare storage (not a tensor) is not supported')
  return obj


def _load_zip(path: str, archive: zipfile.ZipFile):
  pickles = [n for n in archive.namelist() if n.endswith('/data.pkl') and n.count('/') == 1]
  if len(pickles) != 1:
    raise ValueError('a zip archive without exactly one <root>/data.pkl (not from torch.save)')
  root = pickles[0][:-len('data.pkl')]
  names = set(archive.namelist())
  byteorder = 'little'  # Files written before torch recorded it came from little-endian machines.
  if root + 'byteorder' in names:
    byteorder = archive.read(root + 'byteorder').decode('ascii').strip()
  storages = {}

  def storage(key, dtype, numel):
    if key not in storages:
      storages[key] = _Storage(dtype, numel)
      storages[key].array = _elements(archive.read(f'{root}data/{key}'), dtype, numel, byteorder)
    return storages[key]

  obj = _Unpickler(io.BytesIO(archive.read(pickles[0])), path, storage).load()
  return _materialize(obj, {})


def _no_storage(*_):
  raise ValueError('a storage outside the object pickle')


def _load_legacy(path: str, file):
  def header():
    return _Unpickler(file, path, _no_storage).load()

  if header() != _LEGACY_MAGIC:
    raise ValueError('no torch.save magic number')
  if header() != _LEGACY_PROTOCOL:
    raise ValueError('an unknown legacy protocol version')
  sys_info = header()
  byteorder = 'little' if not isinstance(sys_info, dict) or sys_info.get(
      'little_endian', True) else 'big'
  storages = {}

  def storage(key, dtype, numel):
    if key not in storages:
      storages[key] = _Storage(dtype, numel)
    return storages[key]

  obj = _Unpickler(file, path, storage).load()
  keys = header()
  if not isinstance(keys, list):
    raise ValueError('no list of storage keys after the object')
  size = os.fstat(file.fileno()).st_size
  for key in keys:
    item = storages.get(str(key))
    if item is None:
      raise ValueError(f'storage {key} is listed but no tensor uses it')
    (numel,) = struct.unpack('<q', file.read(8))
    itemsize = 2 if item.dtype == 'bf16' else np.dtype(item.dtype).itemsize
    if numel < 0 or numel * itemsize > size - file.tell():  # Read no more than the file holds.
      raise ValueError(f'storage {key} claims {numel} elements, more than the file holds '
                       '(truncated?)')
    item.array = _elements(file.read(numel * itemsize), item.dtype, numel, byteorder)
  return _materialize(obj, {})


def load(path: str):
  """The object `torch.save` wrote to `path`, every tensor a numpy array.

  Raises WeightsError, in one line naming `path`, for a missing, unreadable,
  truncated or foreign file and for one that names anything but tensors,
  dicts, lists and plain values.
  """
  path = os.fspath(path)
  try:
    with open(path, 'rb') as file:
      is_zip = file.read(4) == b'PK\x03\x04'
      file.seek(0)
      if is_zip:
        with zipfile.ZipFile(file) as archive:
          return _load_zip(path, archive)
      if file.read(1) != b'\x80':  # Every torch.save pickle starts with the PROTO opcode.
        raise ValueError('neither a zip archive nor a legacy pickle')
      file.seek(0)
      return _load_legacy(path, file)
  except WeightsError:
    raise
  except OSError as e:
    raise WeightsError(f'cannot read {path}: {e.strerror or e}') from None
  except _PARSE_ERRORS as e:
    reason = ' '.join(str(e).split())[:300] or type(e).__name__
    raise WeightsError(f'cannot read {path} as a torch.save file: {reason}') from None
