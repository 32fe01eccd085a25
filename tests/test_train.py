"""Whole runs on mock and real data: train step, checkpoints, resume, evaluation, guard rails."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import GOPRO_SAMPLE, assert_same_state, run_launch, tiny
from xydiff import data
from xydiff.runs import checkpoint
from xydiff.runs import state as state_lib
from xydiff.train import step as step_lib
from xydiff.train import loop as train
from xydiff.evaluation.evaluator import Evaluator
from xydiff.errors import CheckpointMismatchError, ConfigError, NonFiniteLossError


def _mock_batch(n=2, size=16):
  blur = jax.random.uniform(jax.random.key(0), (n, size, size, 3))
  return {'blur': blur, 'sharp': jnp.clip(blur + 0.05, 0, 1)}


@pytest.mark.parametrize('variant', ['', 'diffusion'])
def test_one_train_step_on_a_mock_batch(variant):
  from xydiff.configs import demo
  config = tiny(demo.get_config(variant))
  config.train.ema_rate = 0.9
  graphdef, state = state_lib.init_state(config)
  step = step_lib.make_train_step(config, graphdef, donate=False)
  new_state, metrics = step(state, _mock_batch())
  assert int(new_state['step']) == 1
  assert np.isfinite(float(metrics['loss'])) and float(metrics['grad_norm']) > 0
  before, after = jax.tree.leaves(state['params']), jax.tree.leaves(new_state['params'])
  assert any(not np.array_equal(a, b) for a, b in zip(before, after))
  # The EMA moves a tenth of the way from the old towards the new parameters
  # (a rate other than 0.5, so that swapping the two weights shows).
  for p0, p1, e in zip(before, after, jax.tree.leaves(new_state['ema_params'])):
    np.testing.assert_allclose(e, 0.9 * p0 + 0.1 * p1, atol=1e-6)


def test_microbatches_give_the_whole_batch_update():
  from xydiff.configs import demo
  config = tiny(demo.get_config())
  graphdef, state = state_lib.init_state(config)
  batch = _mock_batch(n=4)
  results = []
  for k in (1, 2, 4):
    config.train.microbatches = k
    step = step_lib.make_train_step(config, graphdef)
    results.append(step(jax.tree.map(jnp.copy, state), batch))
  for new_state, metrics in results[1:]:
    np.testing.assert_allclose(metrics['loss'], results[0][1]['loss'], rtol=1e-6)
    np.testing.assert_allclose(metrics['grad_norm'], results[0][1]['grad_norm'], rtol=1e-5)
    assert_same_state(new_state, results[0][0], atol=1e-6)
  assert float(results[0][1]['grad_norm']) > 0


def test_lr_is_halved_at_the_configured_steps_after_warmup():
  from xydiff.configs import base
  cfg = base.get_config().train
  cfg.lr, cfg.warmup_steps, cfg.lr_halve_steps = 1e-4, 10, (100, 200)
  lr = state_lib.make_lr_schedule(cfg)
  np.testing.assert_allclose([lr(0), lr(9), lr(99), lr(100), lr(250)],
                             [1e-5, 1e-4, 1e-4, 5e-5, 2.5e-5], rtol=1e-5)


def test_train_checkpoint_and_evaluate_the_demo(demo_config, tmp_path):
  workdir = str(tmp_path / 'run')
  demo_config.train.ema_rate = 0.5
  summary = train.train_and_evaluate(demo_config, workdir)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '4']
  with open(os.path.join(workdir, 'eval', 'step_4.json')) as f:
    report = json.load(f)
  assert report == summary
  assert report['step'] == 4 and report['split'] == 'test' and report['num_images'] == 2
  assert set(report['input']) == {'psnr', 'ssim', 'ssim3d', 'lpips'}
  assert set(report['outputs']['restored']) == {'psnr', 'ssim', 'ssim3d', 'lpips'}
  assert 0 < report['outputs']['restored']['lpips'] < 2 and 'AlexNet' in report['metrics']['lpips']
  assert {'name', 'input_psnr', 'psnr', 'ssim'} <= set(report['images'][0])
  assert 10 < report['input']['psnr'] < 50 and 0 < report['outputs']['restored']['ssim'] <= 1
  name = report['images'][0]['name']
  pictures = sorted(os.listdir(os.path.join(workdir, 'eval', 'step_4')))
  assert pictures == [f'{name}_{k}.png' for k in ('input', 'restored', 'sharp')]
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(workdir))
  # Training evaluated the EMA weights, not the raw ones.
  graphdef, state = state_lib.abstract_state(demo_config)
  with checkpoint.Checkpointer(workdir, demo_config, read_only=True) as ckpt:
    state = ckpt.restore(state, 4)
  evaluator = Evaluator(demo_config, str(tmp_path / 'again'), data.get_source(demo_config.data,
                                                                              'eval'))
  ema = evaluator.run(graphdef, state['ema_params'], 4)['outputs']
  raw = evaluator.run(graphdef, state['params'], 4)['outputs']
  assert ema == report['outputs'] and raw != report['outputs']


def _final_params(workdir, config):
  graphdef, state = state_lib.init_state(config)
  return checkpoint.Checkpointer(workdir, config).restore(state)


def test_resumed_run_ends_where_an_uninterrupted_one_does(demo_config, tmp_path):
  demo_config.train.num_steps = 6
  demo_config.train.eval_every = 100
  train.train_and_evaluate(demo_config, str(tmp_path / 'straight'))
  # Interrupted after step 4's checkpoint, then the same call again.
  demo_config.train.num_steps = 4
  train.train_and_evaluate(demo_config, str(tmp_path / 'resumed'))
  demo_config.train.num_steps = 6
  train.train_and_evaluate(demo_config, str(tmp_path / 'resumed'))
  a = _final_params(str(tmp_path / 'straight'), demo_config)
  assert int(a['step']) == 6
  # Same data order (a function of seed and step), same RNG (folded from the step),
  # same optimizer state: bitwise equal on CPU.
  assert_same_state(a, _final_params(str(tmp_path / 'resumed'), demo_config))


def test_gopro_sample_trains_checkpoints_and_evaluates(tmp_path):
  workdir = tmp_path / 'gopro'
  result = run_launch(
      '--config=xydiff/configs/xydeblur_gopro.py', f'--workdir={workdir}',
      f'--config.data.root={GOPRO_SAMPLE}', '--config.model.width=4',
      '--config.model.num_res=1', '--config.data.crop=64', '--config.train.batch_size=2',
      '--config.train.num_steps=2', '--config.train.checkpoint_every=2',
      '--config.train.eval_every=2', '--config.eval.num_image_summaries=1',
      '--config.eval.lpips=False')
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((workdir / 'eval' / 'step_2.json').read_text())
  assert report['num_images'] == 2
  assert [im['name'] for im in report['images']] == ['GOPR0869_11_00/000020',
                                                     'GOPR0881_11_01/000295']
  # The documented blur-vs-sharp PSNR of the sample frames (their README).
  np.testing.assert_allclose([im['input_psnr'] for im in report['images']], [26.97, 27.75],
                             atol=0.01)
  np.testing.assert_allclose([im['input_ssim'] for im in report['images']], [0.780, 0.889],
                             atol=1e-3)
  # The MATLAB-style 3-D SSIM that GoPro/HIDE tables quote, beside it.
  np.testing.assert_allclose([im['input_ssim3d'] for im in report['images']], [0.8681, 0.9208],
                             atol=1e-4)
  assert (workdir / 'checkpoints' / '2').is_dir()
  # --mode=eval scores the same checkpoint again, with the same numbers.
  again = run_launch('--config=xydiff/configs/xydeblur_gopro.py', f'--workdir={workdir}', '--mode=eval',
                     f'--config.data.root={GOPRO_SAMPLE}', '--config.model.width=4',
                     '--config.model.num_res=1', '--config.eval.num_image_summaries=0',
                     '--config.eval.lpips=False')
  assert again.returncode == 0, again.stderr[-3000:]
  # Into its own folder (named by dataset and split), leaving training's eval/ alone.
  rescored = json.loads((workdir / 'eval_folder_test' / 'step_2.json').read_text())
  assert rescored['outputs'] == report['outputs']
  assert json.loads((workdir / 'eval' / 'step_2.json').read_text()) == report


@pytest.mark.parametrize('override, message', [
    ('--config.train.batch_sise=8', 'batch_sise'),
    ('--config.train.lr=abc', '--config.train.lr=abc'),
    ('--config.data.root=/no/such/folder', 'config.data.root'),
    ('--config.train.batch_size=0', 'config.train.batch_size=0'),
])
def test_bad_overrides_stop_with_one_line_naming_the_field(tmp_path, override, message):
  result = run_launch('--config=xydiff/configs/xydeblur_gopro.py', f'--workdir={tmp_path}',
                      f'--config.data.root={GOPRO_SAMPLE}', override, timeout=120)
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and message in last, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr
  assert not (tmp_path / 'checkpoints').exists()


def test_missing_data_root_is_named(tmp_path):
  result = run_launch('--config=xydiff/configs/xydeblur_gopro.py', f'--workdir={tmp_path}', timeout=120)
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1].startswith("error: config.data.root=''")


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(demo_config, tmp_path):
  workdir = str(tmp_path / 'nan')
  demo_config.train.num_steps = 2
  train.train_and_evaluate(demo_config, workdir)
  demo_config.train.num_steps = 6
  demo_config.train.lr = 1e30  # Blows up at once.
  # Step 3's update blows the parameters up: caught before they can be saved.
  with pytest.raises(NonFiniteLossError,
                     match=r'non-finite at step 3 \(param_norm inf\).*last good checkpoint is step 2'):
    train.train_and_evaluate(demo_config, workdir)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2']


def test_checkpoint_of_another_model_is_refused_by_name(demo_config, tmp_path):
  workdir = str(tmp_path / 'shape')
  demo_config.train.num_steps = 2
  train.train_and_evaluate(demo_config, workdir)
  demo_config.model.width = 8
  with pytest.raises(CheckpointMismatchError, match='model.width'):
    train.train_and_evaluate(demo_config, workdir)


def test_unwritable_workdir_fails_before_training(demo_config, tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('x')
  with pytest.raises(PermissionError, match='--workdir .*file/run is not writable'):
    train.train_and_evaluate(demo_config, str(blocker / 'run'))


def test_k_steps_per_call_train_like_single_steps(demo_config, tmp_path):
  demo_config.train.update(dict(num_steps=4, checkpoint_every=4, log_every=2, eval_every=4))
  train.train_and_evaluate(demo_config, str(tmp_path / 'single'))
  demo_config.train.steps_per_call = 2
  train.train_and_evaluate(demo_config, str(tmp_path / 'scanned'))
  a = _final_params(str(tmp_path / 'single'), demo_config)
  assert int(a['step']) == 4
  # lax.scan may fuse differently from separate calls: equal to float tolerance.
  assert_same_state(a, _final_params(str(tmp_path / 'scanned'), demo_config), atol=1e-5)


def test_k_steps_per_call_must_divide_the_intervals(demo_config, tmp_path):
  demo_config.train.steps_per_call = 3
  with pytest.raises(ConfigError, match='config.train.num_steps=4: must be a multiple'):
    train.train_and_evaluate(demo_config, str(tmp_path / 'bad'))
