"""One workdir, one run: a writable folder and a lock held for the whole training run.

The lock is an `fcntl.flock` on `<workdir>/.lock`, held by process 0 of a run
(the only one that writes events and renames checkpoints). The kernel
releases it when the process ends, however it ends, so a killed run leaves no
stale lock. The file records who holds it, for the message a second run gets.
Storage whose filesystem has no locks (some network mounts) gets a warning and
runs unlocked.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import sys

from absl import logging

from xydiff.errors import WorkdirInUseError

LOCK_FILE = '.lock'


def check_writable(workdir: str, process_index: int = 0) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f'.write_probe_{process_index}')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise PermissionError(f'--workdir {workdir} is not writable: {e.strerror}') from None


@contextlib.contextmanager
def lock(workdir: str, *, hold: bool = True):
  """Holds the workdir's lock while the block runs; `hold=False` (processes > 0) does nothing.

  Raises WorkdirInUseError naming the holder when another run has it.
  """
  if not hold:
    yield
    return
  path = os.path.join(workdir, LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
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
    yield
  finally:
    os.close(fd)  # Closing the descriptor releases the lock.
