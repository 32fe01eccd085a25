"""One contract, run for every model family (xydiff.models.FAMILIES).

What each family must do, checked the same way for all of them from its case
(tests/family_cases.py): its config section validates and names a bad field;
it builds and restores a tiny image in float32 and bfloat16, at any size; its
XY transform ties and turns the decoders as xy.py says; its packaged configs
have the authors' parameter counts; its key map places every tensor of the
authors' checkpoints and a checkpoint that does not fit lists every key at
fault; its loss and its export components run. What is special to one family
(equality with the authors' PyTorch code, TLC, DMPHN's levels, ...) stays in
its own test file.
"""

import functools
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, traverse_util

from conftest import tiny
from family_cases import CASES
from xydiff import config as config_lib
from xydiff import configs, models
from xydiff.configs import base
from xydiff.errors import CheckpointImportError, ConfigError
from xydiff.inference import restorer as restorer_lib
from xydiff.interop import keymaps, official
from xydiff.models import xy as xy_lib

FAMILIES = models.FAMILIES
IMAGE = (1, 16, 24, 3)  # Non-square, so a turn is never a no-op; a multiple of every tiny size.
ODD = (13, 19)


def _tolerance(reference, atol):
  return atol * max(1.0, float(np.abs(np.asarray(reference, np.float32)).max()))


def test_every_family_has_a_case_and_every_packaged_model_its_count():
  assert set(CASES) == set(FAMILIES)
  counted = {name for case in CASES.values() for name in case.official_counts}
  assert set(configs.NAMES) <= counted, set(configs.NAMES) - counted


# ------------------------------------------------------------------ building, fast

def _abstract(section):
  """(graphdef, abstract params) of a model section, nothing initialised."""
  return models.abstract(section)


@functools.cache
def _full_size(name):
  """{param path: shape} of a packaged config's model at full size."""
  _, params = _abstract(configs.get_config(name).model)
  return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(
      nnx.to_pure_dict(params)).items()}


def _count(section) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(_abstract(section)[1]))


def _tree(section) -> dict:
  return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(
      nnx.to_pure_dict(_abstract(section)[1])).items()}


def _random(params, seed=0):
  """Every parameter random, PyTorch-like U(+-1/sqrt(fan_in)) for kernels, else U(+-0.5).

  Filled from numpy (an eager init compiles a kernel per parameter shape), and
  nothing left at zero: zero-initialised output convs and NAFNet's block
  scales would make every comparison 0 == 0.
  """
  rng = np.random.default_rng(seed)

  def fill(leaf):
    fan_in = np.prod(leaf.shape[:-1]) if len(leaf.shape) >= 2 else 4.0
    return jnp.asarray(rng.uniform(-1, 1, leaf.shape).astype(np.float32) / np.sqrt(fan_in))
  return jax.tree.map(fill, params)


def _config(family, **xy):
  """The family's default config at tiny size; `xy` updates its XY section."""
  config = tiny(base.get_config(family))
  if xy:
    models.family(family).xy_section(config.model).update(xy)
  return config


def _model(config, seed=0):
  graphdef, params = _abstract(config.model)
  return graphdef, _random(params, seed)


def _image(shape=IMAGE, seed=1):
  return jax.random.uniform(jax.random.key(seed), shape)


def _network(family, model):
  """The network the XY transform applies to (DvSR: its predictor g)."""
  return getattr(model, CASES[family].network) if CASES[family].network else model


def _set(section, dotted, value):
  *parents, field = dotted.split('.')
  for parent in parents:
    section = section[parent]
  with section.ignore_type():
    section[field] = value


# ------------------------------------------------------------------ the config section

@pytest.mark.parametrize('family', FAMILIES)
def test_defaults_validate_and_a_wrong_field_is_one_line_naming_it(family):
  config = base.get_config(family)
  config_lib.check(config)
  assert dict(config.model)['name'] == family
  case = CASES[family]
  fields = set(models.family(family).defaults())
  assert {f.split('.')[0] for f, _ in case.bad_fields} == fields  # Every field is checked.
  for field, value in case.bad_fields + (('dtype', 'float64'),):
    bad = base.get_config(family)
    _set(bad.model, field, value)
    with pytest.raises(ConfigError) as error:
      models.validate(bad.model)
    message = str(error.value)
    assert message.startswith(f'config.model.{field}=') and '\n' not in message, message
    with pytest.raises(ConfigError, match=f'config.model.{field}='):
      config_lib.check(bad)


# ------------------------------------------------------------------ restoring

@pytest.mark.parametrize('family', FAMILIES)
def test_restores_any_size_in_float32_and_bfloat16(family):
  """Through the Restorer (the family's restore; DvSR samples), an odd-sized image: padded to
  the size multiple and cropped back, float32 out whatever the activations' dtype."""
  config = _config(family)
  assert models.size_multiple(config.model) == CASES[family].size_multiple
  graphdef, params = _model(config)
  half = _config(family)
  half.model.dtype = 'bfloat16'
  half_graphdef, half_params = _abstract(half.model)
  assert jax.tree.structure(half_params) == jax.tree.structure(params)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(half_params))
  image = np.asarray(_image((*ODD, 3)))
  out, out_half = (restorer_lib.Restorer(c, g, params, 0).restore(image, seed=3)
                   for c, g in ((config, graphdef), (half, half_graphdef)))
  assert out['image'].shape == image.shape
  for name, value in out.items():
    assert value.dtype == out_half[name].dtype == np.float32, name
    assert np.isfinite(value).all(), name
  # Bfloat16 activations: the same function, to bfloat16's 8 significant bits.
  difference = float(np.abs(out_half['image'] - out['image']).max())
  assert 0 < difference <= _tolerance(out['image'], 0.1), difference


# ------------------------------------------------------------------ the XY transform

def _xy_families():
  return [f for f in FAMILIES
          if models.family(f).xy_section(base.get_config(f).model) is not None]


def test_every_encoder_decoder_family_has_the_xy_transform():
  assert _xy_families() == list(FAMILIES)


@pytest.mark.parametrize('family', _xy_families())
def test_rotated_decoders_share_every_parameter(family):
  trees = {(n, share): _tree(_config(family, decoders=n, share=share).model)
           for n, share in ((1, 'rotate'), (1, 'none'), (2, 'rotate'), (4, 'rotate'),
                            (2, 'none'), (4, 'none'))}
  # decoders=1 is the untransformed network; shared decoders are its parameters exactly.
  plain = trees[1, 'rotate']
  for n, share in ((1, 'none'), (2, 'rotate'), (4, 'rotate')):
    assert trees[n, share] == plain, (n, share)
  count = lambda tree: sum(int(np.prod(s)) for s in tree.values())
  decoder = count(trees[2, 'none']) - count(plain)  # One more independent decoder (U-Net^2D).
  assert decoder > 0
  assert count(trees[4, 'none']) == count(plain) + 3 * decoder


def _turn(tree, turns):
  """Every image-shaped array of `tree` turned by quarter turns (H, W)."""
  return jax.tree.map(lambda t: jnp.rot90(t, turns, axes=(1, 2)) if t.ndim == 4 else t, tree)


@pytest.mark.parametrize('family', _xy_families())
def test_turned_decoders_are_the_decoder_on_turned_features_and_residuals_sum(family,
                                                                             monkeypatch):
  """Four decoders sharing weights: decoder i is rot90^-i D(rot90^i features), and the
  outputs sum to the result; with one decoder the same weights are the plain network;
  with share='none' the decoders are independent and sum the same way."""
  config = _config(family, decoders=4, share='rotate')
  graphdef, params = _model(config)
  one_graphdef, _ = _abstract(_config(family, decoders=1).model)
  none_graphdef, none_params = _model(_config(family, decoders=2, share='none'))
  calls = []
  run_decoders = xy_lib.run_decoders

  def recording(decoder, decoders, *features, **kwargs):
    calls.append((decoder, features, kwargs))
    return run_decoders(decoder, decoders, *features, **kwargs)
  monkeypatch.setattr(xy_lib, 'run_decoders', recording)

  @jax.jit
  def run(params, none_params, x):
    calls.clear()
    out = _network(family, nnx.merge(graphdef, params))(x)
    forms = []
    for decoder, features, kwargs in list(calls):  # DMPHN: one call per level.
      plain = decoder(*features, **kwargs)
      for turns in (1, 2, 3):
        turned = decoder(*features, rotation=turns, **kwargs)
        feature_form = _turn(decoder(*_turn(features, turns), **kwargs), -turns)
        forms.append((turned, feature_form, plain))
    # The same weights as one decoder: the untransformed network.
    one = _network(family, nnx.merge(one_graphdef, params))(x)
    independent = _network(family, nnx.merge(none_graphdef, none_params))(x)
    return out, forms, one, independent

  x = _image()
  out, forms, one, independent = run(params, none_params, x)
  assert forms
  for turned, feature_form, plain in forms:
    for a, b, c in zip(jax.tree.leaves(turned), jax.tree.leaves(feature_form),
                       jax.tree.leaves(plain)):
      np.testing.assert_allclose(a, b, atol=_tolerance(b, 1e-5))
      assert float(jnp.abs(a - c).max()) > 1e-3  # The turn is not a no-op.
  for result, count in ((out, 4), (one, 1), (independent, 2)):
    assert len(result['residuals']) == count
    np.testing.assert_allclose(result['restored'], x + sum(result['residuals']),
                               atol=_tolerance(result['restored'], 1e-5))
  first, second = independent['residuals']
  assert float(jnp.abs(first - second).max()) > 1e-3  # Independent weights.
  if CASES[family].single_pass:  # Decoder 1 of four is the one-decoder network's.
    np.testing.assert_allclose(one['residuals'][0], out['residuals'][0],
                               atol=_tolerance(one['residuals'][0], 1e-6))


# ------------------------------------------------------------------ the authors' sizes

@pytest.mark.parametrize('family', FAMILIES)
def test_packaged_configs_have_the_official_parameter_counts(family):
  case = CASES[family]
  if not case.official_counts:
    pytest.skip(f'{family} has no packaged config of its own')
  for name, expected in case.official_counts.items():
    config = configs.get_config(name)
    config_lib.check(config)
    assert config.model.name == family
    assert sum(int(np.prod(s)) for s in _full_size(name).values()) == expected, name
  if case.decoder_params:
    first = configs.get_config(next(iter(case.official_counts)))
    xy = models.family(family).xy_section(first.model)
    xy.update(dict(decoders=2, share='rotate'))
    shared = _count(first.model)
    xy.share = 'none'
    assert _count(first.model) - shared == case.decoder_params


# ------------------------------------------------------------------ the authors' checkpoints

def _torch_shape(shape, layout):
  """The shape the authors' tensor has for an xydiff parameter of `shape`."""
  if layout is keymaps.conv_layout and len(shape) == 4:  # HWIO/HWOI -> OIHW/[in, out, kh, kw].
    return (shape[3], shape[2], shape[0], shape[1])
  return tuple(shape)


@pytest.mark.parametrize('family', FAMILIES)
def test_the_key_map_covers_every_tensor_of_the_official_layout(family):
  case = CASES[family]
  assert (family in keymaps.FORMATS) == case.key_map
  if not case.key_map:
    pytest.skip(f"{family}'s authors publish no checkpoints")
  # The authors' networks need torch (optional): without it, the key map against xydiff alone.
  reference = case.torch_reference if importlib.util.find_spec('torch') else None
  for name, expected in case.official_counts.items():
    section = configs.get_config(name).model
    key_map = keymaps.FORMATS[family].key_map(section)
    params = _full_size(name)
    paths = [path for path, _ in key_map.values()]
    assert len(set(paths)) == len(paths), name  # No two tensors fill one parameter.
    assert set(paths) == set(params), name
    if reference is None:
      continue
    # The authors' network for this section: its keys, shapes and count are the key map's.
    theirs = reference(section)
    assert set(theirs) == set(key_map), name
    assert sum(int(np.prod(s)) for s in theirs.values()) == expected, name
    for key, (path, layout) in key_map.items():
      shape = layout(np.broadcast_to(np.float32(0), theirs[key])).shape
      # Per-channel vectors stored as [1, C, 1, 1] take the parameter's shape (convert).
      assert shape == params[path] or (np.prod(shape) == np.prod(params[path])
                                        and len(shape) != len(params[path])), (name, key)


@pytest.mark.parametrize('family', [f for f in FAMILIES if CASES[f].key_map])
def test_a_checkpoint_that_does_not_fit_lists_every_key_at_fault_in_one_line(family,
                                                                            monkeypatch):
  config = _config(family)
  fmt = keymaps.FORMATS[family]
  key_map = fmt.key_map(config.model)
  _, target = _abstract(config.model)
  target = traverse_util.flatten_dict(nnx.to_pure_dict(target))
  rng = np.random.default_rng(0)
  good = {key: rng.standard_normal(_torch_shape(target[path].shape, layout)).astype(np.float32)
          for key, (path, layout) in key_map.items()}
  read = lambda state_dict: keymaps.OfficialFormat(lambda path, max_bytes=None: state_dict,
                                                   fmt.key_map)

  # The authors' layout, through official_params: every tensor lands where the map says.
  monkeypatch.setitem(keymaps.FORMATS, family, read(good))
  params = traverse_util.flatten_dict(official.official_params('weights', config))
  assert params.keys() == target.keys()
  for key, (path, layout) in key_map.items():
    np.testing.assert_array_equal(np.asarray(params[path]).reshape(-1),
                                  layout(good[key]).reshape(-1))

  keys = list(key_map)
  bad = dict(good)
  missing = [keys[0], keys[-1]]
  for key in missing:
    del bad[key]
  misshaped = next(k for k in keys[1:] if good[k].ndim == 4)
  bad[misshaped] = np.zeros((1, 2, 3, 3), np.float32)
  bad['not_a_layer.weight'] = np.zeros((3,), np.float32)
  monkeypatch.setitem(keymaps.FORMATS, family, read(bad))
  with pytest.raises(CheckpointImportError) as error:
    official.official_params('weights', config)
  message = str(error.value)
  assert '\n' not in message
  assert f'missing: {", ".join(missing)}' in message
  assert 'unexpected: not_a_layer.weight' in message
  assert f'wrong shape: {misshaped} (1, 2, 3, 3)' in message
  # The authors' checkpoints hold one decoder: independent ones cannot come from them.
  with pytest.raises(CheckpointImportError, match="share='none'"):
    official.official_params('weights', _config(family, decoders=2, share='none'))


# ------------------------------------------------------------------ training and export

@pytest.mark.parametrize('family', FAMILIES)
def test_the_loss_is_a_finite_scalar_and_reaches_every_parameter(family):
  config = _config(family)
  graphdef, params = _model(config)
  loss_fn = models.family(family).loss(config.model)
  batch = {'blur': _image((2, 16, 16, 3), 3), 'sharp': _image((2, 16, 16, 3), 4)}
  run = jax.jit(jax.value_and_grad(
      lambda p: loss_fn(nnx.merge(graphdef, p), batch, jax.random.key(5)), has_aux=True))
  (loss, metrics), grads = run(params)
  assert loss.shape == () and np.isfinite(float(loss))
  assert metrics and all(m.shape == () and np.isfinite(float(m)) for m in metrics.values())
  for path, g in jax.tree.leaves_with_path(grads):
    assert np.abs(np.asarray(g)).max() > 0, f'no gradient reaches {jax.tree_util.keystr(path)}'


@pytest.mark.parametrize('family', FAMILIES)
def test_the_export_components_run(family):
  config = _config(family)
  graphdef, params = _model(config)
  components = models.family(family).components(nnx.merge(graphdef, params))
  assert components and len({c.name for c in components}) == len(components)
  inputs = {'image': _image(), 'level': jnp.full((IMAGE[0],), 0.5)}
  for component in components:
    assert {kind for _, kind in component.inputs} <= set(inputs), component.inputs
    out = jax.jit(component.fn)(*(inputs[kind] for _, kind in component.inputs))
    assert out.shape == IMAGE and out.dtype == jnp.float32, component.name
    assert np.isfinite(np.asarray(out)).all(), component.name
