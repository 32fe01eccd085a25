"""The x8 geometric self-ensemble (KAIR, MAXIM): every flip x rot90 restored, turned back, averaged."""

from __future__ import annotations

import numpy as np

from xydiff.errors import ConfigError

# config.inference.ensemble: 1 (off) or 8 (flips x rot90, the x8 self-ensemble).
ENSEMBLES = (1, 8)


def check_ensemble(value, field: str) -> None:
  """Raises ConfigError('<field>=<value>: ...') unless `value` is one of ENSEMBLES."""
  if isinstance(value, bool) or value not in ENSEMBLES:
    raise ConfigError(f'{field}={value!r}: must be 1 (no ensemble) or 8 (flips x rot90, '
                      'the x8 self-ensemble)')


def dihedral(image, index: int):
  """The `index`-th (0..7) of the 8 flips x rot90 of an image whose H, W are axes -3, -2.

  0 is the identity; 1-3 rotate by 90, 180, 270 degrees; 4-7 mirror W first.
  """
  view = np.flip(image, axis=-2) if index >= 4 else image
  return np.rot90(view, index % 4, axes=(-3, -2))


def undo_dihedral(image, index: int):
  """The inverse of `dihedral(., index)`: undo the rotation, then the mirror."""
  view = np.rot90(image, -(index % 4), axes=(-3, -2))
  return np.flip(view, axis=-2) if index >= 4 else view


def ensembled(restore, image, ensemble: int) -> dict:
  """The x8 geometric self-ensemble (KAIR, MAXIM) of `restore` on `image`; 1: `restore` alone.

  `restore` maps an image (H, W on axes -3, -2) to a dict of outputs with H, W
  on the same axes ('image', and for diffusion 'std' and 'samples'). Each of
  the 8 flips x rot90 of the image is restored and turned back, and the 8
  outputs are averaged: 8x the compute. A sampler draws with the key that
  `restore` closes over, the same for every transform; sample i is the mean
  of the 8 turned-back samples i, and 'std' stays the std over the returned
  samples.
  """
  check_ensemble(ensemble, 'ensemble')
  if ensemble == 1:
    return restore(image)
  image = np.asarray(image)
  total = None
  for index in range(ensemble):
    out = {name: undo_dihedral(np.asarray(value), index)
           for name, value in restore(np.ascontiguousarray(dihedral(image, index))).items()}
    total = out if total is None else {name: total[name] + out[name] for name in total}
  mean = {name: np.ascontiguousarray(value / ensemble) for name, value in total.items()}
  if 'samples' in mean and 'std' in mean:
    mean['std'] = mean['samples'].std(axis=0)
  return mean
