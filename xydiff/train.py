"""Training: `train_and_evaluate(config, workdir)`, one readable loop.

The compiled step comes from step.make_train_step (a pure function of
(state, batch), state donated); the state and its shardings from state.py;
evaluation from evaluate.Evaluator. This module owns the loop around them:
resume, input, logging, checkpoints, preemption and the workdir's lock.
"""

from __future__ import annotations

import os
import signal

import jax
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions

from xydiff import checkpoint, config_check, data, run_config, tf_guard
from xydiff import state as state_lib
from xydiff import step as step_lib
from xydiff import workdir as workdir_lib
from xydiff.errors import ConfigError, NonFiniteLossError
from xydiff.evaluate import Evaluator


class _Preemption:
  """A preemption notice (SIGTERM) asks the loop to checkpoint and return.

  With several processes the JAX coordination service spreads the notice and
  orbax's `reached_preemption` tells every process the same step to stop at
  (the save is collective). A single process has no coordination service, so
  it catches SIGTERM itself.
  """

  def __init__(self, ckpt: checkpoint.Checkpointer):
    self.ckpt = ckpt
    self.requested = False
    self._previous = None

  def __enter__(self):
    if jax.process_count() > 1:
      return self

    def handler(signum, frame):
      del signum, frame
      self.requested = True
    try:
      self._previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # Not the main thread: no signal handling there.
      self._previous = None
    return self

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      return self.ckpt.reached_preemption(step)
    return self.requested

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains `config` in `workdir`, resuming from its newest readable checkpoint if any.

  Returns the last evaluation summary.
  """
  config_check.validate(config, 'train', jax.device_count())
  workdir_lib.check_writable(workdir, jax.process_index())
  is_chief = jax.process_index() == 0
  with workdir_lib.lock(workdir, hold=is_chief):
    return _train(config, workdir, is_chief)


def _train(config, workdir: str, is_chief: bool) -> dict:
  train_source = data.get_source(config.data, 'train')
  eval_source = data.get_source(config.data, 'eval')

  mesh = state_lib.make_mesh()
  replicated = state_lib.replicated(mesh)
  ckpt = checkpoint.Checkpointer(workdir, config, keep=config.train.keep_checkpoints,
                                 async_save=config.train.async_checkpoints)
  state = None
  if ckpt.latest_step() is not None:
    # Restored straight into the replicated sharding of the mesh.
    graphdef, target = state_lib.abstract_state(config, replicated)
    state = ckpt.restore_newest_readable(target)
    if state is not None:
      logging.info('Resumed from %s at step %d.', ckpt.directory, int(state['step']))
  if state is None:
    graphdef, state = state_lib.init_state(config)
    state = jax.device_put(state, replicated)
  start_step = int(state['step'])
  if is_chief:
    run_config.save(workdir, config)

  tf_guard.keep_tensorflow_off_accelerators()  # clu's summary writer runs TensorFlow ops.
  writer = metric_writers.create_default_writer(workdir, just_logging=not is_chief)
  if start_step == 0:
    hparams = run_config.flatten(run_config.to_plain(config))
    writer.write_hparams({k: str(v) if isinstance(v, list) else v for k, v in hparams.items()})
  evaluator = Evaluator(config, workdir, eval_source, writer=writer)
  num_steps = config.train.num_steps
  report = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer)

  k = config.train.steps_per_call
  if start_step % k:
    raise ConfigError(
        f'config.train.steps_per_call={k}: the checkpoint in {ckpt.directory} is at step '
        f'{start_step}, not a multiple of it')
  batch_sharding = state_lib.batch_sharding(mesh, k)
  step_fn = step_lib.make_train_step(config, graphdef, mesh)
  lr_schedule = state_lib.make_lr_schedule(config.train)

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
    return state_lib.shard_batch(local[0], batch_sharding)

  summary = {}
  is_eval_step = lambda s: s % config.train.eval_every == 0 or s == num_steps
  if (start_step > 0 and is_eval_step(start_step) and
      not os.path.exists(os.path.join(workdir, 'eval', f'step_{start_step}.json'))):
    # The previous run stopped between this checkpoint and its evaluation.
    summary = evaluator.run(graphdef, state_lib.eval_params(state), start_step)
  with _Preemption(ckpt) as preemption:
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
      stopping = preemption.reached(step)
      if step % config.train.checkpoint_every == 0 or is_last or stopping:
        _check_finite(jax.device_get(metrics), step, ckpt)
        ckpt.save(step, state)
      if stopping:
        ckpt.wait()
        logging.warning('Preempted (SIGTERM): saved step %d in %s; re-run the same command to '
                        'resume.', step, ckpt.directory)
        break
      if is_eval_step(step):
        with report.timed('eval'):
          summary = evaluator.run(graphdef, state_lib.eval_params(state), step)
  writer.flush()
  ckpt.close()
  return summary


def _check_finite(metrics, step: int, ckpt) -> None:
  bad = {k: float(metrics[k]) for k in ('loss', 'grad_norm', 'param_norm')
         if not np.isfinite(float(metrics[k]))}
  if bad:
    ckpt.wait()
    what = ', '.join(f'{k} {v}' for k, v in bad.items())
    # Not the latest step on disk: the newest one this run restored with its checks
    # passed or saved itself, so the step named is one known to be good.
    good = ckpt.last_good_step()
    raise NonFiniteLossError(
        f'training became non-finite at step {step} ({what}); stopped without saving it. ' +
        (f'The last good checkpoint is step {good} in {ckpt.directory}' if good is not None else
         f'No checkpoint in {ckpt.directory} is known good: this run restored and saved none'))
