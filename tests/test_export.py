"""Portable weights: safetensors round trips, ONNX under onnxruntime, StableHLO without xydiff."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from flax import nnx

from conftest import run_xydiff, tiny
from test_ensemble import random_state, save_run
from xydiff import images, models
from xydiff.interop import export
from xydiff.inference import restorer as inference
from xydiff.configs import base, demo
from xydiff.errors import ConfigError, ImageValueError, WeightsError
from xydiff.cli import export as export_tool

# Families whose graph depends on the image size, so that ONNX holds them only
# at a fixed size (--size): jax2onnx traces height and width symbolically.
FIXED_SIZE_ONLY = {
    'deepdeblur': 'its Gaussian pyramid reflect-pads by amounts that depend on the size',
    'mimo_unet': "jax2onnx cannot lower its bilinear input pyramid's index ranges over a "
                 'symbolic size',
    'nafnet': "TLC's pooling windows (tlc_train_size > 0) are chosen by the image size",
}
# The same for jax.export (StableHLO), whose shape polymorphism is JAX's own.
STABLEHLO_FIXED_SIZE_ONLY = {
    'deepdeblur': 'jnp.pad reflects by amounts that depend on the size',
    'nafnet': "TLC's pooling windows (tlc_train_size > 0) are chosen by the image size",
}
ATOL = 1e-4  # The bound between onnxruntime and xydiff.
# jax2onnx 0.12's Flax plugins read Variable.value, which Flax 0.12 deprecates.
pytestmark = pytest.mark.filterwarnings('ignore::DeprecationWarning')


def _needs(*modules):
  missing = [m for m in modules if importlib.util.find_spec(m) is None]
  if missing:
    message = f'needs {", ".join(missing)} (pip install -e ".[export]")'
    if os.environ.get('CI'):
      pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope='module')
def ema_run(tmp_path_factory):
  """A tiny XYDeblur run whose EMA weights differ from its raw weights."""
  config = tiny(demo.get_config())
  config.train.ema_rate = 0.9
  graphdef, state = random_state(config)
  state['ema_params'] = jax.tree.map(lambda p: 0.5 * p + 0.01, state['params'])
  workdir = save_run(tmp_path_factory.mktemp('export') / 'run', config, state)
  photo = images.to_uint8(np.random.default_rng(0).random((40, 44, 3)))
  ema = inference.Restorer.from_workdir(workdir).restore(photo)['image']
  raw = inference.Restorer(config, graphdef, state['params'], 0).restore(photo)['image']
  assert np.abs(ema - raw).max() > 0.01  # The EMA really is other weights.
  return {'workdir': workdir, 'config': config, 'photo': photo, 'ema': ema}


def test_safetensors_holds_the_ema_weights_and_config_and_restores_as_the_run(ema_run, tmp_path):
  from safetensors import safe_open
  path = str(tmp_path / 'model.safetensors')
  assert export_tool.export_run(ema_run['workdir'], 'safetensors', path) == [path]
  restorer = inference.Restorer.from_pretrained(path)
  assert restorer.config.model.to_dict() == ema_run['config'].model.to_dict()
  np.testing.assert_array_equal(restorer.restore(ema_run['photo'])['image'], ema_run['ema'])
  with safe_open(path, framework='np') as f:  # Any safetensors reader, no xydiff needed.
    metadata, names = f.metadata(), set(f.keys())
    assert f.get_tensor('encoder.stem.kernel').shape == (3, 3, 3, 4)  # HWIO
  assert metadata['weights'] == 'ema' and metadata['model'] == 'xydeblur'
  assert json.loads(metadata['config'])['train']['ema_rate'] == 0.9
  assert len(names) == len(jax.tree.leaves(restorer.params))


def test_a_file_that_is_not_xydiff_weights_is_one_error_naming_it(ema_run, tmp_path):
  from safetensors.numpy import save_file
  good = str(tmp_path / 'good.safetensors')
  export_tool.export_run(ema_run['workdir'], 'safetensors', good)
  from safetensors import safe_open
  with safe_open(good, framework='np') as f:
    metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
  foreign = str(tmp_path / 'foreign.safetensors')
  save_file(tensors, foreign)  # No metadata: some other program's file.
  with pytest.raises(WeightsError, match='foreign.safetensors .*not xydiff weights'):
    inference.Restorer.from_pretrained(foreign)
  del tensors['encoder.stem.kernel']
  tensors['decoder.out.bias'] = np.zeros(5, np.float32)
  broken = str(tmp_path / 'broken.safetensors')
  save_file(tensors, broken, metadata=metadata)
  with pytest.raises(WeightsError, match=r'missing encoder\.stem\.kernel.*decoder\.out\.bias: '
                                         r'shape \(5,\) != \(3,\)'):
    inference.Restorer.from_pretrained(broken)
  garbage = tmp_path / 'garbage.safetensors'
  garbage.write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{not json at all')
  with pytest.raises(WeightsError, match='cannot read .*garbage.safetensors'):
    inference.Restorer.from_pretrained(str(garbage))


# ------------------------------------------------------------------ ONNX

def _tiny_family(name):
  """The family `name` at test size (conftest's tiny: its TINY_FIELDS, else widths 4 and
  depth 1)."""
  return tiny(base.get_config(name))


def _samples(config):
  """Whether the model samples (has restore settings): DvSR's predictor and denoiser graphs."""
  return models.family(config.model.name).settings(config) is not None


def _reference(config, graphdef, params):
  """{graph name: fn(*inputs)} computed by xydiff itself, to hold ONNX against."""
  model = nnx.merge(graphdef, params)
  if not _samples(config):
    return {'restored': jax.jit(lambda x: model(x)['restored'])}
  return {'predictor': jax.jit(lambda x: model.predict(x)['restored']),
          'denoiser': jax.jit(model.denoise)}


def _inputs(graph, batch, height, width, rng):
  shapes = {'level': (batch,)}
  return {name: rng.random(shapes.get(name, (batch, height, width, 3))).astype(np.float32)
          for name, _ in graph.inputs}


@pytest.mark.parametrize('family', models.FAMILIES)
def test_every_family_exports_to_onnx_and_stablehlo_and_agrees_with_xydiff(family, tmp_path):
  """With a dynamic size, or (FIXED_SIZE_ONLY, STABLEHLO_FIXED_SIZE_ONLY) at a fixed one."""
  _needs('jax2onnx', 'onnx', 'onnxruntime')
  config = _tiny_family(family)
  graphdef, state = random_state(config, seed=1)
  reference = _reference(config, graphdef, state['params'])
  _check_onnx(family, config, graphdef, state['params'], reference, tmp_path)
  _check_stablehlo(family, config, graphdef, state['params'], reference, tmp_path)


def _check_stablehlo(family, config, graphdef, params, reference, tmp_path):
  multiple = models.size_multiple(config.model)
  # The shape _check_onnx ran the reference at: its compile is reused.
  path, size = str(tmp_path / f'{family}.stablehlo'), (3 * multiple, 2 * multiple)
  if family in STABLEHLO_FIXED_SIZE_ONLY:
    with pytest.raises(ConfigError, match=f'--format=stablehlo: {family} does not convert with '
                                          'a dynamic height and width .*--size'):
      export.write_stablehlo(path, config, graphdef, params)
    export.write_stablehlo(path, config, graphdef, params, size=size)
  else:
    export.write_stablehlo(path, config, graphdef, params)
  exported = export.load_stablehlo(path)
  if _samples(config):
    return  # Sampled and held against the Restorer, without xydiff, below.
  photo = np.random.default_rng(0).random((2, *size, 3)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(exported.call(photo)),
                             np.asarray(reference['restored'](photo)), atol=1e-5)


def _check_onnx(family, config, graphdef, params, reference, tmp_path):
  import onnxruntime
  multiple = models.size_multiple(config.model)
  path = str(tmp_path / f'{family}.onnx')
  if family in FIXED_SIZE_ONLY:
    with pytest.raises(ConfigError, match=f'{family} does not convert with a dynamic height and '
                                          'width .*--size=HEIGHTxWIDTH'):
      export.write_onnx(path, config, params, 0)
    with pytest.raises(ConfigError, match=f'--size=9x{multiple}: .*multiples of {multiple}'):
      export.write_onnx(path, config, params, 0, size=(9, multiple))
    sizes = [(2, 3 * multiple, 2 * multiple)]
    paths = export.write_onnx(path, config, params, 0, size=sizes[0][1:])
  else:
    sizes = [(1, 2 * multiple, 3 * multiple), (2, 3 * multiple, 2 * multiple)]
    if _samples(config):
      sizes = sizes[1:]  # The denoiser's level input is per batch element: batch 2 tells.
    paths = export.write_onnx(path, config, params, 0)
  graphs = export.graphs(config, params)
  assert [os.path.basename(p) for p in paths] == (
      [f'{family}.onnx'] if len(graphs) == 1 else [f'{family}_{g.name}.onnx' for g in graphs])
  rng = np.random.default_rng(0)
  for graph, graph_path in zip(graphs, paths):
    session = onnxruntime.InferenceSession(graph_path, providers=['CPUExecutionProvider'])
    assert [i.name for i in session.get_inputs()] == [n for n, _ in graph.inputs]
    for batch, height, width in sizes:
      feeds = _inputs(graph, batch, height, width, rng)
      out = session.run(None, feeds)[0]
      expected = np.asarray(reference[graph.name](*feeds.values()))
      assert out.shape == expected.shape
      np.testing.assert_allclose(out, expected, atol=ATOL, err_msg=f'{graph.name} {height}x{width}')
  if family not in FIXED_SIZE_ONLY and not _samples(config):
    # Any photo: pad to the multiple the graph records, run, crop (the README's recipe).
    assert export.input_multiple(paths[0]) == multiple
    photo = rng.random((1, 2 * multiple + 1, 3 * multiple - 1, 3)).astype(np.float32)
    padded, (h, w) = export.pad_for_graph(photo, export.input_multiple(paths[0]))
    out = session.run(None, {'blur': padded})[0][:, :h, :w]
    np.testing.assert_allclose(out, np.asarray(reference['restored'](photo)), atol=ATOL)
    np.testing.assert_allclose(export.run_onnx(paths[0], photo),
                               np.clip(np.asarray(reference['restored'](photo)), 0, 1), atol=ATOL)
    with pytest.raises(ImageValueError, match=f'images of {h}x{w} .*multiples of {multiple} '
                                              "\\(its metadata 'xydiff.size_multiple'\\)"):
      export.run_onnx(paths[0], photo, pad=False)


def test_onnx_export_of_a_run_holds_its_ema_weights(ema_run, tmp_path):
  _needs('jax2onnx', 'onnx', 'onnxruntime')
  import onnxruntime
  [path] = export_tool.export_run(ema_run['workdir'], 'onnx', str(tmp_path / 'run.onnx'))
  photo = images.to_float(ema_run['photo'])[None]  # 40x44: multiples of 4 already.
  out = onnxruntime.InferenceSession(path).run(None, {'blur': photo})[0][0]
  np.testing.assert_allclose(out, ema_run['ema'], atol=ATOL)


# ------------------------------------------------------------------ StableHLO

def test_stablehlo_artefacts_run_with_jax_alone(ema_run, tmp_path):
  """The deterministic run through the command, DvSR in-process; both reloaded without xydiff."""
  deterministic = tmp_path / 'xydeblur.stablehlo'
  result = run_xydiff('export', f'--workdir={ema_run["workdir"]}', '--format=stablehlo',
                      f'--out={deterministic}')
  assert result.returncode == 0 and f'wrote {deterministic}' in result.stdout, result.stderr[-2000:]

  config = tiny(demo.get_config('diffusion'))
  graphdef, state = random_state(config, seed=2)
  sampler = tmp_path / 'dvsr.stablehlo'
  export.write_stablehlo(str(sampler), config, graphdef, state['params'])
  photo = np.random.default_rng(3).random((12, 16, 3)).astype(np.float32)
  np.save(tmp_path / 'photos.npy', np.stack([images.to_float(ema_run['photo'])[:12, :16], photo]))

  script = textwrap.dedent(f'''
      import sys
      sys.modules['xydiff'] = None  # No xydiff: any import of it fails.
      import jax, numpy as np
      photos = np.load({str(tmp_path / 'photos.npy')!r})
      load = lambda p: jax.export.deserialize(bytearray(open(p, 'rb').read()))
      restored = load({str(deterministic)!r}).call(photos[:1])
      sampled = load({str(sampler)!r}).call(photos[1:], np.uint32(5))
      np.savez({str(tmp_path / 'out.npz')!r}, restored=restored, **sampled)
      print('OK')
  ''')
  result = subprocess.run([sys.executable, '-c', script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0 and 'OK' in result.stdout, result.stderr[-3000:]
  out = np.load(tmp_path / 'out.npz')
  restorer = inference.Restorer.from_workdir(ema_run['workdir'])
  np.testing.assert_allclose(out['restored'][0], restorer.restore(ema_run['photo'][:12, :16])[
      'image'], atol=1e-5)
  expected = inference.Restorer(config, graphdef, state['params'], 0).restore(
      photo, key=jax.random.key(5))
  for name in ('image', 'std', 'samples'):
    got = out[name][0] if name != 'samples' else out[name][:, 0]
    np.testing.assert_allclose(got, expected[name], atol=1e-5, err_msg=name)

