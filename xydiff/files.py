"""Files that appear whole or not at all: write under a temporary name, then rename.

An interrupted run (SIGKILL, a full disk) never leaves a truncated report,
image or config behind; readers see the old file or the new one.
"""

from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def atomic_path(path: str):
  """Yields a temporary path beside `path`; renamed to `path` if the block succeeds."""
  tmp = f'{path}.tmp-{os.getpid()}'
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_atomic(path: str, contents: str | bytes) -> None:
  with atomic_path(path) as tmp:
    with open(tmp, 'wb' if isinstance(contents, bytes) else 'w') as f:
      f.write(contents)
