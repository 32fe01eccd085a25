"""DeepDeblur (xydiff/models/deepdeblur.py) against its authors' PyTorch network.

The reference is tests/torch_refs/deepdeblur.py, transcribed from
SeungjunNah/DeepDeblur-PyTorch, with scikit-image building the pyramid as
their data loader does.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx, traverse_util

from xydiff import config_check, models
from xydiff.interop import official as weights
from xydiff.configs import deepdeblur_gopro
from xydiff.errors import CheckpointImportError, ConfigError
from xydiff.models import deepdeblur

torch = pytest.importorskip('torch')
skimage_transform = pytest.importorskip('skimage.transform')
from torch_refs import deepdeblur as ref  # noqa: E402

TINY = dict(width=8, num_res=3, kernel_size=5, scales=3)


def _model_config(**section):
  config = deepdeblur_gopro.get_config().model
  config.deepdeblur.update(section)
  return config


@functools.cache
def _abstract_model(section: tuple):
  """(graphdef, params) of config.model.deepdeblur updated by `section`, shapes only."""
  model = nnx.eval_shape(lambda: models.build_model(_model_config(**dict(section))))
  graphdef, params = nnx.split(model, nnx.Param)
  return graphdef, nnx.to_pure_dict(params)


def _abstract_params(**section):
  return _abstract_model(tuple(sorted(section.items())))[1]


def _count(params) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def _image(shape, seed):
  """An image of 8-bit values, as the authors' loader reads a PNG."""
  return np.random.default_rng(seed).integers(0, 256, shape + (3,)).astype(np.float32)


@pytest.fixture(scope='module')
def tiny_pair():
  """The authors' network with random weights, and xydiff's with the same weights."""
  torch.manual_seed(0)
  net = ref.MSResNet(n_resblocks=TINY['num_res'], n_feats=TINY['width'],
                     kernel_size=TINY['kernel_size'], n_scales=TINY['scales']).eval()
  graphdef, params = _abstract_model(tuple(sorted(TINY.items())))
  state_dict = {k: v.numpy() for k, v in net.state_dict().items()}
  converted = weights.convert(state_dict, deepdeblur.official_keys(_model_config(**TINY)), params)
  return net, nnx.merge(graphdef, converted)


# ------------------------------------------------------------------ sizes and compute

BASELINE = 11_721_321
DECODER_PARAMS = 3 * (9 * 2 * (64 * 64 * 25 + 64) + 64 * 3 * 25 + 3)  # 3 scales: 5,547,465.


@pytest.mark.parametrize('section, expected', [
    ({}, BASELINE),
    (dict(decoders=2), BASELINE),  # XY: Table 2's 11.72M.
    (dict(decoders=2, share='none'), BASELINE + DECODER_PARAMS),  # U-Net^2D.
    (dict(width=101), 29_147_100),  # Table 2's "Channel": 28.94M.
    (dict(num_res=28), 17_254_377),  # Table 2's "Layer": 17.25M.
])
def test_parameter_counts(section, expected):
  assert _count(_abstract_params(**section)) == expected


def test_decoders_are_the_last_nine_blocks_and_the_output_conv_of_every_scale():
  flat = traverse_util.flatten_dict(_abstract_params())
  decoder = sum(int(np.prod(v.shape)) for k, v in flat.items() if k[2] == 'decoder')
  assert decoder == DECODER_PARAMS
  for s in range(3):
    assert sorted({k[4] for k in flat if k[:4] == ('scales', s, 'decoder', 'blocks')}) == list(
        range(9))
    assert sorted({k[4] for k in flat if k[:4] == ('scales', s, 'encoder', 'blocks')}) == list(
        range(10))


@pytest.mark.parametrize('decoders', [2, 4])
def test_shared_decoders_add_no_parameters_and_independent_ones_add_a_decoder_each(decoders):
  baseline = _abstract_params(**TINY)
  decoder = sum(_count(baseline['scales'][s]['decoder']) for s in range(3))
  assert _count(_abstract_params(**TINY, decoders=decoders)) == _count(baseline)
  assert _count(_abstract_params(**TINY, decoders=decoders, share='none')) == (
      _count(baseline) + (decoders - 1) * decoder)


def _flops(section):
  graphdef, params = _abstract_model(tuple(sorted(section.items())))
  run = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x)['restored'])
  return run.lower(params, jax.ShapeDtypeStruct((1, 180, 320, 3), jnp.float32)).cost_analysis()[
      'flops']


def test_compute_ratios_are_table_2s():
  """GMACs at 1280x720 in XYDeblur's Table 2, as ratios to the baseline's 4728.69."""
  baseline = _flops({})
  assert _flops(dict(decoders=2)) / baseline == pytest.approx(6966.13 / 4728.69, rel=2e-3)
  assert _flops(dict(num_res=28)) / baseline == pytest.approx(6960.32 / 4728.69, rel=2e-3)
  assert _flops(dict(width=101)) / baseline == pytest.approx(11673.07 / 4728.69, rel=1e-2)


# ------------------------------------------------------------------ the official computation

@pytest.mark.parametrize('shape', [(20, 28), (8, 12)])
def test_pyramid_equals_scikit_image(shape):
  img = _image(shape, 1)
  theirs = ref.generate_pyramid(img, 3)
  ours = deepdeblur.gaussian_pyramid(jnp.asarray(img)[None], 3)
  for level, (a, b) in enumerate(zip(ours, theirs)):
    assert a.shape[1:] == b.shape, level
    np.testing.assert_allclose(np.asarray(a[0]), b, atol=2e-4, rtol=0)  # On 0..255.
  # The blur is not a no-op: the coarse level is not just 2x2 means.
  means = img.reshape(shape[0] // 2, 2, shape[1] // 2, 2, 3).mean(axis=(1, 3))
  assert np.abs(theirs[1] - means).max() > 1.0


@pytest.mark.parametrize('shape', [(16, 24), (18, 21)])  # Test mode; demo mode pads.
def test_restores_what_the_official_network_does(tiny_pair, shape):
  net, model = tiny_pair
  img = _image(shape, 2)
  theirs = ref.restore(net, img, TINY['scales'])
  ours = model(jnp.asarray(img / 255.0)[None])
  assert ours['restored'].dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(ours['restored'][0]), theirs[0] / 255, atol=1e-5, rtol=0)
  # Coarser outputs, cropped to the sizes of the unpadded image's pyramid.
  for s, (a, b) in enumerate(zip(ours['coarser'], theirs[1:]), 1):
    want = (-(-shape[0] // 2 ** s), -(-shape[1] // 2 ** s))
    assert a.shape[1:3] == want
    np.testing.assert_allclose(np.asarray(a[0]), b[:want[0], :want[1]] / 255, atol=1e-5, rtol=0)
  assert np.abs(theirs[0] - img).max() > 20  # Random weights change the image.


def test_loss_is_the_authors_multiscale_l1(tiny_pair):
  net, model = tiny_pair
  blur, sharp = _image((16, 24), 3), _image((16, 24), 4)
  loss, metrics = deepdeblur.multiscale_l1_loss(
      model, {'blur': jnp.asarray(blur / 255.0)[None], 'sharp': jnp.asarray(sharp / 255.0)[None]},
      jax.random.key(0))
  with torch.no_grad():
    outputs = net([torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]
                   for x in ref.generate_pyramid(blur, 3)])
    targets = [torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]
               for x in ref.generate_pyramid(sharp, 3)]
    theirs = float(ref.multiscale_l1(outputs, targets))
  assert float(loss) == pytest.approx(theirs, rel=1e-5)
  assert float(metrics['l1']) == float(loss)
  assert float(metrics['l1_scale2']) > 0


def test_bfloat16_activations_keep_float32_parameters_and_outputs(tiny_pair):
  _, model = tiny_pair
  config = _model_config(**TINY)
  config.dtype = 'bfloat16'
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: models.build_model(config)), nnx.Param)
  half = nnx.merge(graphdef, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  x = jnp.asarray(_image((8, 12), 5) / 255.0)[None]
  out, reference = half(x), model(x)
  assert out['restored'].dtype == jnp.float32
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(half, nnx.Param)))
  assert 0 < float(jnp.abs(out['restored'] - reference['restored']).max()) < 0.05


# ------------------------------------------------------------------ official checkpoints

def _save_official(path, net, **extra):
  """model/__init__.py Model.save: torch.save({'G': state_dict[, 'D': ...]}, 'model-<epoch>.pt')."""
  torch.save({'G': net.state_dict(), **extra}, str(path))


def test_official_checkpoint_imports_and_restores_like_pytorch(tiny_pair, tmp_path):
  net, _ = tiny_pair
  path = tmp_path / 'model-1000.pt'
  # With --loss 1*L1+1*ADV their file also holds the discriminator: ignored.
  _save_official(path, net, D={'conv.weight': torch.zeros(4, 3, 5, 5)})
  config = deepdeblur_gopro.get_config()
  config.model.deepdeblur.update(TINY)
  params = weights.official_params('deepdeblur', str(path), config)
  graphdef, _ = nnx.split(models.build_model(config.model), nnx.Param)
  img = _image((16, 24), 6)
  ours = nnx.merge(graphdef, params)(jnp.asarray(img / 255.0)[None])['restored'][0]
  theirs = ref.restore(net, img, TINY['scales'])[0] / 255
  np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4, rtol=0)

  # The same file fills the XY network: its parameters are the baseline's.
  xy = traverse_util.flatten_dict(_abstract_params(**TINY, decoders=2))
  assert set(xy) == {p for p, _ in deepdeblur.official_keys(config.model).values()}


def test_full_size_key_map_covers_every_official_tensor():
  net = ref.MSResNet()
  state_dict = {k: v.numpy() for k, v in net.state_dict().items()}
  key_map = deepdeblur.official_keys(_model_config())
  assert set(key_map) == set(state_dict)
  assert sum(v.size for v in state_dict.values()) == BASELINE
  assert 'body_models.2.body.20.weight' in key_map and 'conv_end_models.2.uppath.0.bias' in key_map
  params = weights.convert(state_dict, key_map, _abstract_params())
  np.testing.assert_array_equal(
      params['scales'][1]['decoder']['blocks'][0]['conv2']['kernel'],
      state_dict['body_models.1.body.11.body.2.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params['upconvs'][1]['conv']['bias'],
                                state_dict['conv_end_models.2.uppath.0.bias'])


def test_every_missing_extra_and_misshaped_tensor_is_listed_in_one_error(tiny_pair, tmp_path):
  net, _ = tiny_pair
  state_dict = dict(net.state_dict())
  del state_dict['body_models.0.body.2.body.0.bias']
  state_dict['conv_end_models.3.uppath.0.weight'] = torch.zeros(12, 3, 5, 5)
  state_dict['body_models.2.body.4.weight'] = torch.zeros(3, 8, 3, 3)
  path = tmp_path / 'model-10.pt'
  torch.save({'G': state_dict}, str(path))
  config = deepdeblur_gopro.get_config()
  config.model.deepdeblur.update(TINY)
  with pytest.raises(CheckpointImportError) as error:
    weights.official_params('deepdeblur', str(path), config)
  message = str(error.value)
  assert 'missing: body_models.0.body.2.body.0.bias' in message
  assert 'unexpected: conv_end_models.3.uppath.0.weight' in message
  assert 'wrong shape: body_models.2.body.4.weight (3, 8, 3, 3)' in message


# ------------------------------------------------------------------ the XY transform

def test_one_decoder_is_the_untransformed_network():
  default = traverse_util.flatten_dict(_abstract_params(**TINY))
  for share in ('rotate', 'none'):
    plain = traverse_util.flatten_dict(_abstract_params(**TINY, decoders=1, share=share))
    assert plain.keys() == default.keys()
    assert all(plain[k].shape == default[k].shape for k in default)


def test_rotated_decoder_equals_the_feature_rotation_form():
  scale = deepdeblur.Scale(6, TINY['width'], TINY['num_res'], TINY['kernel_size'], 3,
                           decoders=4, share='rotate', dtype=jnp.float32, rngs=nnx.Rngs(0))
  features = jax.random.normal(jax.random.key(1), (1, 12, 12, TINY['width']))
  plain = scale.decoder(features)
  for i in (1, 2, 3):
    rotated = scale.decoder(features, rotation=i)
    official = jnp.rot90(scale.decoder(jnp.rot90(features, i, axes=(1, 2))), -i, axes=(1, 2))
    np.testing.assert_allclose(rotated, official, atol=1e-5, rtol=0)
    assert float(jnp.abs(rotated - plain).max()) > 1e-3  # Turning is not a no-op.
  # A scale's output is the sum of its four decoders' outputs, in order.
  x = jax.random.normal(jax.random.key(2), (1, 12, 12, 6))
  z = scale.encoder(x)
  expected = scale.decoder(z)
  for i in (1, 2, 3):
    expected = expected + scale.decoder(z, rotation=i)
  out, per_decoder = scale(x)
  assert len(per_decoder) == 4
  np.testing.assert_allclose(out, expected, atol=1e-6, rtol=0)


def test_xy_network_takes_the_official_weights_and_its_residuals_sum_to_the_output(tiny_pair):
  _, model = tiny_pair
  graphdef, _ = _abstract_model(tuple(sorted(dict(TINY, decoders=2).items())))
  xy = nnx.merge(graphdef, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  x = jnp.asarray(_image((8, 12), 7) / 255.0)[None]
  for net, count in ((model, 1), (xy, 2)):
    out = net(x)
    assert len(out['residuals']) == count
    np.testing.assert_allclose(out['restored'], x + sum(out['residuals']), atol=1e-5, rtol=0)
  assert float(jnp.abs(xy(x)['restored'] - model(x)['restored']).max()) > 1e-2


def test_independent_decoders_are_separate_weights():
  scale = deepdeblur.Scale(3, 4, 2, 3, 3, decoders=2, share='none', dtype=jnp.float32,
                           rngs=nnx.Rngs(0))
  first, second = scale.decoder
  assert not np.array_equal(first.tail.kernel[...], second.tail.kernel[...])
  x = jax.random.normal(jax.random.key(3), (1, 4, 4, 3))
  z = scale.encoder(x)
  np.testing.assert_allclose(scale(x)[0], first(z) + second(z), atol=1e-6, rtol=0)


# ------------------------------------------------------------------ config

@pytest.mark.parametrize('field, value', [
    ('kernel_size', 4), ('num_res', 1), ('width', 0), ('scales', 0), ('decoders', 3),
    ('share', 'both')])
def test_bad_fields_are_named(field, value):
  config = deepdeblur_gopro.get_config()
  config.model.deepdeblur[field] = value
  with pytest.raises(ConfigError, match=rf'config\.model\.deepdeblur\.{field}='):
    config_check.validate_model(config)


def test_packaged_config_is_the_authors_recipe():
  config = deepdeblur_gopro.get_config()
  assert config_check.validate_model(config) == 4
  assert deepdeblur.SPEC.size_multiple(_model_config(scales=4)) == 8
  assert (config.train.batch_size, config.data.crop, config.train.num_steps) == (16, 256, 131_000)
  assert tuple(config.train.lr_halve_steps) == (65_500, 98_250, 117_900)
  assert (config.train.lr, config.train.optimizer) == (1e-4, 'adam')
  assert deepdeblur_gopro.get_config('channel').model.deepdeblur.width == 101
  assert deepdeblur_gopro.get_config('deepdeblur_layer').model.deepdeblur.num_res == 28
  assert deepdeblur_gopro.get_config('xy').model.deepdeblur.decoders == 2
  with pytest.raises(ValueError, match='deepdeblur_xy'):
    deepdeblur_gopro.get_config('wide')
  assert isinstance(config.model.deepdeblur, ml_collections.ConfigDict)
