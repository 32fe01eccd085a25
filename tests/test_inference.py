"""inference: the weights it restores, the Restorer API, tile blending and size buckets."""

import jax
import numpy as np
import pytest
from flax import nnx

from conftest import tiny
from xydiff import images
from xydiff.runs import checkpoint
from xydiff.inference import restorer as inference
from xydiff import config as run_config
from xydiff.runs import state as state_lib


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
