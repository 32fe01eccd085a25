"""Imports an official XYDeblur checkpoint (PyTorch) as an xydiff checkpoint.

  python -m xydiff.tools.import_xydeblur XYDeblur.pkl --workdir=DIR \
      [--config=xydiff/configs/xydeblur_gopro.py] [--config.model.xydeblur.width=32 ...]
  python launch.py --config=xydiff/configs/xydeblur_gopro.py --workdir=DIR --mode=deblur \
      --input=photos/ --output=restored/

The official code (Seowon-Ji/XYDeblur) saves `torch.save({'model':
state_dict, ...})`. Every tensor of that state dict is mapped to its place in
xydiff's XYDeblur (see official_keys) and written to DIR as step 0 of a fresh
training state (new optimizer state), so `--mode=deblur`, `--mode=eval` and
fine-tuning with `--mode=train` all start from it. Width and number of
residual blocks come from config.model.xydeblur, so reduced variants import
too. Any missing, unexpected or mis-shaped tensor is reported, all of them in
one error, before anything is written.
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from xydiff import checkpoint, state as state_lib
from xydiff.errors import CheckpointImportError



def official_keys(num_res: int) -> dict[str, tuple]:
  """{official state-dict key: path of the same tensor in xydiff's params}.

  Official layout (models/XYDeblur.py): EBlock.layers = [BasicConv (stem or
  stride-2 down), num_res ResBlocks]; DBlock.layers = [num_res ResBlocks,
  then the ConvTranspose in Decoder1_1/1_2]; BasicConv.main = [conv, relu];
  ResBlock.main = [BasicConv, BasicConv]. Decoder1_3 holds only ResBlocks and
  Decoder1_4 is the output conv.
  """
  table = {}

  def conv(prefix, path):
    table[f'{prefix}.weight'] = path + ('kernel',)
    table[f'{prefix}.bias'] = path + ('bias',)

  def res_stack(module, first_layer, path):
    for i in range(num_res):
      for j, name in enumerate(('conv1', 'conv2')):
        conv(f'{module}.layers.{first_layer + i}.main.{j}.main.0', path + ('blocks', i, name))

  for n, (entry, stack) in enumerate((('stem', 'res1'), ('down2', 'res2'), ('down3', 'res3')), 1):
    conv(f'Encoder{n}.layers.0.main.0', ('encoder', entry))
    res_stack(f'Encoder{n}', 1, ('encoder', stack))
  for n in (1, 2):
    res_stack(f'Decoder1_{n}', 0, ('decoder', f'res{n}'))
    conv(f'Decoder1_{n}.layers.{num_res}.main.0', ('decoder', f'up{n}'))
    conv(f'Convs1_{n}.main.0', ('decoder', f'fuse{n}'))
  res_stack('Decoder1_3', 0, ('decoder', 'res3'))
  conv('Decoder1_4.main.0', ('decoder', 'out'))
  return table


def to_flax(tensor: np.ndarray) -> np.ndarray:
  """A PyTorch weight in xydiff's layout.

  Conv2d weights are OIHW and become HWIO; ConvTranspose2d weights are
  [in, out, kh, kw] and become HWOI, the layout ConvTranspose's
  `transpose_kernel=True` expects. Both are the permutation (2, 3, 1, 0).
  Biases are unchanged.
  """
  return np.transpose(tensor, (2, 3, 1, 0)) if tensor.ndim == 4 else tensor


def _torch_shape(flax_shape: tuple) -> tuple:
  """The PyTorch shape that `to_flax` turns into `flax_shape` (for error messages)."""
  if len(flax_shape) == 4:
    return (flax_shape[3], flax_shape[2], flax_shape[0], flax_shape[1])
  return tuple(flax_shape)


def _guess_architecture(state_dict) -> str:
  """'width=W, num_res=N' read off the checkpoint, to say which overrides would fit."""
  stem = state_dict.get('Encoder1.layers.0.main.0.weight')
  layers = {k.split('.')[2] for k in state_dict if k.startswith('Encoder1.layers.')}
  if stem is None or not all(x.isdigit() for x in layers):
    return ''
  return f'width={stem.shape[0]}, num_res={len(layers) - 1}'


def convert(state_dict, target_params, num_res: int):
  """Official state dict -> a params pytree shaped like `target_params` (init_state's).

  Raises CheckpointImportError listing every missing, unexpected and
  mis-shaped tensor at once, so one run tells the user everything to fix.
  """
  table = official_keys(num_res)
  target = traverse_util.flatten_dict(target_params)
  unmapped = sorted(set(target) - set(table.values()))
  if unmapped:  # xydiff's XYDeblur grew a parameter this importer does not know.
    raise AssertionError(f'official_keys does not cover xydiff parameters {unmapped}')
  problems = []
  missing = [k for k in table if k not in state_dict]
  extra = sorted(k for k in state_dict if k not in table)
  misshaped = []
  flat = {}
  for key, path in table.items():
    if key not in state_dict:
      continue
    value = to_flax(np.asarray(state_dict[key], dtype=np.float32))
    if value.shape != target[path].shape:
      misshaped.append(f'{key} {tuple(np.shape(state_dict[key]))} '
                       f'(expected {_torch_shape(target[path].shape)})')
    flat[path] = value
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


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """The official checkpoint's state dict as float32 numpy arrays (read without torch).

  Accepts the official `{'model': state_dict, ...}` files and a bare state
  dict, in torch.save's zip or legacy format; strips the 'module.' prefix
  that nn.DataParallel adds. xydiff.torch_pickle builds only tensors and
  containers: a checkpoint cannot run code on this machine.
  """
  from xydiff import torch_pickle  # pylint: disable=import-outside-toplevel
  from xydiff.errors import WeightsError  # pylint: disable=import-outside-toplevel
  if not os.path.isfile(path):
    raise FileNotFoundError(f'checkpoint {path} does not exist')
  try:
    loaded = torch_pickle.load(path)
  except WeightsError as e:  # Its message names the file and says why.
    raise CheckpointImportError(str(e)) from None
  state_dict = loaded.get('model', loaded) if isinstance(loaded, dict) else None
  if not isinstance(state_dict, dict) or not all(
      isinstance(v, np.ndarray) for v in state_dict.values()):
    raise CheckpointImportError(
        f'{path} holds no state dict: expected torch.save({{"model": state_dict}}) as the '
        'official XYDeblur code writes')
  if state_dict and all(k.startswith('module.') for k in state_dict):
    state_dict = {k[len('module.'):]: v for k, v in state_dict.items()}
  return {k: v.astype(np.float32) for k, v in state_dict.items()}


def import_checkpoint(path: str, workdir: str, config) -> str:
  """Writes the official checkpoint at `path` as step 0 in `workdir`; returns the step folder."""
  if config.model.name != 'xydeblur':
    raise CheckpointImportError(f"config.model.name={config.model.name!r}: official XYDeblur "
                                "weights need a config with model.name='xydeblur'")
  state_dict = load_state_dict(path)
  xy = config.model.xydeblur
  if not set(state_dict) & set(official_keys(xy.num_res)):
    raise CheckpointImportError(
        f'{path} is not an XYDeblur checkpoint: none of its {len(state_dict)} tensors belongs '
        f'to Encoder1..3, Decoder1_1..1_4 or Convs1_1..1_2 (first keys: '
        f'{", ".join(list(state_dict)[:5])})')
  # init_state evaluated abstractly: its structure, shapes and dtypes without
  # compiling an initialiser per parameter shape (seconds even for small models).
  _, abstract = jax.eval_shape(lambda: state_lib.init_state(config))
  try:
    params = convert(state_dict, abstract['params'], xy.num_res)
  except CheckpointImportError as e:
    guess = _guess_architecture(state_dict)
    hint = (f' (the checkpoint looks like {guess}; set --config.model.xydeblur.width and '
            '--config.model.xydeblur.num_res to match)') if guess else ''
    raise CheckpointImportError(
        f'{path} does not fit config.model.xydeblur (width={xy.width}, '
        f'num_res={xy.num_res}){hint}: {e}') from None
  # Only now, with the weights known to fit, is anything written: step 0 of a
  # fresh train state, config.json first, renamed into place whole.
  return checkpoint.write_imported_run(workdir, config, params)


def _cli() -> None:
  """Parses the flags (absl + ml_collections, as launch.py) and runs the import.

  The flags are defined here, not at import time, so importing this module
  (tests, notebooks) leaves absl's global flag registry alone.
  """
  from absl import app, flags  # pylint: disable=import-outside-toplevel
  from xydiff import cli  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel

  try:  # With a default file, ml_collections applies the overrides right here.
    config_flag = config_flags.DEFINE_config_file(
        'config', cli.packaged_config('xydeblur_gopro'), 'Config whose model the weights fill '
        '(model.name xydeblur); override e.g. --config.model.xydeblur.width for reduced '
        'variants.', lock_config=True)
  except cli.OVERRIDE_ERRORS as e:
    cli.fail_on_override(sys.argv, e)
  workdir_flag = flags.DEFINE_string('workdir', None, 'Fresh workdir for the xydiff checkpoint.')
  flags.mark_flags_as_required(['workdir'])

  def main(argv):
    if len(argv) != 2:
      raise app.UsageError('give exactly one checkpoint: '
                           'python -m xydiff.tools.import_xydeblur CHECKPOINT.pkl --workdir=DIR')
    from xydiff.errors import USER_ERRORS  # pylint: disable=import-outside-toplevel
    try:
      step_dir = import_checkpoint(argv[1], workdir_flag.value, config_flag.value)
    except USER_ERRORS as e:
      cli.fail(cli.one_line(e))
    print(f'imported {argv[1]} as {step_dir}')

  cli.run_tool(main)


if __name__ == '__main__':
  _cli()
