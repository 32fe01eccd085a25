"""Paired blur/sharp images from folders laid out like GOPRO_Large.

Two layouts, detected per split:
  GoPro: <root>/<split>/<sequence>/{blur,sharp}/<frame>.png
  flat:  <root>/<split>/{blur,sharp}/<name>.png
Pairs are matched by file name. A missing partner or a size mismatch is an
error naming the file: a silently skipped image would change every average.
"""

from __future__ import annotations

import os

import numpy as np

from xydiff import images
from xydiff.errors import DataError


def image_files(folder: str) -> dict[str, str]:
  """Stem -> path of the images in an existing folder."""
  return {os.path.splitext(f)[0]: os.path.join(folder, f) for f in sorted(os.listdir(folder))
          if f.lower().endswith(images.IMAGE_EXTENSIONS)}


def match_pairs(blur_dir: str, sharp_dir: str) -> list[tuple[str, str, str]]:
  """(stem, blur path, sharp path) by file stem; an unpaired file is an error."""
  blur, sharp = image_files(blur_dir), image_files(sharp_dir)
  for stem in sorted(set(blur) ^ set(sharp)):
    present = blur.get(stem) or sharp.get(stem)
    missing_dir = sharp_dir if stem in blur else blur_dir
    raise DataError(f'{present} has no partner in {missing_dir}')
  return [(stem, blur[stem], sharp[stem]) for stem in sorted(blur)]


def _pair_folder(blur_dir: str, sharp_dir: str, prefix: str) -> list[tuple[str, str, str]]:
  if not os.path.isdir(sharp_dir):
    raise DataError(f'missing folder {sharp_dir} (partner of {blur_dir})')
  return [(prefix + stem, blur, sharp) for stem, blur, sharp in match_pairs(blur_dir, sharp_dir)]


class FolderPairs:
  """A paired-image source: `names`, `len()`, and `load(i) -> (blur, sharp)` uint8."""

  def __init__(self, root: str, split: str, *, blur_dirname: str = 'blur'):
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
      raise DataError(f'data folder {split_dir} does not exist (config.data.root={root!r}, '
                      f'split {split!r})')
    if os.path.isdir(os.path.join(split_dir, blur_dirname)):
      pairs = _pair_folder(os.path.join(split_dir, blur_dirname),
                           os.path.join(split_dir, 'sharp'), '')
    else:
      pairs = []
      for sequence in sorted(os.listdir(split_dir)):
        seq_dir = os.path.join(split_dir, sequence)
        if os.path.isdir(seq_dir):
          blur_dir = os.path.join(seq_dir, blur_dirname)
          if not os.path.isdir(blur_dir):
            raise DataError(f'{seq_dir} has no {blur_dirname}/ folder')
          pairs += _pair_folder(blur_dir, os.path.join(seq_dir, 'sharp'), sequence + '/')
    if not pairs:
      raise DataError(f'no {"/".join(images.IMAGE_EXTENSIONS)} image pairs under {split_dir}')
    self.names = [name for name, _, _ in pairs]
    self.paths = [(blur, sharp) for _, blur, sharp in pairs]

  def __len__(self) -> int:
    return len(self.names)

  def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
    blur_path, sharp_path = self.paths[index]
    blur, sharp = images.read_image(blur_path), images.read_image(sharp_path)
    if blur.shape != sharp.shape:
      raise DataError(f'{blur_path} is {blur.shape[1]}x{blur.shape[0]} but its partner '
                      f'{sharp_path} is {sharp.shape[1]}x{sharp.shape[0]}')
    return blur, sharp
