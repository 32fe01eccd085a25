"""The one checkpoint wrapper: orbax CheckpointManager, the run's config beside each step.

Orbax writes each step to a temporary folder and renames it once complete, so
a step that was not finalised is never listed and never restored. Beside the
train state every checkpoint stores the resolved config it was trained with;
restoring with a config that differs in a field that changes outputs
(run_config.OUTPUT fields) fails naming those fields, instead of an orbax
pytree mismatch or, worse, wrong images.

A step whose files cannot be read (a full disk truncated them, say) is a
CheckpointReadError naming it. Training then sets it aside (renamed to
`<step>.damaged`, never deleted) and resumes from the newest step that
restores: a damaged checkpoint costs one save interval, not the run.
"""

from __future__ import annotations

import os
import re

import jax
import orbax.checkpoint as ocp
from absl import logging

from xydiff import run_config
from xydiff.errors import CheckpointMismatchError, CheckpointReadError

# orbax's messages for a restore target of another tree or shape; any other
# failure to read a step means its files are damaged.
_LAYOUT_MISMATCH = re.compile(r'tree structures do not match|is not compatible with the stored')
DAMAGED_SUFFIX = '.damaged'


class Checkpointer:
  """Saves and restores the train state (a pytree) under `<workdir>/checkpoints`.

  `async_save` writes in the background (orbax copies the arrays to host
  memory before `save` returns, so the state may be donated right away); the
  step becomes visible only once complete, as with synchronous saves.
  `read_only` opens an existing folder without creating anything.
  """

  def __init__(self, workdir: str, config, *, keep: int = 3, async_save: bool = False,
               read_only: bool = False):
    self.directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
    self.config = run_config.to_plain(config)
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

  def stored_config(self, step: int) -> dict | None:
    """The config saved with `step` (None for checkpoints that carry none)."""
    try:
      return self.manager.restore(step, args=ocp.args.Composite(
          config=ocp.args.JsonRestore()))['config']
    except (KeyError, FileNotFoundError):
      return None
    except ValueError as e:
      raise CheckpointReadError(self._damaged_message(step, e)) from None

  def _damaged_message(self, step: int, error: BaseException) -> str:
    others = [s for s in self.all_steps() if s != step]
    return (f'checkpoint {self._step_dir(step)} cannot be read (damaged or truncated: '
            f'{" ".join(str(error).split())[:160]}); other steps: {others or "none"}, picked with '
            '--config.eval.checkpoint_step=N (eval, sweep) or --checkpoint=<dir>/N (deblur)')

  def restore(self, target, step: int | None = None):
    """Restores into the structure, shapes and shardings of `target` (arrays or
    ShapeDtypeStructs, e.g. from state.abstract_state); the latest step when None."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {self.directory}')
    if step not in self.all_steps():
      raise FileNotFoundError(f'no checkpoint for step {step} in {self.directory} '
                              f'(have {self.all_steps()})')
    stored = self.stored_config(step)
    if stored is not None:
      differ = run_config.differing_output_fields(stored, self.config)
      if differ:
        raise CheckpointMismatchError(
            f'checkpoint {self._step_dir(step)} was trained with other values of '
            f'{", ".join(differ)}; use the config it was trained with (omit --config to use '
            'the stored one) or a fresh --workdir')
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    try:
      return self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract)))['state']
    except ValueError as e:
      if not _LAYOUT_MISMATCH.search(str(e)):
        raise CheckpointReadError(self._damaged_message(step, e)) from None
      raise CheckpointMismatchError(
          f'checkpoint {self._step_dir(step)} holds a train state of another layout than '
          'this config makes (was config.train.ema_rate or config.train.grad_clip turned on '
          f'or off?): {" ".join(str(e).split())[:300]}') from None

  def restore_newest_readable(self, target):
    """Training's resume: the newest step that restores, setting damaged ones aside.

    Returns None when no step restores (training then starts afresh). Only
    process 0 renames; every process skips the same steps.
    """
    for step in reversed(self.all_steps()):
      try:
        return self.restore(target, step)
      except CheckpointReadError as e:
        logging.warning('%s; set aside as %s%s, resuming from the step before it.', e,
                        self._step_dir(step), DAMAGED_SUFFIX)
        if jax.process_index() == 0:
          _set_aside(self._step_dir(step))
        if jax.process_count() > 1:
          from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
          multihost_utils.sync_global_devices(f'set aside checkpoint {step}')
        self.manager.reload()  # Forget the renamed step.
    return None

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
