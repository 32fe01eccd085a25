"""Shared by the benchmark scripts: config loading and honest timing."""

import importlib
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def load_config(path: str):
  """'xydiff/configs/gopro.py', 'gopro' or 'demo:diffusion' -> ConfigDict (the packaged configs)."""
  path, _, arg = path.partition(':')
  name = os.path.splitext(os.path.basename(path))[0]
  module = importlib.import_module(f'xydiff.configs.{name}')
  return module.get_config(arg) if arg else module.get_config()


def timed(fn, *args, repeats: int = 3):
  """(first-call seconds, best of `repeats` later calls); blocks on the results."""
  import jax
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  first = time.perf_counter() - start
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - start)
  return first, best


def time_train_step(config, state, batch, mesh, graphdef, *, repeats: int):
  """(compile seconds, best step seconds, final metrics) of `config`'s train step.

  The state is donated as in training; the first execution (allocation) is
  not timed.
  """
  import jax
  from xydiff import step as step_lib
  step = step_lib.make_train_step(config, graphdef, mesh)
  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    best = min(best, time.perf_counter() - start)
  return compile_s, best, metrics


def emit(record: dict) -> None:
  print(json.dumps(record), flush=True)
