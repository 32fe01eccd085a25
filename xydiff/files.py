"""Files that appear whole or not at all, and files xydiff makes that no link can redirect.

A report, image, config or export is written under a temporary name and
renamed into place, so an interrupted run (SIGKILL, a full disk) never leaves
a truncated file behind; readers see the old file or the new one. Files that
belong together (`write_atomic_many`) are all written before any is renamed.

The files xydiff creates beside a user's (those temporaries, the workdir's
lock, the write probe) are opened without following symbolic links and must
be regular files with one name: a link planted under such a name is refused
in one line, and the file it points to is never opened, truncated or written.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from xydiff.errors import LinkedFileError

_NO_FOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


def _refuse(path: str, what: str, why: str) -> LinkedFileError:
  return LinkedFileError(f'{path} ({what}) is {why}; refused, and left untouched: remove it, '
                         'xydiff creates this file itself')


def _link_kind(path: str) -> str | None:
  """'a symbolic link to X', 'a hard link (N names)' or 'not a regular file'; None if none."""
  try:
    info = os.lstat(path)
  except FileNotFoundError:
    return None
  if stat.S_ISLNK(info.st_mode):
    return f'a symbolic link to {os.readlink(path)}'
  if not stat.S_ISREG(info.st_mode):
    return 'not a regular file'
  if info.st_nlink > 1:
    return f'a hard link ({info.st_nlink} names)'
  return None


def open_own(path: str, flags: int, *, what: str, mode: int = 0o666) -> int:
  """os.open(path, flags) that neither follows a symbolic link nor opens a shared file.

  Raises LinkedFileError naming `path` and `what` it is for when `path` is a
  symbolic or hard link or not a regular file (before anything is written);
  other OSErrors propagate.
  """
  try:
    fd = os.open(path, flags | _NO_FOLLOW, mode)
  except OSError as e:
    kind = _link_kind(path) if e.errno in (errno.ELOOP, errno.EEXIST, errno.ENXIO) else None
    if kind is not None:
      raise _refuse(path, what, kind) from None
    raise
  info = os.fstat(fd)
  if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
    os.close(fd)
    raise _refuse(path, what, 'not a regular file' if not stat.S_ISREG(info.st_mode) else
                  f'a hard link ({info.st_nlink} names)')
  return fd


def create_own(path: str, *, what: str) -> int:
  """A new, empty regular file at `path`, opened for writing (O_EXCL: made by this call).

  A regular file already there is a leftover of an interrupted process under
  the same name and is replaced; a link or anything else there is refused
  (LinkedFileError), untouched.
  """
  flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
  try:
    return open_own(path, flags, what=what)
  except FileExistsError:
    os.remove(path)  # A plain leftover file (links were refused above).
    return open_own(path, flags, what=what)


@contextlib.contextmanager
def atomic_path(path: str):
  """Yields a temporary path beside `path` (a new regular file); renamed to `path` if the
  block succeeds, removed if it fails."""
  tmp = f'{path}.tmp-{os.getpid()}'
  os.close(create_own(tmp, what=f'the temporary file of {os.path.basename(path)}'))
  try:
    yield tmp
    kind = _link_kind(tmp)
    if kind is not None:  # Swapped for a link while the block wrote it.
      raise _refuse(tmp, f'the temporary file of {os.path.basename(path)}', kind)
    os.replace(tmp, path)  # Replaces a link at `path` itself, never its target.
  finally:
    if _link_kind(tmp) is None and os.path.exists(tmp):
      os.remove(tmp)


def write_atomic(path: str, contents: str | bytes | bytearray) -> None:
  write_atomic_many({path: contents})


def write_atomic_many(contents: dict[str, str | bytes | bytearray]) -> None:
  """Writes every {path: contents} under its temporary name, then renames them all.

  A failure while writing (a full disk, a link planted at a temporary name)
  removes every temporary and changes no file under its own name, so files
  that belong together (an export's two graphs) are not left half old, half
  new.
  """
  with contextlib.ExitStack() as stack:
    for path, text in contents.items():
      data = text.encode() if isinstance(text, str) else text
      tmp = stack.enter_context(atomic_path(path))
      fd = open_own(tmp, os.O_WRONLY | os.O_TRUNC, what=f'the temporary file of '
                    f'{os.path.basename(path)}')
      try:
        _write_all(fd, data)
      finally:
        os.close(fd)


def _write_all(fd: int, data: bytes | bytearray) -> None:
  view = memoryview(data)
  while view:  # os.write may write less than asked (a signal, a pipe, a full quota).
    view = view[os.write(fd, view):]
