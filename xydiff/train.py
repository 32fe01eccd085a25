"""Training: `train_and_evaluate(config, workdir)`, one readable loop.

The hot path is `train_step`, a pure function of (state, batch) compiled once
with `jax.jit`: the model is rebuilt inside it with `nnx.merge` from a plain
parameter pytree, and the state is donated so its buffers are reused. Data
parallelism is a 1-D device mesh: the batch is sharded over the 'data' axis,
everything else is replicated, and XLA inserts the gradient all-reduce.
"""

from __future__ import annotations

import functools
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from clu import metric_writers, periodic_actions
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from xydiff import checkpoint, config_check, data, diffusion, models
from xydiff.errors import ConfigError, NonFiniteLossError
from xydiff.evaluate import Evaluator


# ------------------------------------------------------------------ losses

def xydeblur_loss(model, batch, key):
  """The official recipe: L1 on the restored image only."""
  del key
  restored = model(batch['blur'])['restored']
  l1 = jnp.mean(jnp.abs(restored - batch['sharp']))
  return l1, {'l1': l1}


def make_loss_fn(config):
  if models.is_diffusion(config.model):
    d = config.diffusion
    return functools.partial(
        diffusion.loss, schedule=diffusion.linear_schedule(d.num_steps, d.beta_start, d.beta_end),
        residual_scale=d.residual_scale, predictor_weight=d.predictor_loss_weight)
  return xydeblur_loss


# ------------------------------------------------------------------ state

def make_lr_schedule(train_config):
  """Linear warm-up, then the base rate halved at each of `lr_halve_steps`."""
  halving = optax.piecewise_constant_schedule(
      train_config.lr, {int(s): 0.5 for s in train_config.lr_halve_steps})
  warmup = max(int(train_config.warmup_steps), 1)
  return lambda step: halving(step) * jnp.minimum(1.0, (step + 1) / warmup)


def make_optimizer(train_config) -> optax.GradientTransformation:
  adam = optax.adam(make_lr_schedule(train_config))
  if train_config.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(train_config.grad_clip), adam)
  return adam


def init_state(config):
  """(graphdef, state): the module structure, and the pytree that training updates."""
  model = models.build_model(config.model, seed=config.seed)
  graphdef, params = nnx.split(model, nnx.Param)
  params = nnx.to_pure_dict(params)
  state = {'step': jnp.zeros((), jnp.int32), 'params': params,
           'opt_state': make_optimizer(config.train).init(params)}
  if config.train.ema_rate > 0:
    state['ema_params'] = jax.tree.map(jnp.copy, params)  # Own buffers: the state is donated.
  return graphdef, state


def abstract_state(config, sharding=None):
  """(graphdef, state of ShapeDtypeStructs): a restore target without initialising.

  Compiling every parameter initialiser costs seconds; restoring needs only shapes.
  """
  graphdef, state = jax.eval_shape(lambda: init_state(config))
  if sharding is not None:
    state = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                         state)
  return graphdef, state


def load_for_inference(config, workdir: str, step: int | None = None):
  """(graphdef, eval params, step) of a workdir's checkpoint (latest when step is None).

  Restored replicated over the device mesh, as training holds them, so
  evaluation, sweeps and deblurring run the same way on one host or many.
  """
  replicated = NamedSharding(make_mesh(), PartitionSpec())
  graphdef, target = abstract_state(config, replicated)
  ckpt = checkpoint.Checkpointer(workdir, config.model)
  try:
    state = ckpt.restore(target, step)
  finally:
    ckpt.close()
  return graphdef, eval_params(state), int(state['step'])


def eval_params(state):
  """The weights evaluation uses: the EMA when training keeps one."""
  return state.get('ema_params', state['params'])


def _unroll_gradient_loops() -> bool:
  """Whether loops around a backward pass are unrolled: on CPU only.

  XLA:CPU runs a training step inside a while loop ~20x slower than the same
  step outside one (demo XYDeblur, batch 8 x 64^2: 3.0 s against 0.14 s per
  step), so on CPU the few iterations are unrolled; on GPU/TPU the loop stays
  a loop and compile time does not grow with it.
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


def train_step(graphdef, state, batch, *, tx, loss_fn, ema_rate: float, base_key,
               microbatches: int = 1):
  """One optimizer step; the RNG is fold_in(seed, step), so it needs no state.

  `microbatches` > 1 accumulates the gradient over that many slices of the
  batch (lax.scan): the same update for a deterministic loss, with less memory,
  and on CPU faster, since XLA:CPU's convolutions slow down sharply past about
  2 x 256^2 rows (benchmarks/conv_ops.py).
  """
  key = jax.random.fold_in(base_key, state['step'])

  def loss_of(params, batch, key):
    return loss_fn(nnx.merge(graphdef, params), batch, key)

  (loss, aux), grads = _value_and_grad(loss_of, state['params'], batch, key, microbatches)
  updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
  params = optax.apply_updates(state['params'], updates)
  new_state = {'step': state['step'] + 1, 'params': params, 'opt_state': opt_state}
  if 'ema_params' in state:
    new_state['ema_params'] = jax.tree.map(
        lambda e, p: ema_rate * e + (1.0 - ema_rate) * p, state['ema_params'], params)
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


# ------------------------------------------------------------------ mesh

def make_mesh() -> Mesh:
  # Auto axes: the jit's in/out shardings place batch and state and XLA
  # propagates the rest, so layers need no sharding annotations of their own
  # (explicit axes reject, e.g., the sub-pixel depth-to-space reshape).
  return jax.make_mesh((jax.device_count(),), ('data',),
                       axis_types=(jax.sharding.AxisType.Auto,))


def shard_batch(batch, sharding):
  """Assembles the global batch from every process's local slice."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def check_workdir_writable(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f'.write_probe_{jax.process_index()}')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise PermissionError(f'--workdir {workdir} is not writable: {e.strerror}') from None


class _StopRequested:
  """SIGTERM (preemption) asks the loop to checkpoint and return at the next step."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    def handler(signum, frame):
      del signum, frame
      self.requested = True
    try:
      self._previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # Not the main thread: no signal handling there.
      self._previous = None
    return self

  def agreed(self) -> bool:
    """Whether any process was asked to stop. Every process must take the same
    branch (the checkpoint save and the next step's all-reduce are collective),
    so with several processes the flag is shared before it is acted on."""
    if jax.process_count() == 1:
      return self.requested
    from jax.experimental import multihost_utils
    return bool(np.any(multihost_utils.process_allgather(np.int32(self.requested))))

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


# ------------------------------------------------------------------ loop

def train_and_evaluate(config, workdir: str) -> dict:
  """Trains `config` in `workdir`, resuming from its latest checkpoint if any.

  Returns the last evaluation summary.
  """
  config_check.validate(config, jax.device_count())
  check_workdir_writable(workdir)
  is_chief = jax.process_index() == 0

  train_source = data.get_source(config.data, 'train')
  eval_source = data.get_source(config.data, 'eval')

  mesh = make_mesh()
  replicated = NamedSharding(mesh, PartitionSpec())

  ckpt = checkpoint.Checkpointer(workdir, config.model, keep=config.train.keep_checkpoints)
  if ckpt.latest_step() is not None:
    # Restored straight into the replicated sharding of the mesh.
    graphdef, target = abstract_state(config, replicated)
    state = ckpt.restore(target)
    logging.info('Resumed from %s at step %d.', ckpt.directory, int(state['step']))
  else:
    graphdef, state = init_state(config)
    state = jax.device_put(state, replicated)
  start_step = int(state['step'])

  writer = metric_writers.create_default_writer(workdir, just_logging=not is_chief)
  if start_step == 0:
    writer.write_hparams(_flatten(config.to_dict()))
  evaluator = Evaluator(config, workdir, eval_source, writer=writer)
  num_steps = config.train.num_steps
  report = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer)

  k = config.train.steps_per_call
  if start_step % k:
    raise ConfigError(
        f'config.train.steps_per_call={k}: the checkpoint in {ckpt.directory} is at step '
        f'{start_step}, not a multiple of it')
  # With k steps per call the batch gains a leading k axis, unsharded.
  batch_sharding = NamedSharding(mesh, PartitionSpec(*([None] if k > 1 else []), 'data'))
  step_fn = jax.jit(
      functools.partial(train_step if k == 1 else train_steps, graphdef,
                        tx=make_optimizer(config.train), loss_fn=make_loss_fn(config),
                        ema_rate=config.train.ema_rate, base_key=jax.random.key(config.seed),
                        microbatches=config.train.microbatches),
      in_shardings=(replicated, batch_sharding), out_shardings=(replicated, replicated),
      donate_argnums=0)
  lr_schedule = make_lr_schedule(config.train)

  batches = data.train_batches(config, train_source, jax.process_index(), jax.process_count())
  shard_size = len(batches.local_shard())
  logging.info('Process %d reads %d of the %d training pairs.', jax.process_index(),
               shard_size, len(train_source))
  if config.data.cache_pairs < shard_size:
    # Shards are walked in random order: a smaller cache rarely hits.
    logging.info('config.data.cache_pairs=%d < %d: pairs are decoded again each time they '
                 'are read; a larger cache decodes each once.', config.data.cache_pairs,
                 shard_size)
  host_batches = batches.iterate(start_step)

  def next_device_batch():
    local = [next(host_batches) for _ in range(k)]
    if k > 1:
      local = [{key: np.stack([b[key] for b in local]) for key in local[0]}]
    return shard_batch(local[0], batch_sharding)

  summary = {}
  is_eval_step = lambda s: s % config.train.eval_every == 0 or s == num_steps
  if (start_step > 0 and is_eval_step(start_step) and
      not os.path.exists(os.path.join(workdir, 'eval', f'step_{start_step}.json'))):
    # The previous run stopped between this checkpoint and its evaluation.
    summary = evaluator.run(graphdef, eval_params(state), start_step)
  with _StopRequested() as stop:
    step = start_step
    batch = next_device_batch() if step < num_steps else None
    while step < num_steps:
      with jax.profiler.StepTraceAnnotation('train', step_num=step):
        state, metrics = step_fn(state, batch)
      step += k
      if step < num_steps:
        # Dispatch is asynchronous: the next batch is read and sent to the
        # devices while they compute this step.
        batch = next_device_batch()
      report(step)
      is_last = step == num_steps
      if step % config.train.log_every == 0 or is_last:
        values = jax.device_get(metrics)
        _check_finite(values, step, ckpt)
        writer.write_scalars(step, {**{k: float(v) for k, v in values.items()},
                                    'lr': float(lr_schedule(step - 1))})
      stopping = stop.agreed()
      if step % config.train.checkpoint_every == 0 or is_last or stopping:
        _check_finite(jax.device_get(metrics), step, ckpt)
        ckpt.save(step, state)
      if stopping:
        logging.warning('SIGTERM: saved step %d in %s; re-run the same command to resume.',
                        step, ckpt.directory)
        break
      if is_eval_step(step):
        with report.timed('eval'):
          summary = evaluator.run(graphdef, eval_params(state), step)
  writer.flush()
  ckpt.close()
  return summary


def _check_finite(metrics, step: int, ckpt) -> None:
  bad = {k: float(metrics[k]) for k in ('loss', 'grad_norm', 'param_norm')
         if not np.isfinite(float(metrics[k]))}
  if bad:
    what = ', '.join(f'{k} {v}' for k, v in bad.items())
    raise NonFiniteLossError(
        f'training became non-finite at step {step} ({what}); stopped without saving it. '
        f'The last good checkpoint is step {ckpt.latest_step()} in {ckpt.directory}')


def _flatten(tree, prefix=''):
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = str(value) if isinstance(value, (tuple, list)) else value
  return flat

