"""The model registry: every family trains, evaluates and deblurs; adding one is a module
and a registry line; nothing outside xydiff/models/ branches on a model's name."""

import pathlib
import re
import sys
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from conftest import REPO, tiny
from xydiff import models
from xydiff.configs import base, demo
from xydiff.errors import require
from xydiff.inference import restorer as inference
from xydiff.inference import tiles
from xydiff.models import contract, dvsr, layers
from xydiff.train import loop as train

# The deterministic families: each trains alone and can be DvSR's predictor g.
DETERMINISTIC = dvsr.predictor_families()


def _run(config, workdir):
  """Trains 2 steps (evaluating at the end), then restores one image from the workdir."""
  summary = train.train_and_evaluate(config, str(workdir))
  restorer = inference.Restorer.from_workdir(str(workdir))
  image = np.random.default_rng(0).random((24, 40, 3)).astype(np.float32)
  restored = restorer.restore(image)['image']
  assert restored.shape == image.shape and np.isfinite(restored).all()
  return summary


def _demo_of(family):
  """The demo's data and schedule with `family`'s model section, shrunk."""
  config = demo.get_config()
  config.model = ml_collections.ConfigDict(models.section_defaults(family))
  return tiny(config, steps=2)


@pytest.mark.parametrize('family', DETERMINISTIC)
def test_every_family_trains_evaluates_and_deblurs(family, tmp_path):
  summary = _run(_demo_of(family), tmp_path / family)
  assert summary['step'] == 2
  assert np.isfinite(summary['outputs']['restored']['psnr'])


def test_xydiff_with_a_nafnet_predictor_is_a_config(tmp_path):
  """model.predictor names any deterministic family, built from its own section."""
  config = demo.get_config('diffusion')
  config.model.predictor = ml_collections.ConfigDict(base.predictor('nafnet'))
  config = tiny(config, steps=2)
  config.eval.presets = ('sa',)
  summary = _run(config, tmp_path / 'run')
  assert set(summary['outputs']) == {'predictor', 'sa'}


@pytest.mark.parametrize('name', DETERMINISTIC)
def test_every_deterministic_family_builds_as_dvsrs_predictor(name):
  config = demo.get_config('diffusion')
  config.model.predictor = ml_collections.ConfigDict(base.predictor(name))
  config = tiny(config)
  model = models.build(config.model)
  # g is the family's own network, built from the family's own section.
  assert type(model.predictor) is type(models.build(tiny(base.get_config(name)).model))
  graphdef, state = nnx.split(model)

  @jax.jit  # One compile instead of hundreds of eager ops.
  def predict_and_denoise(state, y):
    dvsr_model = nnx.merge(graphdef, state)
    restored = dvsr_model.predict(y)['restored']
    return restored, dvsr_model.denoise(y, jnp.full((1,), 0.5), restored)

  y = jnp.asarray(np.random.default_rng(0).random((1, 32, 32, 3)), jnp.float32)
  restored, noise = predict_and_denoise(state, y)
  assert restored.shape == noise.shape == y.shape


class _TinyNet(nnx.Module):
  """A one-convolution residual network: the smallest family there is."""

  def __init__(self, kernel, *, dtype, rngs):
    self.conv = layers.Conv(3, 3, kernel, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    return {'restored': x + self.conv(x)}


class _TinyNetFamily(contract.Family):
  """All a family must say; the rest (L1 loss, one-pass restore) is the contract's default."""
  name = 'tinynet'
  module = _TinyNet

  def defaults(self):
    return dict(kernel=3)

  def validate(self, section, prefix):
    require(section.kernel % 2 == 1, f'{prefix}.kernel', 'must be odd', section.kernel)

  def build(self, section, *, dtype, rngs):
    return _TinyNet(section.kernel, dtype=dtype, rngs=rngs)

  def size_multiple(self, section):
    return 1


@pytest.fixture
def tinynet(monkeypatch):
  """xydiff/models/tinynet.py and its line in FAMILIES, for one test."""
  module = types.ModuleType('xydiff.models.tinynet')
  module.FAMILY = _TinyNetFamily()
  monkeypatch.setitem(sys.modules, 'xydiff.models.tinynet', module)
  monkeypatch.setattr(models, 'FAMILIES', models.FAMILIES + ('tinynet',))  # The registry line.
  yield
  models.family.cache_clear()  # models.family remembers the family past the test.


def test_a_new_family_is_its_module_and_one_registry_line(tmp_path, tinynet):
  del tinynet
  config = tiny(base.get_config('tinynet'), steps=2)  # Its config section comes from FAMILY.
  config.data.update(dict(name='synthetic', root=''))
  assert config.model.kernel == 3
  _run(config, tmp_path / 'run')
  # Its fields are checked and stored like any family's: a changed kernel is refused by name.
  changed = tiny(base.get_config('tinynet'))
  changed.model.kernel = 5
  with pytest.raises(Exception, match='model.kernel'):
    inference.Restorer.from_workdir(str(tmp_path / 'run'), config=changed)
  changed.model.kernel = 4
  with pytest.raises(Exception, match=r'config.model.kernel=4: must be odd'):
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
  config = tiny(base.get_config('nafnet'))
  config.model.tlc_train_size = 0  # Plain NAFNet: global pooling, not tile-safe.
  # Tiles wider than TLC's window (1.5 x its 256 training size), so its local means differ
  # from a tile-wide mean.
  config.inference.update(dict(tile=448, tile_overlap=64))
  family = models.family(config.model.name)
  assert not family.tile_safe(config.model)
  model = models.build(config.model)
  graphdef, params = nnx.split(model, nnx.Param)
  # NAFNet's block scales start at zero (each block the identity): give them weight.
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(5), p.shape), params)
  restorer = inference.Restorer(config, graphdef, params, 0)
  image = np.random.default_rng(1).random((456, 520, 3)).astype(np.float32)
  assert restorer.tiles(456, 520) and not restorer.tiles(448, 448)
  ours = restorer.restore(image)['image']
  tlc_graphdef, _ = nnx.split(models.build(family.for_tiles(config.model)), nnx.Param)
  key = jax.random.key(config.seed)
  size, overlap = restorer.tiling()
  kwargs = dict(align=restorer.align, tile=size, overlap=overlap)
  settings = restorer.settings()
  tlc = tiles.restore_image(inference.restore_fn(config, tlc_graphdef, settings),
                            params, image, key, **kwargs)['image']
  plain = tiles.restore_image(inference.restore_fn(config, graphdef, settings),
                              params, image, key, **kwargs)['image']
  np.testing.assert_array_equal(ours, tlc)
  assert np.abs(ours - plain).max() > 1e-6  # The plain form's tiles would differ.
