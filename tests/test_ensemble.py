"""The x8 test-time self-ensemble (config.inference.ensemble): transforms, Restorer, eval."""

import jax
import numpy as np
import pytest

from conftest import tiny
from xydiff import images, models
from xydiff.inference import ensemble as ensemble_lib, restorer as inference
from xydiff import config as run_config
from xydiff.evaluation import scoring
from xydiff.runs import state as state_lib
from xydiff.errors import ConfigError

# The 8 flips x rot90 and their inverses, written out here independently of
# ensemble.dihedral: (forward, inverse) on H, W = axes -3, -2.
ROT = lambda k: (lambda x: np.rot90(x, k, axes=(-3, -2)))
FLIP = lambda x: np.flip(x, axis=-2)
TRANSFORMS = ([(ROT(k), ROT(-k)) for k in range(4)] +
              [((lambda x, k=k: ROT(k)(FLIP(x))), (lambda y, k=k: FLIP(ROT(-k)(y))))
               for k in range(4)])


def _photo(h=40, w=44, seed=0):
  return np.random.default_rng(seed).random((h, w, 3)).astype(np.float32)


def test_the_eight_views_are_the_dihedral_group_and_each_is_undone():
  photo = _photo(5, 7)
  views = [ensemble_lib.dihedral(photo, k) for k in range(8)]
  assert len({v.tobytes() + bytes(v.shape) for v in views}) == 8  # All different.
  for k, (forward, _) in enumerate(TRANSFORMS):
    np.testing.assert_array_equal(views[k], forward(photo))
    np.testing.assert_array_equal(ensemble_lib.undo_dihedral(views[k], k), photo)
  samples = np.stack([photo, 2 * photo])  # [N, H, W, 3]: the same two spatial axes.
  for k in range(8):
    np.testing.assert_array_equal(ensemble_lib.undo_dihedral(ensemble_lib.dihedral(samples, k), k),
                                  samples)


def test_the_ensemble_turns_each_output_back_before_averaging():
  photo = _photo(6, 6)
  # Equivariant: the ensemble changes nothing.
  out = ensemble_lib.ensembled(lambda x: {'image': 2 * x}, photo, 8)
  np.testing.assert_allclose(out['image'], 2 * photo, atol=1e-6)
  # A left-to-right ramp added to each view: turned back, the 8 ramps point
  # right, left, up and down twice each and average to 0.5 everywhere.
  ramp = lambda x: np.broadcast_to(np.linspace(0, 1, x.shape[-2])[None, :, None], x.shape)
  out = ensemble_lib.ensembled(lambda x: {'image': x + ramp(x)}, photo, 8)
  np.testing.assert_allclose(out['image'], photo + 0.5, atol=1e-6)
  # ensemble 1 is the function itself.
  np.testing.assert_array_equal(
      ensemble_lib.ensembled(lambda x: {'image': x + ramp(x)}, photo, 1)['image'], photo + ramp(photo))


def random_state(config, seed=0):
  """(graphdef, train state) with random weights, without nnx's eager initialisers (seconds)."""
  graphdef, target = state_lib.abstract_state(config)
  rng = np.random.default_rng(seed)
  scale = lambda shape: 1 / np.sqrt(np.prod(shape[:-1])) if len(shape) > 1 else 0.01
  params = jax.tree.map(lambda s: (scale(s.shape) * rng.standard_normal(s.shape)).astype(s.dtype),
                        target['params'])
  return graphdef, state_lib.state_from_params(config, params)


def save_run(workdir, config, state):
  """A workdir as training leaves it: step-0 checkpoint and stored config."""
  from xydiff.runs import checkpoint
  with checkpoint.Checkpointer(str(workdir), config) as ckpt:
    ckpt.save(0, state)
  run_config.save(str(workdir), config)
  return str(workdir)


def _model(variant=''):
  from xydiff.configs import demo
  config = tiny(demo.get_config(variant))
  graphdef, state = random_state(config)
  return config, graphdef, state


def _with(config, **inference_fields):
  copy = run_config.from_plain(run_config.to_plain(config))
  copy.inference.update(inference_fields)
  return copy


def test_restorer_ensemble_averages_the_eight_tiled_restores_turned_back():
  config, graphdef, state = _model()
  # Tiles of 32 with 8 shared: the ensemble goes around the whole tiled restore.
  single = inference.Restorer(_with(config, tile=32, tile_overlap=8), graphdef, state['params'], 0)
  eight = inference.Restorer(_with(config, tile=32, tile_overlap=8, ensemble=8), graphdef,
                             state['params'], 0)
  assert eight.config.inference.ensemble == 8 and single.config.inference.ensemble == 1
  photo = images.to_uint8(_photo())
  expected = np.mean([back(single.restore(np.ascontiguousarray(forward(photo)))['image'])
                      for forward, back in TRANSFORMS], axis=0)
  out = eight.restore(photo)
  assert out['image'].shape == photo.shape
  np.testing.assert_allclose(out['image'], expected, atol=1e-6)
  plain = single.restore(photo)['image']
  assert np.abs(out['image'] - plain).max() > 1e-3  # Random weights are far from equivariant.


def test_diffusion_ensemble_samples_each_view_with_the_same_key():
  config, graphdef, state = _model('diffusion')
  single = inference.Restorer(config, graphdef, state['params'], 0)
  eight = inference.Restorer(_with(config, ensemble=8), graphdef, state['params'], 0)
  photo, key = _photo(16, 16), jax.random.key(3)  # Square: one compiled shape for all views.
  outs = [single.restore(np.ascontiguousarray(forward(photo)), key=key)
          for forward, _ in TRANSFORMS]
  samples = np.mean([back(o['samples']) for o, (_, back) in zip(outs, TRANSFORMS)], axis=0)
  out = eight.restore(photo, key=key)
  assert out['samples'].shape == (2, 16, 16, 3)
  np.testing.assert_allclose(out['samples'], samples, atol=1e-5)
  np.testing.assert_allclose(out['image'], samples.mean(axis=0), atol=1e-5)
  np.testing.assert_allclose(out['std'], samples.std(axis=0), atol=1e-5)


def test_evaluation_scores_the_ensemble(tmp_path):
  from xydiff.evaluation import evaluator as evaluate

  class OnePair:
    names = ['pair']
    __len__ = lambda self: 1
    load = lambda self, index: (images.to_uint8(_photo(32, 36, 1)),
                                images.to_uint8(_photo(32, 36, 2)))

  config, graphdef, state = _model()
  config.eval.lpips = False
  config.eval.num_image_summaries = 0
  blur, sharp = (images.to_float(a) for a in OnePair().load(0))
  settings = models.family(config.model.name).outputs(config)['restored']
  fn = inference.restore_fn(config, graphdef, settings)
  restore = lambda x: np.asarray(
      fn(state['params'], np.ascontiguousarray(x)[None], None)['image'][0])
  expected = np.mean([back(restore(forward(blur))) for forward, back in TRANSFORMS], axis=0)
  scores = {}
  for ensemble in (1, 8):
    config.inference.ensemble = ensemble
    summary = evaluate.Evaluator(config, str(tmp_path / f'eval{ensemble}'), OnePair()).run(
        graphdef, state['params'], 0)
    scores[ensemble] = summary['outputs']['restored']['psnr']
  assert scores[8] == pytest.approx(scoring.Scorer(False, False)(expected, sharp)['psnr'], abs=1e-4)
  assert scores[8] != pytest.approx(scores[1], abs=1e-3)


def test_an_ensemble_other_than_1_or_8_is_refused_naming_the_field(tmp_path):
  import json
  from xydiff.configs import demo
  config = tiny(demo.get_config())
  config.inference.ensemble = 4
  with pytest.raises(ConfigError, match=r'config\.inference\.ensemble=4: must be 1 .* or 8'):
    inference.validate(config.inference)
  _, graphdef, state = _model()
  with pytest.raises(ConfigError, match=r'config\.inference\.ensemble=4'):
    inference.Restorer(config, graphdef, state['params'], 0)
  # A run stored before the field existed: no ensemble.
  stored = run_config.to_plain(config)
  del stored['inference']['ensemble']
  (tmp_path / 'config.json').write_text(json.dumps(stored))
  loaded = run_config.load(str(tmp_path))
  inference.validate(loaded.inference)
  assert loaded.inference.ensemble == 1


def test_the_page_applies_the_ensemble_it_is_asked_for():
  from xydiff.cli import page as serve
  config, graphdef, state = _model()
  served = serve.ServedModel('tiny', inference.Restorer(config, graphdef, state['params'], 0))
  photo = images.to_uint8(_photo(24, 28))
  eight = inference.Restorer(_with(config, ensemble=8), graphdef, state['params'], 0)
  np.testing.assert_array_equal(served.restore(photo, serve.Settings(ensemble=8))['image'],
                                eight.restore(photo)['image'])
  assert served.restorer(serve.Settings(ensemble=1)) is served.base  # The stored settings.
