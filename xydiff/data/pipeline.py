"""Training batches on tf.data, as a pure function of (seed, step); evaluation pairs.

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
the shard (`tf.random.experimental.index_shuffle`, seeded by (seed, shard,
epoch)); crop corners, flips and turns come from stateless random numbers
seeded by (seed, step, slot). Nothing depends on what was read before, so a
run resumed at step s sees exactly the batches an uninterrupted run would
have seen.

Decoding. Sources are random-access Python objects (`load(i) -> (blur,
sharp)` as integer HxWx3 arrays: image folders, tfds ArrayRecord files,
synthetic blur). tf.data calls them in parallel through `tf.numpy_function`,
crops there (so only the crop is converted to float), and does the rest in
the graph. TensorFlow is kept off accelerators before its first op.
"""

from __future__ import annotations

import collections
import threading
from typing import Iterator

import numpy as np

from xydiff import images, tf_guard
from xydiff.errors import DataError, ImageReadError

# Distinct stream ids keep the shuffles and the augmentations independent.
_SHUFFLE_STREAM, _AUGMENT_STREAM = 1, 2


class TrainBatches:
  """Random paired crops with optional flips and 90-degree turns; see the module docstring."""

  def __init__(self, source, *, global_batch: int, crop: int, seed: int, flip: bool = True,
               rot90: bool = False, process_index: int = 0, process_count: int = 1,
               cache_pairs: int = 64):
    if global_batch % process_count:
      raise ValueError(f'config.train.batch_size={global_batch} is not divisible by the '
                       f'{process_count} processes')
    if len(source) == 0:
      raise DataError('the training split holds no image pairs')
    self.source = source
    self.global_batch = global_batch
    self.local_batch = global_batch // process_count
    self.offset = process_index * self.local_batch
    self.crop, self.seed, self.flip, self.rot90 = crop, seed, flip, rot90
    self.num_shards = min(global_batch, len(source))
    self._cache: collections.OrderedDict = collections.OrderedDict()
    self._cache_size = cache_pairs
    self._lock = threading.Lock()

  # ---------------------------------------------------------------- sharding

  def shard_of_slot(self, slot: int) -> np.ndarray:
    """The pair indices that global batch slot `slot` ever reads."""
    return np.arange(slot % self.num_shards, len(self.source), self.num_shards)

  def local_shard(self) -> np.ndarray:
    """Every pair index this process ever reads, sorted."""
    slots = range(self.offset, self.offset + self.local_batch)
    return np.unique(np.concatenate([self.shard_of_slot(j) for j in slots]))

  def _pair_index(self, tf, step, slot):
    """Pair index read by `slot` at `step` (int64 tensors), without any state."""
    v, n, b = self.num_shards, len(self.source), self.global_batch
    shard = slot % v
    shard_size = (n - shard + v - 1) // v
    # Slots sharing a shard (only when B > N) interleave in its stream.
    users, rank = (b - shard + v - 1) // v, slot // v
    position = step * users + rank
    epoch = position // shard_size
    seed = tf.random.experimental.stateless_fold_in(
        tf.random.experimental.stateless_fold_in(
            tf.constant([self.seed, _SHUFFLE_STREAM], tf.int64), shard), epoch)
    within = tf.random.experimental.index_shuffle(position % shard_size, seed, shard_size - 1)
    return shard + v * within

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

  def _load_crop(self, index, corner, errors: list):
    """numpy side: the crop of pair `index` at fractional corner `corner`, as float32.

    A failure is appended to `errors` (the iterator's own list) and raised by
    `iterate` as a one-line error naming the pair; raising here would only
    give a TF error with a traceback in its message. The placeholder returned
    instead is never yielded.
    """
    index = int(index)
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
      top = int(corner[0] * (h - self.crop + 1))
      left = int(corner[1] * (w - self.crop + 1))
      window = (slice(top, top + self.crop), slice(left, left + self.crop))
      return images.to_float(blur[window]), images.to_float(sharp[window])
    except Exception as e:  # noqa: BLE001
      if not isinstance(e, (DataError, ImageReadError)):
        e = DataError(f'training pair {name}: {type(e).__name__}: {e}')
      errors.append(e)
      empty = np.zeros((self.crop, self.crop, 3), np.float32)
      return empty, empty

  def _example(self, tf, position, errors):
    step = position // self.local_batch
    slot = self.offset + position % self.local_batch
    index = self._pair_index(tf, step, slot)
    seed = tf.random.experimental.stateless_fold_in(
        tf.random.experimental.stateless_fold_in(
            tf.constant([self.seed, _AUGMENT_STREAM], tf.int64), step), slot)
    uniforms = tf.random.stateless_uniform([4], seed, dtype=tf.float32)
    blur, sharp = tf.numpy_function(lambda i, c: self._load_crop(i, c, errors),
                                    [index, uniforms[:2]], [tf.float32, tf.float32],
                                    stateful=False)
    pair = tf.stack([blur, sharp])  # Augmented together: they stay aligned.
    if self.flip:
      pair = tf.where(uniforms[2] < 0.5, tf.reverse(pair, axis=[2]), pair)
    if self.rot90:
      turns = tf.cast(tf.math.floor(uniforms[3] * 4.0), tf.int32)
      pair = tf.image.rot90(pair, turns)
    pair = tf.ensure_shape(pair, [2, self.crop, self.crop, 3])
    return {'blur': pair[0], 'sharp': pair[1]}

  def dataset(self, errors: list, start_step: int = 0, prefetch: int = 2):
    """tf.data.Dataset of this process's batches for start_step, start_step + 1, ...

    Pairs that fail to load are appended to `errors` and come out as zeros: a
    caller must check `errors` before using a batch (`iterate` does).
    """
    tf = tf_guard.keep_tensorflow_off_accelerators()
    b = self.local_batch
    positions = tf.data.Dataset.range(start_step * b, np.iinfo(np.int64).max)
    ds = positions.map(lambda p: self._example(tf, p, errors),
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(b, drop_remainder=True).prefetch(prefetch)
    options = tf.data.Options()
    options.deterministic = True
    # XLA owns the cores; TF's own ops here are tiny.
    options.threading.max_intra_op_parallelism = 1
    return ds.with_options(options)

  def iterate(self, start_step: int, prefetch: int = 2) -> Iterator[dict[str, np.ndarray]]:
    """This process's batches for start_step, start_step + 1, ...: float32 NHWC in [0, 1]."""
    tf = tf_guard.keep_tensorflow_off_accelerators()
    errors = []  # This iterator's own: other iterators of the same batches are unaffected.
    iterator = self.dataset(errors, start_step, prefetch).as_numpy_iterator()
    while True:
      try:
        batch = next(iterator)
      except tf.errors.OpError as e:
        raise DataError(f'reading training pairs failed: {e.message.splitlines()[0]}') from e
      if errors:  # Possibly a prefetched later step's: the data is bad either way.
        raise errors[0]
      yield batch

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's part of the global batch of `step`."""
    return next(self.iterate(step, prefetch=1))


def eval_pairs(source, max_images: int = 0):
  """(name, blur, sharp) float32 HWC in [0, 1] for the first `max_images` pairs (0: all)."""
  count = len(source) if max_images <= 0 else min(max_images, len(source))
  for index in range(count):
    blur, sharp = source.load(index)
    yield source.names[index], images.to_float(blur), images.to_float(sharp)
