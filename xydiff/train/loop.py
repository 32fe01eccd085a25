"""Training: `train_and_evaluate(config, workdir)`, one readable loop.

The compiled step comes from step.make_train_step (a pure function of
(state, batch), state donated); the state and its shardings from state.py;
evaluation from evaluation.evaluator.Evaluator. This module owns the loop around them:
resume, input, logging, checkpoints, preemption and the workdir's lock.
"""

from __future__ import annotations

import os
import signal

import jax
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions

from xydiff import config as config_lib
from xydiff import data, models, progress
from xydiff.data import tf_cpu
from xydiff.errors import ConfigError, NonFiniteLossError, require
from xydiff.evaluation import evaluator as evaluator_lib
from xydiff.inference import restorer
from xydiff.models import contract
from xydiff.runs import checkpoint, state as state_lib, workdir as workdir_lib
from xydiff.train import step as step_lib


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


def validate(train_config, device_count: int) -> None:
  """Checks config.train for a data-parallel mesh of `device_count` devices."""
  t = train_config
  for f in ('batch_size', 'num_steps', 'log_every', 'checkpoint_every', 'keep_checkpoints',
            'eval_every'):
    _positive_int(t[f], f'train.{f}')
  _positive_int(t.steps_per_call, 'train.steps_per_call')
  for f in ('num_steps', 'log_every', 'checkpoint_every', 'eval_every'):
    require(t[f] % t.steps_per_call == 0, f'train.{f}',
             f'must be a multiple of config.train.steps_per_call={t.steps_per_call}', t[f])
  require(t.batch_size % device_count == 0, 'train.batch_size',
           f'must be divisible by the {device_count} devices of the data-parallel mesh',
           t.batch_size)
  _positive_int(t.microbatches, 'train.microbatches')
  require(t.batch_size % (device_count * t.microbatches) == 0, 'train.microbatches',
           f'must divide the per-device batch {t.batch_size} / {device_count} devices',
           t.microbatches)
  require(t.lr > 0, 'train.lr', 'must be positive', t.lr)
  require(0 <= t.ema_rate < 1, 'train.ema_rate', 'must be in [0, 1); 0 turns the EMA off',
           t.ema_rate)
  require(t.warmup_steps >= 0, 'train.warmup_steps', 'must be >= 0', t.warmup_steps)
  require(t.grad_clip >= 0, 'train.grad_clip', 'must be >= 0; 0 turns clipping off', t.grad_clip)
  require(all(int(s) > 0 for s in t.lr_halve_steps), 'train.lr_halve_steps',
           'must be positive steps', tuple(t.lr_halve_steps))
  require(t.lr_schedule in state_lib.LR_SCHEDULES, 'train.lr_schedule',
           f'must be one of {state_lib.LR_SCHEDULES}', t.lr_schedule)
  require(0 <= t.lr_min <= t.lr, 'train.lr_min', 'must be in [0, train.lr]', t.lr_min)
  require(0 < t.lr_decay_factor <= 1, 'train.lr_decay_factor', 'must be in (0, 1]',
           t.lr_decay_factor)
  require(t.optimizer in state_lib.OPTIMIZERS, 'train.optimizer',
           f'must be one of {state_lib.OPTIMIZERS}', t.optimizer)
  require(len(t.adam_betas) == 2 and all(0 <= b < 1 for b in t.adam_betas), 'train.adam_betas',
           'must be two numbers in [0, 1)', tuple(t.adam_betas))
  require(t.weight_decay >= 0, 'train.weight_decay', 'must be >= 0', t.weight_decay)


def _positive_int(value, field: str) -> None:
  require(isinstance(value, int) and not isinstance(value, bool) and value > 0, field,
          'must be a positive integer', value)


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains `config` in `workdir`, resuming from its newest readable checkpoint if any.

  Returns the last evaluation summary.
  """
  config_lib.check(config)
  data.validate(config.data, models.size_multiple(config.model))
  validate(config.train, jax.device_count())
  evaluator_lib.validate(config.eval)
  restorer.validate(config.inference)
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
    config_lib.save(workdir, config)

  tf_cpu.keep_tensorflow_off_accelerators()  # clu's summary writer runs TensorFlow ops.
  writer = metric_writers.create_default_writer(workdir, just_logging=not is_chief)
  if start_step == 0:
    hparams = contract.flatten(config_lib.to_plain(config))
    writer.write_hparams({k: str(v) if isinstance(v, list) else v for k, v in hparams.items()})
  evaluator = evaluator_lib.Evaluator(config, workdir, eval_source, writer=writer)
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
  # A bar with steps/s and the ETA on a terminal; clu's ReportProgress logs them too.
  with _Preemption(ckpt) as preemption, progress.task(
      'train', total=num_steps, initial=start_step, unit='step', on=is_chief) as bar:
    step = start_step
    batch = next_device_batch() if step < num_steps else None
    while step < num_steps:
      with jax.profiler.StepTraceAnnotation('train', step_num=step):
        state, metrics = step_fn(state, batch)
      step += k
      bar.update(k)
      if step < num_steps:
        # Dispatch is asynchronous: the next batch is read and sent to the
        # devices while they compute this step.
        batch = next_device_batch()
      report(step)
      is_last = step == num_steps
      if step % config.train.log_every == 0 or is_last:
        values = jax.device_get(metrics)
        _check_finite(values, step, ckpt)
        bar.describe(f'loss {float(values["loss"]):.4g}')
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
