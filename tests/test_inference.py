"""inference: the weights it restores, the Restorer API, tile blending and size buckets."""

import inspect
import pydoc

import jax
import numpy as np
import pytest
from flax import nnx

from conftest import tiny
from test_ensemble import random_state
from test_images import claim_size
from xydiff import config as run_config, images, models
from xydiff.diffusion import samplers
from xydiff.errors import ConfigError, ImageTooLargeError, ImageValueError, NonFiniteOutputError
from xydiff.inference import restorer as inference, tiles
from xydiff.runs import checkpoint, state as state_lib


def _copy(config, **inference_fields):
  copy = run_config.from_plain(run_config.to_plain(config))
  copy.inference.update(inference_fields)
  return copy


def _compiled(restorer) -> int:
  """Executables JAX holds for every one of the restorer's restore functions."""
  return sum(fn._cache_size() for fn in restorer._compiled.values())  # pylint: disable=protected-access


@pytest.fixture(scope='module')
def ema_run(tmp_path_factory):
  """A workdir whose EMA weights differ from its raw weights, as after real training."""
  from xydiff.configs import demo
  config = tiny(demo.get_config())
  config.train.ema_rate = 0.9
  config.inference.size_bucket = 0  # Stored with the run: restore() must match the model exactly.
  graphdef, state = random_state(config)
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
  graphdef, params, step = checkpoint.load_params(ema_run['config'], ema_run['run'])
  assert step == 3
  out = np.asarray(nnx.merge(graphdef, params)(ema_run['photo'][None])['restored'][0])
  np.testing.assert_allclose(out, ema_run['ema'], atol=2e-4)


def test_restorer_from_a_workdir_needs_only_the_workdir(ema_run):
  restorer = inference.Restorer.from_workdir(ema_run['run'])
  assert restorer.step == 3 and restorer.config.train.ema_rate == 0.9
  # The stored config's inference settings, not the defaults.
  assert restorer.config.inference.size_bucket == 0
  out = restorer.restore(images.to_uint8(ema_run['photo']))
  assert set(out) == {'image'} and out['image'].shape == (40, 44, 3)
  np.testing.assert_allclose(out['image'], ema_run['ema'], atol=2e-4)


def test_neighbouring_tile_windows_blend_smoothly_into_one():
  starts = tiles.tile_starts(704, 256, 32, 4)
  windows = tiles._windows(starts, 256)  # pylint: disable=protected-access
  total = np.zeros(704)
  for start, window in zip(starts, windows):
    total[start:start + 256] += window
    # A raised-cosine ramp: no jump anywhere (a hard 0/1 cut would jump by 1).
    assert np.abs(np.diff(window)).max() < 0.1
  np.testing.assert_allclose(total, 1.0, atol=1e-6)


def test_size_buckets_share_compiled_shapes_and_change_only_the_far_border(ema_run):
  rng = np.random.default_rng(1)
  photos = [rng.random((h, w, 3)).astype(np.float32) for h, w in ((100, 110), (104, 100), (110, 120))]
  outputs = {}
  for bucket in (0, 128):
    config = _copy(ema_run['config'], size_bucket=bucket)
    restorer = inference.Restorer.from_workdir(ema_run['run'], config=config)
    outputs[bucket] = [restorer.restore(p)['image'] for p in photos]
    compiled = _compiled(restorer)
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
  config.inference.size_bucket = 0
  graphdef, state = random_state(config)
  return config, graphdef, state['params']


def _restorer(tiny_model, **inference_fields):
  config, graphdef, params = tiny_model
  return inference.Restorer(_copy(config, **inference_fields), graphdef, params, 0)


def test_the_restorer_refuses_too_many_pixels_by_shape_before_any_work(tiny_model):
  restorer = _restorer(tiny_model, max_megapixels=0.001)
  photo = np.zeros((40, 44, 3), np.uint8)  # 1,760 pixels.
  for image in (photo, photo[None].repeat(2, axis=0), photo[..., 0]):  # RGB, batch, grey.
    with pytest.raises(ImageTooLargeError) as e:
      restorer.restore(image)
    assert str(e.value) == ('the image is 44x40 = 0.0018 MP, over the limit of 0.001 MP '
                            '(config.inference.max_megapixels)')
  assert _compiled(restorer) == 0  # Nothing compiled.
  assert _restorer(tiny_model, max_megapixels=0).restore(photo)['image'].shape == (40, 44, 3)
  with pytest.raises(ConfigError, match=r'config\.inference\.max_megapixels=-5\.0: must be a number'):
    _restorer(tiny_model, max_megapixels=-5)
  config = _copy(tiny_model[0])
  del config.inference['max_megapixels']  # A run stored before the field: the default limit.
  assert inference.Restorer(config, *tiny_model[1:], 0).pixel_limit.megapixels == 50


def test_empty_and_too_small_images_are_one_line_in_width_x_height(tiny_model):
  restorer = _restorer(tiny_model)
  assert restorer.align == 4  # Reflect padding to 4 needs at least 3 pixels a side.
  for height, width in ((0, 56), (56, 0), (1, 56), (2, 2), (3, 2)):
    for image in (np.zeros((height, width, 3), np.uint8), np.zeros((height, width), np.uint8),
                  np.zeros((2, height, width, 3), np.uint8)):
      with pytest.raises(ImageValueError) as e:
        restorer.restore(image)
      assert str(e.value) == (f'image of {width}x{height} pixels is too small: xydeblur needs '
                              'at least 3x3')
  assert restorer.restore(np.zeros((3, 3, 3), np.uint8))['image'].shape == (3, 3, 3)
  with pytest.raises(ImageValueError, match=r'^restore got an empty batch of shape \(0, 8, 8, 3\)'):
    restorer.restore(np.zeros((0, 8, 8, 3), np.uint8))
  for shape in ((4, 4, 2), (4,), (2, 2, 4, 4, 3), (2, 4, 4, 5)):
    with pytest.raises(ImageValueError) as e:
      restorer.restore(np.zeros(shape, np.uint8))
    assert str(e.value) == ('restore takes an HxW or HxWx3 image or an NxHxWx3 batch, got shape '
                            f'{shape}')
  assert _compiled(restorer) == 1  # Only the one 3x3 image that went through.


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
  restorer.MAX_COMPILED_SHAPES = 2
  rng = np.random.default_rng(2)
  counts = []
  for height in (12, 16, 20, 24, 16):
    restorer.restore(rng.random((height, 12, 3)).astype(np.float32))
    counts.append(_compiled(restorer))
  # 12, 16; then 20 is a third shape: all forgotten, 20 compiled; 24; then 16 once more.
  assert counts == [1, 2, 1, 2, 1]
  restorer.clear_compiled()
  assert _compiled(restorer) == 0


def test_restore_returns_the_unclipped_network_output_as_its_docstring_says(tiny_model):
  """'image' is what the network computes (the evaluator's and export's values), not clipped."""
  config, graphdef, params = tiny_model
  loud = jax.tree.map(lambda p: 4.0 * p if p.ndim == 4 else p, params)  # Overshoots at edges.
  photo = np.random.default_rng(3).random((24, 28, 3)).astype(np.float32)
  out = inference.Restorer(config, graphdef, loud, 0).restore(photo)['image']
  raw = np.asarray(nnx.merge(graphdef, loud)(photo[None])['restored'][0])
  assert out.min() < -0.01 and out.max() > 1.01
  np.testing.assert_allclose(out, raw, atol=2e-5)
  assert 'not clipped' in inference.Restorer.restore.__doc__


def test_odd_sizes_are_padded_on_the_host_exactly_as_the_network_pads(tiny_model):
  """restore_image reflect-pads with numpy (no eager jax op to compile per shape)."""
  config, graphdef, params = tiny_model
  photo = np.random.default_rng(4).random((37, 53, 3)).astype(np.float32)
  out = _restorer(tiny_model).restore(photo)['image']
  raw = np.asarray(nnx.merge(graphdef, params)(photo[None])['restored'][0])  # Pads inside.
  assert out.shape == (37, 53, 3) and out.flags.c_contiguous
  np.testing.assert_allclose(out, raw, atol=2e-5)


# ------------------------------------------------------------------ what restore takes


@pytest.fixture(scope='module')
def xydeblur(tiny_model):
  """One Restorer the tests of what restore takes share: a 16x20 image compiles once."""
  return _restorer(tiny_model)


def test_restore_takes_a_path_as_the_image_in_it(xydeblur, tmp_path):
  rng = np.random.default_rng(5)
  levels = rng.integers(0, 256, (16, 20, 3), np.uint8)
  images.write_png(str(tmp_path / 'photo.png'), levels)
  want = xydeblur.restore(levels)['image']
  np.testing.assert_array_equal(xydeblur.restore(str(tmp_path / 'photo.png'))['image'], want)
  np.testing.assert_array_equal(xydeblur.restore(tmp_path / 'photo.png')['image'], want)  # Path.
  deep = rng.integers(0, 65536, (16, 20, 3), np.uint16)  # 16 bits read at full precision.
  images.write_png(str(tmp_path / 'deep.png'), deep)
  np.testing.assert_array_equal(xydeblur.restore(tmp_path / 'deep.png')['image'],
                                xydeblur.restore(deep)['image'])
  # A file over the limit is refused from its header, naming it, before a pixel is decoded.
  bomb = tmp_path / 'bomb.png'
  bomb.write_bytes(claim_size((tmp_path / 'photo.png').read_bytes(), 30000, 30000))
  with pytest.raises(ImageTooLargeError) as e:
    xydeblur.restore(bomb)
  assert str(e.value) == (f'{bomb} is 30000x30000 = 900.0 MP, over the limit of 50 MP '
                          '(config.inference.max_megapixels)')


def test_restore_takes_a_grey_image_and_returns_it_grey(xydeblur):
  grey = np.random.default_rng(6).integers(0, 256, (16, 20), np.uint8)
  out = xydeblur.restore(grey)['image']
  assert out.shape == (16, 20) and out.dtype == np.float32
  as_rgb = xydeblur.restore(np.repeat(grey[..., None], 3, axis=-1))['image']
  np.testing.assert_allclose(out, as_rgb.mean(axis=-1), atol=1e-6)
  assert np.abs(as_rgb[..., 0] - as_rgb[..., 1]).max() > 1e-4  # The mean is a real choice.
  np.testing.assert_array_equal(xydeblur.restore(grey[..., None])['image'], out)  # HxWx1 too.


def test_restore_takes_a_batch_image_by_image(xydeblur):
  batch = np.random.default_rng(7).random((3, 16, 20, 3)).astype(np.float32)
  out = xydeblur.restore(batch)
  assert set(out) == {'image'} and out['image'].shape == (3, 16, 20, 3)
  for one, restored in zip(batch, out['image']):
    np.testing.assert_array_equal(restored, xydeblur.restore(one)['image'])
  assert np.abs(out['image'][0] - out['image'][1]).max() > 1e-3


@pytest.fixture(scope='module')
def tiny_dvsr():
  """(config, graphdef, params) of a tiny DvSR with random weights."""
  from xydiff.configs import demo
  config = tiny(demo.get_config('diffusion'))
  config.inference.size_bucket = 0
  graphdef, state = random_state(config)
  return config, graphdef, state['params']


def test_restore_passes_preset_steps_samples_and_sampler_to_dvsr(tiny_dvsr):
  config, graphdef, params = tiny_dvsr
  restorer = inference.Restorer(config, graphdef, params, 0)
  asked = dict(preset='perceptual', steps=2, samples=3, sampler='ddim')
  batch = np.random.default_rng(8).random((2, 16, 16, 3)).astype(np.float32)  # Multiples of 4.
  out = restorer.restore(batch, seed=5, **asked)
  assert set(out) == {'image', 'samples', 'std'}
  assert out['image'].shape == out['std'].shape == (2, 16, 16, 3)
  assert out['samples'].shape == (2, 3, 16, 16, 3)  # [S, H, W, 3] per image: 3 samples.
  # The one function compiled and run is DvSR's restore with exactly these settings.
  settings = models.family('dvsr').settings(config, **asked)
  assert (settings.preset, settings.num_steps, settings.num_samples, settings.sampler) == (
      'perceptual', 2, 3, 'ddim')
  assert list(restorer._compiled) == [(settings, False)]  # pylint: disable=protected-access
  # Image n draws from fold_in(key(seed), n); another seed draws other noise.
  key = jax.random.key(5)
  for n, one in enumerate(batch):
    alone = restorer.restore(one, key=jax.random.fold_in(key, n), **asked)
    np.testing.assert_array_equal(alone['image'], out['image'][n])
    np.testing.assert_array_equal(alone['samples'], out['samples'][n])
  other = restorer.restore(batch[0], seed=6, **asked)['image']
  assert np.abs(other - out['image'][0]).max() > 1e-4
  assert np.abs(out['samples'][0, 0] - out['samples'][0, 1]).max() > 1e-4  # Samples differ.


def test_an_unknown_sampler_or_a_setting_the_model_lacks_is_one_line(tiny_dvsr, tiny_model):
  restorer = inference.Restorer(*tiny_dvsr, 0)
  photo = np.zeros((8, 8, 3), np.uint8)
  for asked, message in ((dict(sampler='euler'), f"sampler='euler': must be one of "
                          f'{samplers.SAMPLERS}'),
                         (dict(preset='fast'), "preset='fast': must be one of"),
                         (dict(steps=0), 'steps=0: must be a positive integer'),
                         (dict(samples=-1), 'samples=-1: must be a positive integer')):
    with pytest.raises(ConfigError) as e:
      restorer.restore(photo, **asked)
    assert str(e.value).startswith(message) and '\n' not in str(e.value)
  assert _compiled(restorer) == 0  # Refused before any work.
  with pytest.raises(ConfigError, match='xydeblur restores in one pass') as e:
    _restorer(tiny_model).restore(photo, sampler='ddim')
  assert '\n' not in str(e.value)


def test_help_of_the_restorer_documents_each_argument_of_restore():
  text = pydoc.render_doc(inference.Restorer, renderer=pydoc.plaintext)  # What help() shows.
  doc = inference.Restorer.restore.__doc__
  parameters = inspect.signature(inference.Restorer.restore).parameters
  for argument in ('image', 'preset', 'steps', 'samples', 'sampler', 'seed', 'key', 'tile',
                   'ensemble', 'on_tile'):
    assert argument in parameters, argument
    if argument != 'image':  # Settings by name only: a positional 8 is no setting's name.
      assert parameters[argument].kind is inspect.Parameter.KEYWORD_ONLY, argument
    assert f'\n      {argument}: ' in doc, argument  # Explained under Args.
  for line in doc.splitlines():  # help(Restorer) shows all of it.
    assert line.strip() in text, line
  for kind in ('path', 'HxW', 'NxHxWx3', 'from_workdir', 'from_pretrained'):
    assert kind in text, kind
  for name in samplers.SAMPLERS:  # The sampler names a user may pass.
    assert repr(name) in doc, name
