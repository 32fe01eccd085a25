"""Shared by the benchmark scripts and the checks: configs, initial states, honest timing."""

import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, 'tests'))  # The PyTorch reference networks (torch_refs).

# --tiny: every network at seconds-on-a-CPU size, by family (DvSR shrinks its
# predictor by the predictor's family and its denoiser by 'denoiser'), batches
# of 2 crops of 64². Families not listed keep their size.
TINY_SECTIONS = {
    'xydeblur': dict(width=4, num_res=1),
    'unet': dict(base=4, num_res=1, multipliers=(1, 2)),
    'denoiser': dict(base=4, num_res=1, multipliers=(1, 2)),
}
TINY_BATCH, TINY_CROP = 2, 64


def _shrink(section) -> None:
  """One model section (config.model, or DvSR's predictor) at --tiny size, in place."""
  if section.name == 'dvsr':
    _shrink(section.predictor)
    section.denoiser.update(TINY_SECTIONS['denoiser'])
  elif section.name in TINY_SECTIONS:
    section.update(TINY_SECTIONS[section.name])


def load_config(path: str, *, dtype: str | None = None, tiny: bool = False):
  """'xydiff/configs/gopro.py', 'gopro', 'demo:diffusion' or a model name such as
  'nafnet32_gopro' -> ConfigDict (the packaged configs, xydiff.configs.get_config).

  `dtype` overrides config.model.dtype; `tiny` shrinks the networks, the batch and the crop.
  """
  from xydiff import configs
  path, _, arg = path.partition(':')
  name = os.path.splitext(os.path.basename(path))[0]
  config = configs.get_config(f'{name}:{arg}' if arg else name)
  if dtype:
    config.model.dtype = dtype
  if tiny:
    _shrink(config.model)
    config.train.batch_size, config.data.crop = TINY_BATCH, TINY_CROP
  return config


def compile_cheaply() -> None:
  """XLA's cheapest optimisation level from here on (call before JAX starts its backend).

  Tiny runs only show that the code runs and what it computes; this roughly
  halves their CPU compile time.
  """
  os.environ['XLA_FLAGS'] = ' '.join([os.environ.get('XLA_FLAGS', ''),
                                      '--xla_backend_optimization_level=0',
                                      '--xla_llvm_disable_expensive_passes=true']).strip()


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


_INITIAL_STATES = {}
_GRAPHDEFS = {}


def initial_state(config):
  """(graphdef, train state in host memory) of `config`, initialised once per network.

  Initialising costs about as much as compiling a step, and the parameters
  and optimizer state do not depend on the activation dtype or the batch:
  cases that differ only there share one initialisation. The graphdef holds
  the dtype: one per dtype, from the abstract state where the initialisation
  was another dtype's. Host copies, since a train step donates the state it
  is given.
  """
  import jax
  from xydiff.runs import state as state_lib
  model = config.model.to_dict()
  dtype = model.pop('dtype')
  train = config.train.to_dict()
  train.pop('batch_size')
  key = repr((sorted(model.items()), sorted(train.items()), config.seed))
  if key not in _INITIAL_STATES:
    _GRAPHDEFS[key, dtype], state = state_lib.init_state(config)
    _INITIAL_STATES[key] = jax.device_get(state)
  if (key, dtype) not in _GRAPHDEFS:
    _GRAPHDEFS[key, dtype], _ = state_lib.abstract_state(config)
  return _GRAPHDEFS[key, dtype], _INITIAL_STATES[key]


def random_pairs(batch_size: int, crop: int, seed: int = 0) -> dict:
  """A host batch {'blur', 'sharp'} of uniform noise: what a train step's speed depends on."""
  import numpy as np
  rng = np.random.default_rng(seed)
  shape = (batch_size, crop, crop, 3)
  return {'blur': rng.random(shape, np.float32), 'sharp': rng.random(shape, np.float32)}


def peak_bytes():
  """The largest per-device peak memory JAX reports (GPU/TPU); None where it reports none (CPU).

  A process-lifetime peak: in a run of several cases, the largest so far.
  """
  import jax
  peaks = [(d.memory_stats() or {}).get('peak_bytes_in_use') for d in jax.local_devices()]
  peaks = [p for p in peaks if p is not None]
  return max(peaks) if peaks else None


def emit(record: dict) -> None:
  print(json.dumps(record), flush=True)
