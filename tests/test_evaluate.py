"""The evaluator's protocols, and --mode=score on folders of someone else's outputs."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import GOPRO_SAMPLE, run_launch, tiny
from test_realblur import FRAMES, TRUE_WARP, _crop, _frame, _moved_crop
from xydiff import images, metrics, models
from xydiff.evaluation import evaluator as evaluate
from xydiff.evaluation import folders as score
from xydiff.errors import DataError
from xydiff.metrics import realblur


class _Pair:
  """A one-pair source, misregistered like a RealBlur pair."""
  names = ['scene/000001']

  def __init__(self, blur, sharp):
    self.pair = images.to_uint8(blur), images.to_uint8(sharp)

  def __len__(self):
    return 1

  def load(self, index):
    return self.pair


def test_realblur_evaluation_aligns_by_default_and_gopro_does_not(tmp_path):
  """The Evaluator on a misregistered pair: RealBlur's scores see through the shift."""
  from xydiff.configs import xydeblur_gopro
  sharp = _crop(_frame(*FRAMES[0], 'sharp'))
  moved = _moved_crop(_frame(*FRAMES[0], 'sharp'), TRUE_WARP)
  config = tiny(xydeblur_gopro.get_config())
  config.eval.num_image_summaries = 0
  model = models.build(config.model)
  model.decoder.out.kernel[...] = jnp.zeros_like(model.decoder.out.kernel[...])
  model.decoder.out.bias[...] = jnp.zeros_like(model.decoder.out.bias[...])
  graphdef, params = nnx.split(model, nnx.Param)  # Restores x as x: output == input.
  summaries = {}
  for name in ('realblur_j', 'gopro'):
    config.data.name = name
    summaries[name] = evaluate.Evaluator(config, str(tmp_path / name), _Pair(moved, sharp)).run(
        graphdef, params, 0)
  realblur_summary, gopro = summaries['realblur_j'], summaries['gopro']
  assert realblur_summary['metrics'] == {'psnr': metrics.REALBLUR_LABEL,
                                         'ssim': metrics.REALBLUR_LABEL}
  assert realblur_summary['alignment_failures'] == 0
  assert gopro['metrics']['psnr'] == metrics.PSNR_UINT8_LABEL
  assert 'alignment_failures' not in gopro and 'lpips' in gopro['metrics']
  expected_psnr = realblur.realblur_scores(moved, sharp)['psnr']
  assert realblur_summary['outputs']['restored']['psnr'] == pytest.approx(expected_psnr, abs=1e-3)
  # Aligned, the shifted copy of the sharp frame scores far better than unaligned.
  assert (realblur_summary['outputs']['restored']['psnr'] >
          gopro['outputs']['restored']['psnr'] + 8)
  # The MPRNet/Restormer test layout of RealBlur is aligned too; forcing wins.
  config.data.update(dict(name='prepared', tfds_config='realblur_r'))
  assert evaluate.Evaluator(config, str(tmp_path / 'prepared'), _Pair(moved, sharp)).scorer.aligned
  config.eval.align = 'none'
  config.data.update(dict(name='realblur_j', tfds_config=''))
  assert not evaluate.Evaluator(config, str(tmp_path / 'off'), _Pair(moved, sharp)).scorer.aligned
  assert evaluate.eval_subdir(config) == 'eval_realblur_j_test_align-none'


@pytest.fixture(scope='module')
def released_outputs(tmp_path_factory):
  """Another method's 'released results': the sample test frames, slightly degraded."""
  root = tmp_path_factory.mktemp('released')
  restored, sharp = root / 'restored', root / 'sharp'
  restored.mkdir()
  sharp.mkdir()
  rng = np.random.default_rng(0)
  truth = {}
  for sequence, frame in FRAMES:
    image = images.read_image(str(GOPRO_SAMPLE / 'test' / sequence / 'sharp' / f'{frame}.png'))
    image = image[200:328, 300:460]  # 128x160 crops keep the test quick.
    noisy = np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
    images.write_png(str(sharp / f'{sequence}_{frame}.png'), image)
    images.write_png(str(restored / f'{sequence}_{frame}.png'), noisy)
    truth[f'{sequence}_{frame}'] = (noisy, image)
  return root, truth


def test_score_mode_scores_a_folder_like_evaluation(released_outputs):
  root, truth = released_outputs
  result = run_launch('--mode=score', f'--input={root / "restored"}', f'--target={root / "sharp"}',
                      f'--workdir={root / "scores"}', timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((root / 'scores' / 'score.json').read_text())
  assert report['num_images'] == 2 and report['metrics']['psnr'] == metrics.PSNR_UINT8_LABEL
  for entry in report['images']:
    noisy, image = truth[entry['name']]
    expected = float(metrics.psnr_uint8(images.to_float(noisy), images.to_float(image))[0])
    assert entry['outputs']['restored']['psnr'] == pytest.approx(expected, abs=1e-4)
  assert report['outputs']['restored']['psnr'] == pytest.approx(
      np.mean([e['psnr'] for e in report['images']]), abs=1e-6)
  assert set(report['outputs']['restored']) == {'psnr', 'ssim', 'ssim3d', 'lpips'}
  rows = (root / 'scores' / 'score.csv').read_text().splitlines()
  assert rows[0].startswith('name,') and 'restored_psnr' in rows[0] and len(rows) == 3


def test_score_refuses_an_unpaired_file_naming_it(released_outputs, tmp_path, demo_config):
  root, _ = released_outputs
  restored = tmp_path / 'restored'
  restored.mkdir()
  for path in (root / 'restored').iterdir():
    (restored / path.name).write_bytes(path.read_bytes())
  (restored / 'extra.png').write_bytes(next((root / 'restored').iterdir()).read_bytes())
  with pytest.raises(DataError, match=r'extra\.png has no partner'):
    score.run(demo_config, str(tmp_path / 'scores'), str(restored), str(root / 'sharp'))
  assert not (tmp_path / 'scores' / 'score.json').exists()


def _random_inception_file(path):
  """A torch.save'd state dict of the FID Inception's shapes, small random weights."""
  import torch
  from xydiff.metrics import fid
  rng = np.random.default_rng(0)
  state = {}
  for name, (cin, cout, (kh, kw), _, _) in fid.CONV_SPECS.items():
    fan_in = cin * kh * kw
    state[f'{name}.conv.weight'] = torch.from_numpy(
        rng.normal(0, (2.0 / fan_in) ** 0.5, (cout, cin, kh, kw)).astype(np.float32))
    for key, value in (('weight', 1.0), ('bias', 0.0), ('running_mean', 0.0),
                       ('running_var', 1.0)):
      state[f'{name}.bn.{key}'] = torch.full((cout,), value)
  torch.save(state, str(path))


def test_fid_and_kid_join_the_report_when_weights_are_named(released_outputs, tmp_path,
                                                           demo_config):
  root, _ = released_outputs
  weights = tmp_path / 'pt_inception-2015-12-05-6726825d.pth'
  _random_inception_file(weights)
  demo_config.eval.inception_weights = str(weights)
  report = score.run(demo_config, str(tmp_path / 'scores'), str(root / 'restored'),
                     str(root / 'sharp'))
  restored = report['outputs']['restored']
  assert 'Inception' in report['metrics']['fid'] and 'MMD' in report['metrics']['kid']
  assert np.isfinite(restored['fid']) and restored['fid'] > 0 and np.isfinite(restored['kid'])
  # The sharp images against themselves: zero.
  same = score.run(demo_config, str(tmp_path / 'same'), str(root / 'sharp'), str(root / 'sharp'))
  assert same['outputs']['restored']['fid'] == pytest.approx(0.0, abs=1e-3)
  demo_config.eval.inception_weights = ''
  off = score.run(demo_config, str(tmp_path / 'off'), str(root / 'restored'), str(root / 'sharp'))
  assert 'fid' not in off['metrics'] and 'fid' not in off['outputs']['restored']
