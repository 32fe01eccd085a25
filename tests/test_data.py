"""Paired folders and training batches: layouts, errors that name files, determinism."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from conftest import GOPRO_SAMPLE, REPO
from xydiff.errors import ImageReadError
from xydiff.data import DataError, FolderPairs, TrainBatches, eval_pairs


def _write(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path)


def _fake_pair(rng, h=24, w=40):
  sharp = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  return np.clip(sharp.astype(int) + 10, 0, 255).astype(np.uint8), sharp


@pytest.fixture
def gopro_tree(tmp_path):
  rng = np.random.default_rng(0)
  for seq, frames in (('GOPR0001_00_00', ('000001', '000002')), ('GOPR0002_00_00', ('000007',))):
    for frame in frames:
      blur, sharp = _fake_pair(rng)
      _write(str(tmp_path / 'train' / seq / 'blur' / f'{frame}.png'), blur)
      _write(str(tmp_path / 'train' / seq / 'sharp' / f'{frame}.png'), sharp)
  return tmp_path


def test_gopro_layout_pairs_by_name(gopro_tree):
  source = FolderPairs(str(gopro_tree), 'train')
  assert source.names == ['GOPR0001_00_00/000001', 'GOPR0001_00_00/000002',
                          'GOPR0002_00_00/000007']
  blur, sharp = source.load(2)
  assert blur.dtype == np.uint8 and blur.shape == sharp.shape == (24, 40, 3)
  assert (blur.astype(int) >= sharp).all()


def test_flat_layout(tmp_path):
  rng = np.random.default_rng(0)
  for name in ('b', 'a'):
    blur, sharp = _fake_pair(rng)
    _write(str(tmp_path / 'test' / 'blur' / f'{name}.png'), blur)
    _write(str(tmp_path / 'test' / 'sharp' / f'{name}.png'), sharp)
  assert FolderPairs(str(tmp_path), 'test').names == ['a', 'b']


def test_real_gopro_sample_frames():
  source = FolderPairs(str(GOPRO_SAMPLE), 'train')
  assert len(source) == 4
  blur, sharp = source.load(0)
  assert blur.shape == (720, 1280, 3)
  assert len(FolderPairs(str(GOPRO_SAMPLE), 'test')) == 2


def test_missing_partner_names_the_file(gopro_tree):
  os.remove(gopro_tree / 'train' / 'GOPR0002_00_00' / 'sharp' / '000007.png')
  with pytest.raises(DataError, match=r'GOPR0002_00_00/blur/000007\.png has no partner'):
    FolderPairs(str(gopro_tree), 'train')


def test_missing_split_names_the_folder(gopro_tree):
  with pytest.raises(DataError, match='test does not exist'):
    FolderPairs(str(gopro_tree), 'test')


def test_unreadable_and_truncated_files_are_named(gopro_tree):
  path = gopro_tree / 'train' / 'GOPR0001_00_00' / 'sharp' / '000002.png'
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  source = FolderPairs(str(gopro_tree), 'train')
  with pytest.raises(ImageReadError, match='000002.png'):
    source.load(1)
  path.write_bytes(b'not a png at all')
  with pytest.raises(ImageReadError, match='000002.png'):
    source.load(1)


def test_size_mismatch_names_both_files(gopro_tree):
  rng = np.random.default_rng(1)
  _write(str(gopro_tree / 'train' / 'GOPR0001_00_00' / 'sharp' / '000001.png'),
         rng.integers(0, 256, (20, 40, 3), dtype=np.uint8))
  source = FolderPairs(str(gopro_tree), 'train')
  with pytest.raises(DataError, match=r'000001\.png is 40x24 but its partner .*000001\.png is 40x20'):
    source.load(0)


def test_batches_are_a_function_of_seed_and_step(gopro_tree):
  source = FolderPairs(str(gopro_tree), 'train')
  make = lambda seed: TrainBatches(source, global_batch=4, crop=16, seed=seed)
  a, b = make(0), make(0)
  np.testing.assert_array_equal(a.batch(5)['blur'], b.batch(5)['blur'])
  assert not np.array_equal(a.batch(5)['blur'], a.batch(6)['blur'])
  assert not np.array_equal(a.batch(5)['blur'], make(1).batch(5)['blur'])
  # The prefetching iterator yields exactly batch(step) from any start step.
  it = a.iterate(3)
  for step in (3, 4, 5):
    np.testing.assert_array_equal(next(it)['sharp'], a.batch(step)['sharp'])


def test_processes_split_the_global_batch(gopro_tree):
  source = FolderPairs(str(gopro_tree), 'train')
  whole = TrainBatches(source, global_batch=4, crop=16, seed=3).batch(2)
  parts = [TrainBatches(source, global_batch=4, crop=16, seed=3, process_index=p,
                        process_count=2).batch(2) for p in range(2)]
  np.testing.assert_array_equal(np.concatenate([p['blur'] for p in parts]), whole['blur'])
  with pytest.raises(ValueError, match='batch_size=3 is not divisible by the 2 processes'):
    TrainBatches(source, global_batch=3, crop=16, seed=0, process_count=2)


class _IndexedPairs:
  """A source whose pair i is filled with the value i, recording what is read."""

  def __init__(self, count, size=20):
    self.names = [f'pair_{i}' for i in range(count)]
    self.size = size
    self.loaded = []

  def __len__(self):
    return len(self.names)

  def load(self, i):
    self.loaded.append(i)
    image = np.full((self.size, self.size, 3), i, np.uint8)
    return image, image


def _indices(batch):
  return np.round(batch['blur'][:, 0, 0, 0] * 255).astype(int).tolist()


def test_each_process_reads_a_fixed_disjoint_shard_and_each_slot_walks_it_per_epoch():
  num_pairs, global_batch = 22, 4
  shards = []
  for p in range(2):
    source = _IndexedPairs(num_pairs)
    batches = TrainBatches(source, global_batch=global_batch, crop=8, seed=7, process_index=p,
                           process_count=2, cache_pairs=1)
    # Two epochs of the largest shard (22 pairs over 4 slots: shards of 6, 6, 5, 5).
    seen = np.array([_indices(b) for b, _ in zip(batches.iterate(0), range(12))])
    assert set(source.loaded) == set(batches.local_shard().tolist())
    for local_slot in range(2):
      shard = batches.shard_of_slot(p * 2 + local_slot).tolist()
      size = len(shard)
      stream = seen[:, local_slot]
      # Every epoch of the shard visits each of its pairs once, in a new order.
      assert sorted(stream[:size]) == shard and sorted(stream[size:2 * size]) == shard
      assert stream[:size].tolist() != stream[size:2 * size].tolist()
    shards.append(set(batches.local_shard().tolist()))
  assert not shards[0] & shards[1]
  assert shards[0] | shards[1] == set(range(num_pairs))


def test_more_slots_than_pairs_still_reads_every_pair_each_step():
  batches = TrainBatches(_IndexedPairs(3), global_batch=6, crop=8, seed=0)
  for step in (0, 1, 5):
    assert sorted(_indices(batches.batch(step))) == [0, 0, 1, 1, 2, 2]


def test_a_pair_that_fails_to_load_is_named_and_only_its_iterator_stops():
  source = _IndexedPairs(4)
  good_load = source.load

  def failing_load(i):
    raise ValueError('boom')
  source.load = failing_load
  batches = TrainBatches(source, global_batch=2, crop=8, seed=0, cache_pairs=1)
  with pytest.raises(DataError, match=r'^training pair pair_\d: ValueError: boom$'):
    batches.batch(0)
  with pytest.raises(DataError, match=r'^training pair pair_\d: ValueError: boom$') as raised:
    next(batches.iterate(0))
  # The error itself, not grain's re-raise of it from a worker thread.
  assert not getattr(raised.value, '__notes__', None)
  source.load = good_load  # The file is fixed: a new iterator reads it.
  assert len(_indices(batches.batch(0))) == 2
  assert len(_indices(next(batches.iterate(0)))) == 2


def test_a_bad_pair_stops_the_iterator_at_the_batch_that_reads_it():
  source = _IndexedPairs(6)
  batches = TrainBatches(source, global_batch=2, crop=8, seed=1, cache_pairs=0)
  good = [_indices(b) for b, _ in zip(batches.iterate(0), range(8))]
  bad_step = next(s for s, indices in enumerate(good) if 5 in indices)
  assert bad_step >= 1  # Else the test would not show that earlier batches still come.
  good_load = source.load

  def load(i):
    if i == 5:
      raise DataError('pair_5.png is truncated')
    time.sleep(0.05)  # The bad pair fails while the batches before it are still loading.
    return good_load(i)
  source.load = load
  batches.threads = 4
  it = batches.iterate(0, prefetch=4)  # Reads the bad pair before step 0 is yielded.
  for step in range(bad_step):
    assert _indices(next(it)) == good[step]
  with pytest.raises(DataError, match=r'^pair_5\.png is truncated$'):
    next(it)


def test_an_unreadable_image_reaches_the_caller_as_the_read_error_naming_it(gopro_tree):
  path = gopro_tree / 'train' / 'GOPR0002_00_00' / 'blur' / '000007.png'
  path.write_bytes(b'not a png at all')
  batches = TrainBatches(FolderPairs(str(gopro_tree), 'train'), global_batch=3, crop=16, seed=0)
  with pytest.raises(ImageReadError, match=r'000007\.png'):
    next(batches.iterate(0))


def test_the_stream_is_the_documented_function_of_seed_step_and_slot():
  """Pins the derivation in pipeline.py's docstring: changing it breaks resuming old runs."""

  class Coordinates(_IndexedPairs):
    """Pixel (y, x) of pair i holds (i, y, x), so a crop's corner tells where it came from."""

    def load(self, i):
      y, x = np.mgrid[:self.size, :self.size]
      image = np.stack([np.full_like(y, i), y, x], axis=-1).astype(np.uint8)
      return image, image

  num_pairs, global_batch, crop, seed, size = 12, 4, 8, 5, 20
  words = lambda *key, count: np.random.SeedSequence(key).generate_state(count, np.uint64)
  shard_size = num_pairs // global_batch
  for flip in (False, True):
    batches = TrainBatches(Coordinates(num_pairs, size), global_batch=global_batch, crop=crop,
                           seed=seed, flip=flip)
    for step in (0, 2, 7):
      corner = np.round(batches.batch(step)['blur'][:, 0, 0] * 255).astype(int)
      for slot in range(global_batch):
        epoch, within = divmod(step, shard_size)
        order = np.argsort(words(seed, 1, slot, epoch, count=shard_size), kind='stable')
        w = [int(v) for v in words(seed, 2, step, slot, count=4)]
        top, left = w[0] % (size - crop + 1), w[1] % (size - crop + 1)
        if flip and w[2] % 2:
          left += crop - 1
        assert corner[slot].tolist() == [slot + global_batch * order[within], top, left]


def test_batches_do_not_depend_on_threads_or_prefetch(gopro_tree):
  source = FolderPairs(str(gopro_tree), 'train')
  batches = TrainBatches(source, global_batch=4, crop=16, seed=2, rot90=True, cache_pairs=0)
  streams = []
  for threads, prefetch in ((1, 0), (3, 3)):
    batches.threads = threads
    streams.append([b['sharp'] for b, _ in zip(batches.iterate(1, prefetch=prefetch), range(4))])
  for a, b in zip(*streams):
    np.testing.assert_array_equal(a, b)


def test_the_pipeline_does_not_import_tensorflow(gopro_tree):
  script = ('import sys; from xydiff.data import FolderPairs, TrainBatches; '
            f'b = TrainBatches(FolderPairs({str(gopro_tree)!r}, "train"), global_batch=2, '
            'crop=16, seed=0); next(b.iterate(0)); b.batch(1); '
            'print(sorted(m for m in sys.modules if m.split(".")[0] == "tensorflow"))')
  done = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                        check=False, cwd=REPO, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.strip().splitlines()[-1] == '[]'


def test_crops_stay_paired_and_in_range(gopro_tree):
  source = FolderPairs(str(gopro_tree), 'train')
  batches = TrainBatches(source, global_batch=8, crop=16, seed=0, flip=True, rot90=True)
  batch = batches.batch(0)
  assert batch['blur'].shape == (8, 16, 16, 3) and batch['blur'].dtype == np.float32
  assert 0.0 <= batch['blur'].min() and batch['blur'].max() <= 1.0
  # The fake blur is sharp + 10 levels (clipped), so pairing survives crop/flip/turn.
  diff = np.round((batch['blur'] - batch['sharp']) * 255)
  assert ((diff == 10) | (batch['blur'] == 1.0)).all()


def test_crop_larger_than_the_image_names_it(gopro_tree):
  source = FolderPairs(str(gopro_tree), 'train')
  with pytest.raises(DataError, match='smaller than config.data.crop=32'):
    TrainBatches(source, global_batch=2, crop=32, seed=0).batch(0)


def test_eval_pairs_are_whole_images(gopro_tree):
  source = FolderPairs(str(gopro_tree), 'train')
  pairs = list(eval_pairs(source, max_images=2))
  assert [p[0] for p in pairs] == source.names[:2]
  assert pairs[0][1].shape == (24, 40, 3) and pairs[0][1].dtype == np.float32
