"""Train-step throughput per config on the current backend, compile time apart.

  python benchmarks/train_step.py --config=xydiff/configs/xydeblur_gopro.py --batch_size=4 --crop=256 --steps=3

Prints one JSON object: config, backend, device count, batch size, crop,
compile_s (lowering + XLA compilation), step_s (best of --steps timed steps,
state donated as in training), images_per_s, the last step's loss and the
device's peak memory so far (GPU/TPU).
"""

import argparse
import time

from common import emit, initial_state, load_config, peak_bytes, random_pairs


def upsampling_sections(model) -> list:
  """The sections of config.model that choose an `upsample_impl`: the model's own, or
  DvSR's predictor and denoiser; none for families without up-convolutions (NAFNet)."""
  sections = [model, *(v for v in model.values() if hasattr(v, 'keys'))]
  return [s for s in sections if 'upsample_impl' in s]


def measure(config, *, steps: int) -> dict:
  """Throughput of `config`'s train step on config.train.batch_size crops of config.data.crop.

  Built as training builds it (step.make_train_step over every device, batch
  sharded, state replicated and donated); the first execution (allocation)
  is not timed. A non-finite loss raises: such a step computed nothing worth
  timing.
  """
  import jax
  import numpy as np
  from xydiff.runs import state as state_lib
  from xydiff.train import step as step_lib
  from xydiff.models import layers

  batch_size, crop = config.train.batch_size, config.data.crop
  mesh = state_lib.make_mesh()
  graphdef, state = initial_state(config)
  state = jax.device_put(state, state_lib.replicated(mesh))
  batch = state_lib.shard_batch(random_pairs(batch_size, crop), state_lib.batch_sharding(mesh))
  step = step_lib.make_train_step(config, graphdef, mesh)
  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  best = float('inf')
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    best = min(best, time.perf_counter() - start)
  loss = float(metrics['loss'])
  if not np.isfinite(loss):
    raise FloatingPointError(f'loss {loss} after {steps + 1} steps')
  return {'backend': jax.default_backend(), 'devices': jax.device_count(),
          'dtype': config.model.dtype,
          'upsample_impl': ','.join(sorted({layers.resolve_upsample_impl(s.upsample_impl)
                                            for s in upsampling_sections(config.model)})),
          'batch_size': batch_size, 'microbatches': config.train.microbatches, 'crop': crop,
          'compile_s': round(compile_s, 2), 'step_s': round(best, 5),
          'images_per_s': round(batch_size / best, 3), 'loss': round(loss, 5),
          'peak_bytes_so_far': peak_bytes()}


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--config', default='xydiff/configs/xydeblur_gopro.py')
  parser.add_argument('--batch_size', type=int, default=4)
  parser.add_argument('--crop', type=int, default=256)
  parser.add_argument('--steps', type=int, default=3)
  parser.add_argument('--dtype', default=None, help='override config.model.dtype')
  parser.add_argument('--microbatches', type=int, default=1,
                      help='config.train.microbatches (gradient accumulation)')
  parser.add_argument('--upsample_impl', default=None,
                      help='override the model\'s upsample_impl, every section that has one '
                           '(auto, reference, subpixel)')
  args = parser.parse_args()

  config = load_config(args.config, dtype=args.dtype)
  config.train.batch_size, config.data.crop = args.batch_size, args.crop
  if args.upsample_impl:
    for section in upsampling_sections(config.model):
      section.upsample_impl = args.upsample_impl
  config.train.microbatches = args.microbatches
  config.train.steps_per_call = 1
  emit({'config': args.config, **measure(config, steps=args.steps)})


if __name__ == '__main__':
  main()
