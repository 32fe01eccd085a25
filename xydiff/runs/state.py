"""The train state and where it lives: optimizer, initial and abstract state, mesh, shardings.

The state is a plain pytree {'step', 'params', 'opt_state'[, 'ema_params']};
the module structure (graphdef) stays outside it, so the state can be jitted,
donated, checkpointed and restored as arrays alone. Data parallelism is a 1-D
device mesh: batches are sharded over its 'data' axis, the state replicated.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from xydiff import models


LR_SCHEDULES = ('step', 'cosine')
OPTIMIZERS = ('adam', 'adamw')


def make_lr_schedule(train_config):
  """Linear warm-up, then 'step' (the rate times `lr_decay_factor`, 0.5 by default, at
  each of `lr_halve_steps`: XYDeblur, DMPHN (0.1), DeepDeblur, MIMO-UNet) or 'cosine' (annealed to `lr_min` at
  `num_steps`: NAFNet)."""
  if train_config.lr_schedule == 'cosine':
    decay = optax.cosine_decay_schedule(
        train_config.lr, int(train_config.num_steps),
        alpha=train_config.lr_min / train_config.lr)
  else:
    decay = optax.piecewise_constant_schedule(
        train_config.lr, {int(s): train_config.lr_decay_factor
                          for s in train_config.lr_halve_steps})
  warmup = max(int(train_config.warmup_steps), 1)
  return lambda step: decay(step) * jnp.minimum(1.0, (step + 1) / warmup)


def make_optimizer(train_config) -> optax.GradientTransformation:
  schedule = make_lr_schedule(train_config)
  b1, b2 = train_config.adam_betas
  if train_config.optimizer == 'adamw':
    opt = optax.adamw(schedule, b1=b1, b2=b2, weight_decay=train_config.weight_decay)
  else:
    opt = optax.adam(schedule, b1=b1, b2=b2)
  if train_config.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(train_config.grad_clip), opt)
  return opt


def state_from_params(config, params) -> dict:
  """A fresh train state around `params`: step 0, a new optimizer state, the EMA if kept."""
  state = {'step': jnp.zeros((), jnp.int32), 'params': params,
           'opt_state': make_optimizer(config.train).init(params)}
  if config.train.ema_rate > 0:
    state['ema_params'] = jax.tree.map(jnp.copy, params)  # Own buffers: the state is donated.
  return state


def init_state(config):
  """(graphdef, state): the module structure, and the pytree that training updates."""
  model = models.build(config.model, seed=config.seed)
  graphdef, params = nnx.split(model, nnx.Param)
  return graphdef, state_from_params(config, nnx.to_pure_dict(params))


def abstract_state(config, sharding=None):
  """(graphdef, state of ShapeDtypeStructs): a restore target without initialising.

  Compiling every parameter initialiser costs seconds; restoring needs only shapes.
  """
  graphdef, state = jax.eval_shape(lambda: init_state(config))
  if sharding is not None:
    state = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                         state)
  return graphdef, state


def eval_params(state):
  """The weights evaluation, sweeps and deblurring use: the EMA when training keeps one."""
  return state.get('ema_params', state['params'])


def make_mesh() -> Mesh:
  # Auto axes: the jit's in/out shardings place batch and state and XLA
  # propagates the rest, so layers need no sharding annotations of their own
  # (explicit axes reject, e.g., the sub-pixel depth-to-space reshape).
  return jax.make_mesh((jax.device_count(),), ('data',),
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, steps_per_call: int = 1) -> NamedSharding:
  """Batches split over 'data'; with k steps per call they gain a leading k axis, unsharded."""
  return NamedSharding(mesh, PartitionSpec(*([None] if steps_per_call > 1 else []), 'data'))


def shard_batch(batch, sharding):
  """Assembles the global batch from every process's local slice."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
