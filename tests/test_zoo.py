"""The model registry: every family trains, evaluates and deblurs; adding one is a module
and a registry line; nothing outside xydiff/models/ branches on a model's name."""

import pathlib
import re
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import REPO, tiny
from xydiff import models
from xydiff.inference import restorer as inference
from xydiff.train import loop as train
from xydiff.configs import default, demo
from xydiff.models import layers, spec as spec_lib


def _run(config, workdir):
  """Trains 2 steps (evaluating at the end), then restores one image from the workdir."""
  summary = train.train_and_evaluate(config, str(workdir))
  restorer = inference.Restorer.from_workdir(str(workdir))
  image = np.random.default_rng(0).random((24, 40, 3)).astype(np.float32)
  restored = restorer.restore(image)['image']
  assert restored.shape == image.shape and np.isfinite(restored).all()
  return summary


@pytest.mark.parametrize('family', models.deterministic_families())
def test_every_family_trains_evaluates_and_deblurs(family, tmp_path):
  config = tiny(demo.get_config(), steps=2)
  config.model.name = family
  summary = _run(config, tmp_path / family)
  assert summary['step'] == 2
  assert np.isfinite(summary['outputs']['restored']['psnr'])


def test_xydiff_with_a_nafnet_predictor_is_a_config(tmp_path):
  """model.predictor.arch names any deterministic family, built from its own section."""
  config = tiny(demo.get_config('diffusion'), steps=2)
  config.model.predictor.arch = 'nafnet'
  config.eval.presets = ('sa',)
  summary = _run(config, tmp_path / 'run')
  assert set(summary['outputs']) == {'predictor', 'sa'}


@pytest.mark.parametrize('arch', models.deterministic_families())
def test_every_deterministic_family_builds_as_dvsrs_predictor(arch):
  config = tiny(demo.get_config('diffusion'))
  config.model.predictor.arch = arch
  model = models.build_model(config.model)
  # g is the family's own network, built from the family's own section.
  assert type(model.predictor) is type(models.build_model(_family_config(arch).model))
  graphdef, state = nnx.split(model)

  @jax.jit  # One compile instead of hundreds of eager ops.
  def predict_and_denoise(state, y):
    dvsr = nnx.merge(graphdef, state)
    restored = dvsr.predict(y)['restored']
    return restored, dvsr.denoise(y, jnp.full((1,), 0.5), restored)

  y = jnp.asarray(np.random.default_rng(0).random((1, 32, 32, 3)), jnp.float32)
  restored, noise = predict_and_denoise(state, y)
  assert restored.shape == noise.shape == y.shape


def _family_config(family):
  config = tiny(default.get_config())
  config.model.name = family
  return config


class _TinyNet(nnx.Module):
  """A one-convolution residual network: the smallest family there is."""

  def __init__(self, width, rngs):
    self.conv = layers.Conv(3, 3, width, rngs=rngs)

  def __call__(self, x):
    return {'restored': x + self.conv(x)}


def _tinynet_module():
  module = types.ModuleType('xydiff.models.tinynet')

  def loss(model, batch, key):
    del key
    l1 = jnp.mean(jnp.abs(model(batch['blur'])['restored'] - batch['sharp']))
    return l1, {'l1': l1}

  module.SPEC = spec_lib.ModelSpec(
      name='tinynet', defaults=lambda: {'tinynet': dict(kernel=3)},
      build=lambda mc, rngs: _TinyNet(mc.tinynet.kernel, rngs),
      size_multiple=lambda mc: 1,
      validate=lambda mc: spec_lib.require(mc.tinynet.kernel % 2 == 1, 'model.tinynet.kernel',
                                           'must be odd', mc.tinynet.kernel),
      output_fields=lambda mc: ('model.tinynet',), make_loss=lambda config: loss)
  return module


def test_a_new_family_is_its_module_and_one_registry_line(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'xydiff.models.tinynet', _tinynet_module())
  monkeypatch.setattr(models, 'FAMILIES', models.FAMILIES + ('tinynet',))  # The registry line.
  config = tiny(default.get_config(), steps=2)  # Its config section comes from its SPEC.
  config.data.update(dict(name='synthetic', root=''))
  config.model.name = 'tinynet'
  assert config.model.tinynet.kernel == 3
  _run(config, tmp_path / 'run')
  # Its fields are checked and stored like any family's: a changed kernel is refused by name.
  changed = tiny(default.get_config())
  changed.model.name = 'tinynet'
  changed.model.tinynet.kernel = 5
  with pytest.raises(Exception, match='model.tinynet.kernel'):
    inference.Restorer.from_workdir(str(tmp_path / 'run'), config=changed)
  changed.model.tinynet.kernel = 4
  with pytest.raises(Exception, match=r'config.model.tinynet.kernel=4: must be odd'):
    inference.Restorer.from_workdir(str(tmp_path / 'run'), config=changed)


def test_nothing_outside_the_models_branches_on_a_model_name():
  # A comparison of a model's name or predictor arch with a literal.
  pattern = re.compile(r"""model.*(name|arch)'?\]?\s*(==|!=|(not\s+)?in)\s*[('"]""")
  offenders = []
  for path in (REPO / 'xydiff').rglob('*.py'):
    if pathlib.Path('xydiff', 'models') in path.relative_to(REPO).parents:
      continue
    for number, line in enumerate(path.read_text().splitlines(), 1):
      if pattern.search(line):
        offenders.append(f'{path.relative_to(REPO)}:{number}: {line.strip()}')
  assert not offenders, offenders


def test_tiled_images_of_a_global_statistics_model_use_its_tile_safe_form():
  """NAFNet pools over the whole image; tiles run its TLC form (same weights) instead."""
  config = tiny(default.get_config())
  config.model.name = 'nafnet'
  config.model.nafnet.tlc_train_size = 0  # Plain NAFNet: global pooling, not tile-safe.
  # Tiles wider than TLC's window (1.5 x its 256 training size), so its local means differ
  # from a tile-wide mean.
  config.deblur.update(dict(tile=448, tile_overlap=64))
  spec = models.get(config.model)
  assert not spec.tile_safe(config.model)
  model = models.build_model(config.model)
  graphdef, params = nnx.split(model, nnx.Param)
  # NAFNet's block scales start at zero (each block the identity): give them weight.
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(5), p.shape), params)
  restorer = inference.Restorer(config, graphdef, params, 0)
  image = np.random.default_rng(1).random((456, 520, 3)).astype(np.float32)
  assert restorer.tiles(456, 520) and not restorer.tiles(448, 448)
  ours = restorer.restore(image)['image']
  tlc_graphdef, _ = nnx.split(models.build_model(spec.for_tiles(config.model)), nnx.Param)
  key = jax.random.key(config.seed)
  kwargs = dict(align=restorer.align, tile=restorer.tile, overlap=restorer.overlap)
  tlc = inference.restore_image(inference.make_restore_fns(config, tlc_graphdef)['restored'],
                                params, image, key, **kwargs)['image']
  plain = inference.restore_image(inference.make_restore_fns(config, graphdef)['restored'],
                                  params, image, key, **kwargs)['image']
  np.testing.assert_array_equal(ours, tlc)
  assert np.abs(ours - plain).max() > 1e-6  # The plain form's tiles would differ.
