"""Training batches as a pure function of (seed, step), and evaluation pairs.

Every random choice of step s (which pairs, where to crop, whether to flip)
comes from `np.random.default_rng([seed, s])` drawn for the whole global batch;
process p then keeps its own contiguous slice. So a resumed run sees exactly
the batches an uninterrupted run would have seen, and the global batch is the
same whatever the number of processes.
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
from typing import Iterator

import numpy as np

from xydiff import images
from xydiff.data.folders import DataError


class TrainBatches:
  """Random paired crops with optional flips and 90-degree turns."""

  def __init__(self, source, *, global_batch: int, crop: int, seed: int, flip: bool = True,
               rot90: bool = False, process_index: int = 0, process_count: int = 1,
               cache_pairs: int = 64):
    if global_batch % process_count:
      raise ValueError(f'config.train.batch_size={global_batch} is not divisible by the '
                       f'{process_count} processes')
    self.source = source
    self.global_batch = global_batch
    self.local_batch = global_batch // process_count
    self.offset = process_index * self.local_batch
    self.crop, self.seed, self.flip, self.rot90 = crop, seed, flip, rot90
    self._cache: collections.OrderedDict = collections.OrderedDict()
    self._cache_size = cache_pairs
    self._lock = threading.Lock()

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

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's part of the global batch of `step`: float32 NHWC in [0, 1]."""
    rng = np.random.default_rng([self.seed, step])
    n = self.global_batch
    indices = rng.integers(0, len(self.source), n)
    corners = rng.random((n, 2))
    flips = rng.random(n) < 0.5
    turns = rng.integers(0, 4, n)
    blurs, sharps = [], []
    for j in range(self.offset, self.offset + self.local_batch):
      blur, sharp = self._pair(int(indices[j]))
      h, w = blur.shape[:2]
      if h < self.crop or w < self.crop:
        raise DataError(f'{self.source.names[indices[j]]} is {w}x{h}, smaller than '
                        f'config.data.crop={self.crop}')
      top = int(corners[j, 0] * (h - self.crop + 1))
      left = int(corners[j, 1] * (w - self.crop + 1))
      window = (slice(top, top + self.crop), slice(left, left + self.crop))
      blur, sharp = blur[window], sharp[window]
      if self.flip and flips[j]:
        blur, sharp = blur[:, ::-1], sharp[:, ::-1]
      if self.rot90 and turns[j]:
        blur, sharp = np.rot90(blur, turns[j]), np.rot90(sharp, turns[j])
      blurs.append(images.to_float(np.ascontiguousarray(blur)))
      sharps.append(images.to_float(np.ascontiguousarray(sharp)))
    return {'blur': np.stack(blurs), 'sharp': np.stack(sharps)}

  def iterate(self, start_step: int, prefetch: int = 2) -> Iterator[dict[str, np.ndarray]]:
    """Batches for start_step, start_step + 1, ... prepared `prefetch` ahead in threads."""
    with concurrent.futures.ThreadPoolExecutor(max(prefetch, 1)) as pool:
      pending = collections.deque(pool.submit(self.batch, start_step + k)
                                  for k in range(prefetch))
      step = start_step + prefetch
      while True:
        pending.append(pool.submit(self.batch, step))
        step += 1
        yield pending.popleft().result()


def eval_pairs(source, max_images: int = 0):
  """(name, blur, sharp) float32 HWC in [0, 1] for the first `max_images` pairs (0: all)."""
  count = len(source) if max_images <= 0 else min(max_images, len(source))
  for index in range(count):
    blur, sharp = source.load(index)
    yield source.names[index], images.to_float(blur), images.to_float(sharp)
