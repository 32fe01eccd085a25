"""What a model family is, stated once by its own module as `SPEC = ModelSpec(...)`.

Everything outside xydiff/models/ asks the family's spec (through
xydiff.models: `models.get(config.model)`) instead of branching on its name:
how to build it, the size multiple it pads to, how its config fields are
checked, which fields change what its weights compute, its training loss,
whether it is a diffusion model, whether tiles change its output, and how
its authors' PyTorch checkpoint maps onto it.

The network a spec builds takes an NHWC float batch of blurry images in
[0, 1] and returns a dict with 'restored' (float32, the same scale) plus
whatever its loss needs; each family converts to its authors' value range
and pads inside the module, so every caller feeds it the same way.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import numpy as np

from xydiff.errors import ConfigError


def require(ok: bool, field: str, message: str, value) -> None:
  """Raises ConfigError('config.<field>=<value>: <message>') unless `ok`."""
  if not ok:
    raise ConfigError(f'config.{field}={value!r}: {message}')


def require_positive_int(value, field: str) -> None:
  require(isinstance(value, int) and not isinstance(value, bool) and value > 0, field,
          'must be a positive integer', value)


@dataclasses.dataclass(frozen=True)
class Variant:
  """A named configuration of a family (the names import_weights and the summary take).

  `config`: the packaged config it trains with, as --config names it
  ('dmphn_gopro:1_2_4_8' is xydiff.configs.dmphn_gopro.get_config('1_2_4_8'));
  `section`: overrides of the family's config section for this variant.
  """
  family: str
  config: str
  section: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  about: str = ''


# Layouts of PyTorch tensors, as functions to xydiff's: convolutions OIHW ->
# HWIO, transposed convolutions [in, out, kh, kw] -> HWOI (both (2, 3, 1, 0)),
# linear layers [out, in] -> [in, out]; anything else keeps its values and
# takes the parameter's shape (per-channel vectors stored as [1, C, 1, 1]).
def conv_layout(t: np.ndarray) -> np.ndarray:
  return np.transpose(t, (2, 3, 1, 0)) if t.ndim == 4 else t


def linear_layout(t: np.ndarray) -> np.ndarray:
  return np.transpose(t)


def as_is(t: np.ndarray) -> np.ndarray:
  return t


def add_conv(table: dict, key: str, path: tuple, bias: bool = True) -> None:
  """Maps the PyTorch convolution `key` (.weight, .bias) to the layer at `path` of a key map."""
  table[f'{key}.weight'] = (path + ('kernel',), conv_layout)
  if bias:
    table[f'{key}.bias'] = (path + ('bias',), as_is)


@dataclasses.dataclass(frozen=True)
class OfficialWeights:
  """How an authors' checkpoint becomes xydiff parameters.

  read(path, max_bytes=None) -> {torch key: float32 array}: the file (or
  folder) as the authors' code saves it, read without torch
  (xydiff.torch_pickle, whose cap on what each file may make is max_bytes).
  key_map(model_config) -> {torch key: (param path tuple, layout fn)}: every
  tensor's place; weights.convert reports missing, extra and mis-shaped keys.
  """
  read: Callable[..., dict[str, np.ndarray]]
  key_map: Callable[[Any], dict[str, tuple[tuple, Callable]]]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A model family. Callables take config.model (`model_config`) or the whole config."""
  name: str
  # {key under config.model: default}: the family's own config fields.
  defaults: Callable[[], dict]
  # build(model_config, rngs) -> nnx.Module (dtype and upsample_impl read from model_config).
  build: Callable[..., Any]
  # The factor the network pads H and W up to.
  size_multiple: Callable[[Any], int]
  # Checks the family's fields; raises ConfigError naming config.model.<field>.
  validate: Callable[[Any], None]
  # Dotted config paths (subtrees or leaves) whose values change what the weights compute.
  output_fields: Callable[[Any], tuple[str, ...]]
  # make_loss(config) -> loss_fn(model, batch, key) -> (loss, {name: metric}).
  make_loss: Callable[[Any], Callable]
  diffusion: bool = False
  # Whether restoring in tiles computes what the whole image would (away from
  # tile edges); False for networks with image-wide statistics.
  tile_safe: Callable[[Any], bool] = lambda model_config: True
  # A model config (same weights) that restores tiles as the whole image would
  # (e.g. local statistics in place of global ones); None, or returning None,
  # when the family cannot.
  for_tiles: Callable[[Any], Any] | None = None
  variants: Mapping[str, Variant] = dataclasses.field(default_factory=dict)
  official: OfficialWeights | None = None
  # The config section under config.model holding the XY transform's
  # `decoders` and `share` (xy.py); None for a family without a decoder to split.
  xy_section: str | None = None
  # The fields of that section that set the network's width and depth: what
  # XYDeblur's Table 2 turns up for its "Channel" and "Layer" baselines.
  width_field: str | None = None
  depth_field: str | None = None


def read_torch_state_dict(path: str, container_keys: tuple[str, ...] = (),
                          max_bytes: int | None = None) -> dict[str, np.ndarray]:
  """A `torch.save`d state dict as float32 numpy arrays, read without torch.

  Accepts a bare state dict or a dict holding it under one of
  `container_keys` (e.g. 'model', 'params', 'G'), in torch.save's zip or
  legacy format; strips the 'module.' prefix that nn.DataParallel adds.
  `max_bytes` is torch_pickle.load's cap on what one file may make.
  xydiff.torch_pickle builds only tensors and containers, so a checkpoint
  cannot run code here.
  """
  import os  # pylint: disable=import-outside-toplevel
  from xydiff import torch_pickle  # pylint: disable=import-outside-toplevel
  from xydiff.errors import CheckpointImportError, WeightsError  # pylint: disable=import-outside-toplevel
  if not os.path.isfile(path):
    raise FileNotFoundError(f'checkpoint {path} does not exist')
  try:
    loaded = torch_pickle.load(path, max_bytes=max_bytes)
  except WeightsError as e:  # Its message names the file and says why.
    raise CheckpointImportError(str(e)) from None
  state_dict = loaded
  if isinstance(loaded, dict):
    for key in container_keys:
      if isinstance(loaded.get(key), dict):
        state_dict = loaded[key]
        break
  if not isinstance(state_dict, dict) or not state_dict or not all(
      isinstance(v, np.ndarray) for v in state_dict.values()):
    wanted = ' or '.join(f"{{'{k}': state_dict}}" for k in container_keys)
    raise CheckpointImportError(
        f'{path} holds no state dict: expected a state dict' + (f' or {wanted}' if wanted else ''))
  names = [k for k in state_dict if not isinstance(k, str)]
  if names:  # torch_pickle's keys are strings or small ints: printing one is safe.
    raise CheckpointImportError(
        f'{path} holds no state dict: {len(names)} of its {len(state_dict)} keys '
        f'{"is not a parameter name" if len(names) == 1 else "are not parameter names"} (the '
        f'first: {type(names[0]).__name__} {names[0]!r})')
  if all(k.startswith('module.') for k in state_dict):
    state_dict = {k[len('module.'):]: v for k, v in state_dict.items()}
  return {k: np.asarray(v, np.float32) for k, v in state_dict.items()}
