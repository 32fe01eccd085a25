"""Multi-process start-up: `jax.distributed.initialize` from flags or the platform."""

from __future__ import annotations

import os

import jax
from absl import logging


def _platform_supplies_cluster() -> bool:
  """True on a multi-host TPU slice or inside a multi-task SLURM job."""
  hosts = os.environ.get('TPU_WORKER_HOSTNAMES', '')
  slurm_tasks = int(os.environ.get('SLURM_NTASKS', '1') or 1)
  return ',' in hosts or slurm_tasks > 1


def initialize(coordinator_address: str | None, num_processes: int | None,
               process_id: int | None) -> None:
  """Joins the job's processes before any JAX computation runs.

  With explicit flags all three must be given. Without them, TPU pods and
  SLURM describe the cluster themselves and `initialize()` takes no arguments;
  a single process needs nothing.
  """
  given = [v is not None for v in (coordinator_address, num_processes, process_id)]
  if any(given) and not all(given):
    raise ValueError('--coordinator_address, --num_processes and --process_id go together')
  if all(given):
    if not 0 <= process_id < num_processes:
      raise ValueError(f'--process_id={process_id} must be in [0, --num_processes={num_processes})')
    # CPU processes need a collectives backend to all-reduce gradients between them.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  elif _platform_supplies_cluster():
    jax.distributed.initialize()
  else:
    return
  logging.info('process %d of %d, %d local / %d global devices', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
