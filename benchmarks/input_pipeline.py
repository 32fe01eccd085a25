"""Input pipeline speed: today's tf.data TrainBatches against a grain port, side by side.

  python benchmarks/input_pipeline.py                    # 32 synthetic 1280x720 pairs
  python benchmarks/input_pipeline.py --root=/data/GOPRO_Large --pairs=256
  taskset -c 0 python benchmarks/input_pipeline.py       # the same on one core
  python benchmarks/input_pipeline.py --quick            # seconds: small frames, few pairs

Without --root it writes --pairs photo-like PNG pairs of --height x --width in
a temporary GOPRO_Large-shaped folder (train/<sequence>/{blur,sharp}/, and one
test pair, which the gopro tfds builder requires). Each case is one JSON line:

  source   folder: FolderPairs (xydiff.images.read_image of both PNGs);
           array_record: the same pairs prepared by the gopro tfds builder and
           read through tfds's ArrayRecord data source (builders.TfdsPairs).
  loader   tf.data: xydiff.data.TrainBatches as training uses it;
           grain: GrainBatches below, the same slot/shard/epoch scheme on
           grain.MapDataset -> to_iter_dataset(ReadOptions(num_threads)) -> batch.
  cache    on: the decode cache holds every pair (cache_pairs = pairs), timed
           after a warm-up that fills it; off: cache_pairs = 0, every crop
           decodes its pair.

Reported: crops_per_s (--crop squared crops out of the loader), pairs_per_s
(pair decodes, `load` calls, during the timed steps), both also per core of
this process's CPU affinity, for the best of --repeats rounds in which the
loaders alternate, with the median and each round's load average, since a
shared machine skews every figure. Both loaders get the same cores: tf.data
autotunes its map parallelism, grain gets --grain-threads (default: the
cores). A `properties` line checks, for the grain port, what
tests/test_data.py proves of TrainBatches: batch s is a function of (seed, s),
the global batch is the same for one or two processes, the processes' shards
are disjoint, and an iterator restored from get_state() continues bitwise.
"""

import argparse
import collections
import functools
import os
import shutil
import sys
import tempfile
import threading
import time

import numpy as np

from common import REPO, emit

sys.path.insert(0, REPO)

_SHUFFLE_STREAM, _AUGMENT_STREAM = 1, 2  # As in xydiff/data/pipeline.py.


# ------------------------------------------------------------------ data


def synthesize(root: str, pairs: int, height: int, width: int) -> None:
  """`pairs` train pairs and one test pair of smooth-plus-noise RGB PNGs.

  Upsampled coarse noise plus fine noise compresses and decodes like a real
  GoPro frame (the decode time per pair is what the cache-off figures hinge
  on); uniform noise or flat colour would not.
  """
  from PIL import Image
  from xydiff import images
  rng = np.random.default_rng(0)

  def frame():
    coarse = rng.integers(0, 256, (max(height // 16, 1), max(width // 16, 1), 3), np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))
    return np.clip(smooth.astype(np.int16) + rng.integers(-4, 5, smooth.shape), 0,
                   255).astype(np.uint8)

  for split, count in (('train', pairs), ('test', 1)):
    for i in range(count):
      sequence = f'SEQ{i // 100:04d}'
      for folder in ('blur', 'sharp'):
        path = os.path.join(root, split, sequence, folder, f'{i:06d}.png')
        os.makedirs(os.path.dirname(path), exist_ok=True)
        images.write_png(path, frame())


class Counted:
  """The first `limit` pairs of a source, counting `load` calls (thread-safe)."""

  def __init__(self, source, limit: int = 0):
    self.source = source
    self.names = source.names[:limit] if limit else list(source.names)
    self.loads = 0
    self._lock = threading.Lock()

  def __len__(self):
    return len(self.names)

  def load(self, index):
    with self._lock:
      self.loads += 1
    return self.source.load(index)


# ------------------------------------------------------------------ grain


class GrainBatches:
  """TrainBatches' scheme on grain: slot j walks shard j mod V, permuted per epoch.

  Element p of the stream is slot offset + p mod b of step p // b; its pair
  index and its crop corner, flip and turn are functions of (seed, step,
  slot) alone, so a batch depends on nothing read before it and the global
  batch is the same for any number of processes, as in TrainBatches. The
  random numbers are numpy's, not TensorFlow's: the batches differ from
  TrainBatches' bit for bit, their properties do not.
  """

  def __init__(self, source, *, global_batch: int, crop: int, seed: int, flip: bool = True,
               rot90: bool = False, process_index: int = 0, process_count: int = 1,
               cache_pairs: int = 64, threads: int = 2):
    self.source, self.crop, self.seed, self.flip, self.rot90 = source, crop, seed, flip, rot90
    self.global_batch = global_batch
    self.local_batch = global_batch // process_count
    self.offset = process_index * self.local_batch
    self.num_shards = min(global_batch, len(source))
    self.threads = threads
    self._cache = collections.OrderedDict()
    self._cache_size = cache_pairs
    self._lock = threading.Lock()

  def local_shard(self) -> np.ndarray:
    v = self.num_shards
    slots = range(self.offset, self.offset + self.local_batch)
    return np.unique(np.concatenate([np.arange(j % v, len(self.source), v) for j in slots]))

  @functools.lru_cache(maxsize=1024)
  def _permutation(self, shard: int, epoch: int, size: int) -> np.ndarray:
    return np.random.default_rng([self.seed, _SHUFFLE_STREAM, shard, epoch]).permutation(size)

  def _pair_index(self, step: int, slot: int) -> int:
    v, n, b = self.num_shards, len(self.source), self.global_batch
    shard = slot % v
    shard_size = (n - shard + v - 1) // v
    users, rank = (b - shard + v - 1) // v, slot // v
    position = step * users + rank
    epoch, within = divmod(position, shard_size)
    return shard + v * int(self._permutation(shard, epoch, shard_size)[within])

  def _pair(self, index: int):
    with self._lock:
      if index in self._cache:
        self._cache.move_to_end(index)
        return self._cache[index]
    pair = self.source.load(index)
    with self._lock:
      self._cache[index] = pair
      while len(self._cache) > self._cache_size:
        self._cache.popitem(last=False)
    return pair

  def _example(self, position: int) -> dict:
    from xydiff import images
    step, slot = divmod(position, self.local_batch)
    slot += self.offset
    blur, sharp = self._pair(self._pair_index(step, slot))
    u = np.random.default_rng([self.seed, _AUGMENT_STREAM, step, slot]).random(4)
    h, w = blur.shape[:2]
    top, left = int(u[0] * (h - self.crop + 1)), int(u[1] * (w - self.crop + 1))
    pair = np.stack([blur[top:top + self.crop, left:left + self.crop],
                     sharp[top:top + self.crop, left:left + self.crop]])
    if self.flip and u[2] < 0.5:
      pair = pair[:, :, ::-1]
    if self.rot90:
      pair = np.rot90(pair, int(u[3] * 4), axes=(1, 2))
    pair = images.to_float(np.ascontiguousarray(pair))
    return {'blur': pair[0], 'sharp': pair[1]}

  def dataset(self, start_step: int = 0, prefetch: int = 2):
    import grain
    b = self.local_batch
    ds = grain.MapDataset.range(start_step * b, np.iinfo(np.int64).max).map(self._example)
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=self.threads,
                                              prefetch_buffer_size=max(prefetch * b, 1)))
    return ds.batch(b, drop_remainder=True)

  def iterate(self, start_step: int = 0, prefetch: int = 2):
    return iter(self.dataset(start_step, prefetch))

  def batch(self, step: int) -> dict:
    return next(self.iterate(step, prefetch=1))


def check_grain_properties(source, threads: int) -> dict:
  """What tests/test_data.py proves of TrainBatches, asked of GrainBatches."""
  make = lambda **kw: GrainBatches(source, global_batch=4, crop=16, threads=threads,
                                   **{'seed': 3, **kw})
  a = make()
  it = a.iterate(3)
  stream = [next(it) for _ in range(3)]
  function_of_step = all(np.array_equal(stream[k]['blur'], a.batch(3 + k)['blur'])
                         for k in range(3))
  seed_matters = not np.array_equal(a.batch(3)['blur'], make(seed=4).batch(3)['blur'])
  parts = [make(process_index=p, process_count=2) for p in range(2)]
  same_global = np.array_equal(np.concatenate([p.batch(2)['blur'] for p in parts]),
                               a.batch(2)['blur'])
  disjoint = not set(parts[0].local_shard().tolist()) & set(parts[1].local_shard().tolist())
  it = iter(a.dataset(0))
  for _ in range(2):
    next(it)
  state = it.get_state()
  expected = next(it)['sharp']
  restored = iter(make().dataset(0))
  restored.set_state(state)
  resumes = np.array_equal(next(restored)['sharp'], expected)
  return {'case': 'properties', 'loader': 'grain', 'batch_is_function_of_seed_and_step':
          bool(function_of_step and seed_matters), 'global_batch_same_for_2_processes':
          bool(same_global), 'process_shards_disjoint': bool(disjoint),
          'get_state_set_state_resumes_bitwise': bool(resumes), 'state': repr(state)}


# ------------------------------------------------------------------ timing


def measure(loader: str, source: Counted, *, batch: int, crop: int, cache_pairs: int,
            warmup: int, steps: int, min_seconds: float, threads: int) -> dict:
  from xydiff.data import TrainBatches
  kwargs = dict(global_batch=batch, crop=crop, seed=0, flip=True, rot90=False,
                cache_pairs=cache_pairs)
  if loader == 'tf.data':
    iterator = TrainBatches(source, **kwargs).iterate(0)
  else:
    iterator = GrainBatches(source, threads=threads, **kwargs).iterate(0)
  for _ in range(warmup):
    next(iterator)
  loads = source.loads
  start = time.perf_counter()
  done = 0
  while done < steps or time.perf_counter() - start < min_seconds:
    out = next(iterator)
    done += 1
  seconds = time.perf_counter() - start
  assert out['blur'].shape == (batch, crop, crop, 3), out['blur'].shape
  return {'timed_steps': done, 'seconds': round(seconds, 3),
          'crops_per_s': done * batch / seconds,
          'pairs_per_s': (source.loads - loads) / seconds}


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--root', default='', help='GOPRO_Large-shaped folder (else synthetic)')
  parser.add_argument('--data-dir', default='', help='tfds data_dir (default: a temporary one)')
  parser.add_argument('--pairs', type=int, default=32, help='train pairs used (0: all of --root)')
  parser.add_argument('--height', type=int, default=720)
  parser.add_argument('--width', type=int, default=1280)
  parser.add_argument('--batch', type=int, default=8, help='crops per step')
  parser.add_argument('--crop', type=int, default=256)
  parser.add_argument('--steps', type=int, default=16, help='timed steps per case, at least')
  parser.add_argument('--min-seconds', type=float, default=5.0, help='timed seconds, at least')
  parser.add_argument('--repeats', type=int, default=3, help='rounds per case; best is shown')
  parser.add_argument('--grain-threads', type=int, default=0, help='0: the cores')
  parser.add_argument('--sources', default='folder,array_record')
  parser.add_argument('--loaders', default='tf.data,grain')
  parser.add_argument('--quick', action='store_true', help='tiny sizes: a smoke run in seconds')
  args = parser.parse_args()
  if args.quick:
    args.pairs, args.height, args.width = 4, 72, 128
    args.batch, args.crop, args.steps, args.min_seconds, args.repeats = 4, 32, 3, 0.0, 1

  from xydiff import tf_guard
  tf_guard.keep_tensorflow_off_accelerators()
  from xydiff.data import FolderPairs, builders

  cores = len(os.sched_getaffinity(0))
  threads = args.grain_threads or cores
  scratch = tempfile.mkdtemp(prefix='xydiff-input-')
  try:
    root = args.root
    if not root:
      root = os.path.join(scratch, 'GOPRO_Large')
      start = time.perf_counter()
      synthesize(root, args.pairs, args.height, args.width)
      emit({'case': 'synthesize', 'pairs': args.pairs, 'size': [args.height, args.width],
            'seconds': round(time.perf_counter() - start, 2)})
    sources = {}
    for name in args.sources.split(','):
      start = time.perf_counter()
      if name == 'folder':
        sources[name] = FolderPairs(root, 'train')
      elif name == 'array_record':
        data_dir = args.data_dir or os.path.join(scratch, 'tfds')
        sources[name] = builders.build_source('gopro', root, data_dir, 'train')
      else:
        parser.error(f'--sources: unknown source {name!r} (folder, array_record)')
      emit({'case': 'open', 'source': name, 'pairs': len(sources[name]),
            'seconds': round(time.perf_counter() - start, 2)})

    if 'grain' in args.loaders.split(','):
      emit(check_grain_properties(Counted(next(iter(sources.values())), 8), threads))

    rows = []
    for source_name, source in sources.items():
      n = min(args.pairs, len(source)) if args.pairs else len(source)
      for cache in ('off', 'on'):
        # Loaders alternate, `repeats` rounds: load from others on a shared
        # machine then hits both alike, and the best round is the least disturbed.
        results = collections.defaultdict(list)
        for _ in range(args.repeats):
          for loader in args.loaders.split(','):
            counted = Counted(source, n)
            # Cache on: fill it first (each slot walks its shard of n / batch pairs).
            warmup = 2 + (-(-n // min(args.batch, n)) if cache == 'on' else 0)
            results[loader].append(dict(
                measure(loader, counted, batch=args.batch, crop=args.crop,
                        cache_pairs=n if cache == 'on' else 0, warmup=warmup,
                        steps=args.steps, min_seconds=args.min_seconds, threads=threads),
                load_average_1min=os.getloadavg()[0]))
        for loader, rounds in results.items():
          best = max(rounds, key=lambda r: r['crops_per_s'])
          record = {'case': 'throughput', 'source': source_name, 'loader': loader,
                    'cache': cache, 'pairs': n, 'size': [args.height, args.width],
                    'crop': args.crop, 'batch': args.batch, 'cores': cores,
                    'grain_threads': threads if loader == 'grain' else None,
                    'rounds': len(rounds), 'timed_steps': best['timed_steps'],
                    'seconds': round(best['seconds'], 2),
                    'crops_per_s': round(best['crops_per_s'], 2),
                    'pairs_per_s': round(best['pairs_per_s'], 2),
                    'crops_per_s_per_core': round(best['crops_per_s'] / cores, 2),
                    'pairs_per_s_per_core': round(best['pairs_per_s'] / cores, 2),
                    'crops_per_s_median': round(float(np.median(
                        [r['crops_per_s'] for r in rounds])), 2),
                    'load_average_1min': [round(r['load_average_1min'], 2) for r in rounds]}
          emit(record)
          rows.append(record)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)

  print(f'\n{"source":<13}{"loader":<9}{"cache":<7}{"crops/s":>9}{"pairs/s":>9}'
        f'{"crops/s/core":>14}{"pairs/s/core":>14}   (best of rounds, {cores} cores)')
  for r in rows:
    print(f'{r["source"]:<13}{r["loader"]:<9}{r["cache"]:<7}{r["crops_per_s"]:>9.1f}'
          f'{r["pairs_per_s"]:>9.1f}{r["crops_per_s_per_core"]:>14.1f}'
          f'{r["pairs_per_s_per_core"]:>14.1f}')


if __name__ == '__main__':
  main()
