"""Input pipeline speed: xydiff.data.TrainBatches (grain) as training uses it.

  python benchmarks/input_pipeline.py                    # 32 synthetic 1280x720 pairs
  python benchmarks/input_pipeline.py --root=/data/GOPRO_Large --pairs=256
  python benchmarks/input_pipeline.py --threads=1,2,4    # rounds alternate thread counts
  taskset -c 0 python benchmarks/input_pipeline.py       # the same on one core
  python benchmarks/input_pipeline.py --quick            # seconds: small frames, few pairs

Without --root it writes --pairs photo-like PNG pairs of --height x --width in
a temporary GOPRO_Large-shaped folder (train/<sequence>/{blur,sharp}/, and one
test pair, which the gopro tfds builder requires). Each case is one JSON line:

  source   folder: FolderPairs (xydiff.images.read_image of both PNGs);
           array_record: the same pairs prepared by the gopro tfds builder and
           read through tfds's ArrayRecord data source (builders.TfdsPairs).
  threads  TrainBatches.threads, the decoding threads of its grain iterator
           (0: this process's cores, what training uses).
  cache    on: the decode cache holds every pair (cache_pairs = pairs), timed
           after a warm-up that fills it; off: cache_pairs = 0, every crop
           decodes its pair.

Reported: crops_per_s (--crop squared crops out of TrainBatches.iterate),
pairs_per_s (pair decodes, `load` calls, during the timed steps), both also per
core of this process's CPU affinity, for the best of --repeats rounds in which
the thread counts alternate, with the median and each round's load average,
since a shared machine skews every figure. The tf.data pipeline this replaced
is gone; the README keeps the figures that compared the two (issue #12).
What tests/test_data.py proves of TrainBatches (batch s is a function of
(seed, s), disjoint process shards, the same global batch for any process
count) is not re-checked here.
"""

import argparse
import collections
import os
import shutil
import tempfile
import threading
import time

import numpy as np

from common import emit  # Also puts the repository on sys.path.


# ------------------------------------------------------------------ data


def synthesize(root: str, pairs: int, height: int, width: int) -> None:
  """`pairs` train pairs and one test pair of smooth-plus-noise RGB PNGs.

  Upsampled coarse noise plus fine noise decodes about as fast as a real
  GoPro frame (compared with the sample frames in shared/data/gopro_sample),
  which is what the cache-off figures hinge on; uniform noise or flat colour
  would decode at another speed.
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


# ------------------------------------------------------------------ timing

# --quick: seconds, small frames and few pairs.
QUICK = dict(pairs=4, height=72, width=128, batch=4, crop=32, steps=3, min_seconds=0.0, repeats=1)
SOURCES = ('folder', 'array_record')


def time_batches(source: Counted, *, batch: int, crop: int, cache_pairs: int, warmup: int,
                 steps: int, min_seconds: float, threads: int) -> dict:
  from xydiff.data import TrainBatches
  batches = TrainBatches(source, global_batch=batch, crop=crop, seed=0, flip=True, rot90=False,
                         cache_pairs=cache_pairs)
  batches.threads = threads
  iterator = batches.iterate(0)
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


def open_source(name: str, root: str, data_dir: str):
  if name == 'folder':
    from xydiff.data import FolderPairs
    return FolderPairs(root, 'train')
  if name == 'array_record':
    from xydiff.data import builders  # TensorFlow and tfds only for this source.
    return builders.build_source('gopro', root, data_dir, 'train')
  raise ValueError(f'unknown source {name!r}: one of {SOURCES}')


def measure(root: str = '', *, data_dir: str = '', pairs: int = 32, height: int = 720,
            width: int = 1280, batch: int = 8, crop: int = 256, steps: int = 16,
            min_seconds: float = 5.0, repeats: int = 3, threads=(0,),
            sources=SOURCES) -> dict:
  """Crops/s of TrainBatches from each source, cache off and on, per thread count.

  Returns {'synthesize': its record or None (with --root), 'open': one record
  per source, 'throughput': one record per (source, cache, threads)}.
  """
  cores = len(os.sched_getaffinity(0))
  result = {'synthesize': None, 'open': [], 'throughput': []}
  scratch = tempfile.mkdtemp(prefix='xydiff-input-')
  try:
    if not root:
      root = os.path.join(scratch, 'GOPRO_Large')
      start = time.perf_counter()
      synthesize(root, pairs, height, width)
      result['synthesize'] = {'pairs': pairs, 'size': [height, width],
                              'seconds': round(time.perf_counter() - start, 2)}
    opened = {}
    for name in sources:
      start = time.perf_counter()
      opened[name] = open_source(name, root, data_dir or os.path.join(scratch, 'tfds'))
      result['open'].append({'source': name, 'pairs': len(opened[name]),
                             'seconds': round(time.perf_counter() - start, 2)})

    for source_name, source in opened.items():
      n = min(pairs, len(source)) if pairs else len(source)
      for cache in ('off', 'on'):
        # Thread counts alternate, `repeats` rounds: load from others on a
        # shared machine then hits all alike, and the best round is the least
        # disturbed.
        results = collections.defaultdict(list)
        for _ in range(repeats):
          for thread_count in threads:
            counted = Counted(source, n)
            # Cache on: fill it first (each slot walks its shard of n / batch pairs).
            warmup = 2 + (-(-n // min(batch, n)) if cache == 'on' else 0)
            results[thread_count].append(dict(
                time_batches(counted, batch=batch, crop=crop,
                             cache_pairs=n if cache == 'on' else 0, warmup=warmup,
                             steps=steps, min_seconds=min_seconds, threads=thread_count),
                load_average_1min=os.getloadavg()[0]))
        for thread_count, rounds in results.items():
          best = max(rounds, key=lambda r: r['crops_per_s'])
          result['throughput'].append({
              'source': source_name, 'loader': 'grain', 'threads': thread_count or cores,
              'cache': cache, 'pairs': n, 'size': [height, width], 'crop': crop,
              'batch': batch, 'cores': cores, 'rounds': len(rounds),
              'timed_steps': best['timed_steps'], 'seconds': round(best['seconds'], 2),
              'crops_per_s': round(best['crops_per_s'], 2),
              'pairs_per_s': round(best['pairs_per_s'], 2),
              'crops_per_s_per_core': round(best['crops_per_s'] / cores, 2),
              'pairs_per_s_per_core': round(best['pairs_per_s'] / cores, 2),
              'crops_per_s_median': round(float(np.median(
                  [r['crops_per_s'] for r in rounds])), 2),
              'load_average_1min': [round(r['load_average_1min'], 2) for r in rounds]})
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  return result


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
  parser.add_argument('--threads', default='0',
                      help='comma-separated TrainBatches.threads to compare (0: the cores)')
  parser.add_argument('--sources', default=','.join(SOURCES))
  parser.add_argument('--quick', action='store_true', help='tiny sizes: a smoke run in seconds')
  args = parser.parse_args()
  sizes = dict(pairs=args.pairs, height=args.height, width=args.width, batch=args.batch,
               crop=args.crop, steps=args.steps, min_seconds=args.min_seconds,
               repeats=args.repeats)
  if args.quick:
    sizes.update(QUICK)
  sources = tuple(args.sources.split(','))
  unknown = set(sources) - set(SOURCES)
  if unknown:
    parser.error(f'--sources: unknown {sorted(unknown)}; known: {SOURCES}')

  result = measure(args.root, data_dir=args.data_dir,
                   threads=tuple(int(t) for t in args.threads.split(',')), sources=sources,
                   **sizes)
  if result['synthesize']:
    emit({'case': 'synthesize', **result['synthesize']})
  for record in result['open']:
    emit({'case': 'open', **record})
  rows = result['throughput']
  for record in rows:
    emit({'case': 'throughput', **record})

  cores = rows[0]['cores'] if rows else len(os.sched_getaffinity(0))
  print(f'\n{"source":<13}{"threads":>8} {"cache":<7}{"crops/s":>9}{"pairs/s":>9}'
        f'{"crops/s/core":>14}{"pairs/s/core":>14}   (best of rounds, {cores} cores)')
  for r in rows:
    print(f'{r["source"]:<13}{r["threads"]:>8} {r["cache"]:<7}{r["crops_per_s"]:>9.1f}'
          f'{r["pairs_per_s"]:>9.1f}{r["crops_per_s_per_core"]:>14.1f}'
          f'{r["pairs_per_s_per_core"]:>14.1f}')


if __name__ == '__main__':
  main()
