"""Authors' PyTorch checkpoints as xydiff parameters, for every family whose authors publish any.

  config = official.config_for('dmphn_1_2_4_gopro')
  params = official.official_params('checkpoints/DMPHN_1_2_4/', config)

keymaps.FORMATS says how each family's authors save weights (read without
torch: torch_pickle builds only tensors and containers) and where every
tensor goes. `convert` maps them and reports every missing, unexpected and
mis-shaped tensor in one error, before anything is written, so one run
tells the user everything to fix.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from xydiff import configs, models
from xydiff.errors import CheckpointImportError
from xydiff.interop import keymaps
from xydiff.runs import checkpoint, state as state_lib


def convert(state_dict: dict, key_map: dict, target_params) -> dict:
  """{torch key: array} -> a params pytree shaped like `target_params`.

  `key_map` is {torch key: (param path, layout fn)} (keymaps.py).
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


def config_for(name: str):
  """The packaged config of a model name (xydiff.configs.NAMES, an alias or `module:variant`)."""
  try:
    return configs.get_config(name)
  except ValueError as e:
    raise CheckpointImportError(str(e)) from None


def official_params(path: str, config, *, name: str | None = None,
                    max_bytes: int | None = None) -> dict:
  """The authors' checkpoint at `path` as params for `config.model`.

  `name` (the model's name) only words the messages. Raises
  CheckpointImportError when the file is not the family's format or does not
  fit the config (listing every key at fault), FileNotFoundError when it does
  not exist. `max_bytes` caps what each file may make (torch_pickle.load; its
  default suits weights).
  """
  section = config.model
  name = name or section.name
  fmt = keymaps.FORMATS.get(section.name)
  if fmt is None:
    raise CheckpointImportError(
        f'config.model.name={section.name!r}: no authors\' checkpoint format is known for it '
        f'(importable: {", ".join(keymaps.FORMATS)})')
  xy_section = models.family(section.name).xy_section(section)
  if xy_section is not None and xy_section.share == 'none' and xy_section.decoders > 1:
    raise CheckpointImportError(
        f"config.model.share='none' with decoders={xy_section.decoders}: the authors' "
        "checkpoints hold one decoder; use share='rotate' or decoders=1")
  state_dict = fmt.read(path, max_bytes=max_bytes)
  key_map = fmt.key_map(section)
  if not set(state_dict) & set(key_map):
    raise CheckpointImportError(
        f'{path} is not a {name} checkpoint: none of its {len(state_dict)} tensors is one of '
        f'the {len(key_map)} its authors\' code saves (first keys: '
        f'{", ".join(list(state_dict)[:5])})')
  # init_state evaluated abstractly: structure, shapes and dtypes without
  # compiling an initialiser per parameter shape.
  _, abstract = jax.eval_shape(lambda: state_lib.init_state(config))
  try:
    return convert(state_dict, key_map, abstract['params'])
  except CheckpointImportError as e:
    fields = {k: v for k, v in section.items() if k != 'name'}
    raise CheckpointImportError(f'{path} does not fit config.model ({fields}): {e}') from None


def import_official(name: str, path: str, workdir: str, config=None, *,
                    max_bytes: int | None = None) -> str:
  """Imports the authors' checkpoint of model `name` at `path` as step 0 of a fresh run.

  `config` defaults to the name's packaged config (config_for). The run in
  `workdir` then deblurs, evaluates and fine-tunes without --config. Returns
  the step folder.
  """
  config = config_for(name) if config is None else config
  params = official_params(path, config, name=name, max_bytes=max_bytes)
  return checkpoint.write_imported_run(workdir, config, params)
