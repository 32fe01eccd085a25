"""Progress of long work on stderr: tqdm bars that the command line turns on.

  with progress.task('deblur', total=len(paths), unit='image') as bar:
    for path in paths:
      ...
      bar.update()

  with progress.stage('export: converting to ONNX'):  # One long call: its time ticks.
    jax2onnx.to_onnx(...)

Nothing shows unless `show(True)` was called (the `xydiff` command does,
unless --quiet) and the stream is a terminal, so library code calls these
freely: a notebook, a pipe or a log file sees nothing, and a disabled bar
costs nothing.

Hook for work further down (a tiled image's tiles, a sampler's steps):
`current()` is the innermost open task, or None when nothing shows, and
`substep(done, total, what)` draws a transient bar below it. A jitted
sampler decides at trace time whether to report, then calls back on the
host once per step:

    if progress.current() is not None:
      jax.debug.callback(functools.partial(progress.substep, what='step'), i + 1, num_steps)

Such callbacks run on a runtime thread, where a context variable set by the
caller is not seen: the open tasks are one process-wide stack.
"""

from __future__ import annotations

import contextlib
import io
import sys
import threading

from tqdm import tqdm

_shown = {'on': False, 'stream': None}
_tasks: list['Task'] = []
_lock = threading.Lock()


def show(on: bool, stream=None) -> None:
  """Turns progress on or off; bars go to `stream` (default: sys.stderr at the time)."""
  _shown.update(on=on, stream=stream)


def stream():
  """Where bars go: the stream `show` was given, else sys.stderr."""
  return _shown['stream'] or sys.stderr


def enabled() -> bool:
  """Whether bars show: turned on, and their stream is a terminal."""
  out = stream()
  return _shown['on'] and bool(getattr(out, 'isatty', lambda: False)())


class Task:
  """One piece of long work: its tqdm bar (disabled when nothing shows) and a sub-bar."""

  def __init__(self, bar: tqdm):
    self.bar = bar
    self._sub: tqdm | None = None
    self._sub_what = ''

  def update(self, n: int = 1) -> None:
    self.bar.update(n)

  def describe(self, text: str) -> None:
    """Shows `text` after the bar (e.g. the item being worked on)."""
    self.bar.set_postfix_str(text, refresh=True)

  def substep(self, done: int, total: int, what: str = 'step') -> None:
    """Shows `done` of `total` steps of the current item on a bar that vanishes when done."""
    if self.bar.disable:
      return
    done, total = int(done), int(total)
    sub = self._sub
    if sub is not None and self._sub_what != what:
      return  # One sub-bar at a time: a tiled image's tiles, not each tile's sampling steps.
    if sub is None or sub.total != total or done < sub.n:
      if sub is not None:
        sub.close()
      # Drawn at every update: each is a tile or a sampling step, never a busy loop's.
      sub = self._sub = tqdm(total=total, desc=f'  {what}', unit=what, leave=False,
                             file=self.bar.fp, mininterval=0, dynamic_ncols=True)
      self._sub_what = what
    sub.update(done - sub.n)
    if done >= total:
      sub.close()
      self._sub = None

  def close(self) -> None:
    if self._sub is not None:
      self._sub.close()
      self._sub = None
    self.bar.close()


@contextlib.contextmanager
def task(what: str, total: int | None = None, *, unit: str = 'it', initial: int = 0,
         leave: bool = True, on: bool = True, unit_scale: bool = False,
         unit_divisor: int = 1000):
  """A progress bar of `total` units (None: a count without an end) while the block runs.

  `on` False keeps it hidden whatever `enabled()` says (e.g. on all processes
  but the first of a multi-process run). Yields the `Task`; it is `current()`
  inside the block.
  """
  bar = tqdm(total=total, desc=what, unit=unit, initial=initial, leave=leave, file=stream(),
             disable=not (on and enabled()), dynamic_ncols=True, unit_scale=unit_scale,
             unit_divisor=unit_divisor)
  opened = Task(bar)
  with _lock:
    _tasks.append(opened)
  try:
    yield opened
  finally:
    with _lock:
      _tasks.remove(opened)
    opened.close()


def current() -> Task | None:
  """The innermost open task that shows, or None (then reporting is wasted work)."""
  with _lock:
    top = _tasks[-1] if _tasks else None
  return None if top is None or top.bar.disable else top


def substep(done: int, total: int, what: str = 'step') -> None:
  """`current().substep(...)`, or nothing when no task shows: the hook for inner loops."""
  top = current()
  if top is not None:
    top.substep(done, total, what)


@contextlib.contextmanager
def stage(what: str):
  """One line, `what (elapsed)`, ticking each second while the block runs one long call."""
  if not enabled():
    yield
    return
  line = tqdm(total=None, desc=what, bar_format='{desc} ({elapsed})', file=stream(),
              leave=True, dynamic_ncols=True)
  stop = threading.Event()

  def tick():  # tqdm redraws only when told; the call it times tells it nothing.
    while not stop.wait(1.0):
      line.refresh()

  ticker = threading.Thread(target=tick, daemon=True)
  ticker.start()
  try:
    yield
  finally:
    stop.set()
    ticker.join()
    line.close()


def write(text: str) -> None:
  """Prints a line on stderr above any bars (they are redrawn below it)."""
  tqdm.write(text, file=stream())


class _Forwarding(Task):
  """A task that draws nothing and hands each substep to `report(done, total, what)`."""

  def __init__(self, report):
    # Not disabled, so that current() names it and inner loops report to it.
    super().__init__(tqdm(total=None, file=io.StringIO(), disable=False))
    self._report = report

  def substep(self, done: int, total: int, what: str = 'step') -> None:
    self._report(int(done), int(total), what)


@contextlib.contextmanager
def forwarding(report):
  """Inner loops' substeps (a sampler's steps) go to `report(done, total, what)` while the
  block runs: a progress bar of another kind (a web page's) follows them.

  Samplers decide at trace time whether to report, so only what is compiled
  inside the block reports.
  """
  task = _Forwarding(report)
  with _lock:
    _tasks.append(task)
  try:
    yield task
  finally:
    with _lock:
      _tasks.remove(task)
    task.close()

