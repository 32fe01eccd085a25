"""Reads files written by `torch.save` without torch: nested containers of numpy arrays.

Official weights (XYDeblur, DMPHN, the FID Inception network) are PyTorch
pickles; reading them here means importing them needs neither torch (a large
install) nor trust. `torch.load` without `weights_only` runs whatever code a
file names; this reader builds only containers, numbers, strings and tensors,
and a file can neither run code nor change the process:

  * Globals: only the container types, tensor-rebuilding functions and
    storage types of `_ALLOWED` are named; anything else is refused.
  * Object state (the BUILD opcode) may be set only on a container this
    load made itself, never on a class or function, and is then dropped
    (containers come back plain). Objects made from a class (NEWOBJ, OBJ,
    INST) are refused; items go only into lists, dicts and sets.
  * What `load` returns holds only dicts (and OrderedDict, Counter), lists,
    tuples, sets, numbers, strings, bytes, None and numpy arrays; a type, a
    function or a bare storage is refused. Each container the pickle shares
    is rebuilt once (shared sub-lists cost nothing extra), and a container
    that holds itself is refused.
  * Sizes are checked before memory is spent: a length field may not claim
    more bytes than the file holds, a zip entry's declared size and
    compression ratio are checked before it is read, a storage must hold the
    bytes its tensors declare, strides and offsets must stay inside their
    storage, and everything a load reads and makes may total at most
    `max_bytes` (default: four times the file's size, at least 256 MiB;
    weights use about twice their size), so a small file cannot claim
    gigabytes.

Both formats `torch.save` writes are read:
  * zip (torch >= 1.6): `<root>/data.pkl` names storages by key, each stored
    raw as `<root>/data/<key>`, in the order `<root>/byteorder` gives.
  * legacy (`_use_new_zipfile_serialization=False`, and every file from
    torch < 1.6): pickles of a magic number, a protocol version and the
    writer's sys info, then the object, then the list of storage keys, then
    each storage as an int64 element count followed by its raw elements.
Each tensor becomes a numpy array of its dtype, shape, strides and offset
(bfloat16, which numpy lacks, becomes float32, exactly); dicts, OrderedDicts,
lists and tuples keep their nesting. Every problem is one WeightsError line
naming the file.
"""

from __future__ import annotations

import collections
import io
import math
import operator
import os
import pickle
import struct
import zipfile
import zlib

import numpy as np

from xydiff.errors import WeightsError

_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
_LEGACY_PROTOCOL = 1001
# Normal weights take about twice their file's size (the storages, then the
# arrays copied out of them); four times leaves room for views that overlap.
_SIZE_FACTOR = 4
_MIN_MAX_BYTES = 256 << 20
# torch stores zip entries uncompressed; a compressed one may inflate at most this much.
_MAX_INFLATION = 100

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
                 zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, zlib.error,
                 RuntimeError)  # zipfile: RuntimeError for an encrypted entry.
try:
  import lzma  # pylint: disable=import-outside-toplevel
  _PARSE_ERRORS += (lzma.LZMAError,)
except ImportError:  # Python built without lzma: zipfile cannot read such entries either.
  pass


def _itemsize(dtype: str) -> int:
  return 2 if dtype == 'bf16' else np.dtype(dtype).itemsize


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
    if numel < 0:
      raise ValueError(f'a storage of {numel} elements')
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
_CALLABLES = tuple({id(f): f for f in _ALLOWED.values()}.values())
# The containers a load may return, and the plain values inside them.
_DICTS = (dict, collections.OrderedDict, collections.Counter)
_SEQUENCES = (list, tuple, set, frozenset)
_PLAIN = (str, bytes, int, float, complex, bool, type(None))


class _TooLarge(ValueError):
  """The file would make more than max_bytes."""


class _Budget:
  """The bytes a load may still read and make (max_bytes); every allocation asks first."""

  def __init__(self, limit: int):
    self.limit = limit
    self.used = 0

  def take(self, nbytes: int, what: str) -> None:
    if self.used + nbytes > self.limit:
      raise _TooLarge(f'{what} takes {nbytes:,} bytes, past max_bytes={self.limit:,} for this '
                      'file (import_weights --max_bytes, or max_bytes=, raises the cap)')
    self.used += nbytes


class _Source:
  """A file-like view that refuses, before reading, any read past the file's end, so a
  length field in a pickle cannot make the reader allocate what the file does not hold."""

  def __init__(self, file, size: int):
    self._file = file
    self.size = size

  def remaining(self) -> int:
    return self.size - self._file.tell()

  def read(self, n: int = -1) -> bytes:
    left = self.remaining()
    if n is None or n < 0:
      n = left
    if n > left:
      raise EOFError(f'a field claims {n:,} bytes where {left:,} remain')
    return self._file.read(n)

  def readinto(self, buffer) -> int:
    if len(buffer) > self.remaining():
      raise EOFError(f'a field claims {len(buffer):,} bytes where {self.remaining():,} remain')
    return self._file.readinto(buffer)

  def readline(self) -> bytes:
    return self._file.readline()


class _Unpickler(pickle._Unpickler):  # pylint: disable=protected-access
  """Builds only what `_ALLOWED` and the storage types name; storages come from `storage`.

  The pure-Python unpickler, because its opcodes can be overridden: those
  that set state or add items act only on containers, and those that make
  objects from a class are refused (see the module docstring).
  """

  dispatch = dict(pickle._Unpickler.dispatch)  # pylint: disable=protected-access

  def __init__(self, source: _Source, path: str, storage):
    super().__init__(source)
    self._path = path
    self._storage = storage
    self._size = source.size
    self._made = {}  # id -> object, for every object a REDUCE made (kept alive: ids stay unique).

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

  def _refuse(self, what: str):
    raise pickle.UnpicklingError(f'{what}: refused (a torch.save file of tensors never does it)')

  def load_reduce(self):
    args = self.stack.pop()
    func = self.stack[-1]
    if not any(func is allowed for allowed in _CALLABLES):
      self._refuse(f'the pickle calls {type(func).__name__} {str(func)[:60]}')
    if not isinstance(args, tuple):
      raise pickle.UnpicklingError(f'arguments {type(args).__name__}, not a tuple')
    made = func(*args)
    self._made[id(made)] = made
    self.stack[-1] = made

  def load_build(self):
    state = self.stack.pop()
    target = self.stack[-1]
    if not (isinstance(target, _DICTS) and self._made.get(id(target)) is target):
      self._refuse(f'the pickle sets the state of {type(target).__name__} '
                   f'{str(target)[:60]}, which it did not make as a container')
    if not (state is None or isinstance(state, dict) or (
        isinstance(state, tuple) and len(state) == 2 and all(
            s is None or isinstance(s, dict) for s in state))):
      raise pickle.UnpicklingError(f'object state of type {type(state).__name__}')
    # Dropped: a state dict's `_metadata` (layer versions) means nothing to an array.

  def load_append(self):
    item = self.stack.pop()
    self._list().append(item)

  def load_appends(self):
    items = self.pop_mark()
    self._list().extend(items)

  def _list(self) -> list:
    target = self.stack[-1]
    if type(target) is not list:  # pylint: disable=unidiomatic-typecheck
      self._refuse(f'the pickle appends to {type(target).__name__}')
    return target

  def load_setitem(self):
    value = self.stack.pop()
    key = self.stack.pop()
    self._dict()[key] = value

  def load_setitems(self):
    items = self.pop_mark()
    target = self._dict()
    for i in range(0, len(items), 2):
      target[items[i]] = items[i + 1]

  def _dict(self) -> dict:
    target = self.stack[-1]
    if not isinstance(target, _DICTS):
      self._refuse(f'the pickle sets items of {type(target).__name__}')
    return target

  def load_additems(self):
    items = self.pop_mark()
    target = self.stack[-1]
    if type(target) is not set:  # pylint: disable=unidiomatic-typecheck
      self._refuse(f'the pickle adds items to {type(target).__name__}')
    target.update(items)

  def load_bytearray8(self):
    (n,) = struct.unpack('<Q', self.read(8))
    if n > self._size:
      raise EOFError(f'a byte array claims {n:,} bytes in a file of {self._size:,}')
    array = bytearray(n)
    self.readinto(array)
    self.append(array)

  def load_newobj(self):
    self._refuse('the pickle makes an object from a class (NEWOBJ)')

  def load_newobj_ex(self):
    self._refuse('the pickle makes an object from a class (NEWOBJ_EX)')

  def load_obj(self):
    self._refuse('the pickle makes an object from a class (OBJ)')

  def load_inst(self):
    self._refuse('the pickle makes an object from a class (INST)')

  for _name, _code in (('load_reduce', pickle.REDUCE), ('load_build', pickle.BUILD),
                       ('load_append', pickle.APPEND), ('load_appends', pickle.APPENDS),
                       ('load_setitem', pickle.SETITEM), ('load_setitems', pickle.SETITEMS),
                       ('load_additems', pickle.ADDITEMS),
                       ('load_bytearray8', pickle.BYTEARRAY8),
                       ('load_newobj', pickle.NEWOBJ), ('load_newobj_ex', pickle.NEWOBJ_EX),
                       ('load_obj', pickle.OBJ), ('load_inst', pickle.INST)):
    dispatch[_code[0]] = locals()[_name]
  del _name, _code


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


def _to_array(tensor: _Tensor, budget: _Budget) -> np.ndarray:
  data = tensor.storage.array
  if data is None:
    raise ValueError('a tensor names a storage that the file never gives')
  if any(n < 0 for n in tensor.size) or any(s < 0 for s in tensor.stride) or tensor.offset < 0:
    raise ValueError(f'a tensor has negative size, stride or offset {tensor.size}, '
                     f'{tensor.stride}, {tensor.offset}')
  count = math.prod(tensor.size)
  budget.take(count * data.itemsize, f'a tensor of size {tensor.size}')
  if count == 0:
    return np.zeros(tensor.size, data.dtype)
  last = tensor.offset + sum((n - 1) * s for n, s in zip(tensor.size, tensor.stride))
  # as_strided reads whatever memory the strides reach: a hostile file must not choose it.
  if last >= data.size:
    raise ValueError(f'a tensor of size {tensor.size}, stride {tensor.stride} and offset '
                     f'{tensor.offset} runs past its storage of {data.size} elements')
  view = np.lib.stride_tricks.as_strided(
      data[tensor.offset:], tensor.size, tuple(s * data.itemsize for s in tensor.stride))
  return np.array(view)  # A copy: contiguous, writeable and independent of the storage.


def _materialize(obj, budget: _Budget):
  """`obj` with every _Tensor an array and containers rebuilt plain, each once.

  Objects the pickle shares (a tensor or list referenced twice) stay shared,
  so a file of nested shared lists costs its size, not the number of paths
  through it. Anything but containers, tensors and plain values is refused.
  """
  done, building = {}, set()

  def build(item):
    key = id(item)
    if key in done:
      return done[key]
    if isinstance(item, _Tensor):
      done[key] = _to_array(item, budget)
      return done[key]
    if type(item) in _PLAIN:
      return item
    if type(item) not in _DICTS and type(item) not in _SEQUENCES:
      raise ValueError(f'the file holds a {type(item).__name__}; only tensors, dicts, lists, '
                       'tuples, sets, numbers and strings are read')
    if key in building:
      raise ValueError(f'a {type(item).__name__} that contains itself')
    building.add(key)
    if isinstance(item, dict):
      out = type(item)()  # Filled item by item: Counter(pairs) would count the pairs.
      for k, v in item.items():
        out[build(k)] = build(v)
    else:
      out = type(item)(build(v) for v in item)
    building.discard(key)
    done[key] = out
    return out

  return build(obj)


def _read_entry(archive: zipfile.ZipFile, name: str, budget: _Budget,
                at_least: int = 0) -> bytes:
  """A zip entry's bytes, its declared size and compression checked before reading."""
  info = archive.getinfo(name)
  if info.file_size < at_least:
    raise ValueError(f'{name} holds {info.file_size} bytes, not the {at_least} its tensors '
                     'declare (truncated?)')
  if info.compress_type != zipfile.ZIP_STORED and (
      info.file_size > _MAX_INFLATION * max(info.compress_size, 1)):
    raise ValueError(f'{name} would inflate {info.compress_size:,} bytes to '
                     f'{info.file_size:,}, more than {_MAX_INFLATION}x')
  budget.take(info.file_size, name)
  return archive.read(info)


def _load_zip(path: str, archive: zipfile.ZipFile, budget: _Budget):
  pickles = [n for n in archive.namelist() if n.endswith('/data.pkl') and n.count('/') == 1]
  if len(pickles) != 1:
    raise ValueError('a zip archive without exactly one <root>/data.pkl (not from torch.save)')
  root = pickles[0][:-len('data.pkl')]
  names = set(archive.namelist())
  byteorder = 'little'  # Files written before torch recorded it came from little-endian machines.
  if root + 'byteorder' in names:
    byteorder = _read_entry(archive, root + 'byteorder', budget).decode('ascii').strip()
  storages = {}

  def storage(key, dtype, numel):
    if (key, dtype) not in storages:
      item = _Storage(dtype, numel)
      raw = _read_entry(archive, f'{root}data/{key}', budget, at_least=numel * _itemsize(dtype))
      item.array = _elements(raw, dtype, numel, byteorder)
      storages[key, dtype] = item
    return storages[key, dtype]

  data = _read_entry(archive, pickles[0], budget)
  obj = _Unpickler(_Source(io.BytesIO(data), len(data)), path, storage).load()
  return _materialize(obj, budget)


def _no_storage(*_):
  raise ValueError('a storage outside the object pickle')


def _load_legacy(path: str, file, size: int, budget: _Budget):
  source = _Source(file, size)

  def header():
    return _Unpickler(source, path, _no_storage).load()

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

  obj = _Unpickler(source, path, storage).load()
  keys = header()
  if not isinstance(keys, list):
    raise ValueError('no list of storage keys after the object')
  for key in keys:
    item = storages.get(str(key))
    if item is None:
      raise ValueError(f'storage {key} is listed but no tensor uses it')
    if item.array is not None:
      raise ValueError(f'storage {key} is listed twice')
    (numel,) = struct.unpack('<q', source.read(8))
    if numel != item.numel:
      raise ValueError(f'storage {key} holds {numel} elements, but its tensors declare '
                       f'{item.numel}')
    nbytes = numel * _itemsize(item.dtype)
    if nbytes > source.remaining():
      raise ValueError(f'storage {key} holds {source.remaining()} bytes, not the {nbytes} its '
                       'tensors declare (truncated?)')
    budget.take(nbytes, f'storage {key}')
    item.array = _elements(source.read(nbytes), item.dtype, numel, byteorder)
  return _materialize(obj, budget)


def load(path: str, *, max_bytes: int | None = None):
  """The object `torch.save` wrote to `path`, every tensor a numpy array.

  `max_bytes` caps what the load reads and makes in all (default: four times
  the file's size, at least 256 MiB). Raises WeightsError, in one line naming
  `path`, for a missing, unreadable, truncated, foreign or oversized file and
  for one that names anything but tensors, dicts, lists and plain values.
  """
  path = os.fspath(path)
  try:
    with open(path, 'rb') as file:
      size = os.fstat(file.fileno()).st_size
      budget = _Budget(max_bytes if max_bytes is not None else
                       max(_MIN_MAX_BYTES, _SIZE_FACTOR * size))
      is_zip = file.read(4) == b'PK\x03\x04'
      file.seek(0)
      if is_zip:
        with zipfile.ZipFile(file) as archive:
          return _load_zip(path, archive, budget)
      if file.read(1) != b'\x80':  # Every torch.save pickle starts with the PROTO opcode.
        raise ValueError('neither a zip archive nor a legacy pickle')
      file.seek(0)
      return _load_legacy(path, file, size, budget)
  except WeightsError:
    raise
  except OSError as e:
    raise WeightsError(f'cannot read {path}: {e.strerror or e}') from None
  except _PARSE_ERRORS as e:
    reason = ' '.join(str(e).split())[:300] or type(e).__name__
    raise WeightsError(f'cannot read {path} as a torch.save file: {reason}') from None
