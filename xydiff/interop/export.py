"""Portable weights: one safetensors file, ONNX graphs, and jax.export's StableHLO.

  xydiff export --workdir=DIR --format=safetensors|onnx|stablehlo --out=PATH

- **safetensors** (`write_safetensors` / `read_safetensors`): every inference
  weight (the EMA where training kept one) under its parameter path, e.g.
  'encoder.stem.kernel' (HWIO, float32), with the run's config (JSON), step
  and family in the file's metadata. `Restorer.from_pretrained(PATH)` loads
  it; any safetensors reader (NumPy, PyTorch) reads the arrays.
- **onnx** (`write_onnx`, converted by jax2onnx): deterministic families as
  one graph `blur -> restored`; DvSR as two, `<stem>_predictor.onnx`
  (`blur -> restored`, its g(y)) and `<stem>_denoiser.onnx` (one call of the
  denoiser f: `noisy_residual, level, blur -> noise`), so that a runtime
  can run any sampling schedule (xydiff.diffusion's samplers are the loop).
- **stablehlo** (`write_stablehlo`): `jax.export`'s serialized artefact of
  what `Restorer` runs for one image batch: `blur -> restored`, or for
  diffusion models `(blur, seed) -> {image, std, samples}` with the config's
  deblur preset. `jax.export.deserialize(bytes).call(...)` runs it with JAX
  alone, no xydiff.

Both graph formats take NHWC float32 images in [0, 1] of any batch size and
any height and width that are multiples of the network's size multiple M
(stored in the ONNX metadata as 'xydiff.size_multiple'; `input_multiple`
reads it): the networks' own reflect padding to M needs the size to be known
when the graph is built, so callers pad, as `pad_for_graph` does, and crop.
Families whose graph depends on the image size are refused with a ConfigError
asking for `size` (--size=HEIGHTxWIDTH, multiples of M), a fixed-size graph:
for ONNX DeepDeblur, MIMO-UNet and NAFNet with TLC; for StableHLO DeepDeblur
and NAFNet with TLC.

Every file is written whole or not at all (`write_outputs`): under a
temporary name xydiff creates itself, never through a link, then renamed
(DvSR's two graphs both, or neither). `check_out_path` refuses a folder and
any path inside a run's workdir; a full disk is an ExportWriteError. Reading,
`read_safetensors` refuses in one line naming the file a stored config or
step xydiff cannot use, and tensors that are not float32 or not finite.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import json
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from xydiff import config as config_lib
from xydiff import files, models, progress
from xydiff.configs import base
from xydiff.errors import (ConfigError, ExportWriteError, ImageValueError, LinkedFileError,
                           WeightsError)
from xydiff.runs import state as state_lib

FORMATS = ('safetensors', 'onnx', 'stablehlo')
# The `format` metadata entry of xydiff's safetensors files.
SAFETENSORS_FORMAT = 'xydiff-weights-1'
# ONNX opset 18 (onnxruntime >= 1.14): jax2onnx writes ReduceMean's axes as an
# input, which opset 18 introduced.
ONNX_OPSET = 18


# ------------------------------------------------------------------ safetensors

def _flat_name(path) -> str:
  return '.'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path)


def flat_params(params) -> dict[str, np.ndarray]:
  """{'encoder.stem.kernel': array, ...}: the params tree by parameter path."""
  return {_flat_name(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}


def write_safetensors(path: str, config, params, step: int, *, ema: bool) -> None:
  """Writes `params` (a pure dict, as state.eval_params gives it) and the config to `path`.

  `path` as check_out_path allows; raises ExportWriteError when the disk is
  full or the folder read-only (nothing written).
  """
  from safetensors.numpy import save  # pylint: disable=import-outside-toplevel
  check_out_path(path)
  metadata = {'format': SAFETENSORS_FORMAT, 'model': config.model.name, 'step': str(int(step)),
              'weights': 'ema' if ema else 'params',
              'config': json.dumps(config_lib.to_plain(config), sort_keys=True)}
  tensors = {name: np.ascontiguousarray(value, np.float32)
             for name, value in flat_params(params).items()}
  write_outputs({path: save(tensors, metadata=metadata)})


# The one dtype of xydiff's safetensors tensors (as write_safetensors writes them).
SAFETENSORS_DTYPE = 'F32'


def read_safetensors(path: str):
  """(config, graphdef, params, step) from a file `write_safetensors` wrote.

  Raises FileNotFoundError, or WeightsError naming the file when it is not
  one (no xydiff metadata, damaged), its stored config or step is not one
  xydiff can use (not JSON, not an object, a field of the wrong type, an
  unknown family), a tensor is not float32 or holds NaN or infinity, or its
  tensors do not fit its config's model (every missing, extra or mis-shaped
  tensor listed).
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f'weights file {path} does not exist')
  try:
    from safetensors import SafetensorError, safe_open  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise WeightsError(f"reading {path} needs safetensors: pip install -e '.[export]'") from None
  try:
    with safe_open(path, framework='np') as f:
      metadata = f.metadata() or {}
      dtypes = {name: f.get_slice(name).get_dtype() for name in f.keys()}
      # From the header, before any tensor is read: NumPy alone cannot even read BF16
      # (ml_dtypes, which JAX loads, can).
      wrong = sorted(n for n, dtype in dtypes.items() if dtype != SAFETENSORS_DTYPE)
      tensors = {} if wrong else {name: f.get_tensor(name) for name in f.keys()}
  except (SafetensorError, OSError, ValueError) as e:
    raise WeightsError(f'cannot read {path}: {e}') from None
  if metadata.get('format') != SAFETENSORS_FORMAT or 'config' not in metadata:
    raise WeightsError(f'{path} is a safetensors file but not xydiff weights (no '
                       f"'format': '{SAFETENSORS_FORMAT}' metadata); write one with "
                       'xydiff export --format=safetensors')
  if wrong:
    # float32 only, as written: float64 would be rounded, float16 and bfloat16 lost
    # precision already, and integers are no weights.
    raise WeightsError(f'{path}: tensor {_listed([f"{n} is {dtypes[n]}" for n in wrong])}; '
                       'xydiff weights are float32 (F32), as xydiff export writes them')
  config = _stored_config(path, metadata['config'])
  step = _stored_step(path, metadata.get('step', '0'))
  _check_finite(path, tensors)
  graphdef, target = state_lib.abstract_state(config)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(state_lib.eval_params(target))
  wanted = {_flat_name(p): tuple(leaf.shape) for p, leaf in leaves}
  problems = [f'missing {n}' for n in wanted if n not in tensors]
  problems += [f'unexpected {n}' for n in tensors if n not in wanted]
  problems += [f'{n}: shape {tensors[n].shape} != {wanted[n]}' for n in wanted
               if n in tensors and tuple(tensors[n].shape) != wanted[n]]
  if problems:
    raise WeightsError(f'{path} does not fit its {config.model.name} config: '
                       + '; '.join(problems))
  sharding = state_lib.replicated(state_lib.make_mesh())
  params = jax.tree_util.tree_unflatten(treedef, [
      jax.device_put(tensors[_flat_name(p)].astype(leaf.dtype), sharding) for p, leaf in leaves])
  return config, graphdef, params, step


def _listed(names: list[str], limit: int = 5) -> str:
  more = f' and {len(names) - limit} more' if len(names) > limit else ''
  return ', '.join(names[:limit]) + more


def _check_finite(path: str, tensors: dict[str, np.ndarray]) -> None:
  bad = sorted(n for n, t in tensors.items() if not np.isfinite(t).all())
  if bad:
    raise WeightsError(f'{path}: tensor {_listed(bad)} holds NaN or infinite values; '
                       'these are no usable weights')


def _stored_config(path: str, text: str):
  """The config in a file's 'config' metadata, migrated to this layout with defaults for
  fields added since, and checked; WeightsError naming the file and the field otherwise."""
  try:
    values = json.loads(text)
  except (ValueError, RecursionError) as e:
    raise WeightsError(f"{path}: its stored config (metadata 'config') is not JSON: "
                       f'{e}') from None
  if not isinstance(values, dict):
    raise WeightsError(f"{path}: its stored config (metadata 'config') is a JSON "
                       f'{type(values).__name__}, not an object of config sections')
  problems = _section_problems(_defaults_of(values), values)
  if problems:
    raise WeightsError(f'{path}: its stored config has {_listed(problems)}')
  try:
    config = config_lib.from_plain(config_lib.with_defaults(values))
    config_lib.check(config)
  except ConfigError as e:
    raise WeightsError(f'{path}: its stored config is not usable: {e}') from None
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    # A field of a type no xydiff config holds, met while checking it.
    raise WeightsError(f'{path}: its stored config is not usable: {type(e).__name__}: '
                       f'{e}') from None
  return config


def _defaults_of(values: dict) -> dict:
  """The default config of the stored one's layout: sections there must be sections."""
  model = values.get('model')
  name = model.get('name') if isinstance(model, dict) else None
  if values.get('version', 1) == 1:  # Layout 1 kept every family's section under model.
    return {'model': {'dtype': 'float32', 'upsample_impl': 'auto'},
            **{k: v for k, v in config_lib.to_plain(base.get_config()).items() if k != 'model'}}
  return config_lib.to_plain(base.get_config(name if name in models.FAMILIES else 'xydeblur'))


def _section_problems(defaults: dict, values: dict, prefix: str = '') -> list[str]:
  """'model: 5, not a section' for each field whose kind (section or value) is not the
  default's: the rest of xydiff reads sections as sections."""
  problems = []
  for key, value in values.items():
    if key not in defaults:
      continue  # Fields of other releases, and the named presets, are not ours to judge.
    default = defaults[key]
    if isinstance(default, dict) and not isinstance(value, dict):
      problems.append(f'{prefix}{key}: {json.dumps(value)[:40]}, not a section')
    elif not isinstance(default, dict) and isinstance(value, dict):
      problems.append(f'{prefix}{key}: a section, not a value')
    elif isinstance(default, dict):
      problems += _section_problems(default, value, f'{prefix}{key}.')
  return problems


def _stored_step(path: str, text: str) -> int:
  if not (isinstance(text, str) and text.isdigit()):
    raise WeightsError(f"{path}: its stored step (metadata 'step') is {text!r}, not an "
                       'integer >= 0')
  return int(text)


# ------------------------------------------------------------------ writing

def check_out_path(path: str) -> None:
  """Raises ConfigError('--out=PATH: ...') unless an export may be written to `path`.

  Refused: an existing folder (or a path ending in a separator), and any
  path inside a run's workdir, i.e. below a folder that holds a run's
  `config.json` or `checkpoints/` (run_folder): an export there could
  replace the run's config or checkpoints, or be replaced by them. Allowed:
  a new file, an existing regular file (a previous export, replaced whole),
  and a symbolic link, which is replaced itself, never written through.
  """
  if path.endswith(os.sep) or os.path.isdir(path):
    raise ConfigError(f'--out={path}: is a folder; name the file to write in it, e.g. '
                      f'--out={os.path.join(path, "model.safetensors")}')
  found = run_folder(os.path.dirname(os.path.abspath(path)))
  if found is not None:
    folder, marker = found
    raise ConfigError(f'--out={path}: inside the run folder {folder} (it holds {marker}); '
                      'write exports outside every workdir, so that no run loses a file')


def run_folder(folder: str) -> tuple[str, str] | None:
  """(the workdir, 'config.json' or 'checkpoints/') of the run `folder` is or lies in; None.

  A run's workdir holds a `config.json` that is an xydiff config (a JSON object
  with a `model` section) or a `checkpoints/` folder of step folders; links
  are resolved, so a link to a workdir is one.
  """
  folder = os.path.realpath(folder)
  while True:
    if _is_run_config(os.path.join(folder, config_lib.CONFIG_FILE)):
      return folder, config_lib.CONFIG_FILE
    if _holds_steps(folder):
      return folder, f'{CHECKPOINTS}/'
    parent = os.path.dirname(folder)
    if parent == folder:
      return None
    folder = parent


# What checkpoint.Checkpointer names its folder; not imported, which would load orbax.
CHECKPOINTS = 'checkpoints'


def _holds_steps(folder: str) -> bool:
  """Whether `folder` holds `checkpoints/<step>/` folders, as xydiff (orbax) writes them;
  other programs' `checkpoints/` folders of files are not runs."""
  try:
    with os.scandir(os.path.join(folder, CHECKPOINTS)) as entries:
      return any(e.name.isdigit() and e.is_dir() for e in entries)
  except OSError:  # None there, or unreadable.
    return False


def _is_run_config(path: str) -> bool:
  """Whether `path` is an xydiff config: other programs' config.json files are not runs."""
  if not os.path.isfile(path):
    return False
  try:
    with open(path, 'rb') as f:
      values = json.loads(f.read(1 << 20))  # A run's config is a few kB.
  except (OSError, ValueError, RecursionError):
    return False
  return isinstance(values, dict) and isinstance(values.get('model'), dict)


def write_outputs(contents: dict[str, bytes | bytearray]) -> None:
  """Writes each {path: bytes} whole or not at all (files.write_atomic_many), after
  check_out_path; creates missing folders above them.

  The temporaries are created by xydiff beside each file, without following
  links, and renamed over the file's name (a link there is replaced, never
  followed). A full disk or a read-only folder raises ExportWriteError naming
  the files; a link planted at a temporary's name, LinkedFileError. Either
  way no file under its own name has changed, and no temporary is left.
  """
  for path in contents:
    check_out_path(path)
  for path in contents:
    folder = os.path.dirname(os.path.abspath(path))
    try:
      os.makedirs(folder, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
      raise ConfigError(f'--out={path}: {folder} cannot be a folder, a file is in its '
                        'way') from None
    except OSError as e:
      raise ExportWriteError(f'cannot create the folder {folder} for {path}: '
                             f'{_reason(e)}') from None
  try:
    with progress.stage(f'export: writing {", ".join(contents)}'):
      files.write_atomic_many(contents)
  except LinkedFileError:
    raise
  except OSError as e:
    raise ExportWriteError(f'cannot write {", ".join(contents)}: {_reason(e)}; nothing '
                           'written, what was there before is unchanged') from None


def _reason(error: OSError) -> str:
  """'No space left on device (ENOSPC)'."""
  code = errno.errorcode.get(error.errno)
  return f'{error.strerror or error}' + (f' ({code})' if code else '')


# ------------------------------------------------------------------ graphs

@dataclasses.dataclass(frozen=True)
class Graph:
  """One exported function: `fn(*inputs) -> output array`, with symbolic input shapes."""
  name: str
  fn: Callable
  inputs: tuple[tuple[str, tuple], ...]  # (name, shape with 'B', 'M*H', 'M*W' symbols)
  output: str


def graphs(config, params, size: tuple[int, int] | None = None) -> list[Graph]:
  """What ONNX holds of this model: its family's components (DvSR: g and one denoiser call).

  Images are ('B', 'M*H', 'M*W', 3) for the size multiple M, or ('B', *size, 3).
  The up-convolutions run as sub-pixel convolutions (same weights, same
  outputs): jax2onnx converts lax.conv_transpose with symbolic sizes into a
  graph that onnxruntime refuses.
  """
  multiple = models.size_multiple(config.model)
  image = ('B', f'{multiple}*H', f'{multiple}*W', 3) if size is None else ('B', *size, 3)
  shapes = {'image': image, 'level': ('B',)}
  section = _with_upsample_impl(config.model, 'subpixel')
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: models.build(section)), nnx.Param)
  family = models.family(section.name)

  def graph(index, component):
    def fn(*inputs):  # Merged inside, so each trace sees the params as constants.
      return family.components(nnx.merge(graphdef, params))[index].fn(*inputs)
    return Graph(component.name, fn, tuple((name, shapes[kind]) for name, kind in
                                           component.inputs), component.output)

  abstract = nnx.eval_shape(lambda: models.build(section))
  return [graph(i, c) for i, c in enumerate(family.components(abstract))]


def _with_upsample_impl(section, impl: str):
  """A copy of a model section with every up-convolution implementation set to `impl`."""
  section = config_lib.from_plain(config_lib.to_plain(section))

  def set_impl(node):
    for key, value in node.items():
      if key == 'upsample_impl':
        node[key] = impl
      elif hasattr(value, 'items'):
        set_impl(value)
  set_impl(section)
  return section


def onnx_paths(path: str, names: list[str]) -> list[str]:
  """`path` for one graph; `<stem>_<name>.onnx` beside it for several."""
  if len(names) == 1:
    return [path]
  stem = path[:-len('.onnx')] if path.endswith('.onnx') else path
  return [f'{stem}_{name}.onnx' for name in names]


def write_onnx(path: str, config, params, step: int,
               size: tuple[int, int] | None = None) -> list[str]:
  """Converts `graphs(...)` with jax2onnx; returns the files written.

  `size` None: any height and width that are multiples of the size multiple.
  Families whose graph depends on the image size (DeepDeblur's reflect-padded
  pyramid, MIMO-UNet's bilinear pyramid, NAFNet's TLC windows) cannot be
  traced so: ConfigError asks for `size` (--size), a fixed (height, width).
  Each file carries metadata: the config (JSON), step, graph name, and the
  size multiple (or the fixed size) its images must have.
  """
  _check_fixed_size(config, size)
  todo = graphs(config, params, size)
  paths = onnx_paths(path, [g.name for g in todo])
  for out_path in paths:  # Before the conversion, which takes a while.
    check_out_path(out_path)
  protos = []
  for graph in todo:  # jax2onnx traces and converts in one long call: a ticking line each.
    with _symbolic_size_errors('onnx', config, size), progress.stage(
        f'export: tracing and converting the {graph.name} graph to ONNX'):
      protos.append(_to_onnx(graph, f'xydiff_{config.model.name}_{graph.name}'))
  import onnx  # pylint: disable=import-outside-toplevel
  contents = {}
  for graph, proto, out_path in zip(todo, protos, paths):
    onnx.helper.set_model_props(proto, {
        'xydiff.config': json.dumps(config_lib.to_plain(config), sort_keys=True),
        'xydiff.step': str(int(step)), 'xydiff.graph': graph.name,
        'xydiff.size_multiple': str(models.size_multiple(config.model)),
        'xydiff.size': 'dynamic' if size is None else f'{size[0]}x{size[1]}'})
    contents[out_path] = proto.SerializeToString()  # What onnx.save_model writes.
  write_outputs(contents)  # DvSR's two graphs: both replaced, or neither.
  return paths


def _check_fixed_size(config, size) -> None:
  multiple = models.size_multiple(config.model)
  if size is not None and (size[0] % multiple or size[1] % multiple):
    # jax2onnx mis-sizes some families' internal padding otherwise.
    raise ConfigError(f'--size={size[0]}x{size[1]}: height and width must be multiples of '
                      f'{multiple} for {config.model.name}; reflect-pad images to it '
                      '(xydiff.interop.export.pad_for_graph) and crop the output')


@contextlib.contextmanager
def _symbolic_size_errors(fmt: str, config, size):
  """Turns a failure to trace symbolic sizes into a ConfigError asking for --size."""
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except
    if size is not None:  # A fixed size has no symbolic dimension to blame.
      raise
    # jax2onnx and JAX's shape polymorphism fail in many ways on symbolic sizes.
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ConfigError(
        f'--format={fmt}: {config.model.name} does not convert with a dynamic height and '
        f'width ({reason}); pass --size=HEIGHTxWIDTH for a fixed-size graph') from None


def _to_onnx(graph: Graph, model_name: str):
  import jax2onnx  # pylint: disable=import-outside-toplevel
  # jax2onnx 0.12 prints a debug line per convolution; keep the command's output clean.
  with contextlib.redirect_stdout(io.StringIO()):
    return jax2onnx.to_onnx(graph.fn, [shape for _, shape in graph.inputs],
                            model_name=model_name, opset=ONNX_OPSET,
                            input_names=[n for n, _ in graph.inputs],
                            output_names=[graph.output])


def input_multiple(onnx_path: str) -> int:
  """The size multiple M the height and width of an exported ONNX graph's images must have."""
  import onnx  # pylint: disable=import-outside-toplevel
  props = {p.key: p.value for p in onnx.load(onnx_path, load_external_data=False).metadata_props}
  return int(props['xydiff.size_multiple'])


def pad_for_graph(images: np.ndarray, multiple: int) -> tuple[np.ndarray, tuple[int, int]]:
  """NHWC images reflect-padded to a multiple of `multiple`, as the networks pad; and (H, W)."""
  h, w = images.shape[1:3]
  pads = ((0, 0), (0, -h % multiple), (0, -w % multiple), (0, 0))
  return np.pad(images, pads, mode='reflect'), (h, w)


def run_onnx(path: str, images: np.ndarray, *, pad: bool = True) -> np.ndarray:
  """Restores NHWC float32 `images` in [0, 1] with an exported image graph under onnxruntime.

  The graph takes heights and widths that are multiples of its size multiple
  (metadata 'xydiff.size_multiple'; onnxruntime itself would fail inside the
  graph with a shape error). With `pad`, images are reflect-padded to it and
  the output cropped back; without, other sizes are refused with that rule.
  The output is clipped to [0, 1], which the graph leaves to its caller.
  """
  import onnxruntime  # pylint: disable=import-outside-toplevel  # The optional `export` extra.
  images = np.asarray(images, np.float32)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ImageValueError(f'{path}: takes NHWC RGB images, got shape {images.shape}')
  multiple = input_multiple(path)
  h, w = images.shape[1:3]
  if not pad and (h % multiple or w % multiple):
    raise ImageValueError(f'{path}: images of {h}x{w} (height x width): the graph takes '
                          f'heights and widths that are multiples of {multiple} (its metadata '
                          "'xydiff.size_multiple'); reflect-pad them to it "
                          '(xydiff.interop.export.pad_for_graph) and crop the output')
  padded, _ = pad_for_graph(images, multiple)
  session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
  out = session.run(None, {session.get_inputs()[0].name: padded})[0][:, :h, :w]
  return np.clip(out, 0.0, 1.0)


# ------------------------------------------------------------------ StableHLO

# Lowered for each: the artefact then runs on whichever of them the user has.
STABLEHLO_PLATFORMS = ('cpu', 'cuda', 'tpu')


def stablehlo_function(config, graphdef, params, size: tuple[int, int] | None = None):
  """(fn, input specs) that `write_stablehlo` exports: what the Restorer runs on a batch.

  Images: any batch, and height and width multiples of the size multiple M,
  or exactly `size`. A model that samples (its restore returns 'samples')
  takes a uint32 seed too and returns {'image', 'std', 'samples'}, with the
  config's inference preset; any other returns the restored batch.
  """
  multiple = models.size_multiple(config.model)
  dims = f'{multiple}*h, {multiple}*w' if size is None else f'{size[0]}, {size[1]}'
  image = jax.ShapeDtypeStruct(jax.export.symbolic_shape(f'b, {dims}, 3'), jnp.float32)
  family = models.family(config.model.name)
  settings = family.settings(config)

  def restore(blur, seed):
    return family.restore(nnx.merge(graphdef, params), blur, jax.random.key(seed), settings)

  seed = jax.ShapeDtypeStruct((), jnp.uint32)
  probe = jax.ShapeDtypeStruct((1, multiple, multiple, 3), jnp.float32)
  if 'samples' in jax.eval_shape(restore, probe, seed):
    return restore, (image, seed)
  return (lambda blur: restore(blur, 0)['image']), (image,)


def write_stablehlo(path: str, config, graphdef, params,
                    size: tuple[int, int] | None = None) -> None:
  """Exports `stablehlo_function` for every STABLEHLO_PLATFORMS; `size` as for write_onnx
  (DeepDeblur and NAFNet with TLC need one)."""
  _check_fixed_size(config, size)
  check_out_path(path)
  fn, specs = stablehlo_function(config, graphdef, params, size)
  with _symbolic_size_errors('stablehlo', config, size), progress.stage(
      f'export: tracing and lowering to StableHLO for {", ".join(STABLEHLO_PLATFORMS)}'):
    exported = jax.export.export(jax.jit(fn), platforms=STABLEHLO_PLATFORMS)(*specs)
  write_outputs({path: exported.serialize()})


def load_stablehlo(path: str):
  """The jax.export.Exported in `path`; `.call(blur[, seed])` runs it (JAX alone would do)."""
  with open(path, 'rb') as f:
    return jax.export.deserialize(bytearray(f.read()))
