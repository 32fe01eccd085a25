"""A run remembers its config, survives a damaged checkpoint, and owns its workdir."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from conftest import run_launch
from xydiff.runs import checkpoint
from xydiff.inference import restorer as inference
from xydiff import config as run_config
from xydiff.runs import state as state_lib
from xydiff.train import loop as train
from xydiff.runs import workdir
from xydiff.errors import CheckpointReadError, ConfigError, WorkdirInUseError

# Flags shrinking the diffusion demo to seconds (see conftest.tiny).
TINY_DIFFUSION = [
    '--config=demo:diffusion', '--config.model.predictor.base=4',
    '--config.model.predictor.multipliers=(1,2)', '--config.model.denoiser.base=4',
    '--config.model.denoiser.multipliers=(1,2)', '--config.data.crop=32',
    '--config.data.synthetic.photo_crop=64', '--config.data.synthetic.kernel_size=7',
    '--config.data.synthetic.kernel_length=(3.0,7.0)', '--config.train.batch_size=2',
    '--config.train.num_steps=2', '--config.train.checkpoint_every=2',
    '--config.train.eval_every=2', '--config.eval.num_image_summaries=0',
    '--config.inference.presets.perceptual.num_steps=2', '--config.inference.presets.sa.num_steps=2',
    '--config.inference.presets.sa.num_samples=2', '--config.eval.lpips=False']


@pytest.fixture(scope='module')
def diffusion_run(tmp_path_factory):
  """A trained tiny diffusion run, with a non-default residual scale that eval must reuse."""
  run = tmp_path_factory.mktemp('runs') / 'dvsr'
  result = run_launch(*TINY_DIFFUSION, f'--workdir={run}',
                      '--config.model.diffusion.residual_scale=3.0')
  assert result.returncode == 0, result.stderr[-3000:]
  return run


def test_the_run_stores_its_resolved_config(diffusion_run):
  stored = json.loads((diffusion_run / 'config.json').read_text())
  assert stored['model']['diffusion']['residual_scale'] == 3.0 and stored['model']['name'] == 'dvsr'
  with checkpoint.Checkpointer(str(diffusion_run), run_config.load(str(diffusion_run)),
                               read_only=True) as ckpt:
    assert ckpt.stored_config(2)['model']['diffusion']['residual_scale'] == 3.0


def test_eval_and_deblur_without_config_use_the_stored_one(diffusion_run, tmp_path):
  result = run_launch(f'--workdir={diffusion_run}', '--mode=eval',
                      '--config.eval.presets=("sa",)', '--config.eval.num_image_summaries=0')
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((diffusion_run / 'eval_synthetic_test' / 'step_2.json').read_text())
  assert set(report['outputs']) == {'predictor', 'sa'}  # The inference override took effect.
  # The same numbers as training's own evaluation: same weights, same residual scale.
  trained = json.loads((diffusion_run / 'eval' / 'step_2.json').read_text())
  assert report['outputs']['sa'] == trained['outputs']['sa']
  photo = tmp_path / 'photo.png'
  from xydiff import images
  images.write_png(str(photo), np.random.default_rng(0).integers(0, 255, (40, 40, 3), np.uint8))
  result = run_launch(f'--workdir={diffusion_run}', '--mode=deblur', f'--input={photo}',
                      f'--output={tmp_path / "out"}', '--config.inference.num_samples=2')
  assert result.returncode == 0, result.stderr[-3000:]
  assert (tmp_path / 'out' / 'photo_deblurred.png').exists()
  assert (tmp_path / 'out' / 'photo_deblurred_std.png').exists()


@pytest.mark.parametrize('flags, fields', [
    (['--config=demo:diffusion'], 'model.diffusion.residual_scale'),  # Trained with 3.0.
    (['--config.model.diffusion.residual_scale=2.0'], 'model.diffusion.residual_scale'),
    (['--config.model.denoiser.base=8'], 'model.denoiser.base'),
])
def test_a_config_that_changes_outputs_is_refused_naming_the_fields(diffusion_run, flags, fields):
  result = run_launch(f'--workdir={diffusion_run}', '--mode=eval', *flags, timeout=120)
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and fields in last and 'Traceback' not in result.stderr


def test_output_fields_leave_inference_settings_free(demo_config):
  other = run_config.from_plain(run_config.to_plain(demo_config))
  other.inference.tile, other.eval.align, other.data.root, other.seed = 64, 'ecc', '/x', 7
  other.model.dtype, other.train.lr = 'bfloat16', 1.0
  assert run_config.differing_output_fields(demo_config, other) == []
  other.model.num_res = 3
  assert run_config.differing_output_fields(demo_config, other) == ['model.num_res']
  from xydiff.configs import demo
  dvsr = demo.get_config('diffusion')
  changed = run_config.from_plain(run_config.to_plain(dvsr))
  changed.model.diffusion.residual_scale, changed.model.diffusion.beta_end = 3.0, 0.02
  changed.inference.presets.sa.num_steps = 7  # A sampling preset: free.
  changed.eval.presets = ('sa',)
  changed.model.denoiser.upsample_impl = 'subpixel'  # Same weights, same function.
  assert run_config.differing_output_fields(dvsr, changed) == [
      'model.diffusion.beta_end', 'model.diffusion.residual_scale']


def _truncate_data_files(step_dir):
  for root, _, names in os.walk(step_dir):
    for name in names:
      path = os.path.join(root, name)
      if f'{os.sep}d{os.sep}' in path or name.endswith('.ocdbt'):
        with open(path, 'r+b') as f:
          f.truncate(os.path.getsize(path) // 3)


def test_training_resumes_past_a_truncated_latest_checkpoint(demo_config, tmp_path):
  run = str(tmp_path / 'run')
  demo_config.train.update(dict(num_steps=4, eval_every=100))
  train.train_and_evaluate(demo_config, run)
  _truncate_data_files(os.path.join(run, 'checkpoints', '4'))
  graphdef, target = state_lib.abstract_state(demo_config)
  with checkpoint.Checkpointer(run, demo_config, read_only=True) as ckpt:
    with pytest.raises(CheckpointReadError, match=r'checkpoints/4 cannot be read.*other steps: \[2\]'):
      ckpt.restore(target)
  # Inference names it in one line and says how to pick another step.
  with pytest.raises(CheckpointReadError, match='checkpoint_step'):
    checkpoint.load_params(demo_config, run)
  demo_config.train.num_steps = 6
  train.train_and_evaluate(demo_config, run)  # Resumes from step 2, sets step 4 aside.
  listing = sorted(os.listdir(os.path.join(run, 'checkpoints')))
  assert '4.damaged' in listing and {'4', '6'} <= set(listing)
  # Step 2 -> 6 retrained the steps the damaged checkpoint held: same as a straight run.
  straight = str(tmp_path / 'straight')
  train.train_and_evaluate(demo_config, straight)
  with checkpoint.Checkpointer(run, demo_config, read_only=True) as a, \
       checkpoint.Checkpointer(straight, demo_config, read_only=True) as b:
    for x, y in zip(jax.tree.leaves(a.restore(target)), jax.tree.leaves(b.restore(target))):
      np.testing.assert_array_equal(x, y)


def test_a_second_run_on_a_workdir_in_use_is_refused(demo_config, tmp_path):
  run = tmp_path / 'run'
  run.mkdir()
  with workdir.lock(str(run)):
    with pytest.raises(WorkdirInUseError, match=f'--workdir {run} is in use by another run '
                       rf'\(pid {os.getpid()}'):
      train.train_and_evaluate(demo_config, str(run))
  assert not (run / 'checkpoints').exists()


def test_a_killed_run_leaves_no_stale_lock(tmp_path):
  script = textwrap.dedent(f'''
      import sys, time
      from xydiff.runs import workdir
      with workdir.lock({str(tmp_path)!r}):
        print('locked', flush=True)
        time.sleep(60)
  ''')
  holder = subprocess.Popen([sys.executable, '-c', script], stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == 'locked'
  with pytest.raises(WorkdirInUseError, match=f'pid {holder.pid}'):
    with workdir.lock(str(tmp_path)):
      pass
  holder.send_signal(signal.SIGKILL)
  holder.wait(timeout=30)
  with workdir.lock(str(tmp_path)):  # The kernel released it with the process.
    pass


def test_an_interrupted_sweep_resumes_where_it_stopped(diffusion_run, monkeypatch):
  from xydiff.evaluation import sweep
  config = run_config.load(str(diffusion_run))
  config.eval.sweep.schedules = ((2, 1e-4, 0.5), (3, 1e-4, 0.5))
  config.eval.sweep.num_samples = (1, 2)
  config.eval.lpips = True
  straight = sweep.run_sweep(config, str(diffusion_run))
  # LPIPS of the N-sample mean: averaging two samples moves it.
  assert all(0 < r['lpips'] < 2 for r in straight) and straight[0]['lpips'] != straight[1]['lpips']
  calls = []
  real_restore_fn = inference.restore_fn

  def counting_restore_fn(*args, **kwargs):
    fn = real_restore_fn(*args, **kwargs)

    def run(*a):
      if len(calls) == 3:  # The fourth image of the grid (2 schedules x 2 images): stop.
        raise KeyboardInterrupt
      calls.append(1)
      return fn(*a)
    return run

  monkeypatch.setattr(inference, 'restore_fn', counting_restore_fn)
  with pytest.raises(KeyboardInterrupt):
    sweep.run_sweep(config, str(diffusion_run))
  progress = json.loads((diffusion_run / 'sweep' / 'step_2.progress.json').read_text())
  assert sum(len(v) for v in progress['done'].values()) == 3
  calls.clear()
  resumed = sweep.run_sweep(config, str(diffusion_run))
  assert len(calls) == 1  # Only the image the interrupted run had not finished.
  assert resumed == straight
  assert not (diffusion_run / 'sweep' / 'step_2.progress.json').exists()
  assert {p.name for p in (diffusion_run / 'sweep').iterdir()} == {
      'step_2.json', 'step_2.csv', 'step_2.png'}


def test_the_sweep_runs_every_sampler_on_the_same_schedules(diffusion_run):
  from xydiff.evaluation import sweep
  config = run_config.load(str(diffusion_run))
  config.eval.sweep.schedules = ((2, 1e-4, 0.5), (3, 1e-4, 0.5))
  config.eval.sweep.num_samples = (1, 2)
  config.eval.lpips = True
  config.eval.sweep.samplers = ('ancestral',)
  alone = sweep.run_sweep(config, str(diffusion_run))
  config.eval.sweep.samplers = ('ancestral', 'ddim', 'dpmpp_2m')
  rows = sweep.run_sweep(config, str(diffusion_run))
  assert [r['sampler'] for r in rows] == ['ancestral'] * 4 + ['ddim'] * 4 + ['dpmpp_2m'] * 4
  assert rows[:4] == alone  # Another sampler beside it changes nothing of the ancestral rows.
  assert [r['num_steps'] for r in rows[4:8]] == [2, 2, 3, 3]
  assert rows[4]['psnr'] != pytest.approx(rows[0]['psnr'], abs=1e-4)
  assert (diffusion_run / 'sweep' / 'step_2_samplers.png').stat().st_size > 1000
  config.eval.sweep.samplers = ('ancestral', 'heun')
  with pytest.raises(ConfigError, match=r"config.eval.sweep.samplers=\('ancestral', 'heun'\)"):
    sweep.run_sweep(config, str(diffusion_run))
