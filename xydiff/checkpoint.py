"""The one checkpoint wrapper: orbax CheckpointManager with a model-config guard.

Orbax writes each step to a temporary folder and renames it once complete, so
a step that was not finalised is never listed and never restored. Beside the
train state every checkpoint stores the model config it was made with; a
workdir whose checkpoints came from another model shape fails with a message
saying so instead of an orbax pytree mismatch.
"""

from __future__ import annotations

import json
import os

import jax
import orbax.checkpoint as ocp

from xydiff import models
from xydiff.errors import CheckpointMismatchError


class Checkpointer:
  """Saves and restores the train state (a pytree) under `<workdir>/checkpoints`."""

  def __init__(self, workdir: str, model_config, *, keep: int = 3):
    self.directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
    # Tuples become lists in JSON: compare the JSON round trip of both sides.
    self.signature = json.loads(json.dumps(models.shape_signature(model_config)))
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True,
        enable_async_checkpointing=False)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=('state', 'model_config'))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state) -> None:
    """Writes `step` and waits for it: when this returns the step is on disk."""
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        model_config=ocp.args.JsonSave(self.signature)), force=True)
    self.manager.wait_until_finished()

  def restore(self, target, step: int | None = None):
    """Restores into the structure, shapes and shardings of `target` (arrays or
    ShapeDtypeStructs, e.g. from train.abstract_state)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {self.directory}')
    if step not in self.all_steps():
      raise FileNotFoundError(f'no checkpoint for step {step} in {self.directory} '
                              f'(have {self.all_steps()})')
    saved = self.manager.restore(step, args=ocp.args.Composite(
        model_config=ocp.args.JsonRestore()))['model_config']
    if saved != self.signature:
      diff = sorted(k for k in set(saved) | set(self.signature)
                    if saved.get(k) != self.signature.get(k))
      raise CheckpointMismatchError(
          f'checkpoint {self.directory}/{step} was written for another model '
          f'(config.model fields that differ: {", ".join(diff)}); use a fresh --workdir '
          'or the config it was trained with')
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    try:
      return self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract)))['state']
    except ValueError as e:  # orbax: the saved tree differs from the target's.
      raise CheckpointMismatchError(
          f'checkpoint {self.directory}/{step} holds a train state of another layout than '
          'this config makes (was config.train.ema_rate or config.train.grad_clip turned on '
          f'or off?): {" ".join(str(e).split())[:300]}') from None

  def close(self):
    self.manager.close()
