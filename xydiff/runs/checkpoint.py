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

Every step carries checksums of what it wrote: `xydiff_checksums.json` lists
each file's size and the CRC-32 of each 16 MiB block of it. Orbax offers no
checksum of the arrays' bytes (its zarr2 chunks carry none, its zarr3 layout
checksums only the shard index, and the JSON metadata beside them none), so a
flipped byte used to restore as a wrong weight with no error. Process 0
writes the file in orbax's post-finalisation callback, inside the step's
temporary folder, before orbax renames it into place: a step appears with its
checksums or not at all, async saves included. Only `_CHECKPOINT_METADATA`
and the step's `commit_success.txt`, which orbax writes while committing, are
not listed; the step metadata also records that checksums were written, so a
step of this code whose checksums file is gone is damaged, not trusted.
Restore checks sizes and CRCs before orbax reads a byte, and the restored
arrays for NaN and infinity. Steps written before checksums (no file, no
record of one) still restore, unverified but for that finite check.

A step that cannot be read is a CheckpointReadError naming it and the error.
Only damage to its bytes (a checksum or size that does not match, tensorstore's
DATA_LOSS or OUT_OF_RANGE, a compressed chunk cut short or zero-filled,
metadata that does not decode, non-finite values) makes it a
CheckpointDamagedError, which training survives:
it resumes from the newest step that restores and sets the damaged newer ones
aside (renamed to `<step>.damaged`, never deleted), costing one save interval
and one warning line each, with no traceback. A step that cannot be reached
(permissions, a missing file, an unavailable filesystem) stops the run in one
line with nothing renamed: the files may be fine. If no step restores, the
run stops and says so. With several processes, all act on one outcome and
process 0 renames between two barriers.

A save that fails (a full disk) is one CheckpointWriteError naming the step
and the folder; the step's temporary folder is removed, and orbax never lists
a temporary folder, so nothing of it can later pass for a good step.
"""

from __future__ import annotations

import concurrent.futures
import errno
import json
import logging as std_logging
import os
import re
import shutil
import sys
import tempfile
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from xydiff import config as run_config
from xydiff import files
from xydiff.errors import (CheckpointDamagedError, CheckpointImportError,
                           CheckpointMismatchError, CheckpointReadError, CheckpointWriteError)

# orbax's messages for a restore target of another tree or shape.
_LAYOUT_MISMATCH = re.compile(r'tree structures do not match|is not compatible with the stored')
# tensorstore reports failures as ValueErrors whose message starts with an
# absl status code. These two mean the bytes on disk are wrong (corrupt,
# truncated); the others (PERMISSION_DENIED, NOT_FOUND, UNAVAILABLE, ...) mean
# they could not be reached and may well be fine.
_DAMAGE_CODES = ('DATA_LOSS', 'OUT_OF_RANGE')
_STATUS = re.compile(r'[A-Z_]+: ')
# Damage that tensorstore reports under other codes (FAILED_PRECONDITION):
# metadata that does not decode, a compressed chunk cut short or zero-filled.
_UNDECODABLE = re.compile(r'Invalid JSON|Error (decoding|parsing)|Truncated|ZSTD_decompress')
DAMAGED_SUFFIX = '.damaged'
CHECKPOINTS = 'checkpoints'
CHECKSUMS_FILE = 'xydiff_checksums.json'
_CHECKSUMS_FORMAT = 1
_BLOCK_BYTES = 16 << 20  # One CRC per block: blocks hash in parallel, and name where damage is.
# CRC-32 (zlib): any flipped byte, any burst up to 32 bits, and all but 1 in 2**32 of other
# damage, at twice sha256's speed; damage is the threat here, not tampering.
# The step metadata's custom_metadata key that says the step was written with checksums.
_CHECKSUMS_MARKER = 'xydiff_checksums'
_STEP_METADATA = '_CHECKPOINT_METADATA'  # Orbax's step metadata file.
# What orbax writes into the step folder while committing it, after the checksums.
_WRITTEN_AT_COMMIT = (_STEP_METADATA, ocp.path.atomicity_types.COMMIT_SUCCESS_FILE)
_TMP_SUFFIX = ocp.path.atomicity_types.TMP_DIR_SUFFIX  # Orbax's step folder until committed.


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


# ------------------------------------------------------------------ checksums

def _status(error: OSError, path: str) -> ValueError:
  """An OSError met while checking checksums, worded as tensorstore words the same failure
  (its status code first), so it is told from damage like the errors of a restore."""
  code = {errno.ENOENT: 'NOT_FOUND', errno.EACCES: 'PERMISSION_DENIED',
          errno.EPERM: 'PERMISSION_DENIED'}.get(error.errno, 'UNAVAILABLE')
  return ValueError(f'{code}: {path}: {error.strerror or error}')


def _block_crcs(paths_and_sizes: list[tuple[str, int]]) -> list[list[int]]:
  """The CRC-32 of each _BLOCK_BYTES block of each file, read in parallel threads
  (zlib and os.pread release the GIL)."""
  def crc(path, offset):
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
      return zlib.crc32(os.pread(fd, _BLOCK_BYTES, offset))
    finally:
      os.close(fd)

  with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
    futures = [[pool.submit(crc, path, offset) for offset in range(0, max(size, 1), _BLOCK_BYTES)]
               for path, size in paths_and_sizes]
    return [[f.result() for f in blocks] for blocks in futures]


def _self_crc(body: dict) -> int:
  return zlib.crc32(json.dumps(body, sort_keys=True, separators=(',', ':')).encode())


def _step_files(step_dir: str) -> list[str]:
  """The files of a step folder that its checksums cover: all but orbax's commit files."""
  listed = []
  for root, dirs, names in os.walk(step_dir):
    dirs.sort()
    for name in sorted(names):
      relative = os.path.relpath(os.path.join(root, name), step_dir)
      if relative not in _WRITTEN_AT_COMMIT and not relative.startswith(CHECKSUMS_FILE):
        listed.append(relative)
  return listed


# By hand: orbax and tensorstore checksum neither the arrays' bytes nor the JSON beside them.
def write_checksums(step_dir: str) -> None:
  """Writes `step_dir`/xydiff_checksums.json: each file's size and block CRCs (fsynced).

  The file carries a CRC of its own contents, so a flip in it is damage too,
  never a wrong list that passes.
  """
  names = _step_files(step_dir)
  sizes = [os.path.getsize(os.path.join(step_dir, name)) for name in names]
  crcs = _block_crcs([(os.path.join(step_dir, n), size) for n, size in zip(names, sizes)])
  body = {'format': _CHECKSUMS_FORMAT, 'algorithm': 'crc32', 'block_bytes': _BLOCK_BYTES,
          'files': {name: [size, crc] for name, size, crc in zip(names, sizes, crcs)}}
  body['self_crc32'] = _self_crc(body)
  path = os.path.join(step_dir, CHECKSUMS_FILE)
  with files.atomic_path(path) as tmp:
    fd = files.open_own(tmp, os.O_WRONLY | os.O_TRUNC, what=f'the temporary file of {path}')
    try:
      os.write(fd, json.dumps(body, separators=(',', ':')).encode())
      os.fsync(fd)  # On disk before orbax's rename makes the step visible.
    finally:
      os.close(fd)


def _written_with_checksums(step_dir: str) -> bool:
  """Whether the step's metadata records that checksums were written with it."""
  path = os.path.join(step_dir, _STEP_METADATA)
  try:
    with open(path, 'rb') as f:
      metadata = json.loads(f.read())
  except FileNotFoundError:
    return False
  except OSError as e:
    raise _status(e, path) from None
  except ValueError:  # JSONDecodeError, UnicodeDecodeError.
    raise ValueError(f'DATA_LOSS: {path} does not decode') from None
  custom = metadata.get('custom_metadata') if isinstance(metadata, dict) else None
  return isinstance(custom, dict) and _CHECKSUMS_MARKER in custom


def _read_checksums(path: str) -> dict | None:
  """The checksums file's body, checked against its own CRC; None when there is none."""
  try:
    with open(path, 'rb') as f:
      raw = f.read()
  except FileNotFoundError:
    return None
  except OSError as e:
    raise _status(e, path) from None
  damaged = ValueError(f'DATA_LOSS: {path} does not decode or fails its own CRC')
  try:
    body = json.loads(raw)
    stored = body.pop('self_crc32')
  except (ValueError, KeyError, TypeError, AttributeError):
    raise damaged from None
  if stored != _self_crc(body):
    raise damaged
  if body.get('format') != _CHECKSUMS_FORMAT or body.get('algorithm') != 'crc32':
    raise ValueError(f'FAILED_PRECONDITION: {path} is of checksums format {body.get("format")}, '
                     f'not {_CHECKSUMS_FORMAT}: written by another xydiff version')
  listed = body.get('files')
  if body.get('block_bytes') != _BLOCK_BYTES or not isinstance(listed, dict) or not all(
      isinstance(v, list) and len(v) == 2 and isinstance(v[0], int) and isinstance(v[1], list)
      for v in listed.values()):
    raise damaged
  return body


def verify_checksums(step_dir: str) -> bool:
  """Checks every file of a step against its checksums; False for a step written before
  checksums existed (nothing to check), True when all match.

  Raises ValueError worded like tensorstore's errors: DATA_LOSS for damage (a
  size or CRC that does not match, a checksums file that fails its own CRC
  or is missing from a step written with one), NOT_FOUND, PERMISSION_DENIED
  or UNAVAILABLE for files that cannot be reached.
  """
  step_dir = os.path.normpath(step_dir)
  body = _read_checksums(os.path.join(step_dir, CHECKSUMS_FILE))
  if body is None:
    if _written_with_checksums(step_dir):
      raise ValueError(f'DATA_LOSS: {CHECKSUMS_FILE} is missing from a step written with one')
    return False
  listed = sorted(body['files'].items())
  for name, (size, _) in listed:
    path = os.path.normpath(os.path.join(step_dir, name))
    if os.path.isabs(name) or not path.startswith(step_dir + os.sep):
      raise ValueError(f'DATA_LOSS: {CHECKSUMS_FILE} lists {name!r}, outside the step')
    try:
      actual = os.stat(path).st_size
    except OSError as e:
      raise _status(e, path) from None
    if actual != size:
      raise ValueError(f'DATA_LOSS: {name} holds {actual} bytes, its checksums say {size}')
  try:
    crcs = _block_crcs([(os.path.join(step_dir, name), size) for name, (size, _) in listed])
  except OSError as e:
    raise _status(e, e.filename or step_dir) from None
  for (name, (_, want)), got in zip(listed, crcs):
    if got != want:
      block = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), 0)
      raise ValueError(f'DATA_LOSS: {name} fails its checksum (bytes from {block * _BLOCK_BYTES})')
  return True


def non_finite_leaves(state) -> list[str]:
  """The paths of the state's float arrays that hold a NaN or an infinity.

  Checked in host memory, each distinct piece of an array once (a replicated
  array: the whole of it, once per process): on the device each array shape
  would compile a reduction of its own, every time a process restores (20 s
  for NAFNet-64's train state on a busy 2-core CPU).
  """
  bad = []
  for path, x in jax.tree_util.tree_flatten_with_path(state)[0]:
    if not jnp.issubdtype(x.dtype, jnp.inexact):
      continue
    pieces = {str(s.index): s.data for s in x.addressable_shards} if isinstance(
        x, jax.Array) else {'': x}
    if not all(np.isfinite(np.asarray(piece)).all() for piece in pieces.values()):
      bad.append('/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path))
  return bad


class _QuietFailedIO:
  """Drops the echoes of a failed orbax restore or save, so a damaged step or a full disk
  costs one line.

  When one read of a restore fails, orbax's asyncio loop stops waiting and
  closes while tensorstore still finishes the other reads. Each of those then
  fails again where nobody listens: its callback calls
  `loop.call_soon_threadsafe` on the closed loop (printed as an unraisable
  RuntimeError 'Event loop is closed'), and its task's error is logged as
  'Task exception was never retrieved' — a hundred tracebacks around the one
  line that matters. A failed save is logged with its traceback by each of
  orbax's threads that meets it (six, for a full disk) before orbax raises it;
  the Checkpointer raises every such storage error in one line, so orbax's
  ERROR records of one are dropped. Installed once, before the first restore
  or save; any other unraisable exception or log record passes through
  unchanged.
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

  @staticmethod
  def filter_orbax(record) -> bool:  # A logging filter on the 'absl' logger orbax logs to.
    error = record.exc_info[1] if record.exc_info else None
    return not (record.levelno >= std_logging.ERROR and f'{os.sep}orbax{os.sep}' in
                record.pathname and error is not None and storage_error(error) is not None)

  @classmethod
  def install(cls):
    if not cls.installed:
      sys.unraisablehook = cls(sys.unraisablehook)
      std_logging.getLogger('asyncio').addFilter(cls.filter)
      std_logging.getLogger('absl').addFilter(cls.filter_orbax)
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
  step becomes visible only once complete, with its checksums, as with
  synchronous saves. `read_only` opens an existing folder without creating
  anything.
  `config_from_user`: `config` was given by the user (a --config flag, a
  config argument) rather than read from the run, and may stand in for a
  checkpoint that stores none; otherwise such a checkpoint is refused.
  """

  def __init__(self, workdir: str, config, *, keep: int = 3, async_save: bool = False,
               read_only: bool = False, config_from_user: bool = False):
    self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINTS))
    self.config = run_config.to_plain(config)
    self.config_from_user = config_from_user
    self.async_save = async_save
    self._saving = None  # The step being saved: sealed by _seal, confirmed by _finish_save.
    self._good = None  # The newest step known good: restored with its checks, or saved here.
    self._save_failed = False
    # read_only opens without creating; orbax's own read_only mode only adds warnings.
    # Saves always go through orbax's async checkpointer, the one with a post-finalisation
    # callback (where the checksums are written); a synchronous save waits for it.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=not read_only, enable_async_checkpointing=True,
        async_options=ocp.AsyncOptions(post_finalization_callback=self._seal))
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

  def last_good_step(self) -> int | None:
    """The newest step this Checkpointer restored with all its checks passed or saved
    (checksums written, save confirmed); None when there is none yet."""
    return self._good

  def save(self, step: int, state) -> None:
    """Writes `step` (in the background with async_save; `wait` blocks until it is on disk).

    Raises CheckpointWriteError, one line naming the step, when this save or
    the previous background one fails for want of storage (a full disk).
    """
    self._finish_save()  # One save at a time: _seal must know which step it seals.
    _QuietFailedIO.install()
    self._saving = step
    try:
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(self.config)),
                        force=True, custom_metadata={_CHECKSUMS_MARKER: CHECKSUMS_FILE})
    except Exception as e:  # pylint: disable=broad-except
      self._saving = None
      self._raise_write_error(step, e)
    if not self.async_save:
      self._finish_save()

  def _seal(self) -> None:
    """Orbax's post-finalisation callback (process 0, orbax's save thread): writes the
    checksums into the step's folder once every process's files are final, before orbax
    renames the folder into place."""
    final = self._step_dir(self._saving)
    for folder in (f'{final}{_TMP_SUFFIX}', final):  # Renamed later, or written in place.
      if os.path.isdir(folder):
        write_checksums(folder)
        return
    raise RuntimeError(f'orbax wrote step {self._saving} neither to {final}{_TMP_SUFFIX} nor to '
                       f'{final}: cannot write its checksums')  # Another orbax: a bug here.

  def _finish_save(self) -> None:
    """Waits for the save in flight; raises its failure as a CheckpointWriteError."""
    step = self._saving
    if step is None:
      return
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      self._raise_write_error(step, e)
    finally:
      self._saving = None  # Only now: _seal reads it until the save is done.
    self._good = step if self._good is None else max(self._good, step)

  def _raise_write_error(self, step: int, error: BaseException):
    """Raises a failed save as one line, its temporary folder removed; a bug as it is."""
    self._save_failed = True
    cause = storage_error(error)
    if cause is None:
      raise error
    text = str(cause)
    full = (getattr(cause, 'errno', None) == errno.ENOSPC or 'No space left on device' in text or
            "os_error_code='28'" in text)
    partial = f'{self._step_dir(step)}{_TMP_SUFFIX}'
    if jax.process_index() == 0 and os.path.isdir(partial):
      shutil.rmtree(partial, ignore_errors=True)  # Ours, half-written; never listed as a step.
    left = (f'its partial files are left in {partial} (never taken for a step)'
            if os.path.exists(partial) else 'nothing of it was kept')
    good = ('no step of this run was saved before it' if self._good is None else
            f'the last good checkpoint is step {self._good}')
    what = _short(cause) if _STATUS.match(text) else f'{type(cause).__name__}: {_short(cause)}'
    raise CheckpointWriteError(
        f'checkpoint step {step} could not be saved in {self.directory} '
        f'({"the disk is full: " if full else ""}{what}); {left}; {good}'
        f'{": free some space and run again" if full else ""}') from None

  def wait(self) -> None:
    self._finish_save()

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
            '(eval, sweep) or --step=N (deblur, export)')
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

    The step's files are checked against its checksums before anything is
    read, and the restored arrays for NaN and infinity. Raises
    CheckpointDamagedError (damaged files, non-finite values),
    CheckpointReadError (files that could not be read) or
    CheckpointMismatchError (another model or layout), each one line naming
    the step.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {self.directory}')
    if step not in self.all_steps():
      raise FileNotFoundError(f'no checkpoint for step {step} in {self.directory} '
                              f'(have {self.all_steps()})')
    _QuietFailedIO.install()
    try:
      verified = verify_checksums(self._step_dir(step))
    except ValueError as e:
      raise self._read_error(step, e) from None
    if not verified:
      logging.info('checkpoint %s predates checksums: its bytes cannot be verified.',
                   self._step_dir(step))
    self._check_config(step)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    try:
      state = self.manager.restore(step, args=ocp.args.Composite(
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
    bad = non_finite_leaves(state)
    if bad:
      raise self._read_error(step, ValueError(
          f'DATA_LOSS: NaN or infinite values in {", ".join(bad[:3])}'
          f'{f" and {len(bad) - 3} more arrays" if len(bad) > 3 else ""}'))
    self._good = step if self._good is None else max(self._good, step)
    return state

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
    try:
      self._finish_save()
    finally:
      try:
        self.manager.close()
      except Exception:  # pylint: disable=broad-except
        if not self._save_failed:
          raise  # Otherwise orbax raises the failed save again: already raised in one line.


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
