"""One workdir, one run: a writable folder and a lock held for the whole training run.

The lock is an `fcntl.flock` on `<workdir>/.lock`, held by process 0 of a run
(the only one that writes events and renames checkpoints). The kernel
releases it when the process ends, however it ends, so a killed run leaves no
stale lock. The file records who holds it, for the message a second run gets.
The lock file and the write probe are opened without following links
(xydiff.files): a `.lock` that is a link is refused, its target untouched.

What the lock can see depends on the filesystem. On a local disk, and on NFS
mounted the default way (flock becomes a lock on the server), it keeps out a
second run from any host. Where flock stays on the host that takes it (NFS
with `local_lock=flock` or `all`, FUSE mounts such as gcsfuse or sshfs,
Lustre's `localflock`) it keeps out a second run on the same host only, and
a warning says so; a filesystem without locks gets a warning and runs
unlocked.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import sys

from absl import logging

from xydiff import files
from xydiff.errors import LinkedFileError, WorkdirInUseError

LOCK_FILE = '.lock'
_MOUNTS = '/proc/self/mounts'


def check_writable(workdir: str, process_index: int = 0) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f'.write_probe_{process_index}')
    fd = files.create_own(probe, what='the write probe')
    try:
      os.write(fd, b'ok')
    finally:
      os.close(fd)
    os.remove(probe)
  except LinkedFileError:
    raise
  except OSError as e:
    raise PermissionError(f'--workdir {workdir} is not writable: {e.strerror}') from None


def host_local_locks(path: str) -> str | None:
  """Why flock on `path` would be seen by this host only (the mount, from /proc), or None.

  Longest mount point holding `path` wins; unknown systems (no /proc) give None.
  """
  try:
    with open(_MOUNTS) as f:
      mounts = [line.split() for line in f]
  except OSError:
    return None
  real = os.path.realpath(path)
  best = None
  for fields in mounts:
    if len(fields) < 4:
      continue
    point = fields[1].replace('\\040', ' ')
    inside = real == point or real.startswith(point.rstrip('/') + '/')
    if inside and (best is None or len(point) > len(best[1])):
      best = (fields[0], point, fields[2], fields[3].split(','))
  if best is None:
    return None
  source, point, kind, options = best
  if kind in ('nfs', 'nfs4') and ('local_lock=flock' in options or 'local_lock=all' in options):
    local = next(o for o in options if o.startswith('local_lock='))
    return f'{point} is NFS ({source}) mounted with {local}'
  if kind == 'fuse' or kind.startswith('fuse.'):
    return f'{point} is a FUSE filesystem ({kind}, {source})'
  if kind == 'lustre' and 'localflock' in options:
    return f'{point} is Lustre mounted with localflock'
  return None


@contextlib.contextmanager
def lock(workdir: str, *, hold: bool = True):
  """Holds the workdir's lock while the block runs; `hold=False` (processes > 0) does nothing.

  Raises WorkdirInUseError naming the holder when another run has it, and
  LinkedFileError when `.lock` is a link (nothing is written through it).
  """
  if not hold:
    yield
    return
  path = os.path.join(workdir, LOCK_FILE)
  fd = files.open_own(path, os.O_RDWR | os.O_CREAT, what='the workdir lock', mode=0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno in (errno.EAGAIN, errno.EACCES):
        holder = os.pread(fd, 512, 0).decode(errors='replace').strip() or 'another process'
        raise WorkdirInUseError(
            f'--workdir {workdir} is in use by another run ({holder}); wait for it to end or '
            'choose another --workdir') from None
      if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
        raise
      logging.warning('%s: this filesystem has no file locks (%s); nothing stops a second run '
                      'from using the same workdir at the same time.', workdir, e.strerror)
    else:
      os.ftruncate(fd, 0)
      os.pwrite(fd, (f'pid {os.getpid()} on {socket.gethostname()}: '
                     f'{" ".join(sys.argv)[:300]}\n').encode(), 0)
      local = host_local_locks(workdir)
      if local:
        logging.warning('%s: its lock on --workdir %s keeps out a second run on this host only; '
                        'a run started on another host at the same time would not be stopped.',
                        local, workdir)
    yield
  finally:
    os.close(fd)  # Closing the descriptor releases the lock.
