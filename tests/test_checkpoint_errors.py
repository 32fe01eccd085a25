"""Checkpoints that cannot be read: only damage is set aside, everything else stops in one line.

The audit's repros: steps the process cannot read (permission denied) were
renamed `*.damaged` and training began again from step 0; a missing file,
unreadable storage and NOT_FOUND went the same way; a damaged step printed a
hundred tracebacks; a checkpoint without a config skipped the output-field
check; a config stored before a field existed was refused.
"""

import asyncio
import gc
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import jax
import numpy as np
import pytest

from conftest import REPO, tiny
from xydiff.runs import checkpoint
from xydiff import config as run_config
from xydiff.runs import state as state_lib
from xydiff.train import loop as train
from xydiff.errors import CheckpointDamagedError, CheckpointMismatchError, CheckpointReadError


def _config():
  from xydiff.configs import demo
  return tiny(demo.get_config())


@pytest.fixture(scope='module')
def two_steps(tmp_path_factory):
  """A tiny run with checkpoints 2 and 4 of different weights, as training leaves it."""
  config = _config()
  _, state = state_lib.init_state(config)
  run = tmp_path_factory.mktemp('checkpoints') / 'run'
  with checkpoint.Checkpointer(str(run), config) as ckpt:
    for step in (2, 4):
      state['step'] = jax.numpy.asarray(step, jax.numpy.int32)
      state['params'] = jax.tree.map(lambda p: p + 0.01, state['params'])
      ckpt.save(step, state)
  run_config.save(str(run), config)
  return run


@pytest.fixture
def run(two_steps, tmp_path):
  copy = tmp_path / 'run'
  shutil.copytree(two_steps, copy)
  return copy


def _target():
  return state_lib.abstract_state(_config())[1]


def _listing(run):
  return sorted(os.listdir(run / 'checkpoints'))


def _data_files(step_dir):
  return [os.path.join(root, name) for root, _, names in os.walk(step_dir) for name in names
          if f'{os.sep}d{os.sep}' in os.path.join(root, name)]


def _truncate(step_dir):
  for path in _data_files(step_dir):
    with open(path, 'r+b') as f:
      f.truncate(os.path.getsize(path) // 3)


def as_legacy(step_dir):
  """Makes a step look written before checksums: no checksums file, no record of one."""
  os.remove(os.path.join(step_dir, checkpoint.CHECKSUMS_FILE))
  path = os.path.join(step_dir, '_CHECKPOINT_METADATA')
  with open(path) as f:
    metadata = json.load(f)
  del metadata['custom_metadata']['xydiff_checksums']
  with open(path, 'w') as f:
    json.dump(metadata, f)


def test_damage_is_told_from_files_that_cannot_be_reached():
  damage = [ValueError('DATA_LOSS: Error decoding manifest: Length in header (116) ...'),
            ValueError('OUT_OF_RANGE: Requested byte range [0, 5709) is not valid ...'),
            ValueError('FAILED_PRECONDITION: Error reading local file "_sharding": Invalid JSON'),
            ValueError('FAILED_PRECONDITION: Error reading "k" in OCDBT database: Truncated '
                       'Zstd-compressed stream; at byte 0'),
            json.JSONDecodeError('Expecting value', '{x', 1)]
  unreachable = [ValueError('PERMISSION_DENIED: Failed to open: "d/84": Permission denied'),
                 ValueError('NOT_FOUND: Error reading Byte range [0, 5709) of local file'),
                 ValueError('UNAVAILABLE: the filesystem did not answer'),
                 ValueError('DEADLINE_EXCEEDED: read timed out'),
                 PermissionError(13, 'Permission denied'), FileNotFoundError(2, 'No such file'),
                 OSError(5, 'Input/output error')]
  for error in damage:
    assert checkpoint.is_damage(checkpoint.storage_error(error)), error
  for error in unreachable:
    assert not checkpoint.is_damage(checkpoint.storage_error(error)), error
  # Orbax wraps tensorstore's error in a bare Exception; the cause decides.
  try:
    try:
      raise ValueError('PERMISSION_DENIED: Failed to open: "d/84": Permission denied')
    except ValueError as cause:
      raise Exception('Encountered error while reading array index') from cause  # pylint: disable=broad-exception-raised
  except Exception as wrapped:  # pylint: disable=broad-except
    assert str(checkpoint.storage_error(wrapped)).startswith('PERMISSION_DENIED')
    assert not checkpoint.is_damage(checkpoint.storage_error(wrapped))
  assert checkpoint.storage_error(TypeError('a bug')) is None


@pytest.mark.parametrize('status', ['PERMISSION_DENIED', 'UNAVAILABLE'])
def test_a_step_that_cannot_be_reached_stops_in_one_line_and_nothing_is_renamed(run, monkeypatch,
                                                                                status):
  real_restore = checkpoint.ocp.CheckpointManager.restore

  def unreachable(self, step, args=None):
    if 'state' in args.keys():  # The config reads; the arrays do not.
      try:
        raise ValueError(f'{status}: Failed to open: "{run}/checkpoints/{step}/state/d/84": '
                         '[tensorstore_spec=\'{"driver": "zarr"}\']')
      except ValueError as cause:
        raise Exception('Encountered error while reading array index') from cause  # pylint: disable=broad-exception-raised
    return real_restore(self, step, args=args)

  monkeypatch.setattr(checkpoint.ocp.CheckpointManager, 'restore', unreachable)
  with checkpoint.Checkpointer(str(run), _config()) as ckpt:
    with pytest.raises(CheckpointReadError) as e:
      ckpt.restore_newest_readable(_target())
  message = str(e.value)
  assert not isinstance(e.value, CheckpointDamagedError)
  assert message.startswith(f'checkpoint {run}/checkpoints/4 cannot be read ({status}: ')
  assert 'nothing was changed' in message and 'tensorstore_spec' not in message
  assert '\n' not in message
  assert _listing(run) == ['2', '4']


def test_training_stops_at_a_missing_file_without_renaming_or_overwriting(run):
  """NOT_FOUND is not damage: the files may come back (a mount, a sync still running)."""
  for path in _data_files(run / 'checkpoints' / '4'):
    if f'{os.sep}state{os.sep}d{os.sep}' in path:  # The arrays' own files, not the index's.
      os.remove(path)
  stored = (run / 'config.json').read_bytes()
  config = _config()
  config.train.num_steps = 6
  with pytest.raises(CheckpointReadError, match=rf'^checkpoint {run}/checkpoints/4 cannot be '
                     r'read \(NOT_FOUND: .*nothing was changed'):
    train.train_and_evaluate(config, str(run))
  assert _listing(run) == ['2', '4']
  assert (run / 'config.json').read_bytes() == stored  # Not overwritten by a fresh start.


_UNREADABLE = textwrap.dedent('''
    import os, sys
    sys.path.insert(0, {tests!r})
    from conftest import tiny
    from xydiff.configs import demo
    from xydiff.runs import checkpoint
    from xydiff.runs import state as state_lib
    config = tiny(demo.get_config())
    target = state_lib.abstract_state(config)[1]
    ckpt = checkpoint.Checkpointer(sys.argv[1], config, read_only=True)
    if os.geteuid() == 0:  # Root reads anything: become nobody, everything imported already.
        os.setgid(65534)
        os.setuid(65534)
    try:
        ckpt.restore_newest_readable(target)
    except Exception as e:
        print(type(e).__name__, e)
''')


def test_a_step_the_process_may_not_read_stops_training_and_is_not_renamed(two_steps):
  """The audit's first repro, with real file permissions (as `nobody` when run as root)."""
  shared = tempfile.mkdtemp(dir='/tmp')  # pytest's tmp_path is private to its user.
  try:
    os.chmod(shared, 0o755)
    run = os.path.join(shared, 'run')
    shutil.copytree(two_steps, run)
    for step in ('2', '4'):
      for path in _data_files(os.path.join(run, 'checkpoints', step)):
        os.chmod(path, 0o600 if os.geteuid() == 0 else 0)
    result = subprocess.run(
        [sys.executable, '-c', _UNREADABLE.format(tests=str(REPO / 'tests')), run], cwd=REPO,
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout.strip().splitlines()[-1]
    assert out.startswith(f'CheckpointReadError checkpoint {run}/checkpoints/4 cannot be read '
                          '(PERMISSION_DENIED: '), out
    assert 'Permission denied' in out
    assert sorted(os.listdir(os.path.join(run, 'checkpoints'))) == ['2', '4']
  finally:
    shutil.rmtree(shared)


@pytest.mark.parametrize('legacy', [False, True])
def test_when_no_step_restores_the_run_stops_and_renames_nothing(run, legacy):
  """Truncation fails the checksums' sizes; without checksums (older steps), tensorstore's
  reads run out of bytes."""
  for step in ('2', '4'):
    if legacy:
      as_legacy(run / 'checkpoints' / step)
    _truncate(run / 'checkpoints' / step)
  why = (r'OUT_OF_RANGE: .*' if legacy else
         r'DATA_LOSS: state/d/\w+ holds \d+ bytes, its checksums say \d+')
  with checkpoint.Checkpointer(str(run), _config()) as ckpt:
    with pytest.raises(CheckpointDamagedError, match=rf'^no checkpoint in {run}/checkpoints '
                       rf'restores \(step 4: {why}; step 2: {why}\); nothing was renamed'):
      ckpt.restore_newest_readable(_target())
  assert _listing(run) == ['2', '4']


_RESUME = textwrap.dedent('''
    import sys
    sys.path.insert(0, {tests!r})
    from absl import logging
    from conftest import tiny
    from xydiff.configs import demo
    from xydiff.runs import checkpoint
    from xydiff.runs import state as state_lib
    logging.use_absl_handler()
    config = tiny(demo.get_config())
    with checkpoint.Checkpointer(sys.argv[1], config) as ckpt:
        state = ckpt.restore_newest_readable(state_lib.abstract_state(config)[1])
    import gc, time
    gc.collect()
    time.sleep(1)  # Late callbacks of the failed restore would print here.
    gc.collect()
    print('resumed at', int(state['step']))
''')


def test_a_damaged_step_costs_one_warning_line_and_no_traceback(run):
  _truncate(run / 'checkpoints' / '4')
  result = subprocess.run(
      [sys.executable, '-c', _RESUME.format(tests=str(REPO / 'tests')), str(run)], cwd=REPO,
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().splitlines()[-1] == 'resumed at 2'
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  damaged = [line for line in lines if 'is damaged' in line]
  assert len(damaged) == 1 and f'{run}/checkpoints/4 is damaged (DATA_LOSS: ' in damaged[0]
  assert 'resuming from step 2' in damaged[0]
  assert not [line for line in lines if 'Traceback' in line or 'Event loop is closed' in line
              or 'never retrieved' in line], result.stderr[-3000:]
  assert _listing(run) == ['2', '4.damaged']


def test_the_echoes_of_a_failed_restore_are_dropped_and_nothing_else(monkeypatch):
  """What the subprocess above checks end to end, made deterministic: whether the failed
  restore's late callbacks fire after its loop closed is a race."""
  seen = []
  monkeypatch.setattr(sys, 'unraisablehook', seen.append)
  monkeypatch.setattr(checkpoint._QuietFailedIO, 'installed', False)  # pylint: disable=protected-access
  asyncio_log = logging.getLogger('asyncio')
  monkeypatch.setattr(asyncio_log, 'filters', list(asyncio_log.filters))
  checkpoint._QuietFailedIO.install()  # pylint: disable=protected-access
  loop = asyncio.new_event_loop()
  loop.close()

  class LateCallback:  # A tensorstore read that finishes after orbax's loop closed.
    def __del__(self):
      loop.call_soon_threadsafe(print)

  class SomethingElse:
    def __del__(self):
      raise RuntimeError('Event loop is closed')  # The same words, from elsewhere: kept.

  LateCallback()
  SomethingElse()
  gc.collect()
  assert [str(u.exc_value) for u in seen] == ['Event loop is closed']
  assert seen[0].exc_traceback.tb_frame.f_code.co_qualname.endswith('SomethingElse.__del__')

  def record(error):
    return logging.LogRecord('asyncio', logging.ERROR, __file__, 1,
                             'Task exception was never retrieved', (),
                             (type(error), error, None))
  assert not asyncio_log.filter(record(ValueError('OUT_OF_RANGE: Requested byte range')))
  assert asyncio_log.filter(record(ValueError('a bug of our own')))


def test_a_checkpoint_without_a_stored_config_is_refused_unless_the_user_gives_one(run):
  for step in ('2', '4'):  # Written by code that stored none (and no checksums yet).
    as_legacy(run / 'checkpoints' / step)
    shutil.rmtree(run / 'checkpoints' / step / 'config')
  with checkpoint.Checkpointer(str(run), _config(), read_only=True) as ckpt:
    with pytest.raises(CheckpointMismatchError, match=rf'^checkpoint {run}/checkpoints/4 stores '
                       r'no config, .*give the config it was trained with \(--config=...\)'):
      ckpt.restore(_target())
  with checkpoint.Checkpointer(str(run), _config(), read_only=True,
                               config_from_user=True) as ckpt:
    assert int(ckpt.restore(_target())['step']) == 4


def test_fields_a_stored_config_lacks_compare_as_their_defaults(run):
  """A run stored before a field existed was trained with what the field's default keeps."""
  as_legacy(run / 'checkpoints' / '4')  # Stored by older code, without checksums.
  path = run / 'checkpoints' / '4' / 'config' / 'metadata'
  stored = json.loads(path.read_text())
  del stored['model']['decoders']  # As if stored before XY decoupling was a field.
  del stored['inference']
  path.write_text(json.dumps(stored))
  config = _config()
  assert config.model.decoders == 2  # The default: what the older code did.
  with checkpoint.Checkpointer(str(run), config, read_only=True) as ckpt:
    assert int(ckpt.restore(_target(), 4)['step']) == 4
    config.model.decoders = 1  # Not what the stored (default) value says.
    other = checkpoint.Checkpointer(str(run), config, read_only=True)
    with pytest.raises(CheckpointMismatchError, match='model.decoders'):
      other.restore(_target(), 4)
    other.close()
  filled = run_config.with_defaults({'version': 2, 'model': {'name': 'xydeblur', 'width': 4}})
  assert filled['model'] == dict(_default_xydeblur(), width=4)
  assert filled['inference']['size_bucket'] == 0
  # Layout 1 (every family's section under config.model, config.deblur): migrated, then filled.
  filled = run_config.with_defaults({'model': {'xydeblur': {'width': 4}}})
  assert filled['model'] == dict(_default_xydeblur(), width=4)
  assert filled['inference']['size_bucket'] == 0


def _default_xydeblur():
  from xydiff.configs import base
  return run_config.to_plain(base.get_config('xydeblur').model)


def test_restored_weights_are_the_steps_own(two_steps):
  """The fixture's two steps differ, so the tests above tell which one they got."""
  with checkpoint.Checkpointer(str(two_steps), _config(), read_only=True) as ckpt:
    a, b = (ckpt.restore(_target(), s) for s in (2, 4))
  assert int(a['step']) == 2 and int(b['step']) == 4
  diff = jax.tree.map(lambda x, y: float(np.abs(np.asarray(x) - np.asarray(y)).max()),
                      a['params'], b['params'])
  assert min(jax.tree.leaves(diff)) > 0.005
