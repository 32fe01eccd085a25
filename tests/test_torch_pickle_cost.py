"""A small hostile torch.save file costs about what its size allows, in memory and in time.

The audit's files (issue #23, item 2), each a few kilobytes, took a gigabyte
or ran for seconds to minutes: a flood of EMPTY_SET opcodes, nested shared
lists whose refusal message printed them, tensor sizes built from memo
references to 2**1000, and a dict whose int keys all share one hash. Each is
built here and loaded in a subprocess of its own, whose peak RSS is compared
with the same subprocess loading nothing.
"""

import collections
import functools
import json
import os
import pickle
import re
import struct
import subprocess
import sys
import textwrap
import time
import zipfile

import numpy as np
import pytest

from conftest import REPO
from test_torch_pickle import PROTO2, glob, text, write_legacy, write_zip
from xydiff.interop import torch_pickle
from xydiff.errors import WeightsError

# The bounds issue #23 sets per file: peak RSS above the interpreter's, and seconds (of
# CPU: what the file makes the reader do, however loaded the machine).
MAX_EXTRA_RSS = 300 << 20
MAX_SECONDS = 5.0
# A hash equal for every key of the flood: int hashes are taken modulo this prime.
_HASH_MODULUS = (1 << 61) - 1


def _long1(value: int) -> bytes:
  data = value.to_bytes((value.bit_length() + 8) // 8, 'little', signed=True)
  return pickle.LONG1 + bytes([len(data)]) + data


def _deflated_zip(path, raw: bytes):
  """A zip holding the pickle `raw` as archive/data.pkl, deflated."""
  with zipfile.ZipFile(path, 'w', compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
    archive.writestr('archive/data.pkl', raw)
    archive.writestr('archive/byteorder', 'little')
  return path


@functools.lru_cache(maxsize=1)
def _flood() -> bytes:
  """4 million EMPTY_SET opcodes (1% EMPTY_DICT, so deflate stays under the 100x cap)."""
  rng = np.random.default_rng(0)
  codes = np.where(rng.random(4_000_000) < 0.01, pickle.EMPTY_DICT[0], pickle.EMPTY_SET[0])
  return PROTO2 + codes.astype(np.uint8).tobytes() + pickle.STOP


def empty_set_flood(path):
  """The audit's 47 KB file: the flood deflated in a zip (the default cap is then 256 MiB)."""
  path = _deflated_zip(path, _flood())
  with zipfile.ZipFile(path) as archive:
    info = archive.getinfo('archive/data.pkl')
    assert info.file_size < 100 * info.compress_size  # Passes the inflation check.
  assert os.path.getsize(path) < 100_000
  return path


def empty_set_flood_legacy(path):
  """The flood as the object of a legacy file (4 MB, so the cap is still 256 MiB)."""
  return write_legacy(path, None, raw_pickle=_flood())


def _shared_lists(depth: int) -> bytes:
  """Opcodes leaving on the stack a list holding the one below twice, `depth` levels deep."""
  raw = pickle.EMPTY_LIST + pickle.BINPUT + b'\x00'
  for level in range(1, depth + 1):
    raw += (pickle.EMPTY_LIST + pickle.MARK + pickle.BINGET + bytes([level - 1]) +
            pickle.BINGET + bytes([level - 1]) + pickle.APPENDS + pickle.BINPUT + bytes([level]))
  return raw


def shared_lists_refused_by(refusal: str):
  """A file whose 40 levels of shared lists are refused by BUILD, REDUCE or a persistent id."""
  tail = {'build': pickle.EMPTY_DICT + pickle.BUILD,
          'reduce': pickle.EMPTY_TUPLE + pickle.REDUCE,
          'persistent_id': pickle.BINPERSID}[refusal]

  def write(path):
    write_zip(path, None, raw_pickle=PROTO2 + _shared_lists(40) + tail + pickle.STOP)
    assert os.path.getsize(path) < 1000
    return path

  return write


def tensor_pickle(size, stride, offset=0, numel=4) -> bytes:
  """A pickle of one float32 tensor on storage '0', its ints written once each, then
  referenced through the memo (as the audit's file did)."""
  memo = {}

  def number(value):
    if value in memo:
      return pickle.BINGET + bytes([memo[value]])
    memo[value] = len(memo)
    return _long1(value) + pickle.BINPUT + bytes([memo[value]])

  def numbers(values):
    return pickle.MARK + b''.join(number(v) for v in values) + pickle.TUPLE

  pid = (pickle.MARK + pickle.SHORT_BINUNICODE + b'\x07storage' + glob('torch', 'FloatStorage') +
         pickle.SHORT_BINUNICODE + b'\x010' + pickle.SHORT_BINUNICODE + b'\x03cpu' +
         number(numel) + pickle.TUPLE + pickle.BINPERSID)
  return (PROTO2 + glob('torch._utils', '_rebuild_tensor_v2') + pickle.MARK + pid +
          number(offset) + numbers(size) + numbers(stride) + pickle.TUPLE + pickle.REDUCE +
          pickle.STOP)


def tensor_file(path, raw: bytes, storage=np.arange(4, dtype=np.float32)):
  with zipfile.ZipFile(path, 'w') as archive:
    archive.writestr('archive/data.pkl', raw)
    archive.writestr('archive/byteorder', 'little')
    archive.writestr('archive/data/0', storage.tobytes())
  return path


def huge_tensor_sizes(path):
  """The audit's 16 KB file: a tensor whose size and stride are 4,000 references to 2**1000."""
  path = tensor_file(path, tensor_pickle((1 << 1000,) * 4000, (1 << 1000,) * 4000))
  assert os.path.getsize(path) < 20_000
  return path


def equal_hash_keys(path):
  """A dict of 20,000 distinct int keys that all hash to 7."""
  pairs = b''.join(_long1(7 + i * _HASH_MODULUS) + pickle.NONE for i in range(20_000))
  raw = PROTO2 + pickle.EMPTY_DICT + pickle.MARK + pairs + pickle.SETITEMS + pickle.STOP
  write_zip(path, None, raw_pickle=raw)
  assert os.path.getsize(path) < 300_000
  return path


HOSTILE = {
    'empty_set_flood': empty_set_flood,
    'empty_set_flood_legacy': empty_set_flood_legacy,
    'shared_lists_build': shared_lists_refused_by('build'),
    'shared_lists_reduce': shared_lists_refused_by('reduce'),
    'shared_lists_persistent_id': shared_lists_refused_by('persistent_id'),
    'huge_tensor_sizes': huge_tensor_sizes,
    'equal_hash_keys': equal_hash_keys,
}

# Loads the file argv[1] (none: only the imports), then prints its seconds, its
# peak RSS (VmHWM: ru_maxrss would count the parent's pages from before exec)
# and the error. The address-space cap keeps a runaway load from taking the
# machine's memory.
_MEASURE = textwrap.dedent('''
    import json, re, resource, sys, time
    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
    from xydiff.interop import torch_pickle
    from xydiff.errors import WeightsError
    seconds, cpu, error = 0.0, 0.0, None
    if len(sys.argv) > 1:
      start, cpu = time.perf_counter(), time.process_time()
      try:
        torch_pickle.load(sys.argv[1])
      except WeightsError as e:
        error = str(e)
      seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    with open('/proc/self/status') as status:
      peak = int(re.search(r'VmHWM:\\s*(\\d+) kB', status.read()).group(1)) << 10
    print(json.dumps({'seconds': seconds, 'cpu': cpu, 'peak': peak, 'error': error}))
''')


def measure(*args, timeout=60) -> dict:
  result = subprocess.run([sys.executable, '-c', _MEASURE, *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope='module')
def idle_peak():
  return measure()['peak']


_LISTS_END = len(PROTO2 + _shared_lists(40))  # Where the opcode that refuses the lists is.
# What each refusal says: the opcode or field at fault, never the object itself.
REFUSALS = {
    'empty_set_flood': r'passes the cap by EMPTY_SET at byte [\d,]+ of archive/data.pkl',
    'empty_set_flood_legacy': r'passes the cap by EMPTY_SET at byte [\d,]+ of the file',
    'shared_lists_build': rf'sets the state of list, .*\(BUILD at byte {_LISTS_END + 1} of ',
    'shared_lists_reduce': rf'calls list: .*\(REDUCE at byte {_LISTS_END + 1} of archive/',
    'shared_lists_persistent_id': rf'persistent id that is a list, .*\(BINPERSID at byte '
                                  rf'{_LISTS_END} of archive/data.pkl\)',
    'huge_tensor_sizes': r'a tensor has 4000 sizes and 4000 strides .*\(REDUCE at byte',
    'equal_hash_keys': r'SETITEMS uses an int of magnitude 2\*\*31 or more as a dict key',
}


@pytest.mark.skipif(not os.path.exists('/proc/self/status'), reason='VmHWM is Linux\'s')
@pytest.mark.parametrize('name', HOSTILE)
def test_a_small_hostile_file_takes_little_memory_and_time(tmp_path, idle_peak, name):
  path = HOSTILE[name](tmp_path / f'{name}.pth')
  result = measure(path)
  error = result['error']
  assert error is not None and error.startswith(f'cannot read {path} as a torch.save file: ')
  assert re.search(REFUSALS[name], error), error
  assert '\n' not in error and '[[' not in error and len(error) < 500
  extra = result['peak'] - idle_peak
  assert extra < MAX_EXTRA_RSS, f'{extra / 2**20:.0f} MiB above the interpreter'
  assert result['cpu'] < MAX_SECONDS, f'{result["cpu"]:.1f} s'


def _cpu_seconds(function, *args, **kwargs):
  start = time.process_time()
  try:
    return function(*args, **kwargs), time.process_time() - start
  except WeightsError as e:
    return e, time.process_time() - start


@pytest.mark.parametrize('size, stride, offset, numel, refusal', [
    ((1 << 1000,) * 3, (1,) * 3, 0, 4, r"a tensor's size is 2\*\*63 or more"),
    ((1,) * 65, (1,) * 65, 0, 4, r'a tensor has 65 sizes and 65 strides \(at most 64'),
    ((1, 1), (1,), 0, 4, r'a tensor has 2 sizes and 1 strides'),
    ((4,), (1,), 1 << 1000, 4, r"a tensor's offset is 2\*\*63 or more"),
    ((4,), (-1,), 0, 4, r"a tensor's stride is negative"),
    ((4,), (1,), 0, 1 << 1000, r"a storage's element count is 2\*\*63 or more"),
    # Each factor within int64, yet a product of 2,560 bits: bounded one factor at a time.
    ((1 << 40,) * 64, (0,) * 64, 0, 4,
     r'a tensor of size \(64 dimensions\) \(made at byte \d+ of archive/data.pkl\) has a '
     r'dimension of 1,099,511,627,776 elements, past max_bytes=268,435,456'),
    ((1 << 20,) * 64, (0,) * 64, 0, 4, r'takes at least 4,398,046,511,104 bytes, past max_bytes'),
    ((0, 1 << 25, 1 << 25), (0, 0, 0), 0, 4, r'spans more than 67,108,864 elements'),
    ((2,), (1 << 62,), 0, 4, r'stride \(4611686018427387904,\) and offset 0 runs past its '
                             r'storage of 4 elements'),
    ((3,), (1,), 2, 4, r'runs past its storage of 4 elements'),
])
def test_tensor_sizes_are_bounded_before_any_product(tmp_path, size, stride, offset, numel,
                                                     refusal):
  path = tensor_file(tmp_path / 'sizes.pth', tensor_pickle(size, stride, offset, numel))
  error, seconds = _cpu_seconds(torch_pickle.load, path)
  assert isinstance(error, WeightsError), error
  assert re.search(refusal, str(error)), str(error)
  assert seconds < 1.0


def test_sizes_within_bounds_still_read(tmp_path):
  cases = [((1, 4), (1 << 62, 1), 0, [[0, 1, 2, 3]]),  # Stride over one element: reaches nothing.
           ((0, 3), (3, 1), 0, np.zeros((0, 3))),
           ((2, 2), (1, 0), 2, [[2, 2], [3, 3]])]
  for size, stride, offset, want in cases:
    path = tensor_file(tmp_path / 'ok.pth', tensor_pickle(size, stride, offset))
    got = torch_pickle.load(path)
    assert got.shape == tuple(size) and got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


def _colliding(count=20_000):
  """LONG1 opcodes of `count` distinct ints that all hash to 7."""
  return [_long1(7 + i * _HASH_MODULUS) for i in range(1, count + 1)]


def _put_flood(count=20_000):
  return b''.join(pickle.NONE + pickle.PUT + b'%d\n' % (7 + i * _HASH_MODULUS) + pickle.POP
                  for i in range(1, count + 1)) + pickle.NONE


# Each made 20,000 insertions that scan all the keys before them (seconds on the old reader).
KEY_FLOODS = {
    'SETITEMS': lambda keys: (pickle.EMPTY_DICT + pickle.MARK +
                              b''.join(k + pickle.NONE for k in keys) + pickle.SETITEMS),
    'SETITEM': lambda keys: pickle.EMPTY_DICT + b''.join(k + pickle.NONE + pickle.SETITEM
                                                         for k in keys),
    'DICT': lambda keys: pickle.MARK + b''.join(k + pickle.NONE for k in keys) + pickle.DICT,
    'ADDITEMS': lambda keys: pickle.EMPTY_SET + pickle.MARK + b''.join(keys) + pickle.ADDITEMS,
    'FROZENSET': lambda keys: pickle.MARK + b''.join(keys) + pickle.FROZENSET,
    'REDUCE': lambda keys: (glob('builtins', 'set') + pickle.EMPTY_LIST + pickle.MARK +
                            b''.join(keys) + pickle.APPENDS + pickle.TUPLE1 + pickle.REDUCE),
    'frozenset': lambda keys: (glob('__builtin__', 'frozenset') + pickle.EMPTY_LIST +
                               pickle.MARK + b''.join(keys) + pickle.APPENDS + pickle.TUPLE1 +
                               pickle.REDUCE),
    'OrderedDict': lambda keys: (glob('collections', 'OrderedDict') + pickle.EMPTY_LIST +
                                 pickle.MARK + b''.join(k + pickle.NONE + pickle.TUPLE2
                                                        for k in keys) +
                                 pickle.APPENDS + pickle.TUPLE1 + pickle.REDUCE),
    'Counter': lambda keys: (glob('collections', 'Counter') + pickle.EMPTY_LIST + pickle.MARK +
                             b''.join(keys) + pickle.APPENDS + pickle.TUPLE1 + pickle.REDUCE),
    'tuple': lambda keys: (pickle.EMPTY_DICT + pickle.MARK +
                           b''.join(k + pickle.TUPLE1 + pickle.NONE for k in keys) +
                           pickle.SETITEMS),
    'float': lambda keys: (pickle.EMPTY_DICT + pickle.BINFLOAT + struct.pack('>d', 2.0 ** 61) +
                           pickle.NONE + pickle.SETITEM),
    'PUT': lambda keys: _put_flood(),
}
KEY_REFUSALS = {
    'SETITEMS': r'SETITEMS uses an int of magnitude 2\*\*31 or more as a dict key or set item',
    'SETITEM': r'SETITEM uses an int of magnitude 2\*\*31 or more',
    'DICT': r'DICT uses an int of magnitude 2\*\*31 or more',
    'ADDITEMS': r'ADDITEMS uses an int of magnitude 2\*\*31 or more',
    'FROZENSET': r'FROZENSET uses an int of magnitude 2\*\*31 or more',
    'REDUCE': r'REDUCE uses an int of magnitude 2\*\*31 or more',
    'OrderedDict': r'REDUCE uses an int of magnitude 2\*\*31 or more',
    'frozenset': r'REDUCE uses an int of magnitude 2\*\*31 or more',
    'Counter': r'Counter called with 1 arguments, the first a list, not one dict',
    'tuple': r'SETITEMS uses a tuple as a dict key',
    'float': r'SETITEM uses a float as a dict key',
    'PUT': r'a memo index outside 0..2\*\*32 \(PUT at byte 3 of archive/data.pkl\)',
}


@pytest.fixture(scope='module')
def colliding():
  return _colliding()


@pytest.mark.parametrize('opcode', KEY_FLOODS)
def test_keys_that_could_share_a_hash_are_refused(tmp_path, colliding, opcode):
  raw = PROTO2 + KEY_FLOODS[opcode](colliding) + pickle.STOP
  path = write_zip(tmp_path / 'keys.pth', None, raw_pickle=raw)
  error, seconds = _cpu_seconds(torch_pickle.load, path)
  assert isinstance(error, WeightsError), error
  assert re.search(KEY_REFUSALS[opcode], str(error)), str(error)
  assert seconds < 1.0


def test_string_and_small_int_keys_still_read(tmp_path):
  edge = (1 << 31) - 1
  obj = {'weight': 1, 0: 2, -edge: 3, edge: 4, 'sets': [{'a', 5}, frozenset({'b', -6})]}
  for protocol in (2, 4):
    path = write_zip(tmp_path / 'keys.pth', None, raw_pickle=pickle.dumps(obj, protocol))
    assert torch_pickle.load(path) == obj
  # Python 2 pickled an OrderedDict (a state dict) as a call on its [key, value] pairs.
  pairs = b''.join(pickle.EMPTY_LIST + pickle.MARK + text(k) + pickle.BININT1 + bytes([v]) +
                   pickle.APPENDS for k, v in (('b', 1), ('a', 2)))
  raw = (PROTO2 + glob('collections', 'OrderedDict') + pickle.EMPTY_LIST + pickle.MARK + pairs +
         pickle.APPENDS + pickle.TUPLE1 + pickle.REDUCE + pickle.STOP)
  loaded = torch_pickle.load(write_legacy(tmp_path / 'py2.pth', None, raw_pickle=raw))
  assert type(loaded) is collections.OrderedDict and list(loaded.items()) == [('b', 1), ('a', 2)]
  for key in (edge + 1, -edge - 1):
    path = write_zip(tmp_path / 'edge.pth', None, raw_pickle=pickle.dumps({key: 1}, 2))
    with pytest.raises(WeightsError, match=r'SETITEM uses an int of magnitude 2\*\*31'):
      torch_pickle.load(path)


def test_the_opcode_count_and_memo_are_capped_in_proportion_to_max_bytes(tmp_path):
  count = 20_000  # Each: an object, a memo entry, a pop.
  raw = PROTO2 + (pickle.EMPTY_DICT + pickle.MEMOIZE + pickle.POP) * count + pickle.NONE + \
      pickle.STOP
  path = write_zip(tmp_path / 'ops.pth', None, raw_pickle=raw)
  cost = 3 * count * torch_pickle._OPCODE_BYTES  # pylint: disable=protected-access
  assert torch_pickle.load(path, max_bytes=cost + 10 * len(raw)) is None
  with pytest.raises(WeightsError, match=r'what the pickle makes and reads passes the cap by '
                     r'(EMPTY_DICT|MEMOIZE|POP) at byte [\d,]+ of archive/data.pkl, past '
                     r'max_bytes=1,000,000 .*xydiff import --max-bytes') as e:
    torch_pickle.load(path, max_bytes=1_000_000)
  at = int(re.search(r'at byte ([\d,]+)', str(e.value)).group(1).replace(',', ''))
  # Refused after about max_bytes / _OPCODE_BYTES opcodes, each a byte here.
  assert 1_000_000 // 128 * 0.8 < at < 1_000_000 // 128


@pytest.mark.parametrize('write', [write_zip, write_legacy])
def test_pickles_of_every_protocol_read_as_pickle_reads_them(tmp_path, write):
  """Frames (protocol 4), memoized strings and long byte strings, read through the budget."""
  obj = {'text': 'x' * 70_000 + 'é€😀', 'blob': b'y' * 70_000, 'list': [1, 2.5, None, True],
         'nested': {'a': (1, 'b'), 7: [b'z', '']}, 'big': 1 << 100, 'set': {3, 'c'}}
  obj['again'] = obj['list']
  for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
    path = write(tmp_path / f'p{protocol}.pth', None, raw_pickle=pickle.dumps(obj, protocol))
    loaded = torch_pickle.load(path)
    assert loaded == obj, protocol
    assert loaded['again'] is loaded['list']


def test_calls_and_strings_are_charged_what_they_make(tmp_path):
  # 100 sets made from one list of 1,000 ints: 100,000 set entries from 1,000 pushes.
  items = pickle.EMPTY_LIST + pickle.MARK + b''.join(
      pickle.BININT2 + struct.pack('<H', i) for i in range(1000)) + pickle.APPENDS
  raw = (PROTO2 + glob('builtins', 'set') + pickle.BINPUT + b'\x00' + items + pickle.TUPLE1 +
         pickle.BINPUT + b'\x01' + pickle.POP +
         (pickle.BINGET + b'\x00' + pickle.BINGET + b'\x01' + pickle.REDUCE + pickle.POP) * 100 +
         pickle.POP + pickle.NONE + pickle.STOP)
  path = write_zip(tmp_path / 'sets.pth', None, raw_pickle=raw)
  assert torch_pickle.load(path) is None
  with pytest.raises(WeightsError, match=r'passes the cap by REDUCE at byte [\d,]+ .*'
                     r'max_bytes=4,000,000'):
    torch_pickle.load(path, max_bytes=4_000_000)  # 1,500 opcodes: 200 KB; the sets: 12.8 MB.

  # Ten strings of 100,000 bytes: up to four times that decoded, and the bytes meanwhile.
  raw = PROTO2 + (text('€' * 33_333 + 'x') + pickle.POP) * 10 + pickle.NONE + pickle.STOP
  path = write_zip(tmp_path / 'strings.pth', None, raw_pickle=raw)
  assert torch_pickle.load(path, max_bytes=8_000_000) is None
  with pytest.raises(WeightsError, match=r'passes the cap by BINUNICODE at byte'):
    torch_pickle.load(path, max_bytes=3_000_000)
