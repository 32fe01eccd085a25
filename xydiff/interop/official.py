"""Authors' PyTorch checkpoints as xydiff parameters, for every registered family.

  params = weights.official_params('dmphn_1_2_4', 'checkpoints/DMPHN_1_2_4/', config)

Each family's spec says how its authors save weights (`SPEC.official.read`,
without torch: xydiff.torch_pickle builds only tensors and containers) and
where every tensor goes (`SPEC.official.key_map`). `convert` maps them and
reports every missing, unexpected and mis-shaped tensor in one error, before
anything is written, so one run tells the user everything to fix.
"""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from xydiff import models
from xydiff.runs import state as state_lib
from xydiff.errors import CheckpointImportError


def convert(state_dict: dict, key_map: dict, target_params) -> dict:
  """{torch key: array} -> a params pytree shaped like `target_params`.

  `key_map` is {torch key: (param path, layout fn)} (models/spec.py).
  """
  target = traverse_util.flatten_dict(target_params)
  unmapped = sorted(set(target) - {path for path, _ in key_map.values()})
  if unmapped:  # The family's network grew a parameter its key map does not know.
    raise AssertionError(f'the key map does not cover xydiff parameters {unmapped}')
  missing = [k for k in key_map if k not in state_dict]
  extra = sorted(k for k in state_dict if k not in key_map)
  misshaped, flat = [], {}
  for key, (path, layout) in key_map.items():
    if key not in state_dict:
      continue
    value = layout(np.asarray(state_dict[key], np.float32))
    want = tuple(target[path].shape)
    if value.shape != want:
      if value.size == int(np.prod(want)) and layout is not None and value.ndim != len(want):
        value = value.reshape(want)  # Per-channel vectors stored as [1, C, 1, 1].
      else:
        misshaped.append(f'{key} {tuple(np.shape(state_dict[key]))} (xydiff {path[-2:]} '
                         f'needs {want} after the layout change)')
        continue
    flat[path] = value
  problems = []
  if missing:
    problems.append(f'missing: {", ".join(missing)}')
  if extra:
    problems.append(f'unexpected: {", ".join(extra)}')
  if misshaped:
    problems.append(f'wrong shape: {", ".join(misshaped)}')
  if problems:
    raise CheckpointImportError('; '.join(problems))
  return traverse_util.unflatten_dict(
      {path: jnp.asarray(value, target[path].dtype) for path, value in flat.items()})


def config_for(model: str):
  """The packaged config of the registered model `model`, its section set for the variant."""
  variant = models.variant(model)
  name, _, arg = variant.config.partition(':')  # 'dmphn_gopro:1_2_4_8' as --config takes it.
  module = importlib.import_module(f'xydiff.configs.{name}')
  config = module.get_config(arg) if arg else module.get_config()
  config.model.name = variant.family
  for field, value in variant.section.items():
    config.model[variant.family][field] = value
  return config


def official_params(model: str, path: str, config, *, max_bytes: int | None = None) -> dict:
  """The authors' checkpoint at `path` as params for `config.model` (variant `model`).

  Raises CheckpointImportError when the file is not the family's format or
  does not fit the config (listing every key at fault), FileNotFoundError
  when it does not exist. `max_bytes` caps what each file may make
  (torch_pickle.load; its default suits weights).
  """
  try:
    variant = models.variant(model)
  except KeyError as e:
    raise CheckpointImportError(str(e).strip('"\'')) from None
  spec = models.family(variant.family)
  if models.get(config.model) is not spec:  # The config builds another family.
    raise CheckpointImportError(
        f'config.model.name={config.model.name!r}: {model} weights need model.name='
        f'{variant.family!r}')
  if spec.official is None:
    raise CheckpointImportError(f'{model}: no official checkpoint format is known')
  section = config.model[spec.xy_section] if spec.xy_section is not None else None
  if section is not None and section.share == 'none' and section.decoders > 1:
    raise CheckpointImportError(
        f"config.model.{spec.xy_section}.share='none' with decoders={section.decoders}: the "
        "authors' checkpoints hold one decoder; use share='rotate' or decoders=1")
  state_dict = spec.official.read(path, max_bytes=max_bytes)
  key_map = spec.official.key_map(config.model)
  if not set(state_dict) & set(key_map):
    raise CheckpointImportError(
        f'{path} is not a {model} checkpoint: none of its {len(state_dict)} tensors is one of '
        f'the {len(key_map)} its authors\' code saves (first keys: '
        f'{", ".join(list(state_dict)[:5])})')
  # init_state evaluated abstractly: structure, shapes and dtypes without
  # compiling an initialiser per parameter shape.
  _, abstract = jax.eval_shape(lambda: state_lib.init_state(config))
  section = {k: v for k, v in config.model[variant.family].items()} if variant.family in \
      config.model else {}
  try:
    return convert(state_dict, key_map, abstract['params'])
  except CheckpointImportError as e:
    raise CheckpointImportError(
        f'{path} does not fit config.model.{variant.family} ({section}): {e}') from None


def import_official(model: str, path: str, workdir: str, config=None, *,
                    max_bytes: int | None = None) -> str:
  """Imports the authors' checkpoint of `model` at `path` as step 0 of a fresh run in `workdir`.

  `config` defaults to the model's packaged config (config_for). The run then
  deblurs, evaluates and fine-tunes without --config. Returns the step folder.
  """
  from xydiff.runs import checkpoint  # pylint: disable=import-outside-toplevel
  config = config_for(model) if config is None else config
  params = official_params(model, path, config, max_bytes=max_bytes)
  return checkpoint.write_imported_run(workdir, config, params)
