"""Where paired images come from: one function maps config.data to sources.

A source has `names`, `len()` and `load(i) -> (blur, sharp)` as HxWx3 uint8;
pipeline.py turns a source into training batches (grain) or evaluation pairs.
"""

from __future__ import annotations

import os

from xydiff.data.folders import FolderPairs
from xydiff.data.pipeline import TrainBatches, eval_count, eval_pairs
from xydiff.data.synthetic import KERNEL_TYPES
from xydiff.errors import DataError, require

# Benchmarks read through tensorflow-datasets builders (builders.py) from the
# user's manual download in config.data.root.
TFDS_NAMES = ('gopro', 'hide', 'realblur_j', 'realblur_r', 'prepared')
DATA_NAMES = ('folder', 'synthetic') + TFDS_NAMES


def get_source(data_config, split: str):
  """The source of `split` ('train' or 'eval' select the config's split names)."""
  if data_config.name == 'folder':
    if not data_config.root:
      raise DataError('config.data.root is empty: set it to the folder holding '
                      f'{data_config.train_split}/ and {data_config.eval_split}/')
    name = data_config.train_split if split == 'train' else data_config.eval_split
    return FolderPairs(data_config.root, name)
  if data_config.name in TFDS_NAMES:
    from xydiff.data import builders  # TensorFlow and tfds only when used.
    name = data_config.train_split if split == 'train' else data_config.eval_split
    return builders.build_source(data_config.name, data_config.root,
                                 data_config.data_dir or None, name,
                                 config_name=data_config.tfds_config or None)
  if data_config.name == 'synthetic':
    from xydiff.data import synthetic  # scipy and scikit-image only when used.
    cfg = data_config.synthetic
    photos = (synthetic.load_sharp_folder(data_config.root) if data_config.root
              else synthetic.skimage_photos())
    photos = sorted(photos, key=lambda item: item[0])
    if len(photos) <= cfg.num_eval:
      raise DataError(f'{len(photos)} photos cannot leave config.data.synthetic.num_eval='
                      f'{cfg.num_eval} for evaluation and still train')
    chosen = photos[:-cfg.num_eval] if split == 'train' else photos[-cfg.num_eval:]
    # Different seeds for the two splits: evaluation never sees a training kernel.
    return synthetic.SyntheticPairs(
        chosen, kernel=cfg.kernel, kernel_size=cfg.kernel_size,
        kernel_length=tuple(cfg.kernel_length), noise_std=cfg.noise_std,
        seed=(0 if split == 'train' else 1), crop=cfg.photo_crop or None,
        pairs_per_photo=cfg.pairs_per_photo if split == 'train' else 1)
  raise DataError(f'config.data.name must be one of {DATA_NAMES}, got {data_config.name!r}')


def validate(data_config, size_multiple: int) -> None:
  """Checks config.data; `size_multiple` is the model's (training crops must be multiples)."""
  d = data_config
  require(d.name in DATA_NAMES, 'data.name', f'must be one of {DATA_NAMES}', d.name)
  if d.name == 'folder':
    require(bool(d.root), 'data.root', 'set it to the folder that holds your '
            f'{d.train_split}/ and {d.eval_split}/ splits', d.root)
  # tfds builders reuse prepared records even after the download is deleted:
  # they check their manual folder themselves, only when they must read it.
  if d.root and d.name not in TFDS_NAMES:
    require(os.path.isdir(d.root), 'data.root', 'no such folder', d.root)
  _positive_int(d.crop, 'data.crop')
  require(d.crop % size_multiple == 0, 'data.crop',
          f'must be a multiple of {size_multiple} for this model', d.crop)
  syn = d.synthetic
  require(syn.kernel in KERNEL_TYPES, 'data.synthetic.kernel', f'must be one of {KERNEL_TYPES}',
          syn.kernel)
  _positive_int(syn.pairs_per_photo, 'data.synthetic.pairs_per_photo')
  require(isinstance(syn.kernel_size, int) and syn.kernel_size >= 3 and syn.kernel_size % 2,
          'data.synthetic.kernel_size', 'must be an odd integer >= 3', syn.kernel_size)
  require(len(syn.kernel_length) == 2 and 0 < syn.kernel_length[0] <= syn.kernel_length[1]
          <= syn.kernel_size, 'data.synthetic.kernel_length',
          'must be (low, high) with 0 < low <= high <= kernel_size', tuple(syn.kernel_length))
  require(syn.noise_std >= 0, 'data.synthetic.noise_std', 'must be >= 0', syn.noise_std)
  require(syn.photo_crop >= 0, 'data.synthetic.photo_crop', 'must be >= 0 (0: whole photos)',
          syn.photo_crop)
  _positive_int(syn.num_eval, 'data.synthetic.num_eval')
  require(d.eval_max_images >= 0, 'data.eval_max_images', 'must be >= 0 (0: all)',
          d.eval_max_images)
  _positive_int(d.cache_pairs, 'data.cache_pairs')


def _positive_int(value, field: str) -> None:
  require(isinstance(value, int) and not isinstance(value, bool) and value > 0, field,
          'must be a positive integer', value)


def train_batches(config, source, process_index: int = 0, process_count: int = 1) -> TrainBatches:
  """This process's training batches of `source` as `config` asks for them."""
  return TrainBatches(source, global_batch=config.train.batch_size, crop=config.data.crop,
                      seed=config.seed, flip=config.data.flip, rot90=config.data.rot90,
                      process_index=process_index, process_count=process_count,
                      cache_pairs=config.data.cache_pairs)


__all__ = ['DataError', 'FolderPairs', 'TrainBatches', 'eval_count', 'eval_pairs',
           'get_source', 'train_batches']
