"""inference: the weights it restores, the Restorer API, tile blending and size buckets."""

import jax
import numpy as np
import pytest
from flax import nnx

from conftest import tiny
from test_ensemble import random_state
from xydiff import checkpoint, images, inference, run_config, state as state_lib
from xydiff.errors import ConfigError, ImageTooLargeError, ImageValueError, NonFiniteOutputError


@pytest.fixture(scope='module')
def ema_run(tmp_path_factory):
  """A workdir whose EMA weights differ from its raw weights, as after real training."""
  from xydiff.configs import demo
  config = tiny(demo.get_config())
  config.train.ema_rate = 0.9
  config.deblur.size_bucket = 0  # Stored with the run: restore() must match the model exactly.
  graphdef, state = state_lib.init_state(config)
  state['ema_params'] = jax.tree.map(lambda p: 0.5 * p + 0.01, state['params'])
  state['step'] = jax.numpy.asarray(3, jax.numpy.int32)
  run = tmp_path_factory.mktemp('ema') / 'run'
  with checkpoint.Checkpointer(str(run), config) as ckpt:
    ckpt.save(3, state)
  run_config.save(str(run), config)
  photo = images.to_float(np.random.default_rng(0).integers(0, 256, (40, 44, 3), np.uint8))
  restore = lambda params: np.asarray(nnx.merge(graphdef, params)(photo[None])['restored'][0])
  return {'run': str(run), 'config': config, 'photo': photo,
          'ema': restore(state['ema_params']), 'raw': restore(state['params'])}


def test_inference_restores_the_ema_weights(ema_run):
  assert np.abs(ema_run['ema'] - ema_run['raw']).max() > 0.05  # The two really differ.
  graphdef, params, step = inference.load_for_inference(ema_run['config'], ema_run['run'])
  assert step == 3
  out = np.asarray(nnx.merge(graphdef, params)(ema_run['photo'][None])['restored'][0])
  np.testing.assert_allclose(out, ema_run['ema'], atol=2e-4)


def test_restorer_from_a_workdir_needs_only_the_workdir(ema_run):
  restorer = inference.Restorer.from_workdir(ema_run['run'])
  assert restorer.step == 3 and restorer.config.train.ema_rate == 0.9
  assert restorer.bucket == 0  # The stored config's deblur settings, not the defaults.
  out = restorer.restore(images.to_uint8(ema_run['photo']))
  assert set(out) == {'image'} and out['image'].shape == (40, 44, 3)
  np.testing.assert_allclose(out['image'], ema_run['ema'], atol=2e-4)


def test_neighbouring_tile_windows_blend_smoothly_into_one():
  starts = inference.tile_starts(704, 256, 32, 4)
  windows = inference._windows(starts, 256)  # pylint: disable=protected-access
  total = np.zeros(704)
  for start, window in zip(starts, windows):
    total[start:start + 256] += window
    # A raised-cosine ramp: no jump anywhere (a hard 0/1 cut would jump by 1).
    assert np.abs(np.diff(window)).max() < 0.1
  np.testing.assert_allclose(total, 1.0, atol=1e-6)


def test_size_buckets_share_compiled_shapes_and_change_only_the_far_border(ema_run):
  config = run_config.from_plain(run_config.to_plain(ema_run['config']))
  rng = np.random.default_rng(1)
  photos = [rng.random((h, w, 3)).astype(np.float32) for h, w in ((100, 110), (104, 100), (110, 120))]
  outputs = {}
  for bucket in (0, 128):
    config.deblur.size_bucket = bucket
    restorer = inference.Restorer.from_workdir(ema_run['run'], config=config)
    outputs[bucket] = [restorer.restore(p)['image'] for p in photos]
    compiled = restorer._fn._cache_size()  # pylint: disable=protected-access
    assert compiled == (3 if bucket == 0 else 1), (bucket, compiled)
  for plain, bucketed, photo in zip(outputs[0], outputs[128], photos):
    assert bucketed.shape == photo.shape
    # Away from the bottom and right edges the extra padding is out of reach.
    np.testing.assert_allclose(bucketed[:48, :48], plain[:48, :48], atol=1e-4)


@pytest.fixture(scope='module')
def tiny_model():
  """(config, graphdef, params) of a tiny XYDeblur with random weights."""
  from xydiff.configs import demo
  config = tiny(demo.get_config())
  config.deblur.size_bucket = 0
  graphdef, state = random_state(config)
  return config, graphdef, state['params']


def _restorer(tiny_model, **deblur):
  config, graphdef, params = tiny_model
  config = run_config.from_plain(run_config.to_plain(config))
  config.deblur.update(deblur)
  return inference.Restorer(config, graphdef, params, 0)


def test_the_restorer_refuses_too_many_pixels_by_shape_before_any_work(tiny_model):
  restorer = _restorer(tiny_model, max_megapixels=0.001)
  photo = np.zeros((40, 44, 3), np.uint8)  # 1,760 pixels.
  with pytest.raises(ImageTooLargeError) as e:
    restorer.restore(photo)
  assert str(e.value) == ('the image is 44x40 = 0.0018 MP, over the limit of 0.001 MP '
                          '(config.deblur.max_megapixels)')
  assert restorer._fn._cache_size() == 0  # pylint: disable=protected-access  # Nothing compiled.
  assert _restorer(tiny_model, max_megapixels=0).restore(photo)['image'].shape == (40, 44, 3)
  with pytest.raises(ConfigError, match=r'config\.deblur\.max_megapixels=-5.0: must be a number'):
    _restorer(tiny_model, max_megapixels=-5)
  config = run_config.from_plain(run_config.to_plain(tiny_model[0]))
  del config.deblur['max_megapixels']  # A run stored before the field: the default limit.
  assert inference.Restorer(config, *tiny_model[1:], 0).pixel_limit.megapixels == 50


def test_empty_and_too_small_images_are_one_line_in_width_x_height(tiny_model):
  restorer = _restorer(tiny_model)
  assert restorer.align == 4  # Reflect padding to 4 needs at least 3 pixels a side.
  for height, width in ((0, 56), (56, 0), (1, 56), (2, 2), (3, 2)):
    with pytest.raises(ImageValueError) as e:
      restorer.restore(np.zeros((height, width, 3), np.uint8))
    assert str(e.value) == (f'image of {width}x{height} pixels is too small: xydeblur needs '
                            'at least 3x3')
  assert restorer.restore(np.zeros((3, 3, 3), np.uint8))['image'].shape == (3, 3, 3)
  with pytest.raises(ImageValueError, match=r'one HxWx3 RGB image, got shape \(4, 4\)'):
    restorer.restore(np.zeros((4, 4), np.uint8))


def test_a_non_finite_output_is_refused_in_one_line(tiny_model):
  config, graphdef, params = tiny_model
  broken = jax.tree.map(lambda p: jax.numpy.asarray(p).at[(0,) * p.ndim].set(np.nan)
                        if p.ndim == 4 else p, params)
  restorer = inference.Restorer(config, graphdef, broken, 7)
  with pytest.raises(NonFiniteOutputError) as e:
    restorer.restore(np.full((12, 16, 3), 128, np.uint8))
  assert str(e.value).startswith('the restored image holds 576 NaN or infinite values (of 576): '
                                 'the xydeblur weights of step 7 give non-finite outputs')
  assert '\n' not in str(e.value)


def test_compiled_shapes_stay_bounded(tiny_model):
  restorer = _restorer(tiny_model)
  restorer.max_compiled_shapes = 2
  rng = np.random.default_rng(2)
  counts = []
  for height in (12, 16, 20, 24, 16):
    restorer.restore(rng.random((height, 12, 3)).astype(np.float32))
    counts.append(restorer._fn._cache_size())  # pylint: disable=protected-access
  # 12, 16; then 20 is a third shape: all forgotten, 20 compiled; 24; then 16 once more.
  assert counts == [1, 2, 1, 2, 1]
  restorer.clear_compiled()
  assert restorer._fn._cache_size() == 0  # pylint: disable=protected-access


def test_restore_returns_the_unclipped_network_output_as_its_docstring_says(tiny_model):
  """'image' is what the network computes (the evaluator's and export's values), not clipped."""
  config, graphdef, params = tiny_model
  loud = jax.tree.map(lambda p: 4.0 * p if p.ndim == 4 else p, params)  # Overshoots at edges.
  photo = np.random.default_rng(3).random((24, 28, 3)).astype(np.float32)
  out = inference.Restorer(config, graphdef, loud, 0).restore(photo)['image']
  raw = np.asarray(nnx.merge(graphdef, loud)(photo[None])['restored'][0])
  assert out.min() < -0.01 and out.max() > 1.01
  np.testing.assert_allclose(out, raw, atol=2e-5)
  assert 'not clipped' in inference.Restorer.__doc__


def test_odd_sizes_are_padded_on_the_host_exactly_as_the_network_pads(tiny_model):
  """restore_image reflect-pads with numpy (no eager jax op to compile per shape)."""
  config, graphdef, params = tiny_model
  photo = np.random.default_rng(4).random((37, 53, 3)).astype(np.float32)
  out = _restorer(tiny_model).restore(photo)['image']
  raw = np.asarray(nnx.merge(graphdef, params)(photo[None])['restored'][0])  # Pads inside.
  assert out.shape == (37, 53, 3) and out.flags.c_contiguous
  np.testing.assert_allclose(out, raw, atol=2e-5)
