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

A small file cannot take much memory or time:
  * Everything a load reads, makes and does is charged to one budget of
    `max_bytes` (default: four times the file's size, at least 256 MiB;
    weights use about twice their size): every opcode at least
    `_OPCODE_BYTES` (more for those that make larger objects), so the
    opcode count, the objects made and the memo's size are all at most
    max_bytes / _OPCODE_BYTES; every byte the pickle reads `_READ_FACTOR`
    times (the most a string decoded from it may take); a call (REDUCE) by
    the items it copies; a tensor by its array.
  * Sizes are checked before memory is spent: a length field may not claim
    more bytes than the file holds, a zip entry's declared size and
    compression ratio are checked before it is read, a storage must hold the
    bytes its tensors declare, and a tensor's sizes, strides and offset are
    bounded one by one (at most 64 dimensions, each within the budget and
    its storage) before any product of them is taken.
  * Dict keys and set items are only strings and ints below 2**31, and memo
    indices below 2**32: keys chosen to share one hash (big ints, tuples,
    floats) would make each insertion scan all the others.
  * Refusals name the opcode and its byte offset, or a type, never the text
    of a loaded object (a few hundred bytes of shared lists print as
    terabytes).

Both formats `torch.save` writes are read:
  * zip (torch >= 1.6): `<root>/data.pkl` names storages by key, each stored
    raw as `<root>/data/<key>`, in the order `<root>/byteorder` gives.
  * legacy (`_use_new_zipfile_serialization=False`, and every file from
    torch < 1.6): pickles of a magic number, a protocol version and the
    writer's sys info, then the object, then the list of storage keys, then
    each storage as an int64 element count followed by its raw elements.
Each tensor becomes a numpy array of its dtype, shape, strides and offset
(bfloat16, which numpy lacks, becomes float32, exactly); dicts, OrderedDicts,
lists and tuples keep their nesting. A storage is one dtype: a file whose
tensors view one storage as two dtypes (torch.save refuses to write one) is
refused. Every problem is one WeightsError line naming the file.
"""

from __future__ import annotations

import collections
import io
import operator
import os
import pickle
import pickletools
import struct
import sys
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

# What each opcode is charged, in bytes of max_bytes. The floor bounds the
# opcode count and so the time a load takes (under a microsecond each in
# pickle's pure-Python loop: 256 MiB allows 2 million); it also covers what
# most opcodes make (an int, a float, an empty dict or list, a memo entry, a
# stack slot). An empty set takes 216 bytes, a REDUCE keeps its result alive,
# and a MARK (a new stack) takes a microsecond.
_OPCODE_BYTES = 128
_OPCODE_COSTS = [_OPCODE_BYTES] * 256
for _code in (pickle.EMPTY_SET, pickle.FROZENSET, pickle.REDUCE, pickle.BINPERSID,
              pickle.PERSID, pickle.MARK):
  _OPCODE_COSTS[_code[0]] = 2 * _OPCODE_BYTES
del _code
# A string decoded from n bytes of UTF-8 takes up to 4n (one 4-byte character
# widens them all), and the n bytes read are held meanwhile.
_READ_FACTOR = 5
# A tensor: the object, its size and stride tuples (at most 64 entries each),
# and its array's header.
_TENSOR_BYTES = 2048
_MAX_NDIM = 64  # numpy's limit.
_MAX_INDEX = 1 << 63  # Sizes, strides, offsets and element counts are int64 in torch.
_MAX_KEY = 1 << 31  # Dict keys: parameter names, or small ints (optimizer state, milestones).
_MAX_MEMO = 1 << 32  # LONG_BINPUT's range.
_MAX_STORAGE_KEY = 100  # torch's keys are decimal numbers.
_OPCODE_NAMES = {op.code.encode('latin1')[0]: op.name for op in pickletools.opcodes}

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


def _dtype_name(dtype: str) -> str:
  return 'bfloat16' if dtype == 'bf16' else np.dtype(dtype).name


def _index(value, what: str) -> int:
  """`value` as an int in [0, 2**63), the range of torch's sizes, strides and offsets."""
  value = operator.index(value)
  if not 0 <= value < _MAX_INDEX:
    raise ValueError(f'{what} is {"negative" if value < 0 else "2**63 or more"}')
  return value


def _check_key(key, opcode: str) -> None:
  """Refuses a dict key or set item that is not a str or an int in (-2**31, 2**31)."""
  if isinstance(key, str) or (isinstance(key, int) and -_MAX_KEY < key < _MAX_KEY):
    return
  what = 'an int of magnitude 2**31 or more' if isinstance(key, int) else f'a {type(key).__name__}'
  raise pickle.UnpicklingError(f'{opcode} uses {what} as a dict key or set item (only strings '
                               'and ints below 2**31 are read)')


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
    self.numel = _index(numel, "a storage's element count")
    self.array = None


class _Tensor:
  """A tensor as the pickle describes it, made a numpy array after every storage is read.

  `at` is where the pickle made it ('byte N of <name>'), for messages.
  """
  __slots__ = ('storage', 'offset', 'size', 'stride', 'at')

  def __init__(self, storage, offset, size, stride):
    if not isinstance(storage, _Storage):
      raise ValueError(f'a tensor is built on {type(storage).__name__}, not on a storage')
    for name, value in (('size', size), ('stride', stride)):
      if not isinstance(value, (tuple, list)):
        raise ValueError(f"a tensor's {name} is a {type(value).__name__}, not a tuple")
    if len(size) != len(stride) or len(size) > _MAX_NDIM:
      raise ValueError(f'a tensor has {len(size)} sizes and {len(stride)} strides (at most '
                       f'{_MAX_NDIM}, one of each per dimension)')
    self.storage = storage
    self.offset = _index(offset, "a tensor's offset")
    self.size = tuple(_index(n, "a tensor's size") for n in size)
    self.stride = tuple(_index(s, "a tensor's stride") for s in stride)
    self.at = ''


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
    raise ValueError(f'_codecs.encode called with {type(text).__name__} and an encoding other '
                     'than latin-1')
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
# The containers a load may return, and the plain values inside them.
_DICTS = (dict, collections.OrderedDict, collections.Counter)
_SEQUENCES = (list, tuple, set, frozenset)
_PLAIN = (str, bytes, int, float, complex, bool, type(None))


def _call_cost(func, args: tuple) -> int:
  """The bytes the allowed `func` makes from `args` (beyond REDUCE's own charge), after
  checking the arguments as torch.save writes them; items that get hashed are keys."""
  if func is collections.OrderedDict:  # Python 3: no arguments, then SETITEMS; 2: [k, v] pairs.
    if args and (len(args) != 1 or not isinstance(args[0], (list, tuple)) or not all(
        isinstance(pair, (list, tuple)) and len(pair) == 2 for pair in args[0])):
      raise pickle.UnpicklingError(f'OrderedDict called with {len(args)} arguments, not one '
                                   'list of pairs')
    for pair in args[0] if args else ():
      _check_key(pair[0], 'REDUCE')
    return _OPCODE_BYTES * len(args[0]) if args else 0
  if func is collections.Counter:  # Counter.__reduce__ passes a dict, its keys checked going in.
    if args and (len(args) != 1 or not isinstance(args[0], dict)):
      raise pickle.UnpicklingError(f'Counter called with {len(args)} arguments, the first a '
                                   f'{type(args[0]).__name__}, not one dict')
    return _OPCODE_BYTES * len(args[0]) if args else 0
  if func is set or func is frozenset:  # set.__reduce__ passes a list.
    if args and (len(args) != 1 or not isinstance(args[0], (list, tuple))):
      raise pickle.UnpicklingError(f'{func.__name__} called with {len(args)} arguments, the '
                                   f'first a {type(args[0]).__name__}, not one list')
    for item in args[0] if args else ():
      _check_key(item, 'REDUCE')
    return _OPCODE_BYTES * len(args[0]) if args else 0
  if func is _encode:
    return len(args[0]) if args and isinstance(args[0], str) else 0
  if func is _rebuild_parameter:
    return 0
  return _TENSOR_BYTES


class _TooLarge(ValueError):
  """The file would make more than max_bytes."""


class _OverBudget(Exception):
  """Raised in the opcode loop when the budget runs out; load() names where."""


class _Budget:
  """The bytes a load may still read and make (max_bytes); every allocation asks first."""

  def __init__(self, limit: int):
    self.limit = limit
    self.used = 0

  def left(self) -> int:
    return max(self.limit - self.used, 0)

  def charge(self, nbytes: int) -> None:
    """`take` for the pickle's own costs, whose message the opcode loop writes."""
    self.used += nbytes
    if self.used > self.limit:
      raise _OverBudget

  def take(self, nbytes: int, what: str) -> None:
    if self.used + nbytes > self.limit:
      raise _TooLarge(self.message(f'{what} takes {nbytes:,} bytes'))
    self.used += nbytes

  def message(self, what: str) -> str:
    return (f'{what}, past max_bytes={self.limit:,} for this file (xydiff import --max-bytes, '
            'or max_bytes=, raises the cap)')


class _Stream:
  """The bytes of the pickles, read in order from `file` (`name` in messages).

  Refuses any read past the end before reading, so a length field cannot make
  the reader allocate what the file does not hold; charges every byte read
  _READ_FACTOR times (read_raw: storages, charged by their reader). Frames
  (protocol 4) are read as the plain bytes they are: no read-ahead buffer to
  keep in step. `pos` is the offset of the next byte (kept here: a buffered
  file's tell() is a system call).
  """

  def __init__(self, file, size: int, budget: _Budget, name: str):
    self.read_opcode = file.read  # One byte, covered by the opcode's charge; the caller moves pos.
    self.pos = file.tell()
    self.size = size
    self.name = name
    self._file = file
    self._budget = budget

  def remaining(self) -> int:
    return self.size - self.pos

  def read_raw(self, n: int) -> bytes:
    if not 0 <= n <= self.size - self.pos:
      raise EOFError(f'a field claims {n:,} bytes where {self.remaining():,} remain')
    self.pos += n
    return self._file.read(n)

  def read(self, n: int) -> bytes:
    if not 0 <= n <= self.size - self.pos:
      raise EOFError(f'a field claims {n:,} bytes where {self.remaining():,} remain')
    budget = self._budget
    budget.used += _READ_FACTOR * n
    if budget.used > budget.limit:
      raise _OverBudget
    self.pos += n
    return self._file.read(n)

  def readinto(self, buffer) -> int:
    data = self.read(len(buffer))
    buffer[:len(data)] = data
    return len(data)

  def readline(self) -> bytes:
    # At most what the budget still allows: a file of no newline cannot be one line in memory.
    line = self._file.readline(
        max(0, min(self.remaining(), self._budget.left() // _READ_FACTOR + 1)))
    self.pos += len(line)
    self._budget.charge(_READ_FACTOR * len(line))
    return line

  def load_frame(self, frame_size: int) -> None:
    if frame_size > self.remaining():
      raise EOFError(f'a frame claims {frame_size:,} bytes where {self.remaining():,} remain')

  def where(self, at: int) -> str:
    return f'byte {at:,} of {self.name}'


def _reason(error: BaseException) -> str:
  return ' '.join(str(error).split())[:300] or type(error).__name__


def _same_storage(item: _Storage, key: str, dtype: str, numel: int) -> None:
  """Refuses a second reference to storage `key` that gives it another dtype or length."""
  if item.dtype != dtype:
    raise ValueError(f'storage {key} is read as {_dtype_name(item.dtype)} and as '
                     f'{_dtype_name(dtype)}: one storage holds one dtype (torch.save refuses to '
                     'write such a file)')
  if item.numel != numel:
    raise ValueError(f'storage {key} is declared with {item.numel:,} and with {numel:,} '
                     'elements')


class _Unpickler(pickle._Unpickler):  # pylint: disable=protected-access
  """Builds only what `_ALLOWED` and the storage types name; storages come from `storage`.

  The pure-Python unpickler, because its opcodes can be overridden: those
  that set state or add items act only on containers, and those that make
  objects from a class are refused (see the module docstring). Every opcode
  is charged to `budget`, and its offset kept for messages.
  """

  dispatch = dict(pickle._Unpickler.dispatch)  # pylint: disable=protected-access

  def __init__(self, stream: _Stream, path: str, storage, budget: _Budget):
    super().__init__(stream)
    self._stream = stream
    self._path = path
    self._storage = storage
    self._budget = budget
    self._at = stream.pos  # Where the opcode being run begins.
    self._made = {}  # id -> object, for every object a REDUCE made (kept alive: ids stay unique).

  def load(self):
    # pickle._Unpickler.load's loop, with each opcode charged and its offset kept: pickle has
    # no hook for either.
    stream, budget, costs, dispatch = self._stream, self._budget, _OPCODE_COSTS, self.dispatch
    self._unframer = stream  # FRAME hands its size to stream.load_frame.
    self.read, self.readinto, self.readline = stream.read, stream.readinto, stream.readline
    self.metastack = []
    self.stack = []
    self.append = self.stack.append
    self.proto = 0
    read_opcode, limit = stream.read_opcode, budget.limit
    code = None
    try:
      while True:
        self._at = at = stream.pos
        key = read_opcode(1)
        if not key:
          code = None
          raise EOFError('the pickle ends before its STOP opcode')
        stream.pos = at + 1
        code = key[0]
        budget.used += costs[code]
        if budget.used > limit:
          raise _OverBudget
        dispatch[code](self)
    except pickle._Stop as stop:  # pylint: disable=protected-access
      return stop.value
    except WeightsError:
      raise
    except _OverBudget:
      raise _TooLarge(budget.message(
          f'what the pickle makes and reads passes the cap by {self._where(code)}')) from None
    except _PARSE_ERRORS as e:
      raise pickle.UnpicklingError(f'{_reason(e)} ({self._where(code)})') from None

  def _where(self, code) -> str:
    name = '' if code is None else _OPCODE_NAMES.get(code, f'opcode {code:#04x}') + ' '
    return f'{name}at {self._stream.where(self._at)}'

  def find_class(self, module, name):
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    if module in ('torch', 'torch.cuda') and name in _STORAGE_DTYPES:
      return _StorageType(name)
    raise WeightsError(f'{self._path} names {module[:100]}.{name[:100]}, which is not a tensor, '
                       f'dict or list (at {self._stream.where(self._at)}): refused, as loading '
                       'it could run code')

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and isinstance(pid[0], str)
            and pid[0] == 'storage' and isinstance(pid[1], _StorageType)):
      shape = f' of {len(pid)} items' if isinstance(pid, tuple) else ''
      raise ValueError(f'a persistent id that is a {type(pid).__name__}{shape}, not a storage')
    if len(pid) == 6 and pid[5] is not None:
      raise ValueError('storage views (files from torch < 0.4) are not supported')
    _, storage_type, key, _, numel = pid[:5]  # The location (cpu, cuda:0) does not matter here.
    if not isinstance(key, str) or not 0 < len(key) <= _MAX_STORAGE_KEY:
      raise ValueError(f'a storage key that is a {type(key).__name__}, not a short string')
    return self._storage(key, storage_type.dtype, _index(numel, "a storage's element count"))

  def _refuse(self, what: str):
    raise pickle.UnpicklingError(f'{what}: refused (a torch.save file of tensors never does it)')

  def _unknown(self):
    raise pickle.UnpicklingError('an unknown opcode')

  def load_reduce(self):
    args = self.stack.pop()
    func = self.stack[-1]
    if _CALLABLES.get(id(func)) is not func:
      self._refuse(f'the pickle calls {type(func).__name__}')
    if not isinstance(args, tuple):
      raise pickle.UnpicklingError(f'arguments {type(args).__name__}, not a tuple')
    self._budget.charge(_call_cost(func, args))
    made = func(*args)
    if isinstance(made, _Tensor) and not made.at:
      made.at = self._stream.where(self._at)
    self._made[id(made)] = made
    self.stack[-1] = made

  def load_build(self):
    state = self.stack.pop()
    target = self.stack[-1]
    if not (isinstance(target, _DICTS) and self._made.get(id(target)) is target):
      self._refuse(f'the pickle sets the state of {type(target).__name__}, which it did not '
                   'make as a container')
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
    target = self._dict()
    _check_key(key, 'SETITEM')
    target[key] = value

  def load_setitems(self):
    items = self.pop_mark()
    target = self._dict()
    for key in items[::2]:
      _check_key(key, 'SETITEMS')
    for i in range(0, len(items), 2):
      target[items[i]] = items[i + 1]

  def _dict(self) -> dict:
    target = self.stack[-1]
    if not isinstance(target, _DICTS):
      self._refuse(f'the pickle sets items of {type(target).__name__}')
    return target

  def load_dict(self):
    items = self.pop_mark()
    for key in items[::2]:
      _check_key(key, 'DICT')
    self.append({items[i]: items[i + 1] for i in range(0, len(items), 2)})

  def load_additems(self):
    items = self.pop_mark()
    target = self.stack[-1]
    if type(target) is not set:  # pylint: disable=unidiomatic-typecheck
      self._refuse(f'the pickle adds items to {type(target).__name__}')
    for item in items:
      _check_key(item, 'ADDITEMS')
    target.update(items)

  def load_frozenset(self):
    items = self.pop_mark()
    for item in items:
      _check_key(item, 'FROZENSET')
    self.append(frozenset(items))

  def load_put(self):
    index = int(self.readline()[:-1])
    if not 0 <= index < _MAX_MEMO:  # Memo keys chosen to share one hash would slow every insert.
      raise ValueError('a memo index outside 0..2**32')
    self.memo[index] = self.stack[-1]

  def load_bytearray8(self):
    (n,) = struct.unpack('<Q', self.read(8))
    self.append(bytearray(self.read(n)))  # Read (bounded and charged) before allocating.

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
                       ('load_dict', pickle.DICT), ('load_additems', pickle.ADDITEMS),
                       ('load_frozenset', pickle.FROZENSET), ('load_put', pickle.PUT),
                       ('load_bytearray8', pickle.BYTEARRAY8),
                       ('load_newobj', pickle.NEWOBJ), ('load_newobj_ex', pickle.NEWOBJ_EX),
                       ('load_obj', pickle.OBJ), ('load_inst', pickle.INST)):
    dispatch[_code[0]] = locals()[_name]
  for _code in range(256):
    dispatch.setdefault(_code, _unknown)
  del _name, _code


_CALLABLES = {id(f): f for f in _ALLOWED.values()}  # By id: a call must not hash its callee.


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


def _dims_text(dims: tuple) -> str:
  return str(dims) if len(dims) <= 8 else f'({len(dims)} dimensions)'


def _to_array(tensor: _Tensor, budget: _Budget) -> np.ndarray:
  data = tensor.storage.array
  what = f'a tensor of size {_dims_text(tensor.size)} (made at {tensor.at})'
  if data is None:
    raise ValueError(f'{what} names a storage that the file never gives')
  # Each factor is bounded before it multiplies, and the product after: 64 factors below
  # 2**63 would still make a 4,000-bit number.
  most = budget.limit // data.itemsize
  extent = 1
  for i, n in enumerate(tensor.size):
    if n > most:
      raise _TooLarge(budget.message(f'{what} has a dimension of {n:,} elements'))
    extent *= max(n, 1)
    if extent > most:
      if 0 in tensor.size:
        raise _TooLarge(budget.message(f'{what} spans more than {most:,} elements'))
      exact = '' if i == len(tensor.size) - 1 else 'at least '
      raise _TooLarge(budget.message(f'{what} takes {exact}{extent * data.itemsize:,} bytes'))
  if 0 in tensor.size:
    return np.zeros(tensor.size, data.dtype)
  budget.take(extent * data.itemsize, what)
  # as_strided reads whatever memory the strides reach: a hostile file must not choose it.
  last, strides = tensor.offset, []
  for n, s in zip(tensor.size, tensor.stride):
    if n > 1 and s >= data.size:
      last = data.size  # Past the storage; and (n - 1) * s is not worth computing.
      break
    last += (n - 1) * s  # n <= most and s < data.size: bounded.
    strides.append(s * data.itemsize if n > 1 else 0)  # A stride over one element reaches nothing.
  if last >= data.size:
    raise ValueError(f'{what}, stride {_dims_text(tensor.stride)} and offset {tensor.offset:,} '
                     f'runs past its storage of {data.size:,} elements')
  view = np.lib.stride_tricks.as_strided(data[tensor.offset:], tensor.size, tuple(strides))
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
    budget.take(_OPCODE_BYTES + sys.getsizeof(item), f'a copy of a {type(item).__name__}')
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
    if byteorder not in ('little', 'big'):
      raise ValueError(f'{root}byteorder says neither little nor big')
  storages = {}

  def storage(key, dtype, numel):
    item = storages.get(key)
    if item is None:
      item = storages[key] = _Storage(dtype, numel)
      raw = _read_entry(archive, f'{root}data/{key}', budget,
                        at_least=item.numel * _itemsize(dtype))
      item.array = _elements(raw, dtype, item.numel, byteorder)
    _same_storage(item, key, dtype, numel)
    return item

  data = _read_entry(archive, pickles[0], budget)
  stream = _Stream(io.BytesIO(data), len(data), budget, pickles[0])
  obj = _Unpickler(stream, path, storage, budget).load()
  return _materialize(obj, budget)


def _no_storage(*_):
  raise ValueError('a storage outside the object pickle')


def _load_legacy(path: str, file, size: int, budget: _Budget):
  stream = _Stream(file, size, budget, 'the file')

  def header():
    return _Unpickler(stream, path, _no_storage, budget).load()

  if header() != _LEGACY_MAGIC:
    raise ValueError('no torch.save magic number')
  if header() != _LEGACY_PROTOCOL:
    raise ValueError('an unknown legacy protocol version')
  sys_info = header()
  byteorder = 'little' if not isinstance(sys_info, dict) or sys_info.get(
      'little_endian', True) else 'big'
  storages = {}

  def storage(key, dtype, numel):
    item = storages.get(key)
    if item is None:
      item = storages[key] = _Storage(dtype, numel)
    _same_storage(item, key, dtype, numel)
    return item

  obj = _Unpickler(stream, path, storage, budget).load()
  keys = header()
  if not isinstance(keys, list):
    raise ValueError('no list of storage keys after the object')
  for key in keys:
    if not isinstance(key, str) or key not in storages:
      raise ValueError(f'the list of storage keys holds a {type(key).__name__} that no tensor '
                       'uses')
    item = storages[key]
    if item.array is not None:
      raise ValueError(f'storage {key} is listed twice')
    (numel,) = struct.unpack('<q', stream.read_raw(8))
    if numel != item.numel:
      raise ValueError(f'storage {key} holds {numel} elements, but its tensors declare '
                       f'{item.numel}')
    nbytes = numel * _itemsize(item.dtype)
    if nbytes > stream.remaining():
      raise ValueError(f'storage {key} holds {stream.remaining()} bytes, not the {nbytes} its '
                       'tensors declare (truncated?)')
    budget.take(nbytes, f'storage {key}')
    item.array = _elements(stream.read_raw(nbytes), item.dtype, numel, byteorder)
  return _materialize(obj, budget)


def load(path: str, *, max_bytes: int | None = None):
  """The object `torch.save` wrote to `path`, every tensor a numpy array.

  `max_bytes` caps what the load reads, makes and does in all (default: four
  times the file's size, at least 256 MiB; see the module docstring). Raises
  WeightsError, in one line naming `path`, for a missing, unreadable,
  truncated, foreign or oversized file and for one that names anything but
  tensors, dicts, lists and plain values.
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
    raise WeightsError(f'cannot read {path} as a torch.save file: {_reason(e)}') from None
