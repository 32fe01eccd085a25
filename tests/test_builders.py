"""tfds builders of the deblurring benchmarks: layouts, errors, reuse, pixels.

Every builder is prepared from a tiny fake tree laid out exactly like its real
archive, and gopro also from the real GoPro sample frames, so a wrong path
convention fails here rather than after a user has unpacked gigabytes.
"""

import json
import os
import re
import shutil
import zlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import GOPRO_SAMPLE
from xydiff import images
from xydiff.data import builders
from xydiff.errors import DataError

H, W = 16, 24


def _raises(message: str, *, at_end: bool = False):
  """pytest.raises(DataError) for a message holding `message` literally (paths have dots)."""
  return pytest.raises(DataError, match=re.escape(message) + ('$' if at_end else ''))


def _pixels(key: str) -> np.ndarray:
  """A distinct, reproducible 16x24 RGB image per file."""
  return np.random.default_rng(zlib.crc32(key.encode())).integers(
      0, 256, (H, W, 3), dtype=np.uint8)


def _write(path, image=None) -> np.ndarray:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image = _pixels(str(path)) if image is None else image
  images.write_png(str(path), image)
  return image


def _assert_source_matches_files(source, expected):
  """`expected`: name -> (blur path, sharp path), in the source's order."""
  assert source.names == list(expected)
  assert len(source) == len(expected)
  for index, (blur_path, sharp_path) in enumerate(expected.values()):
    blur, sharp = source.load(index)
    assert blur.dtype == np.uint8 and blur.shape[-1] == 3
    np.testing.assert_array_equal(blur, images.read_image(str(blur_path)))
    np.testing.assert_array_equal(sharp, images.read_image(str(sharp_path)))


def _raw_records(name, data_dir, split, config_name=None):
  """Undecoded examples of a prepared split, read through tfds's own data source."""
  builder = builders.make_builder(name, data_dir, config_name)
  return builder.as_data_source(split, decoders={'blur': tfds.decode.SkipDecoding(),
                                                 'sharp': tfds.decode.SkipDecoding()})


# GoPro -------------------------------------------------------------------------------------

def _gopro_tree(root):
  """GOPRO_Large: <split>/<sequence>/{blur,blur_gamma,sharp}/<frame>.png."""
  layout = {'train': {'GOPR0372_07_00': ['000047', '000048'], 'GOPR0374_11_00': ['000001']},
            'test': {'GOPR0384_11_00': ['000001', '000002']}}
  for split, sequences in layout.items():
    for sequence, frames in sequences.items():
      for frame in frames:
        for folder in ('blur', 'blur_gamma', 'sharp'):
          _write(root / split / sequence / folder / f'{frame}.png')
  return layout


def _gopro_expected(root, split, blur_folder='blur'):
  expected = {}
  for sequence in sorted(os.listdir(root / split)):
    for frame in sorted(os.listdir(root / split / sequence / 'sharp')):
      stem = frame[:-4]
      expected[f'{sequence}/{stem}'] = (root / split / sequence / blur_folder / frame,
                                        root / split / sequence / 'sharp' / frame)
  return expected


@pytest.mark.parametrize('config_name, blur_folder', [(None, 'blur'), ('blur', 'blur'),
                                                      ('blur_gamma', 'blur_gamma')])
def test_gopro_fake_tree(tmp_path, config_name, blur_folder):
  root = tmp_path / 'GOPRO_Large'
  _gopro_tree(root)
  for split, count in (('train', 3), ('test', 2)):
    source = builders.build_source('gopro', root, tmp_path / 'records', split, config_name)
    assert len(source) == count
    _assert_source_matches_files(source, _gopro_expected(root, split, blur_folder))
  records = _raw_records('gopro', tmp_path / 'records', 'train', config_name)
  assert [(r['sequence'], r['frame']) for r in records] == [
      (b'GOPR0372_07_00', b'000047'), (b'GOPR0372_07_00', b'000048'),
      (b'GOPR0374_11_00', b'000001')]
  # The archive's PNG bytes are stored as they are, not decoded and re-encoded.
  path = root / 'train' / 'GOPR0374_11_00' / blur_folder / '000001.png'
  assert records[2]['blur'] == path.read_bytes()


def test_gopro_accepts_the_folder_holding_gopro_large(tmp_path):
  _gopro_tree(tmp_path / 'data' / 'GOPRO_Large')
  source = builders.build_source('gopro', tmp_path / 'data', tmp_path / 'records', 'test')
  assert source.names == ['GOPR0384_11_00/000001', 'GOPR0384_11_00/000002']


def test_gopro_real_sample_frames(tmp_path):
  records = tmp_path / 'records'
  train = builders.build_source('gopro', GOPRO_SAMPLE, records, 'train')
  test = builders.build_source('gopro', GOPRO_SAMPLE, records, 'test')
  assert train.storage == 'array_record'
  assert train.names == [f'GOPR0372_07_00/0000{n}' for n in (47, 48, 49, 50)]
  assert test.names == ['GOPR0869_11_00/000020', 'GOPR0881_11_01/000295']
  _assert_source_matches_files(train, _gopro_expected(GOPRO_SAMPLE, 'train'))
  _assert_source_matches_files(test, _gopro_expected(GOPRO_SAMPLE, 'test'))
  assert train.load(0)[0].shape == (720, 1280, 3)


def test_gopro_real_sample_has_no_blur_gamma(tmp_path):
  missing = GOPRO_SAMPLE / 'train' / 'GOPR0372_07_00' / 'blur_gamma'
  with _raises(f'missing folder {missing}', at_end=True):
    builders.build_source('gopro', GOPRO_SAMPLE, tmp_path / 'records', 'train', 'blur_gamma')
  assert not (tmp_path / 'records').exists()  # Failed before tfds wrote anything.


@pytest.mark.parametrize('damage, message', [
    (lambda root: shutil.rmtree(root / 'test'), 'missing folder {root}/test'),
    (lambda root: shutil.rmtree(root / 'train' / 'GOPR0374_11_00' / 'sharp'),
     'missing folder {root}/train/GOPR0374_11_00/sharp'),
    (lambda root: os.remove(root / 'test' / 'GOPR0384_11_00' / 'sharp' / '000002.png'),
     '{root}/test/GOPR0384_11_00/blur/000002.png has no partner in '
     '{root}/test/GOPR0384_11_00/sharp'),
    (shutil.rmtree, 'missing folder {root} (manual_dir of gopro).\nDownload GOPRO_Large.zip'),
])
def test_gopro_incomplete_tree_names_the_path(tmp_path, damage, message):
  root = tmp_path / 'GOPRO_Large'
  _gopro_tree(root)
  damage(root)
  with _raises(message.format(root=root), at_end='Download' not in message):
    builders.build_source('gopro', root, tmp_path / 'records', 'train')
  assert not (tmp_path / 'records').exists()


def test_missing_manual_dir_explains_where_to_get_the_data(tmp_path):
  with _raises("Seungjun Nah's GoPro dataset page"):
    builders.build_source('gopro', '', tmp_path / 'records', 'train')
  with _raises('GitHub page of the HIDE'):
    builders.build_source('hide', tmp_path / 'nowhere', tmp_path / 'records', 'test')
  for name in ('gopro', 'hide', 'realblur_j', 'realblur_r', 'prepared'):
    assert 'manual_dir' in builders.BUILDERS[name].MANUAL_DOWNLOAD_INSTRUCTIONS
  assert 'RealBlur project page' in builders.RealblurJ.MANUAL_DOWNLOAD_INSTRUCTIONS
  assert 'RealBlur_R_test_list.txt' in builders.RealblurR.MANUAL_DOWNLOAD_INSTRUCTIONS


def test_second_build_reuses_the_records(tmp_path, monkeypatch):
  root = tmp_path / 'GOPRO_Large'
  _gopro_tree(root)
  records = tmp_path / 'records'
  calls = []
  original = builders.PairedImageBuilder._generate_examples

  def counting(self, pairs):
    calls.append(len(pairs))
    return original(self, pairs)

  monkeypatch.setattr(builders.PairedImageBuilder, '_generate_examples', counting)
  first = builders.build_source('gopro', root, records, 'train')
  assert sorted(calls) == [2, 3]
  files = sorted((records / 'gopro' / 'blur' / '1.0.0').iterdir())
  mtimes = [f.stat().st_mtime_ns for f in files]
  shutil.rmtree(root)  # Prepared records no longer need the archive.
  second = builders.build_source('gopro', root, records, 'train')
  assert sorted(calls) == [2, 3]
  assert sorted((records / 'gopro' / 'blur' / '1.0.0').iterdir()) == files
  assert [f.stat().st_mtime_ns for f in files] == mtimes
  assert second.names == first.names
  np.testing.assert_array_equal(second.load(1)[1], first.load(1)[1])
  assert not builders.prepare(builders.make_builder('gopro', records), None)


def test_concurrent_preparations_share_the_first_finished_records(tmp_path, monkeypatch):
  """Hosts of a multi-host run may prepare the same records at once on a shared disk."""
  root = tmp_path / 'GOPRO_Large'
  _gopro_tree(root)
  records = tmp_path / 'records'
  loser = builders.make_builder('gopro', records)
  original = builders.PairedImageBuilder._split_generators
  winner = []

  def race(self, dl_manager):
    if self is loser:  # The other process finishes while this one generates.
      winner.append(builders.make_builder('gopro', records))
      assert builders.prepare(winner[0], root)
    return original(self, dl_manager)

  monkeypatch.setattr(builders.PairedImageBuilder, '_split_generators', race)
  assert not builders.prepare(loser, root)
  assert len(winner) == 1
  assert not [p for p in (records / 'gopro' / 'blur').iterdir() if 'incomplete' in p.name]
  source = builders.build_source('gopro', None, records, 'test')
  _assert_source_matches_files(source, _gopro_expected(root, 'test'))


def test_splits_over_tfds_memory_limit_keep_order_and_spread_over_buckets(tmp_path,
                                                                         monkeypatch):
  """Past 1 GB tfds spills examples into key-range buckets, sorting one at a time.

  The order must survive, and the split must spread over the buckets: with
  keys 0, 1, 2, ... all of GoPro train would sit in bucket 0, in memory.
  """
  from tensorflow_datasets.core import shuffle
  monkeypatch.setattr(shuffle, 'MAX_MEM_BUFFER_SIZE', 0)
  buckets = []
  original = shuffle.get_bucket_number

  def spy(hkey, num_buckets, max_hkey=None):
    bucket = original(hkey, num_buckets, max_hkey)
    if num_buckets == shuffle.BUCKETS_NUMBER:
      buckets.append(bucket)
    return bucket

  monkeypatch.setattr(shuffle, 'get_bucket_number', spy)
  root = tmp_path / 'GOPRO_Large'
  _gopro_tree(root)
  source = builders.build_source('gopro', root, tmp_path / 'records', 'train')
  assert sorted(buckets) == [0, 0, 333, 500, 666]  # train: 3 pairs, test: 2.
  _assert_source_matches_files(source, _gopro_expected(root, 'train'))


# HIDE --------------------------------------------------------------------------------------

def _hide_tree(hide_root):
  """HIDE_dataset: GT/ (train and test sharp), test/{test-close-ups,test-long-shot}/."""
  subsets = {'test-close-ups': ['10fromGOPR1092', '2fromGOPR1096'],
             'test-long-shot': ['1fromGOPR0950', '3fromGOPR0981', '5fromGOPR0981']}
  for folder, stems in subsets.items():
    for stem in stems:
      _write(hide_root / 'test' / folder / f'{stem}.png')
      _write(hide_root / 'GT' / f'{stem}.png')
  _write(hide_root / 'GT' / '7fromGOPR0372.png')  # Sharp frame of a training pair.
  _write(hide_root / 'train' / '7fromGOPR0372.png')
  return subsets


@pytest.mark.parametrize('manual_is_dataset_folder', [False, True])
def test_hide_fake_tree(tmp_path, manual_is_dataset_folder):
  hide_root = tmp_path / 'hide' / 'HIDE_dataset'
  subsets = _hide_tree(hide_root)
  manual_dir = hide_root if manual_is_dataset_folder else hide_root.parent
  records = tmp_path / 'records'
  expected = {}
  for split, folder in (('test_close_ups', 'test-close-ups'),
                        ('test_long_shot', 'test-long-shot')):
    subset = {f'{folder}/{stem}': (hide_root / 'test' / folder / f'{stem}.png',
                                   hide_root / 'GT' / f'{stem}.png')
              for stem in sorted(subsets[folder])}
    source = builders.build_source('hide', manual_dir, records, split)
    _assert_source_matches_files(source, subset)
    expected.update(subset)
  test = builders.build_source('hide', manual_dir, records, 'test')
  assert len(test) == 5
  _assert_source_matches_files(test, expected)
  stored = builders.make_builder('hide', records).info.splits
  assert sorted(stored) == ['test_close_ups', 'test_long_shot']  # 'test' is not a third copy.
  with _raises("no split 'train'"):
    builders.build_source('hide', manual_dir, records, 'train')


def test_hide_incomplete_tree_names_the_path(tmp_path):
  hide_root = tmp_path / 'HIDE_dataset'
  _hide_tree(hide_root)
  os.remove(hide_root / 'GT' / '3fromGOPR0981.png')
  blur = hide_root / 'test' / 'test-long-shot' / '3fromGOPR0981.png'
  with _raises(f'{blur} has no partner in {hide_root / "GT"}', at_end=True):
    builders.build_source('hide', tmp_path, tmp_path / 'records', 'test')
  shutil.rmtree(hide_root / 'test' / 'test-long-shot')
  with _raises(f'missing folder {hide_root}/test/test-long-shot', at_end=True):
    builders.build_source('hide', tmp_path, tmp_path / 'records', 'test')
  shutil.rmtree(hide_root / 'GT')
  with _raises(f'missing folder {hide_root}/GT '):
    builders.build_source('hide', tmp_path, tmp_path / 'records', 'test')
  assert not (tmp_path / 'records').exists()


# RealBlur ----------------------------------------------------------------------------------

_REALBLUR_FOLDERS = {'j': ('J', 'RealBlur-J_ECC_IMCORR_centroid_itensity_ref'),
                     'r': ('R', 'RealBlur-R_BM3D_ECC_IMCORR_centroid_itensity_ref')}


def _realblur_tree(root, variant):
  """The extracted archive: list files beside the image folder, paths relative to root."""
  letter, folder = _REALBLUR_FOLDERS[variant]
  splits = {'train': [('scene003', 1), ('scene003', 2), ('scene001', 10)],
            'test': [('scene230', 1), ('scene229', 7)]}
  for split, pairs in splits.items():
    lines = []
    for scene, m in pairs:
      gt = f'{folder}/{scene}/gt/gt_{m}.png'
      blur = f'{folder}/{scene}/blur/blur_{m}.png'
      _write(root / gt)
      _write(root / blur)
      lines.append(f'{gt} {blur}\n')
    (root / f'RealBlur_{letter}_{split}_list.txt').write_text(''.join(lines) + '\n')
  return splits


@pytest.mark.parametrize('variant', ['j', 'r'])
def test_realblur_fake_tree(tmp_path, variant):
  root = tmp_path / 'RealBlur'
  splits = _realblur_tree(root, variant)
  folder = _REALBLUR_FOLDERS[variant][1]
  for split, pairs in splits.items():
    source = builders.build_source(f'realblur_{variant}', root, tmp_path / 'records', split)
    # The authors' list order, not sorted: scene003 before scene001.
    expected = {f'{scene}/blur_{m}': (root / folder / scene / 'blur' / f'blur_{m}.png',
                                      root / folder / scene / 'gt' / f'gt_{m}.png')
                for scene, m in pairs}
    _assert_source_matches_files(source, expected)
  records = _raw_records(f'realblur_{variant}', tmp_path / 'records', 'test')
  assert (records[1]['sequence'], records[1]['frame']) == (b'scene229', b'blur_7')


def test_realblur_list_naming_a_missing_image_fails_naming_it(tmp_path):
  root = tmp_path / 'RealBlur'
  _realblur_tree(root, 'j')
  folder = _REALBLUR_FOLDERS['j'][1]
  missing = root / folder / 'scene229' / 'blur' / 'blur_7.png'
  os.remove(missing)
  list_file = root / 'RealBlur_J_test_list.txt'
  with _raises(f'missing image {missing} (line 2 of {list_file})', at_end=True):
    builders.build_source('realblur_j', root, tmp_path / 'records', 'test')
  assert not (tmp_path / 'records').exists()


def test_realblur_incomplete_tree_names_the_path(tmp_path):
  root = tmp_path / 'RealBlur'
  _realblur_tree(root, 'r')
  list_file = root / 'RealBlur_R_train_list.txt'
  list_file.write_text(list_file.read_text() + 'only_one_path.png\n')
  with _raises(f'line 5 of {list_file} should be "gt_path blur_path"'):
    builders.build_source('realblur_r', root, tmp_path / 'records', 'test')
  os.remove(list_file)
  with _raises(f'missing list file {list_file}', at_end=True):
    builders.build_source('realblur_r', root, tmp_path / 'records', 'test')
  # RealBlur-J's files are not RealBlur-R's.
  with _raises(f'missing folder {root}/{_REALBLUR_FOLDERS["j"][1]}', at_end=True):
    builders.build_source('realblur_j', root, tmp_path / 'records', 'test')


# Prepared test sets (MPRNet / Restormer / HI-Diff) -----------------------------------------

_PREPARED_FOLDERS = {'gopro': 'GoPro', 'hide': 'HIDE', 'realblur_j': 'RealBlur_J',
                     'realblur_r': 'RealBlur_R'}


def _prepared_tree(root, folder, stems):
  for stem in stems:
    _write(root / 'test' / folder / 'input' / f'{stem}.png')
    _write(root / 'test' / folder / 'target' / f'{stem}.png')


@pytest.mark.parametrize('config_name', sorted(_PREPARED_FOLDERS))
def test_prepared_fake_tree(tmp_path, config_name):
  root = tmp_path / 'Datasets'
  stems = ['scene230-1', 'GOPR0384_11_00-000001', 'b']
  _prepared_tree(root, _PREPARED_FOLDERS[config_name], stems)
  _prepared_tree(root, 'Other', ['x'])  # Other test sets are not read.
  source = builders.build_source('prepared', root, tmp_path / 'records', 'test', config_name)
  folder = root / 'test' / _PREPARED_FOLDERS[config_name]
  _assert_source_matches_files(source, {
      stem: (folder / 'input' / f'{stem}.png', folder / 'target' / f'{stem}.png')
      for stem in sorted(stems)})
  assert (tmp_path / 'records' / 'prepared' / config_name / '1.0.0').is_dir()


def test_prepared_incomplete_tree_names_the_path(tmp_path):
  root = tmp_path / 'Datasets'
  _prepared_tree(root, 'HIDE', ['a', 'b'])
  with _raises(f'missing folder {root}/test/GoPro', at_end=True):
    builders.build_source('prepared', root, tmp_path / 'records', 'test', 'gopro')
  shutil.rmtree(root / 'test' / 'HIDE' / 'target')
  with _raises(f'missing folder {root}/test/HIDE/target', at_end=True):
    builders.build_source('prepared', root, tmp_path / 'records', 'test', 'hide')
  assert not (tmp_path / 'records').exists()


def test_records_follow_their_source(tmp_path):
  """A second root with the same builder and data_dir is never read as the first one.

  Reported: a 1-pair prepared HIDE folder was evaluated as the 2-pair one
  prepared before it into the same data_dir, with no message.
  """
  first, second = tmp_path / 'first', tmp_path / 'second'
  _prepared_tree(first, 'HIDE', ['a', 'b'])
  _prepared_tree(second, 'HIDE', ['a'])
  records = tmp_path / 'records'
  assert len(builders.build_source('prepared', first, records, 'test', 'hide')) == 2
  data_path = records / 'prepared' / 'hide' / '1.0.0'
  stamps = {p: p.stat().st_mtime_ns for p in data_path.iterdir()}
  with _raises(f'{data_path} holds prepared records prepared from {first} (2 pairs), which '
               f'differ from the files in {second} (1 pair): use another data_dir to '
               f'prepare {second} there, or delete {data_path} to prepare it again',
               at_end=True):
    builders.build_source('prepared', second, records, 'test', 'hide')
  assert {p: p.stat().st_mtime_ns for p in data_path.iterdir()} == stamps
  # Its own data_dir prepares the second root.
  other = builders.build_source('prepared', second, tmp_path / 'other', 'test', 'hide')
  _assert_source_matches_files(other, {'a': (second / 'test/HIDE/input/a.png',
                                             second / 'test/HIDE/target/a.png')})


def test_the_same_files_elsewhere_are_the_same_source(tmp_path):
  """Moved or copied data (new path, new mtimes) reuses the records; the root gone too."""
  first = tmp_path / 'first'
  _prepared_tree(first, 'GoPro', ['a', 'b'])
  records = tmp_path / 'records'
  builders.build_source('prepared', first, records, 'test', 'gopro')
  copy = tmp_path / 'copy'
  shutil.copytree(first, copy, copy_function=shutil.copyfile)  # Fresh mtimes.
  assert not builders.prepare(builders.make_builder('prepared', records, 'gopro'), copy)
  shutil.rmtree(first)
  source = builders.build_source('prepared', first, records, 'test', 'gopro')
  assert source.names == ['a', 'b']


def test_records_prepared_without_a_fingerprint_are_checked_by_name(tmp_path):
  root = tmp_path / 'root'
  _prepared_tree(root, 'GoPro', ['a', 'b'])
  records = tmp_path / 'records'
  builders.build_source('prepared', root, records, 'test', 'gopro')
  metadata = records / 'prepared' / 'gopro' / '1.0.0' / 'metadata.json'
  saved = json.loads(metadata.read_text())
  del saved['source']  # As prepared before fingerprints were stored.
  metadata.write_text(json.dumps(saved))
  _write(root / 'test' / 'GoPro' / 'target' / 'b.png')  # Same names: accepted.
  assert builders.build_source('prepared', root, records, 'test', 'gopro').names == ['a', 'b']
  os.remove(root / 'test' / 'GoPro' / 'input' / 'b.png')
  os.remove(root / 'test' / 'GoPro' / 'target' / 'b.png')
  with _raises('records prepared from another folder (2 pairs), which differ from the files '
               f'in {root} (1 pair)'):
    builders.build_source('prepared', root, records, 'test', 'gopro')


def test_an_image_changed_at_the_same_size_changes_the_source(tmp_path):
  root = tmp_path / 'root'
  _prepared_tree(root, 'GoPro', ['a'])
  path = root / 'test' / 'GoPro' / 'target' / 'a.png'
  _write(path, np.full((H, W, 3), 10, np.uint8))
  records = tmp_path / 'records'
  builders.build_source('prepared', root, records, 'test', 'gopro')
  size = path.stat().st_size
  _write(path, np.full((H, W, 3), 20, np.uint8))
  assert path.stat().st_size == size  # Only the pixels (and their checksums) differ.
  with _raises(f'which differ from the files in {root} (1 pair)'):
    builders.build_source('prepared', root, records, 'test', 'gopro')


def test_images_that_are_not_8bit_rgb_png_are_stored_as_such(tmp_path):
  """Grey, RGBA and 16-bit files become 8-bit RGB PNG: every reader then agrees."""
  root = tmp_path / 'Datasets'
  folder = root / 'test' / 'GoPro'
  grey = _write(folder / 'input' / 'grey.png', _pixels('grey')[..., :1])
  _write(folder / 'target' / 'grey.png')
  rgba = np.concatenate([_pixels('rgba'), np.full((H, W, 1), 255, np.uint8)], axis=-1)
  _write(folder / 'input' / 'rgba.png', rgba)
  _write(folder / 'target' / 'rgba.png')
  deep = _pixels('deep').astype(np.uint16) * 256 + 7
  _write(folder / 'input' / 'deep.png', deep)
  _write(folder / 'target' / 'deep.png')
  source = builders.build_source('prepared', root, tmp_path / 'records', 'test', 'gopro')
  assert source.names == ['deep', 'grey', 'rgba']
  np.testing.assert_array_equal(source.load(0)[0],
                                images.to_uint8(images.to_float(deep)))
  np.testing.assert_array_equal(source.load(1)[0], np.repeat(grey, 3, axis=-1))
  np.testing.assert_array_equal(source.load(2)[0], rgba[..., :3])
  for record in _raw_records('prepared', tmp_path / 'records', 'test', 'gopro'):
    # IHDR: bit depth 8, colour type 2 (RGB).
    assert record['blur'][24:26] == b'\x08\x02'


def test_size_mismatch_and_damaged_files_fail_naming_them(tmp_path):
  root = tmp_path / 'Datasets'
  folder = root / 'test' / 'GoPro'
  _prepared_tree(root, 'GoPro', ['a'])
  _write(folder / 'target' / 'a.png', np.zeros((H, W + 1, 3), np.uint8))
  with _raises(f'{folder}/input/a.png is 24x16 but its partner '
               f'{folder}/target/a.png is 25x16', at_end=True):
    builders.build_source('prepared', root, tmp_path / 'records', 'test', 'gopro')
  _write(folder / 'target' / 'a.png')
  data = (folder / 'input' / 'a.png').read_bytes()
  (folder / 'input' / 'a.png').write_bytes(data[:len(data) // 2])
  with _raises(f'cannot read image {folder}/input/a.png'):
    builders.build_source('prepared', root, tmp_path / 'records', 'test', 'gopro')
  assert not builders.make_builder('prepared', tmp_path / 'records', 'gopro').is_prepared()


def test_tfrecord_records_are_read_from_memory(tmp_path):
  """Records prepared elsewhere in TFRecord form still give the same source."""
  root = tmp_path / 'GOPRO_Large'
  _gopro_tree(root)
  records = tmp_path / 'records'
  builder = builders.make_builder('gopro', records)
  builder.download_and_prepare(file_format='tfrecord', download_config=(
      tfds.download.DownloadConfig(manual_dir=str(root), try_download_gcs=False)))
  source = builders.build_source('gopro', None, records, 'train')
  assert source.storage == 'memory'
  _assert_source_matches_files(source, _gopro_expected(root, 'train'))


def test_unknown_names_are_data_errors(tmp_path):
  with _raises("unknown tfds builder 'gopro_large'"):
    builders.build_source('gopro_large', tmp_path, tmp_path / 'records', 'test')
  with _raises("prepared has no config 'GoPro'"):
    builders.build_source('prepared', tmp_path, tmp_path / 'records', 'test', 'GoPro')
  root = tmp_path / 'GOPRO_Large'
  _gopro_tree(root)
  with _raises("no split 'eval'"):
    builders.build_source('gopro', root, tmp_path / 'records', 'eval')
  assert set(builders.BUILDERS) == {'gopro', 'hide', 'realblur_j', 'realblur_r', 'prepared'}
  assert all(b.VERSION == tfds.core.Version('1.0.0')
             for b in builders.BUILDERS.values())


def test_launch_builds_gopro_once_then_trains_and_evaluates(tmp_path):
  from conftest import run_launch
  common = ['--config=xydiff/configs/xydeblur_gopro.py', '--config.data.name=gopro',
            f'--config.data.root={GOPRO_SAMPLE}', f'--config.data.data_dir={tmp_path / "tfds"}',
            '--config.model.width=4', '--config.model.num_res=1',
            '--config.data.crop=32', '--config.train.batch_size=2',
            '--config.train.checkpoint_every=2', '--config.train.eval_every=2',
            '--config.data.eval_max_images=1', '--config.eval.num_image_summaries=0',
            '--config.eval.lpips=False']
  first = run_launch(*common, f'--workdir={tmp_path / "run"}', '--config.train.num_steps=2')
  assert first.returncode == 0, first.stderr[-3000:]
  records = sorted(p for p in (tmp_path / 'tfds').rglob('*') if p.is_file())
  stamps = [p.stat().st_mtime_ns for p in records]
  report = json.loads((tmp_path / 'run' / 'eval' / 'step_2.json').read_text())
  assert report['images'][0]['name'] == 'GOPR0869_11_00/000020'
  # A second run (resuming to step 4) reuses the prepared records untouched.
  second = run_launch(*common, f'--workdir={tmp_path / "run"}', '--config.train.num_steps=4')
  assert second.returncode == 0, second.stderr[-3000:]
  assert [p.stat().st_mtime_ns for p in records] == stamps
