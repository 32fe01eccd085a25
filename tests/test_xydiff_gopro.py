"""xydiff end to end on the real GoPro frames: train, evaluate both presets, sweep."""

import csv
import json

from conftest import GOPRO_SAMPLE, run_launch

TINY = ['--config.model.predictor.base=4', '--config.model.predictor.multipliers=(1,2)',
        '--config.model.predictor.num_res=1', '--config.model.denoiser.base=4',
        '--config.model.denoiser.multipliers=(1,2)', '--config.model.denoiser.num_res=1',
        '--config.data.crop=32', '--config.train.batch_size=2', '--config.train.num_steps=2',
        '--config.train.checkpoint_every=2', '--config.train.eval_every=2',
        '--config.train.warmup_steps=1', '--config.inference.presets.perceptual.num_steps=3',
        '--config.inference.presets.sa.num_steps=2', '--config.inference.presets.sa.num_samples=2',
        '--config.data.eval_max_images=1', '--config.eval.num_image_summaries=1',
        '--config.eval.sweep.schedules=((2,0.0001,0.8),(3,0.0001,0.6))',
        '--config.eval.sweep.num_samples=(1,2)', '--config.eval.lpips=False']


def test_xydiff_trains_evaluates_presets_and_sweeps(tmp_path):
  workdir = tmp_path / 'xydiff'
  common = ['--config=xydiff/configs/gopro.py', f'--workdir={workdir}',
            f'--config.data.root={GOPRO_SAMPLE}', *TINY]
  result = run_launch(*common)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((workdir / 'eval' / 'step_2.json').read_text())
  assert set(report['outputs']) == {'predictor', 'perceptual', 'sa'}
  assert report['primary'] == 'sa'
  for scores in report['outputs'].values():
    assert 5 < scores['psnr'] < 60 and 0 < scores['ssim'] <= 1
  # The zero-initialised predictor starts at the identity: after 2 tiny steps g(y)
  # is still close to the blurry input.
  assert abs(report['outputs']['predictor']['psnr'] - report['input']['psnr']) < 1.0
  name = report['images'][0]['name'].replace('/', '_')
  pictures = {p.name for p in (workdir / 'eval' / 'step_2').iterdir()}
  for kind in ('input', 'sharp', 'predictor', 'sa', 'sa_std', 'sa_sample', 'perceptual'):
    assert f'{name}_{kind}.png' in pictures

  sweep = run_launch(*common, '--mode=sweep')
  assert sweep.returncode == 0, sweep.stderr[-3000:]
  rows = json.loads((workdir / 'sweep' / 'step_2.json').read_text())['rows']
  assert [(r['num_steps'], r['num_samples']) for r in rows] == [(2, 1), (2, 2), (3, 1), (3, 2)]
  # One sample has no spread; two samples do.
  assert rows[0]['spread'] == 0 and rows[1]['spread'] > 0
  assert all(r['niqe'] > 0 for r in rows)  # Full GoPro frames: NIQE is defined.
  assert all(r['lpips'] is None for r in rows)  # Off in this run (test_runs scores it).
  with open(workdir / 'sweep' / 'step_2.csv') as f:
    assert len(list(csv.DictReader(f))) == 4
  assert (workdir / 'sweep' / 'step_2.png').stat().st_size > 10_000


def test_sweep_refuses_a_deterministic_model(tmp_path):
  result = run_launch('--config=xydiff/configs/xydeblur_gopro.py', f'--workdir={tmp_path}',
                      f'--config.data.root={GOPRO_SAMPLE}', '--mode=sweep', timeout=120)
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert "config.model.name='xydeblur': this model samples nothing to sweep" in last, last
  assert 'Traceback' not in result.stderr
