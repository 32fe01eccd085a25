"""pytorch-fid's FID Inception weights: fetched once (sha256-checked) or read from a file.

The network and the FID/KID statistics are xydiff.metrics.fid; this module
turns the release asset `pt_inception-2015-12-05-6726825d.pth` (a
`torch.save` file, read without torch) into that network's params, with
every BatchNorm folded into its convolution.
"""

from __future__ import annotations

import os
from typing import Mapping

import jax.numpy as jnp
import numpy as np

from xydiff.errors import WeightsError
from xydiff.interop import download, torch_pickle
from xydiff.metrics.fid import _BN_EPS, CONV_SPECS

INCEPTION_FILENAME = 'pt_inception-2015-12-05-6726825d.pth'
INCEPTION_URL = ('https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/'
                 + INCEPTION_FILENAME)
# The release asset's sha256 and size, as other projects pin it (it starts with
# the 6726825d in its name, torch.hub's convention): a download must match it whole.
INCEPTION_SHA256 = '6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2'
INCEPTION_BYTES = 95_628_359



def inception_params(state_dict: Mapping[str, np.ndarray], source: str = 'state dict') -> dict:
  """pytorch-fid's FID Inception state dict -> this module's params pytree.

  Each BatchNorm (eval mode) is folded into its conv in float64: kernel
  w * g / sqrt(v + eps) as HWIO and bias b - m * g / sqrt(v + eps). Keys past
  pool3 (`fc.*`) and `num_batches_tracked` are not needed and ignored.

  Args:
    state_dict: tensor name -> array, as `torch_pickle.load` reads the file.
    source: what to name in an error (the file).

  Returns:
    {conv name: {'kernel': [kh, kw, in, out], 'bias': [out]}}, float32.

  Raises:
    WeightsError: a tensor is missing or has the wrong shape.
  """

  def tensor(key, shape):
    if key not in state_dict:
      raise WeightsError(f'{source}: no tensor {key!r}; not the pytorch-fid FID Inception '
                         f'weights ({INCEPTION_FILENAME})')
    value = np.asarray(state_dict[key], np.float64)
    if value.shape != shape:
      raise WeightsError(f'{source}: {key!r} has shape {value.shape}, expected {shape}')
    return value

  params = {}
  for name, (cin, cout, (kh, kw), _, _) in CONV_SPECS.items():
    weight = tensor(f'{name}.conv.weight', (cout, cin, kh, kw))
    gamma, beta, mean, var = (tensor(f'{name}.bn.{k}', (cout,))
                              for k in ('weight', 'bias', 'running_mean', 'running_var'))
    scale = gamma / np.sqrt(var + _BN_EPS)
    params[name] = {
        'kernel': jnp.asarray(np.transpose(weight, (2, 3, 1, 0)) * scale, jnp.float32),
        'bias': jnp.asarray(beta - mean * scale, jnp.float32)}
  return params


def load_inception(path: str | None = None, *, cache: str | None = None) -> dict:
  """The FID Inception params from `path`, or fetched from `INCEPTION_URL`.

  Args:
    path: a local copy of `pt_inception-2015-12-05-6726825d.pth` (a
      `torch.save` file, read without torch). Empty or None: download it into
      `cache` (verified against INCEPTION_SHA256) or reuse the
      copy there.
    cache: the download folder (`download.fetch`'s default if None).

  Raises:
    WeightsError: the file cannot be fetched, verified or read, or is not
      these weights; the message names the file or URL.
  """
  if not path:
    path = download.fetch(INCEPTION_URL, INCEPTION_FILENAME, sha256=INCEPTION_SHA256,
                          max_bytes=INCEPTION_BYTES, cache=cache)
  elif not os.path.isfile(path):
    raise WeightsError(f'config.eval.inception_weights: no file {path}')
  state = torch_pickle.load(path)
  if not isinstance(state, Mapping):
    raise WeightsError(f'{path}: holds a {type(state).__name__}, not a state dict')
  return inception_params(state, source=path)


def load_inception_or_note(path: str | None = None, *,
                           cache: str | None = None) -> tuple[dict | None, str | None]:
  """`load_inception`, except that failing to fetch turns FID/KID off.

  A file the user names must load (its WeightsError propagates); without
  one, a failed download (offline, checksum) returns (None, a one-line note
  saying FID and KID are off and how to supply the weights).

  Returns:
    (params, None), or (None, note).
  """
  if path:
    return load_inception(path, cache=cache), None
  try:
    return load_inception(None, cache=cache), None
  except WeightsError as e:
    return None, (f'FID/KID off: {e}; set config.eval.inception_weights to a local '
                  f'{INCEPTION_FILENAME}')
