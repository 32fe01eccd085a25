"""Train-step throughput per config on the current backend, compile time apart.

  python benchmarks/train_step.py --config=xydiff/configs/xydeblur_gopro.py --batch_size=4 --crop=256 --steps=3

Prints one JSON object: config, backend, device count, batch size, crop,
compile_s (lowering + XLA compilation), step_s (best of --steps timed steps,
state donated as in training) and images_per_s.
"""

import argparse

from common import emit, load_config, time_train_step


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
                      help='override config.model.upsample_impl (auto, reference, subpixel)')
  args = parser.parse_args()

  import jax
  import numpy as np
  from xydiff import state as state_lib
  from xydiff.models import layers

  config = load_config(args.config)
  config.train.batch_size, config.data.crop = args.batch_size, args.crop
  if args.dtype:
    config.model.dtype = args.dtype
  if args.upsample_impl:
    config.model.upsample_impl = args.upsample_impl
  config.train.microbatches = args.microbatches
  config.train.steps_per_call = 1
  mesh = state_lib.make_mesh()
  graphdef, state = state_lib.init_state(config)
  state = jax.device_put(state, state_lib.replicated(mesh))
  rng = np.random.default_rng(0)
  shape = (args.batch_size, args.crop, args.crop, 3)
  batch = state_lib.shard_batch({'blur': rng.random(shape, np.float32),
                                 'sharp': rng.random(shape, np.float32)},
                                state_lib.batch_sharding(mesh))
  compile_s, best, _ = time_train_step(config, state, batch, mesh, graphdef, repeats=args.steps)
  emit({'config': args.config, 'backend': jax.default_backend(),
        'devices': jax.device_count(), 'dtype': config.model.dtype,
        'upsample_impl': layers.resolve_upsample_impl(config.model.upsample_impl),
        'batch_size': args.batch_size, 'microbatches': args.microbatches, 'crop': args.crop,
        'compile_s': round(compile_s, 2),
        'step_s': round(best, 4), 'images_per_s': round(args.batch_size / best, 3)})


if __name__ == '__main__':
  main()
