"""Every checkpoint step carries checksums; a step that fails them, or restores non-finite,
is damage; a full disk during a save is one line and leaves nothing that passes for a step.

The audit: 8 bytes written into a data file gave an all-black image (or one
off by 93 levels) with exit status 0, and training resumed from that step and
blamed it as "the last good checkpoint"; a zero-filled data file (a power
loss) stopped training as "check its permissions"; a full disk during a save
printed six orbax tracebacks.
"""

import errno
import functools
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from conftest import REPO, assert_same_state, tiny
from xydiff import config as run_config
from xydiff.runs import checkpoint
from xydiff.runs import state as state_lib
from xydiff.train import loop as train
from xydiff.errors import (CheckpointDamagedError, CheckpointWriteError, NonFiniteLossError,
                           USER_ERRORS)

LEGACY = REPO / 'tests' / 'data' / 'legacy'
# Files orbax writes into a step while committing it, after the checksums: not covered.
COMMIT_FILES = {'_CHECKPOINT_METADATA', 'commit_success.txt'}


def _config():
  from xydiff.configs import demo
  return tiny(demo.get_config())


@functools.lru_cache
def _target():
  return state_lib.abstract_state(_config())[1]


def _state(step):
  """A train state of the tiny model with random values (incompressible, like a trained
  one), made without compiling its initialisation."""
  rng = np.random.default_rng(step)
  state = jax.tree.map(
      lambda s: jax.numpy.asarray(rng.standard_normal(s.shape).astype(s.dtype)
                                  if np.issubdtype(s.dtype, np.floating) else np.zeros(s.shape,
                                                                                       s.dtype)),
      _target())
  state['step'] = jax.numpy.asarray(step, jax.numpy.int32)
  return state


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
  """A run with steps 2 and 4 of different weights, saved asynchronously as training does."""
  config = _config()
  run = tmp_path_factory.mktemp('checksums') / 'run'
  with checkpoint.Checkpointer(str(run), config, async_save=True) as ckpt:
    for step in (2, 4):
      ckpt.save(step, _state(step))
  run_config.save(str(run), config)
  return run


@pytest.fixture
def run(saved, tmp_path):
  copy = tmp_path / 'run'
  shutil.copytree(saved, copy)
  return copy


def _files(folder):
  return sorted(os.path.relpath(os.path.join(root, name), folder)
                for root, _, names in os.walk(folder) for name in names)


def _restore(run, step, config=None):
  with checkpoint.Checkpointer(str(run), config or _config(), read_only=True) as ckpt:
    return ckpt.restore(_target(), step)


def _largest_data_file(step_dir):
  data = [os.path.join(step_dir, f) for f in _files(step_dir) if f'{os.sep}d{os.sep}' in f]
  return max(data, key=os.path.getsize)


def test_the_checksums_cover_every_file_but_orbaxs_commit_files(saved):
  step_dir = saved / 'checkpoints' / '4'
  body = json.loads((step_dir / checkpoint.CHECKSUMS_FILE).read_text())
  assert set(body['files']) == set(_files(step_dir)) - COMMIT_FILES - {checkpoint.CHECKSUMS_FILE}
  assert any(name.startswith(f'state{os.sep}ocdbt.process_0{os.sep}d{os.sep}')
             for name in body['files'])
  assert checkpoint.verify_checksums(str(step_dir))
  metadata = json.loads((step_dir / '_CHECKPOINT_METADATA').read_text())
  assert metadata['custom_metadata'] == {'xydiff_checksums': checkpoint.CHECKSUMS_FILE}


def test_every_flipped_byte_is_caught_or_changes_nothing(saved, tmp_path):
  """Flips (one byte, or eight overwritten) at random offsets of every file of a step:
  each is a CheckpointDamagedError naming the step, or restores every array bit for bit.
  Only orbax's commit files can take a flip unnoticed, and nothing they hold is restored."""
  step_dir = saved / 'checkpoints' / '4'
  want = _restore(saved, 4)
  names = _files(step_dir)
  sizes = {name: os.path.getsize(step_dir / name) for name in names}
  rng = np.random.default_rng(0)
  flips = [(name, int(offset)) for name in names
           for offset in (0, sizes[name] - 1, *rng.integers(sizes[name], size=4))]
  weights = np.array([sizes[n] for n in names], float)
  for name in rng.choice(names, size=80, p=weights / weights.sum()):
    flips.append((str(name), int(rng.integers(sizes[name]))))
  caught, unnoticed = 0, set()
  for i, (name, offset) in enumerate(flips):
    copy = tmp_path / str(i)  # A new path each time: no cache may answer for the old bytes.
    shutil.copytree(step_dir, copy / 'checkpoints' / '4')
    with open(copy / 'checkpoints' / '4' / name, 'r+b') as f:
      f.seek(offset)
      old = f.read(8 if i % 3 == 0 else 1)
      new = bytes(b ^ int(x) for b, x in zip(old, rng.integers(1, 256, size=len(old))))
      f.seek(offset)
      f.write(new)
    try:
      got = _restore(copy, 4)
    except CheckpointDamagedError as e:
      assert str(e).startswith(f'checkpoint {copy}/checkpoints/4 cannot be read (damaged'), e
      assert '\n' not in str(e)
      caught += 1
    else:
      assert_same_state(want, got)
      unnoticed.add(name)
    shutil.rmtree(copy)
  assert unnoticed <= COMMIT_FILES, unnoticed
  assert caught >= len(flips) - 6 * len(COMMIT_FILES)


def test_every_byte_of_the_checksums_file_is_guarded_by_its_own_crc(run):
  """A flip in the checksums file is damage wherever it lands: in a file name (not a
  'missing file'), in the format (not 'another version'), in a size or a CRC. Only a flip
  that leaves the same JSON (whitespace for whitespace) may pass, and then it changes
  nothing that is checked."""
  step_dir = run / 'checkpoints' / '4'
  path = step_dir / checkpoint.CHECKSUMS_FILE
  original = path.read_bytes()
  for offset in range(len(original)):
    flipped = bytearray(original)
    flipped[offset] ^= offset % 255 + 1
    path.write_bytes(bytes(flipped))
    try:
      checkpoint.verify_checksums(str(step_dir))
    except ValueError as e:
      assert str(e).startswith(f'DATA_LOSS: {path} does not decode or fails its own CRC'), (
          offset, e)
    else:
      assert json.loads(bytes(flipped)) == json.loads(original), offset
  path.write_bytes(original)
  assert checkpoint.verify_checksums(str(step_dir))


def test_a_zero_filled_data_file_is_set_aside_and_inference_names_the_step(run):
  """A power loss's usual leftover: the data file's size is right, its bytes are zeros."""
  path = _largest_data_file(run / 'checkpoints' / '4')
  with open(path, 'r+b') as f:
    f.write(bytes(os.path.getsize(path)))
  with pytest.raises(CheckpointDamagedError, match=(
      rf'^checkpoint {run}/checkpoints/4 cannot be read \(damaged or truncated: DATA_LOSS: '
      r'state/ocdbt.process_0/d/\w+ fails its checksum \(bytes from 0\)\); other steps: \[2\], '
      r'picked with --config.eval.checkpoint_step=N \(eval, sweep\) or --step=N '
      r'\(deblur, export\)$')):
    checkpoint.load_params(_config(), str(run))  # deblur, eval, serve, export: all.
  with checkpoint.Checkpointer(str(run), _config()) as ckpt:
    state = ckpt.restore_newest_readable(_target())
    assert int(state['step']) == 2 and ckpt.last_good_step() == 2
  assert sorted(os.listdir(run / 'checkpoints')) == ['2', '4.damaged']


def test_a_step_without_its_checksums_is_damaged_unless_written_before_them(run):
  step_dir = run / 'checkpoints' / '4'
  os.remove(step_dir / checkpoint.CHECKSUMS_FILE)  # Its metadata says it was written with one.
  with pytest.raises(CheckpointDamagedError, match=(
      rf'^checkpoint {step_dir} cannot be read \(damaged or truncated: DATA_LOSS: '
      rf'{checkpoint.CHECKSUMS_FILE} is missing from a step written with one\)')):
    _restore(run, 4)
  metadata = json.loads((step_dir / '_CHECKPOINT_METADATA').read_text())
  del metadata['custom_metadata']['xydiff_checksums']  # As older code wrote it: it restores.
  (step_dir / '_CHECKPOINT_METADATA').write_text(json.dumps(metadata))
  assert not checkpoint.verify_checksums(str(step_dir))
  assert int(_restore(run, 4)['step']) == 4


def test_a_non_finite_restore_is_damage_and_training_resumes_before_it(run):
  config = _config()
  state = _restore(run, 4)
  state['step'] = jax.numpy.asarray(6, jax.numpy.int32)
  poisoned = jax.tree_util.tree_flatten_with_path(state['params'])[0][1][0]
  state['params'] = jax.tree_util.tree_map_with_path(
      lambda path, x: x.at[(0,) * x.ndim].set(np.nan) if path == poisoned else x, state['params'])
  keys = [getattr(k, 'key', getattr(k, 'idx', k)) for k in poisoned]
  with checkpoint.Checkpointer(str(run), config) as ckpt:
    ckpt.save(6, state)  # Checksums of NaN: only the finite check can tell.
  with pytest.raises(CheckpointDamagedError, match=(
      rf'^checkpoint {run}/checkpoints/6 cannot be read \(damaged or truncated: DATA_LOSS: NaN '
      rf'or infinite values in params/{"/".join(map(str, keys))}\); other steps: \[2, 4\]')):
    _restore(run, 6)
  with checkpoint.Checkpointer(str(run), config) as ckpt:
    assert int(ckpt.restore_newest_readable(_target())['step']) == 4
  assert sorted(os.listdir(run / 'checkpoints')) == ['2', '4', '6.damaged']


def test_the_last_good_checkpoint_named_is_one_that_passed_its_checks(run):
  """Step 4 is the latest on disk, but only step 2 was restored with its checks passed."""
  with checkpoint.Checkpointer(str(run), _config(), read_only=True) as ckpt:
    assert ckpt.last_good_step() is None
    ckpt.restore(_target(), 2)
    assert ckpt.latest_step() == 4 and ckpt.last_good_step() == 2
    metrics = {'loss': np.float32(np.nan), 'grad_norm': np.float32(1), 'param_norm': np.float32(1)}
    with pytest.raises(NonFiniteLossError, match=r'non-finite at step 3 \(loss nan\).*The last '
                       rf'good checkpoint is step 2 in {run}/checkpoints$'):
      train._check_finite(metrics, 3, ckpt)  # pylint: disable=protected-access


def _disk_full(fail_on, error):
  real = checkpoint.write_checksums

  def write_checksums(step_dir):
    if os.path.basename(step_dir).startswith(f'{fail_on}.'):
      raise error
    real(step_dir)
  return write_checksums


@pytest.mark.parametrize('async_save', [False, True])
@pytest.mark.parametrize('error', [
    OSError(errno.ENOSPC, 'No space left on device'),
    ValueError('RESOURCE_EXHAUSTED: Error writing local file "/x/state/_sharding": Failed '
               "writing: No space left on device [os_error_code='28']")],
                         ids=['oserror', 'tensorstore'])
def test_a_full_disk_during_a_save_is_one_line_and_leaves_no_step(tmp_path, monkeypatch, caplog,
                                                                   async_save, error):
  config, state = _config(), _state(2)
  run = tmp_path / 'run'
  monkeypatch.setattr(checkpoint, 'write_checksums', _disk_full(4, error))
  ckpt = checkpoint.Checkpointer(str(run), config, async_save=async_save)
  ckpt.save(2, state)
  with caplog.at_level(logging.ERROR), pytest.raises(CheckpointWriteError) as e:
    ckpt.save(4, state)
    ckpt.wait()  # An async save's failure comes out here (or at the next save, or close).
  ckpt.close()
  message = str(e.value)
  assert isinstance(e.value, USER_ERRORS) and '\n' not in message
  assert message.startswith(f'checkpoint step 4 could not be saved in {run}/checkpoints (the '
                            'disk is full: ')
  assert message.endswith('); nothing of it was kept; the last good checkpoint is step 2: free '
                          'some space and run again')
  assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]
  assert sorted(os.listdir(run / 'checkpoints')) == ['2']
  monkeypatch.undo()
  assert int(_restore(run, None)['step']) == 2


_FULL_DISK = textwrap.dedent('''
    import errno, os, sys
    import jax, numpy as np
    sys.path.insert(0, {tests!r})
    from absl import logging
    from conftest import tiny
    from xydiff.configs import demo
    from xydiff.runs import checkpoint
    from xydiff.runs import state as state_lib
    logging.use_absl_handler()
    config = tiny(demo.get_config())
    state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), state_lib.abstract_state(config)[1])
    real = checkpoint.write_checksums
    def full(step_dir):
      if os.path.basename(step_dir).startswith('4.'):
        raise OSError(errno.ENOSPC, 'No space left on device')
      real(step_dir)
    checkpoint.write_checksums = full
    try:
      with checkpoint.Checkpointer(sys.argv[1], config, async_save=True) as ckpt:
        ckpt.save(2, state)
        ckpt.save(4, state)
        ckpt.save(6, state)  # Meets step 4's failure.
    except checkpoint.CheckpointWriteError as e:
      print(e)
    import gc, time
    gc.collect()
    time.sleep(1)  # Late echoes of the failed save would print here.
''')


def test_a_full_disk_prints_no_traceback(tmp_path):
  """What a user sees: the one line, and none of orbax's tracebacks (six, before)."""
  run = tmp_path / 'run'
  result = subprocess.run(
      [sys.executable, '-c', _FULL_DISK.format(tests=str(REPO / 'tests')), str(run)], cwd=REPO,
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().splitlines()[-1] == (
      f'checkpoint step 4 could not be saved in {run}/checkpoints (the disk is full: OSError: '
      '[Errno 28] No space left on device); nothing of it was kept; the last good checkpoint is '
      'step 2: free some space and run again')
  assert not [line for line in result.stderr.splitlines() if 'Traceback' in line or 'Error' in line
              or 'never retrieved' in line], result.stderr[-3000:]
  assert sorted(os.listdir(run / 'checkpoints')) == ['2']


@pytest.fixture
def tiny_tmpfs(tmp_path):
  """A 120 kB tmpfs, where the root may mount one; the real ENOSPC of tensorstore."""
  mount = tmp_path / 'full'
  mount.mkdir()
  if os.geteuid() != 0 or subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=120k', 'tmpfs',
                                          str(mount)], capture_output=True).returncode:
    pytest.skip('cannot mount a tmpfs here')
  yield mount
  subprocess.run(['umount', str(mount)], check=True)


def test_a_really_full_disk_is_one_line_and_leaves_no_step(tiny_tmpfs):
  config, state = _config(), _state(2)
  with pytest.raises(CheckpointWriteError, match=(
      rf'^checkpoint step 2 could not be saved in {tiny_tmpfs}/run/checkpoints \(the disk is '
      r'full: RESOURCE_EXHAUSTED: .*No space left on device.*\); nothing of it was kept; no step '
      'of this run was saved before it: free some space and run again$')):
    with checkpoint.Checkpointer(str(tiny_tmpfs / 'run'), config) as ckpt:
      ckpt.save(2, state)
  assert os.listdir(tiny_tmpfs / 'run' / 'checkpoints') == []


def test_orbaxs_logs_of_a_storage_error_are_dropped_and_nothing_else():
  def record(path, error, level=logging.ERROR):
    return logging.LogRecord('absl', level, path, 1, 'failed', (),
                             (type(error), error, None) if error else None)
  orbax = f'{os.sep}site-packages{os.sep}orbax{os.sep}checkpoint{os.sep}future.py'
  full = ValueError('RESOURCE_EXHAUSTED: Error writing local file "x": No space left')
  keep = checkpoint._QuietFailedIO.filter_orbax  # pylint: disable=protected-access
  assert not keep(record(orbax, full))
  assert not keep(record(orbax, OSError(errno.ENOSPC, 'No space left on device')))
  assert keep(record(orbax, TypeError('a bug in orbax')))
  assert keep(record(orbax, None))
  assert keep(record(f'{os.sep}xydiff{os.sep}train{os.sep}loop.py', full))
  assert keep(record(orbax, full, logging.WARNING))


@pytest.mark.parametrize('name', ['xydeblur_run', 'dvsr_run', 'dvsr_nafnet_import',
                                  'dmphn_import'])
def test_steps_written_before_checksums_still_restore_and_are_not_written_to(name):
  workdir = LEGACY / name
  before = {f: os.path.getmtime(workdir / f) for f in _files(workdir)}
  step_dir = workdir / 'checkpoints' / '0' if 'import' in name else workdir / 'checkpoints' / '2'
  assert not checkpoint.verify_checksums(str(step_dir))
  config = run_config.load(str(workdir))
  _, params, step = checkpoint.load_params(config, str(workdir))
  assert step == int(step_dir.name) and not checkpoint.non_finite_leaves(params)
  assert {f: os.path.getmtime(workdir / f) for f in _files(workdir)} == before


def test_a_zero_filled_step_written_before_checksums_is_damage_not_permissions(tmp_path):
  """Without checksums tensorstore's zstd finds it: damage (set aside), not 'permissions'."""
  workdir = tmp_path / 'run'
  shutil.copytree(LEGACY / 'xydeblur_run', workdir)
  path = _largest_data_file(workdir / 'checkpoints' / '2')
  with open(path, 'r+b') as f:
    f.write(bytes(os.path.getsize(path)))
  with pytest.raises(CheckpointDamagedError, match=(
      rf'^checkpoint {workdir}/checkpoints/2 cannot be read \(damaged or truncated: '
      r'FAILED_PRECONDITION: .*ZSTD_decompress')):
    checkpoint.load_params(run_config.load(str(workdir)), str(workdir))
