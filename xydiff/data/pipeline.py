"""Training batches on grain, as a pure function of (seed, step); evaluation pairs.

Sharding. The global batch has B slots. Slot j always reads from shard
j mod V (V = min(B, N) for N pairs), and shard s holds the pairs i with
i mod V == s. Process p fills slots [p*b, (p+1)*b) of every global batch
(b = B / process_count), so each process reads a fixed shard of the split,
the processes' shards are disjoint whenever B <= N, and together they are the
split. Because a slot's stream does not depend on which process serves it, the
global batch is the same for one process or many. When N is not a multiple
of V the shards differ in size by one, so pairs of the smaller shards are
drawn slightly more often (by a factor 1 + 1/(N/V - 1) at most).

Order. Slot j's stream walks its shard in a fresh permutation every epoch of
the shard; crop corners, flips and turns are drawn per (step, slot). All of
it comes from 64-bit words of `numpy.random.SeedSequence(key).generate_state`:

  shuffle      key [seed, 1, shard, epoch]: the shard's pairs sorted by one
               word each (a stable sort) give the epoch's order;
  augmentation key [seed, 2, step, slot]: four words w give the crop's top
               w0 mod (H - crop + 1) and left w1 mod (W - crop + 1), a
               left-right flip when w2 is odd, w3 mod 4 quarter turns.

SeedSequence is integer hashing only, with no floating point and no sampling
algorithm in between, whereas numpy promises a Generator's stream only within
one build; keying on the integers instead of drawing from a stream keeps every
number independent of what was drawn before. Nothing depends on what was read
before either, so a run resumed at step s sees exactly the batches an
uninterrupted run would have seen.

Decoding. Sources are random-access Python objects (`load(i) -> (blur,
sharp)` as integer HxWx3 arrays: image folders, tfds ArrayRecord files,
synthetic blur). grain maps the examples of a range of stream positions in a
pool of threads (decoders release the GIL), crops before converting to float
so that only the crop is converted, and batches in the consuming thread. No
TensorFlow here: it stays in the tfds builders.
"""

from __future__ import annotations

import collections
import functools
import os
import threading
from typing import Iterator

import numpy as np

from xydiff import images
from xydiff.errors import DataError, ImageReadError

# Distinct stream ids keep the shuffles and the augmentations independent.
_SHUFFLE_STREAM, _AUGMENT_STREAM = 1, 2
# The stream of a process has no end: grain's range needs a stop.
_END = np.iinfo(np.int64).max


def _words(*key: int, count: int) -> np.ndarray:
  """`count` uint64 words that depend on the integers `key` alone."""
  return np.random.SeedSequence(key).generate_state(count, np.uint64)


def _cores() -> int:
  if hasattr(os, 'sched_getaffinity'):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


class TrainBatches:
  """Random paired crops with optional flips and 90-degree turns; see the module docstring.

  `threads` (settable; 0, the default, means this process's cores) is the
  size of the decoding thread pool of each iterator; the batches do not
  depend on it.
  """

  def __init__(self, source, *, global_batch: int, crop: int, seed: int, flip: bool = True,
               rot90: bool = False, process_index: int = 0, process_count: int = 1,
               cache_pairs: int = 64):
    if global_batch % process_count:
      raise ValueError(f'config.train.batch_size={global_batch} is not divisible by the '
                       f'{process_count} processes')
    if not isinstance(seed, (int, np.integer)) or seed < 0:
      raise ValueError(f'config.seed must be an integer >= 0, got {seed!r}')
    if len(source) == 0:
      raise DataError('the training split holds no image pairs')
    self.source = source
    self.global_batch = global_batch
    self.local_batch = global_batch // process_count
    self.offset = process_index * self.local_batch
    self.crop, self.seed, self.flip, self.rot90 = crop, int(seed), flip, rot90
    self.num_shards = min(global_batch, len(source))
    self.threads = 0
    self._cache: collections.OrderedDict = collections.OrderedDict()
    self._cache_size = cache_pairs
    self._lock = threading.Lock()
    # The prefetched steps touch at most two epochs of each local slot's
    # shard, unless shards are tiny; a miss only costs recomputing the order.
    self._order = functools.lru_cache(maxsize=4 * self.local_batch)(self._shuffled)

  # ---------------------------------------------------------------- sharding

  def shard_of_slot(self, slot: int) -> np.ndarray:
    """The pair indices that global batch slot `slot` ever reads."""
    return np.arange(slot % self.num_shards, len(self.source), self.num_shards)

  def local_shard(self) -> np.ndarray:
    """Every pair index this process ever reads, sorted."""
    slots = range(self.offset, self.offset + self.local_batch)
    return np.unique(np.concatenate([self.shard_of_slot(j) for j in slots]))

  def _shuffled(self, shard: int, epoch: int, size: int) -> np.ndarray:
    """Positions within the shard in the order its epoch `epoch` visits them."""
    return np.argsort(_words(self.seed, _SHUFFLE_STREAM, shard, epoch, count=size),
                      kind='stable')

  def _pair_index(self, step: int, slot: int) -> int:
    """Pair index read by `slot` at `step`, without any state."""
    v, n, b = self.num_shards, len(self.source), self.global_batch
    shard = slot % v
    shard_size = (n - shard + v - 1) // v
    # Slots sharing a shard (only when B > N) interleave in its stream.
    users, rank = (b - shard + v - 1) // v, slot // v
    position = step * users + rank
    epoch, within = divmod(position, shard_size)
    return shard + v * int(self._order(shard, epoch, shard_size)[within])

  # ---------------------------------------------------------------- reading

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

  def _crop(self, index: int, top_word, left_word) -> np.ndarray:
    """The uint8 (2, crop, crop, 3) blur/sharp crop of pair `index`.

    Any failure becomes a one-line DataError (or stays an ImageReadError)
    naming the pair.
    """
    name = self.source.names[index]
    try:
      blur, sharp = self._pair(index)
      h, w = blur.shape[:2]
      if blur.shape != sharp.shape:
        raise DataError(f'{name}: blur is {w}x{h} but sharp is {sharp.shape[1]}x{sharp.shape[0]}')
      if h < self.crop or w < self.crop:
        raise DataError(f'{name} is {w}x{h}, smaller than config.data.crop={self.crop}')
      if blur.ndim != 3 or blur.shape[2] != 3:
        raise DataError(f'{name} is not an RGB image (shape {blur.shape})')
      top = int(top_word % np.uint64(h - self.crop + 1))
      left = int(left_word % np.uint64(w - self.crop + 1))
      window = (slice(top, top + self.crop), slice(left, left + self.crop))
      return np.stack([blur[window], sharp[window]])
    except (DataError, ImageReadError):
      raise
    except Exception as e:  # noqa: BLE001
      raise DataError(f'training pair {name}: {type(e).__name__}: {e}') from e

  def _example(self, position: int) -> dict[str, np.ndarray]:
    """This process's element `position`: local slot position % b of step position // b.

    Raises a one-line DataError or ImageReadError naming the pair.
    """
    step, local_slot = divmod(position, self.local_batch)
    slot = self.offset + local_slot
    w = _words(self.seed, _AUGMENT_STREAM, step, slot, count=4)
    pair = self._crop(self._pair_index(step, slot), w[0], w[1])  # Augmented together: aligned.
    if self.flip and w[2] & np.uint64(1):
      pair = pair[:, :, ::-1]
    if self.rot90:
      pair = np.rot90(pair, int(w[3] % np.uint64(4)), axes=(1, 2))
    pair = images.to_float(np.ascontiguousarray(pair))
    return {'blur': pair[0], 'sharp': pair[1]}

  def _example_or_error(self, errors: dict, position: int) -> dict[str, np.ndarray]:
    """`_example`, with a load failure stored in `errors[position]` and zeros returned.

    Raised in grain's threads, the error would reach the caller with the
    thread pool's frames and a note from grain; stored, `iterate` raises it
    as the one-line error it is.
    """
    try:
      return self._example(position)
    except (DataError, ImageReadError) as e:
      errors[position] = e
      empty = np.zeros((self.crop, self.crop, 3), np.float32)
      return {'blur': empty, 'sharp': empty}

  def dataset(self, errors: dict, start_step: int = 0, prefetch: int = 2):
    """grain.IterDataset of this process's batches for start_step, start_step + 1, ...

    Up to `prefetch` batches are decoded ahead. A pair that fails to load
    comes out as zeros and its error is stored in `errors` under its stream
    position (step * local_batch + local slot): a caller must check `errors`
    before using a batch (`iterate` does).
    """
    import grain  # Only where batches are read: evaluation never pays its import.
    b = self.local_batch
    examples = grain.MapDataset.range(start_step * b, _END).map(
        functools.partial(self._example_or_error, errors))
    options = grain.ReadOptions(num_threads=self.threads or _cores(),
                                prefetch_buffer_size=max(prefetch, 0) * b)
    return examples.to_iter_dataset(options).batch(b, drop_remainder=True)

  def iterate(self, start_step: int, prefetch: int = 2) -> Iterator[dict[str, np.ndarray]]:
    """This process's batches for start_step, start_step + 1, ...: float32 NHWC in [0, 1].

    A batch holding a pair that failed to load raises that pair's
    DataError or ImageReadError instead of being yielded.
    """
    errors = {}  # This iterator's own: other iterators of the same batches are unaffected.
    iterator = iter(self.dataset(errors, start_step, prefetch))
    end = start_step * self.local_batch
    try:
      while True:
        batch = next(iterator)
        end += self.local_batch
        # Errors of prefetched later steps wait for their own batch. A copy:
        # the threads may be adding to `errors` meanwhile.
        failed = [p for p in errors.copy() if p < end]
        if failed:
          raise errors[min(failed)]
        yield batch
    finally:
      iterator.close()  # Stops its threads now, not at garbage collection.

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's part of the global batch of `step`, read in the calling thread."""
    b = self.local_batch
    examples = [self._example(p) for p in range(step * b, (step + 1) * b)]
    return {key: np.stack([e[key] for e in examples]) for key in ('blur', 'sharp')}


def eval_count(source, max_images: int = 0) -> int:
  """How many pairs evaluation reads: the first `max_images` (0: all)."""
  return len(source) if max_images <= 0 else min(max_images, len(source))


def eval_pairs(source, max_images: int = 0):
  """(name, blur, sharp) float32 HWC in [0, 1] for the first `max_images` pairs (0: all)."""
  for index in range(eval_count(source, max_images)):
    blur, sharp = source.load(index)
    yield source.names[index], images.to_float(blur), images.to_float(sharp)
