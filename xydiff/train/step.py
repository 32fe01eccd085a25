"""The jitted train step: losses, one optimizer step, k steps per call, and its factory.

`make_train_step(config, graphdef, mesh)` is the one way to get the compiled
step: the loop, the benchmarks and the tests all call it. The step is a pure
function of (state, batch): the model is rebuilt inside it with `nnx.merge`
from the parameter pytree, and the state is donated so its buffers are reused.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from xydiff import models
from xydiff.runs import state as state_lib


def make_loss_fn(config):
  """loss_fn(model, batch, key) -> (loss, aux): the family's own training loss."""
  return models.family(config.model.name).loss(config.model)


def _unroll_gradient_loops() -> bool:
  """Whether loops around a backward pass are unrolled: on CPU only.

  XLA:CPU runs a training step inside a while loop many times slower than the
  same step outside one (README, "Speed"), so on CPU the few iterations are
  unrolled; on GPU/TPU the loop stays a loop and compile time does not grow
  with it.
  """
  return jax.default_backend() == 'cpu'


def _value_and_grad(loss_of, params, batch, key, microbatches: int):
  """(loss, aux), grads of the whole batch, optionally accumulated over micro-batches.

  Micro-batch j holds the rows i with i mod k == j: with the batch sharded in
  contiguous blocks over the devices, every device keeps its own rows and
  nothing moves between devices. Equal-sized micro-batches make the mean of
  their mean losses and gradients the whole batch's (up to summation order);
  a stochastic loss draws its noise per micro-batch (key folded with j).
  """
  grad_fn = jax.value_and_grad(loss_of, has_aux=True)
  if microbatches == 1:
    return grad_fn(params, batch, key)
  k = microbatches
  split = lambda x: x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)

  def accumulate(total, inputs):
    j, micro = inputs
    result = grad_fn(params, micro, jax.random.fold_in(key, j))
    return jax.tree.map(jnp.add, total, result), None

  micro = jax.tree.map(split, batch)
  shapes = jax.eval_shape(lambda: grad_fn(params, jax.tree.map(lambda x: x[0], micro), key))
  total, _ = jax.lax.scan(accumulate, jax.tree.map(jnp.zeros_like, shapes),
                          (jnp.arange(k), micro), unroll=_unroll_gradient_loops())
  return jax.tree.map(lambda t: t / k, total)


def ema_update(ema, params, rate: float):
  """rate * ema + (1 - rate) * params: the EMA moves a (1 - rate) step towards the new weights."""
  return jax.tree.map(lambda e, p: rate * e + (1.0 - rate) * p, ema, params)


def train_step(graphdef, state, batch, *, tx, loss_fn, ema_rate: float, base_key,
               microbatches: int = 1):
  """One optimizer step; the RNG is fold_in(seed, step), so it needs no state.

  `microbatches` > 1 accumulates the gradient over that many slices of the
  batch (lax.scan): the same update for a deterministic loss, with less memory,
  and on CPU faster, since XLA:CPU's convolutions slow down sharply on large
  batches of large crops.
  """
  key = jax.random.fold_in(base_key, state['step'])

  def loss_of(params, batch, key):
    return loss_fn(nnx.merge(graphdef, params), batch, key)

  (loss, aux), grads = _value_and_grad(loss_of, state['params'], batch, key, microbatches)
  updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
  params = optax.apply_updates(state['params'], updates)
  new_state = {'step': state['step'] + 1, 'params': params, 'opt_state': opt_state}
  if 'ema_params' in state:
    new_state['ema_params'] = ema_update(state['ema_params'], params, ema_rate)
  # The loss is that of the parameters before this update; the norm of the
  # updated ones catches an update that blew them up before they are saved.
  metrics = {'loss': loss, 'grad_norm': optax.tree.norm(grads),
             'param_norm': optax.tree.norm(params), **aux}
  return new_state, metrics


def train_steps(graphdef, state, batches, **kwargs):
  """k optimizer steps in one call: `lax.scan` over a [k, B, ...] stack of batches.

  For small models the per-call dispatch overhead rivals the step itself; one
  call for k steps amortises it. Returns the last step's metrics.
  """
  def body(s, batch):
    return train_step(graphdef, s, batch, **kwargs)
  state, metrics = jax.lax.scan(body, state, batches, unroll=_unroll_gradient_loops())
  return state, jax.tree.map(lambda m: m[-1], metrics)


def make_train_step(config, graphdef, mesh=None, *, donate: bool = True):
  """The compiled step `fn(state, batch) -> (state, metrics)` for `config`.

  With `config.train.steps_per_call` = k > 1 it takes a [k, B, ...] stack of
  batches and runs k steps. Given a `mesh`, the state is replicated and the
  batch sharded over its 'data' axis (state.batch_sharding); without one, jit
  places them itself. The state argument is donated unless `donate` is False.
  """
  t = config.train
  k = t.steps_per_call
  fn = functools.partial(
      train_step if k == 1 else train_steps, graphdef, tx=state_lib.make_optimizer(t),
      loss_fn=make_loss_fn(config), ema_rate=t.ema_rate, base_key=jax.random.key(config.seed),
      microbatches=t.microbatches)
  shardings = {}
  if mesh is not None:
    replicated = state_lib.replicated(mesh)
    shardings = dict(in_shardings=(replicated, state_lib.batch_sharding(mesh, k)),
                     out_shardings=(replicated, replicated))
  return jax.jit(fn, donate_argnums=0 if donate else (), **shardings)


def compiled_memory_gb(config, crop: int = 256) -> float | None:
  """Compiled peak memory (arguments, outputs and temporaries) of one training step on
  config.train.batch_size crops of crop x crop, on the current backend."""
  graphdef, state = state_lib.abstract_state(config)
  batch = {k: jax.ShapeDtypeStruct((config.train.batch_size, crop, crop, 3), jnp.float32)
           for k in ('blur', 'sharp')}
  one_step = config.copy_and_resolve_references()
  one_step.train.steps_per_call = 1
  step = make_train_step(one_step, graphdef, donate=False)
  memory = step.lower(state, batch).compile().memory_analysis()
  if memory is None:
    return None
  total = (memory.argument_size_in_bytes + memory.output_size_in_bytes
           + memory.temp_size_in_bytes - memory.alias_size_in_bytes)
  return total / 2 ** 30
