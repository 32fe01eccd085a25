"""The metric table: one row makes a metric appear in evaluation and --mode=score reports."""

import jax.numpy as jnp
import numpy as np

from xydiff import images
from xydiff.evaluation import folders as score
from xydiff.evaluation import scoring


def _mean_abs(pred, target):
  return jnp.mean(jnp.abs(pred - target), axis=(1, 2, 3))


def test_a_new_row_reaches_the_score_report(tmp_path, monkeypatch, demo_config):
  monkeypatch.setitem(scoring.METRICS, 'mean_abs',
                      scoring.Metric('mean_abs', _mean_abs, 'mean |pred - target|, [0, 1]',
                                     reports=('table',)))
  rng = np.random.default_rng(0)
  for folder in ('restored', 'sharp'):
    (tmp_path / folder).mkdir()
  sharp = rng.random((24, 32, 3))
  restored = np.clip(sharp + 0.1, 0, 1)
  images.write_png(str(tmp_path / 'sharp' / 'a.png'), images.to_uint8(sharp))
  images.write_png(str(tmp_path / 'restored' / 'a.png'), images.to_uint8(restored))
  demo_config.eval.lpips = False
  summary = score.run(demo_config, str(tmp_path / 'out'), str(tmp_path / 'restored'),
                      str(tmp_path / 'sharp'))
  assert summary['metrics']['mean_abs'] == 'mean |pred - target|, [0, 1]'
  expected = np.abs(images.to_float(images.to_uint8(restored))
                    - images.to_float(images.to_uint8(sharp))).mean()
  assert abs(summary['outputs']['restored']['mean_abs'] - expected) < 1e-6
  assert 'lpips' not in summary['metrics'] and 'niqe' not in summary['metrics']


def test_each_report_reads_its_rows():
  assert scoring.metric_names('table') == ('psnr', 'ssim', 'ssim3d', 'lpips')
  assert scoring.metric_names('sweep', with_lpips=False) == ('psnr', 'ssim', 'niqe')
