"""Shared by the benchmark scripts: config loading and honest timing."""

import importlib
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def load_config(path: str):
  """'configs/gopro.py', 'gopro' or 'demo:diffusion' -> ConfigDict (the packaged configs)."""
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


def emit(record: dict) -> None:
  print(json.dumps(record), flush=True)
