"""DeepDeblur (xydiff/models/deepdeblur.py) against its authors' PyTorch network.

What every family must do (sizes of the packaged configs, the XY transform,
key maps, bfloat16, validation) is the family contract's: tests/test_families.py.

The reference is tests/torch_refs/deepdeblur.py, transcribed from
SeungjunNah/DeepDeblur-PyTorch, with scikit-image building the pyramid as
their data loader does.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, traverse_util

from xydiff import config as config_lib
from xydiff import models
from xydiff.configs import deepdeblur_gopro
from xydiff.interop import keymaps, official as weights
from xydiff.models import deepdeblur

torch = pytest.importorskip('torch')
skimage_transform = pytest.importorskip('skimage.transform')
from torch_refs import deepdeblur as ref  # noqa: E402

TINY = dict(width=8, num_res=3, kernel_size=5, scales=3)


def _model_config(**section):
  config = deepdeblur_gopro.get_config().model
  config.update(section)
  return config


@functools.cache
def _abstract_model(section: tuple):
  """(graphdef, params) of config.model.deepdeblur updated by `section`, shapes only."""
  model = nnx.eval_shape(lambda: models.build(_model_config(**dict(section))))
  graphdef, params = nnx.split(model, nnx.Param)
  return graphdef, nnx.to_pure_dict(params)


def _abstract_params(**section):
  return _abstract_model(tuple(sorted(section.items())))[1]


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
  converted = weights.convert(state_dict, keymaps.deepdeblur_keys(_model_config(**TINY)), params)
  return net, nnx.merge(graphdef, converted)


# ------------------------------------------------------------------ sizes and compute

DECODER_PARAMS = 3 * (9 * 2 * (64 * 64 * 25 + 64) + 64 * 3 * 25 + 3)  # 3 scales: 5,547,465.


def test_decoders_are_the_last_nine_blocks_and_the_output_conv_of_every_scale():
  flat = traverse_util.flatten_dict(_abstract_params())
  decoder = sum(int(np.prod(v.shape)) for k, v in flat.items() if k[2] == 'decoder')
  assert decoder == DECODER_PARAMS
  for s in range(3):
    assert sorted({k[4] for k in flat if k[:4] == ('scales', s, 'decoder', 'blocks')}) == list(
        range(9))
    assert sorted({k[4] for k in flat if k[:4] == ('scales', s, 'encoder', 'blocks')}) == list(
        range(10))


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
  config.model.update(TINY)
  params = weights.official_params(str(path), config)
  graphdef, _ = nnx.split(models.build(config.model), nnx.Param)
  img = _image((16, 24), 6)
  ours = nnx.merge(graphdef, params)(jnp.asarray(img / 255.0)[None])['restored'][0]
  theirs = ref.restore(net, img, TINY['scales'])[0] / 255
  np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4, rtol=0)

  # The same file fills the XY network: its parameters are the baseline's.
  xy = traverse_util.flatten_dict(_abstract_params(**TINY, decoders=2))
  assert set(xy) == {p for p, _ in keymaps.deepdeblur_keys(config.model).values()}


def test_rotated_decoders_of_a_scale_sum_in_order():
  scale = deepdeblur.Scale(6, TINY['width'], TINY['num_res'], TINY['kernel_size'], 3,
                           decoders=4, share='rotate', dtype=jnp.float32, rngs=nnx.Rngs(0))
  # A scale's output is the sum of its four decoders' outputs, in order.
  x = jax.random.normal(jax.random.key(2), (1, 12, 12, 6))
  z = scale.encoder(x)
  expected = scale.decoder(z)
  for i in (1, 2, 3):
    expected = expected + scale.decoder(z, rotation=i)
  out, per_decoder = scale(x)
  assert len(per_decoder) == 4
  np.testing.assert_allclose(out, expected, atol=1e-6, rtol=0)


# ------------------------------------------------------------------ config

def test_packaged_config_is_the_authors_recipe():
  config = deepdeblur_gopro.get_config()
  config_lib.check(config)
  assert models.size_multiple(config.model) == 4
  assert deepdeblur.FAMILY.size_multiple(_model_config(scales=4)) == 8
  assert (config.train.batch_size, config.data.crop, config.train.num_steps) == (16, 256, 131_000)
  assert tuple(config.train.lr_halve_steps) == (65_500, 98_250, 117_900)
  assert (config.train.lr, config.train.optimizer) == (1e-4, 'adam')
  assert deepdeblur_gopro.get_config('channel').model.width == 101
  assert deepdeblur_gopro.get_config('layer').model.num_res == 28
  assert deepdeblur_gopro.get_config('xy').model.decoders == 2
  with pytest.raises(ValueError, match="'xy'"):
    deepdeblur_gopro.get_config('wide')
