"""Data parallelism: 8 CPU devices, two processes, and surviving SIGKILL / SIGTERM."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from conftest import REPO, assert_same_state, run_launch
from xydiff.runs import checkpoint
from xydiff.runs import state as state_lib

# A tiny demo run; every process count and interruption below must end the same.
TINY_ARGS = ['--config=xydiff/configs/demo.py', '--config.model.width=4',
             '--config.model.num_res=1', '--config.data.crop=32',
             '--config.train.batch_size=4', '--config.data.synthetic.photo_crop=64',
             '--config.data.synthetic.kernel_size=7',
             '--config.data.synthetic.kernel_length=(3.0,7.0)', '--config.train.eval_every=1000',
             '--config.eval.num_image_summaries=1', '--config.eval.lpips=False']


def _tiny_config(num_steps):
  from xydiff.configs import demo
  from conftest import tiny
  config = tiny(demo.get_config(), steps=num_steps)
  config.train.batch_size = 4
  config.data.crop = 32
  return config


def _params(workdir, num_steps):
  config = _tiny_config(num_steps)
  _, target = state_lib.init_state(config)
  return checkpoint.Checkpointer(str(workdir), config).restore(target)


def test_eight_devices_match_one_device():
  script = textwrap.dedent('''
      import jax, numpy as np
      from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
      from xydiff.configs import demo
      from conftest import tiny
      from xydiff.runs import state as state_lib
      from xydiff.train import step as step_lib
      assert jax.device_count() == 8
      config = tiny(demo.get_config())
      config.train.batch_size = 8
      graphdef, state = state_lib.init_state(config)
      rng = np.random.default_rng(0)
      batch = {'blur': rng.random((8, 16, 16, 3), np.float32)}
      batch['sharp'] = np.clip(batch['blur'] + 0.05, 0, 1).astype(np.float32)
      def run(devices):
        mesh = Mesh(np.array(devices), ('data',))
        rep, data = state_lib.replicated(mesh), state_lib.batch_sharding(mesh)
        step = step_lib.make_train_step(config, graphdef, mesh)
        s = jax.device_put(jax.tree.map(np.copy, state), rep)
        losses = []
        for _ in range(3):
          s, m = step(s, state_lib.shard_batch(batch, data))
          losses.append(float(m['loss']))
        return s, losses
      one, loss1 = run(jax.devices()[:1])
      eight, loss8 = run(jax.devices())
      np.testing.assert_allclose(loss8, loss1, atol=1e-5)
      for a, b in zip(jax.tree.leaves(one['params']), jax.tree.leaves(eight['params'])):
        np.testing.assert_allclose(a, b, atol=1e-5)
      print('OK', loss1)
  ''')
  env = dict(os.environ, JAX_NUM_CPU_DEVICES='8',
             XLA_FLAGS='--xla_force_host_platform_device_count=8',
             PYTHONPATH=f'{REPO}{os.pathsep}{REPO / "tests"}')
  result = subprocess.run([sys.executable, '-c', script], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0 and 'OK' in result.stdout, result.stderr[-3000:]


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _start_two_processes(args, workdir, **popen_kwargs):
  port = _free_port()
  return [subprocess.Popen(
      [sys.executable, 'launch.py', *args, f'--workdir={workdir}',
       f'--coordinator_address=localhost:{port}', '--num_processes=2', f'--process_id={i}'],
      cwd=REPO, text=True, **popen_kwargs) for i in range(2)]


def _run_two_processes(workdir, args):
  procs = _start_two_processes(args, workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  return outputs


_SHARD_SCRIPT = textwrap.dedent('''
    import json, sys
    import jax, numpy as np
    jax.distributed.initialize(sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
    from xydiff.configs import demo
    from conftest import tiny
    from xydiff import data
    config = tiny(demo.get_config())
    config.train.batch_size = 4
    source = data.get_source(config.data, 'train')
    loaded = []
    original_load = source.load
    source.load = lambda i: loaded.append(int(i)) or original_load(i)
    batches = data.train_batches(config, source, jax.process_index(), jax.process_count())
    longest = max(len(batches.shard_of_slot(j)) for j in range(4))
    step_3 = None
    for step, batch in zip(range(longest), batches.iterate(0)):
      if step == 3:
        step_3 = batch['blur']
    np.save(sys.argv[3], step_3)
    print(json.dumps({'loaded': sorted(set(loaded)), 'size': len(source)}))
''')


def test_two_processes_read_disjoint_shards_that_make_up_the_split(tmp_path):
  port = _free_port()
  env = dict(os.environ, PYTHONPATH=f'{REPO}{os.pathsep}{REPO / "tests"}')
  procs = [subprocess.Popen(
      [sys.executable, '-c', _SHARD_SCRIPT, f'localhost:{port}', str(i), str(tmp_path / f'{i}.npy')],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  results = []
  for proc in procs:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    results.append(json.loads(out.strip().splitlines()[-1]))
  shards = [set(r['loaded']) for r in results]
  assert shards[0] and shards[1] and not shards[0] & shards[1]
  assert shards[0] | shards[1] == set(range(results[0]['size']))
  # The two halves make up the batch one process would have read.
  from xydiff import data
  config = _tiny_config(4)
  whole = data.train_batches(config, data.get_source(config.data, 'train')).batch(3)
  halves = np.concatenate([np.load(tmp_path / f'{i}.npy') for i in range(2)])
  np.testing.assert_array_equal(halves, whole['blur'])


def _wait_for_checkpoint(ckpt_dir, deadline_s=300):
  deadline = time.time() + deadline_s
  while time.time() < deadline:
    if ckpt_dir.exists() and any(d.isdigit() for d in os.listdir(ckpt_dir)):
      return
    time.sleep(0.1)
  raise AssertionError(f'no checkpoint appeared in {ckpt_dir}')


# Long enough that a notice sent once the first checkpoint is on disk lands well
# before the last step: with 12, a loaded CI machine finished first (the notice
# then has nothing to do, and the test had nothing to check).
_INTERRUPTED_STEPS = 40
_INTERRUPTED_ARGS = [*TINY_ARGS, f'--config.train.num_steps={_INTERRUPTED_STEPS}',
                     '--config.train.checkpoint_every=4']


@pytest.fixture(scope='module')
def straight_run(tmp_path_factory):
  """The uninterrupted run both interruptions must end like."""
  workdir = tmp_path_factory.mktemp('straight')
  straight = run_launch(*_INTERRUPTED_ARGS, f'--workdir={workdir}')
  assert straight.returncode == 0, straight.stderr[-3000:]
  return workdir


@pytest.mark.parametrize('sig', [signal.SIGKILL, signal.SIGTERM])
def test_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path, straight_run, sig):
  num_steps, args = _INTERRUPTED_STEPS, _INTERRUPTED_ARGS

  workdir = tmp_path / 'interrupted'
  proc = subprocess.Popen([sys.executable, 'launch.py', *args, f'--workdir={workdir}'], cwd=REPO,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  _wait_for_checkpoint(workdir / 'checkpoints')
  proc.send_signal(sig)
  _, err = proc.communicate(timeout=300)
  steps = sorted(int(d) for d in os.listdir(workdir / 'checkpoints') if d.isdigit())
  if sig == signal.SIGTERM:
    # Preemption: the run saves where it stands and exits cleanly.
    assert proc.returncode == 0, err[-3000:]
    assert f'(SIGTERM): saved step {steps[-1]}' in err
  # Only finalised steps are listed, whatever the kill left behind (orbax
  # writes a step under a temporary name and renames it when complete).
  listed = checkpoint.Checkpointer(str(workdir), _tiny_config(num_steps)).all_steps()
  assert listed and max(listed) == steps[-1]
  for step in listed:
    assert (workdir / 'checkpoints' / str(step) / 'commit_success.txt').exists() or \
        (workdir / 'checkpoints' / str(step) / '_CHECKPOINT_METADATA').exists()
  resumed = run_launch(*args, f'--workdir={workdir}')
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  if steps[-1] < num_steps:
    assert f'at step {steps[-1]}' in resumed.stderr
  # Data order is a function of (seed, step), the RNG is folded from the step and
  # the optimizer state is restored: bitwise equal on CPU.
  assert_same_state(_params(straight_run, num_steps), _params(workdir, num_steps))


def test_sigterm_on_one_of_two_processes_saves_the_same_step_on_both(tmp_path, straight_run):
  """A preemption notice reaches every process: all save one step together and exit cleanly.

  Both then restore that step and train on to the same parameters as one process.
  """
  num_steps, args = _INTERRUPTED_STEPS, _INTERRUPTED_ARGS
  workdir = tmp_path / 'two'
  procs = _start_two_processes(args, workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  _wait_for_checkpoint(workdir / 'checkpoints')
  procs[1].send_signal(signal.SIGTERM)  # Only one host is told.
  errs = [p.communicate(timeout=300)[1] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], errs[0][-2000:] + errs[1][-2000:]
  steps = sorted(int(d) for d in os.listdir(workdir / 'checkpoints') if d.isdigit())
  assert steps[-1] < num_steps, 'the notice came after the last step: raise _INTERRUPTED_STEPS'
  for err in errs:
    assert f'(SIGTERM): saved step {steps[-1]}' in err
  outputs = _run_two_processes(workdir, args)  # Both restore that step and finish.
  for out in outputs:
    assert f'Resumed from {workdir / "checkpoints"} at step {steps[-1]}' in out
  # Same global batch, split over processes: the same training as one
  # uninterrupted process, up to the order of the gradient all-reduce.
  assert_same_state(_params(straight_run, num_steps), _params(workdir, num_steps), atol=1e-5)
  # Only process 0 writes summaries.
  events = [f for f in os.listdir(workdir) if f.startswith('events.out.tfevents')]
  assert len(events) == 2  # One per run of process 0.


def test_two_processes_resume_past_a_damaged_checkpoint_and_set_it_aside_once(tmp_path):
  """Process 0 used to rename the damaged step before the others had read it: a process
  that reached it afterwards got a bare FileNotFoundError while the rest waited."""
  from xydiff.train import loop as train
  workdir = tmp_path / 'two'
  config = _tiny_config(4)
  config.train.eval_every = 1000
  config.eval.lpips = False
  train.train_and_evaluate(config, str(workdir))
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['2', '4']
  for root, _, names in os.walk(workdir / 'checkpoints' / '4'):
    for name in names:
      if f'{os.sep}d{os.sep}' in os.path.join(root, name):
        with open(os.path.join(root, name), 'r+b') as f:
          f.truncate(os.path.getsize(f.name) // 3)
  outputs = _run_two_processes(workdir, [*TINY_ARGS, '--config.train.num_steps=6',
                                         '--config.train.checkpoint_every=2'])
  for out in outputs:
    assert f'Resumed from {workdir / "checkpoints"} at step 2' in out
    damaged = [line for line in out.splitlines() if 'is damaged' in line]
    assert len(damaged) == 1 and 'resuming from step 2' in damaged[0], out[-3000:]
    assert 'Traceback' not in out and 'Event loop is closed' not in out
  # Renamed once, by process 0, between barriers; both went on to step 6.
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['2', '4', '4.damaged', '6']
