"""The one checkpoint wrapper: orbax CheckpointManager, the run's config beside each step.

Orbax writes each step to a temporary folder and renames it once complete, so
a step that was not finalised is never listed and never restored. Beside the
train state every checkpoint stores the resolved config it was trained with;
restoring with a config that differs in a field that changes outputs
(run_config output fields) fails naming those fields, instead of an orbax
pytree mismatch or, worse, wrong images. Fields the stored config lacks (it
predates them) count as their defaults, which is what the code that wrote it
used. A checkpoint that stores no config is refused unless the caller says
the user gave the config (`config_from_user`).

A step that cannot be read is a CheckpointReadError naming it and the error.
Only damage to its bytes (tensorstore's DATA_LOSS or OUT_OF_RANGE, i.e.
corrupt or truncated files, a compressed chunk cut short, or metadata that
does not decode) makes it a CheckpointDamagedError, which training survives:
it resumes from the newest step that restores and sets the damaged newer ones
aside (renamed to `<step>.damaged`, never deleted), costing one save interval
and one warning line each, with no traceback. A step that cannot be reached
(permissions, a missing file, an unavailable filesystem) stops the run in one
line with nothing renamed: the files may be fine. If no step restores, the
run stops and says so. With several processes, all act on one outcome and
process 0 renames between two barriers.
"""

from __future__ import annotations

import json
import logging as std_logging
import os
import re
import shutil
import sys
import tempfile

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from xydiff import config as run_config
from xydiff.errors import (CheckpointDamagedError, CheckpointImportError,
                           CheckpointMismatchError, CheckpointReadError)

# orbax's messages for a restore target of another tree or shape.
_LAYOUT_MISMATCH = re.compile(r'tree structures do not match|is not compatible with the stored')
# tensorstore reports failures as ValueErrors whose message starts with an
# absl status code. These two mean the bytes on disk are wrong (corrupt,
# truncated); the others (PERMISSION_DENIED, NOT_FOUND, UNAVAILABLE, ...) mean
# they could not be reached and may well be fine.
_DAMAGE_CODES = ('DATA_LOSS', 'OUT_OF_RANGE')
_STATUS = re.compile(r'[A-Z_]+: ')
# Damage that tensorstore reports under other codes (FAILED_PRECONDITION):
# metadata that does not decode, a compressed chunk cut short.
_UNDECODABLE = re.compile(r'Invalid JSON|Error (decoding|parsing)|Truncated')
DAMAGED_SUFFIX = '.damaged'
CHECKPOINTS = 'checkpoints'


def storage_error(error: BaseException) -> BaseException | None:
  """The storage error at the root of a failed restore, or None when there is none.

  Orbax raises tensorstore's errors as they are (a ValueError whose message
  starts with an absl status code, e.g. 'PERMISSION_DENIED: ...') or wrapped
  in a bare Exception ('Encountered error while reading array index'), and
  the filesystem's as OSErrors; metadata that does not decode is a
  JSONDecodeError.
  """
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, (OSError, json.JSONDecodeError, UnicodeDecodeError)) or (
        isinstance(error, ValueError) and _STATUS.match(str(error))):
      return error
    error = error.__cause__ or error.__context__
  return None


def is_damage(error: BaseException) -> bool:
  """Whether a storage error means the step's bytes are damaged (not merely unreachable)."""
  if isinstance(error, (json.JSONDecodeError, UnicodeDecodeError)):  # Metadata that won't decode.
    return True
  if isinstance(error, OSError):  # Permission denied, not found, I/O errors.
    return False
  text = str(error)
  return text.split(':', 1)[0] in _DAMAGE_CODES or bool(_UNDECODABLE.search(text))


def _short(error: BaseException, limit: int = 300) -> str:
  """The error in one line, without the tensorstore spec (a page of JSON) it appends."""
  text = ' '.join(str(error).split(' [tensorstore_spec=')[0].split())
  parts = text.split(': ')
  if _STATUS.match(text) and len(parts) > 3:  # CODE: what it opened: ...: the file: the cause.
    text = f'{parts[0]}: ...{": ".join(parts[-2:])}'
  return text[:limit] or type(error).__name__


class _QuietFailedRestore:
  """Drops the echoes of a failed orbax restore, so a damaged step costs one warning line.

  When one read of a restore fails, orbax's asyncio loop stops waiting and
  closes while tensorstore still finishes the other reads. Each of those then
  fails again where nobody listens: its callback calls
  `loop.call_soon_threadsafe` on the closed loop (printed as an unraisable
  RuntimeError 'Event loop is closed'), and its task's error is logged as
  'Task exception was never retrieved' — a hundred tracebacks around the one
  line that matters. Installed once, before the first restore; any other
  unraisable exception or asyncio log record passes through unchanged.
  """

  installed = False

  def __init__(self, previous_hook):
    self.previous_hook = previous_hook

  def __call__(self, unraisable):  # sys.unraisablehook
    error, tb = unraisable.exc_value, unraisable.exc_traceback
    frames = []
    while tb is not None:
      frames.append(tb.tb_frame.f_code.co_name)
      tb = tb.tb_next
    if not (isinstance(error, RuntimeError) and str(error) == 'Event loop is closed' and
            'call_soon_threadsafe' in frames):
      self.previous_hook(unraisable)

  @staticmethod
  def filter(record) -> bool:  # A logging filter on the 'asyncio' logger.
    error = record.exc_info[1] if record.exc_info else None
    return not (record.getMessage().startswith('Task exception was never retrieved') and
                isinstance(error, ValueError) and _STATUS.match(str(error)))

  @classmethod
  def install(cls):
    if not cls.installed:
      sys.unraisablehook = cls(sys.unraisablehook)
      std_logging.getLogger('asyncio').addFilter(cls.filter)
      cls.installed = True


# Outcomes of reading one step, worst last: processes that disagree take the worst.
_RESTORED, _DAMAGED, _UNREADABLE = 0, 1, 2


def _agree(outcome: int) -> int:
  """The one outcome every process acts on: each learns all outcomes and takes the worst."""
  if jax.process_count() == 1:
    return outcome
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return int(np.max(multihost_utils.process_allgather(np.int32(outcome))))


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(name)


class Checkpointer:
  """Saves and restores the train state (a pytree) under `<workdir>/checkpoints`.

  `async_save` writes in the background (orbax copies the arrays to host
  memory before `save` returns, so the state may be donated right away); the
  step becomes visible only once complete, as with synchronous saves.
  `read_only` opens an existing folder without creating anything.
  `config_from_user`: `config` was given by the user (a --config flag, a
  config argument) rather than read from the run, and may stand in for a
  checkpoint that stores none; otherwise such a checkpoint is refused.
  """

  def __init__(self, workdir: str, config, *, keep: int = 3, async_save: bool = False,
               read_only: bool = False, config_from_user: bool = False):
    self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINTS))
    self.config = run_config.to_plain(config)
    self.config_from_user = config_from_user
    # read_only opens without creating; orbax's own read_only mode only adds warnings.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=not read_only, enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=('state', 'config'))

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state) -> None:
    """Writes `step` (in the background with async_save; `wait` blocks until it is on disk)."""
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(self.config)), force=True)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def reached_preemption(self, step: int) -> bool:
    """Whether every process has agreed to stop at `step` after a preemption notice
    (SIGTERM); multi-process runs only (the JAX coordination service spreads the notice)."""
    return self.manager.reached_preemption(step)

  def _step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def _read_error(self, step: int, error: BaseException) -> CheckpointReadError:
    """The one-line error for a step that failed to read; damaged or not, by `is_damage`."""
    error = storage_error(error) or error
    others = [s for s in self.all_steps() if s != step]
    pick = (f'other steps: {others or "none"}, picked with --config.eval.checkpoint_step=N '
            '(eval, sweep) or --checkpoint=<dir>/N (deblur)')
    if is_damage(error):
      damaged = CheckpointDamagedError(
          f'checkpoint {self._step_dir(step)} cannot be read (damaged or truncated: '
          f'{_short(error)}); {pick}')
      damaged.reason = _short(error, 260)
      return damaged
    what = _short(error) if _STATUS.match(str(error)) else f'{type(error).__name__}: {_short(error)}'
    return CheckpointReadError(
        f'checkpoint {self._step_dir(step)} cannot be read ({what}); nothing was changed: check '
        f'its permissions and filesystem, or use another step ({pick})')

  def stored_config(self, step: int) -> dict | None:
    """The config saved with `step`, as stored (None for checkpoints that carry none)."""
    try:
      return self.manager.restore(step, args=ocp.args.Composite(
          config=ocp.args.JsonRestore()))['config']
    except KeyError as e:  # orbax: 'Item "config" was not found in the checkpoint.'
      if 'was not found' not in str(e):
        raise
      return None
    except Exception as e:  # pylint: disable=broad-except
      if storage_error(e) is None and not isinstance(e, ValueError):
        raise  # Not the files: a bug, with its traceback.
      raise self._read_error(step, e) from None

  def _check_config(self, step: int) -> None:
    stored = self.stored_config(step)
    if stored is None:
      if self.config_from_user:
        return
      raise CheckpointMismatchError(
          f'checkpoint {self._step_dir(step)} stores no config, so nothing shows which model '
          'its weights are for; give the config it was trained with (--config=...) to use it')
    differ = run_config.differing_output_fields(run_config.with_defaults(stored), self.config)
    if differ:
      raise CheckpointMismatchError(
          f'checkpoint {self._step_dir(step)} was trained with other values of '
          f'{", ".join(differ)}; use the config it was trained with (omit --config to use '
          'the stored one) or a fresh --workdir')

  def restore(self, target, step: int | None = None):
    """Restores into the structure, shapes and shardings of `target` (arrays or
    ShapeDtypeStructs, e.g. from state.abstract_state); the latest step when None.

    Raises CheckpointDamagedError (damaged files), CheckpointReadError (files
    that could not be read) or CheckpointMismatchError (another model or
    layout), each one line naming the step.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {self.directory}')
    if step not in self.all_steps():
      raise FileNotFoundError(f'no checkpoint for step {step} in {self.directory} '
                              f'(have {self.all_steps()})')
    _QuietFailedRestore.install()
    self._check_config(step)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    try:
      return self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract)))['state']
    except Exception as e:  # pylint: disable=broad-except
      if not _LAYOUT_MISMATCH.search(str(e)):
        if storage_error(e) is None and not isinstance(e, ValueError):
          raise  # Not the files: a bug, with its traceback.
        raise self._read_error(step, e) from None
      raise CheckpointMismatchError(
          f'checkpoint {self._step_dir(step)} holds a train state of another layout than '
          'this config makes (was config.train.ema_rate or config.train.grad_clip turned on '
          f'or off?): {" ".join(str(e).split())[:300]}') from None

  def restore_newest_readable(self, target):
    """Training's resume: the newest step that restores, damaged newer steps set aside.

    Returns None when there are no checkpoints. Steps are tried newest first;
    every process reads each step and all act on one outcome (the worst of
    theirs). A damaged step is skipped; once a step restores, process 0
    renames the damaged newer ones to `<step>.damaged` between two barriers,
    so no process reads a step while it moves. A step that cannot be read for
    another reason stops the run (CheckpointReadError) with nothing renamed,
    and so does finding no step that restores (CheckpointDamagedError).
    """
    damaged = []
    for step in reversed(self.all_steps()):
      state, error = None, None
      try:
        state = self.restore(target, step)
      except CheckpointReadError as e:
        error = e
      local = (_RESTORED if error is None else
               _DAMAGED if isinstance(error, CheckpointDamagedError) else _UNREADABLE)
      outcome = _agree(local)
      if outcome == _UNREADABLE:
        raise error if local == _UNREADABLE else CheckpointReadError(
            f'checkpoint {self._step_dir(step)} cannot be read by another process of this '
            'run (its log names the error); nothing was changed')
      if outcome == _DAMAGED:
        damaged.append((step, error))
        continue
      self._set_aside(damaged, step)
      return state
    if damaged:
      reasons = '; '.join(f'step {s}: {e.reason if e else "damaged on another process"}'
                          for s, e in damaged)
      raise CheckpointDamagedError(
          f'no checkpoint in {self.directory} restores ({reasons}); nothing was renamed: move '
          'the folder away to train afresh, or put back a copy that reads')
    return None

  def _set_aside(self, damaged: list, resumed: int) -> None:
    if not damaged:
      return
    for step, error in damaged:
      logging.warning('checkpoint %s is damaged (%s); set aside as %s%s, resuming from step %d.',
                      self._step_dir(step), error.reason if error else 'on another process',
                      self._step_dir(step), DAMAGED_SUFFIX, resumed)
    _barrier('checkpoints read before setting damaged steps aside')
    if jax.process_index() == 0:
      for step, _ in damaged:
        _set_aside(self._step_dir(step))
    _barrier('damaged checkpoints set aside')
    self.manager.reload()  # Forget the renamed steps.

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def _set_aside(step_dir: str) -> str:
  """Renames a damaged step folder so orbax no longer lists it; never deletes."""
  target, n = f'{step_dir}{DAMAGED_SUFFIX}', 1
  while os.path.exists(target):
    target, n = f'{step_dir}{DAMAGED_SUFFIX}-{n}', n + 1
  os.rename(step_dir, target)
  return target


def holds_imported_run(workdir: str) -> bool:
  """Whether `workdir` holds a run that write_imported_run finished (config and step 0)."""
  return (os.path.isfile(os.path.join(workdir, run_config.CONFIG_FILE)) and
          os.path.isdir(os.path.join(workdir, CHECKPOINTS, '0')))


def check_fresh_workdir(workdir: str) -> None:
  """Raises CheckpointImportError unless `workdir` is missing or an empty folder."""
  if os.path.exists(workdir) and (not os.path.isdir(workdir) or os.listdir(workdir)):
    raise CheckpointImportError(f'{workdir} already holds files; import into a fresh --workdir')


def write_imported_run(workdir: str, config, params) -> str:
  """Writes `params` as step 0 of a fresh run in `workdir`; returns the step folder.

  The state is a fresh train state around the weights (step 0, a new
  optimizer state, the EMA holding them too when kept), so deblurring,
  evaluation and fine-tuning all start from it. The run is built in a
  temporary sibling folder, `config.json` before the checkpoint, and renamed
  to `workdir` in one step: `workdir` appears complete or not at all, and a
  crash leaves no half-written run. `workdir` must not exist, or be an empty
  folder. Two imports racing for one workdir (two first
  `Restorer.from_pretrained` calls) cannot both win the rename; the loser
  gets CheckpointImportError, finds the winner's run (holds_imported_run)
  and uses it. Nothing but this call's own temporary folder is ever removed.
  """
  from xydiff.runs import state as state_lib  # pylint: disable=import-outside-toplevel
  workdir = os.path.abspath(workdir)
  check_fresh_workdir(workdir)
  state = state_lib.state_from_params(config, params)
  parent = os.path.dirname(workdir)
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f'.{os.path.basename(workdir)}.import-', dir=parent)
  try:
    run_config.save(staging, config)  # First: no checkpoint ever lacks its config.json.
    with Checkpointer(staging, config) as ckpt:
      ckpt.save(0, state)
    try:
      os.rename(staging, workdir)  # Atomic; replaces only a missing or empty folder.
    except OSError:
      check_fresh_workdir(workdir)  # Filled meanwhile (a concurrent import won): says so.
      raise
  finally:
    if os.path.isdir(staging):  # Ours alone: renamed away on success.
      shutil.rmtree(staging)
  return os.path.join(workdir, CHECKPOINTS, '0')


def load_params(config, workdir: str, step: int | None = None, *,
                config_from_user: bool = False):
  """(graphdef, eval params, step) of a workdir's checkpoint (latest when step is None).

  The params are the ones evaluation and deblurring use (the EMA where training
  kept one), replicated over the device mesh. `config_from_user`: the user gave
  `config` (not the workdir's stored one), so a checkpoint that stores no
  config of its own may be read with it.
  """
  from xydiff.runs import state as state_lib  # pylint: disable=import-outside-toplevel
  graphdef, target = state_lib.abstract_state(config, state_lib.replicated(state_lib.make_mesh()))
  with Checkpointer(workdir, config, read_only=True, config_from_user=config_from_user) as ckpt:
    state = ckpt.restore(target, step)
  return graphdef, state_lib.eval_params(state), int(state['step'])
