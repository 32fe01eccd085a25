"""Inference latency, FLOPs and peak memory at full GoPro resolution.

  python benchmarks/inference.py --config=xydiff/configs/gopro.py --height=720 --width=1280 --steps=10

Cases (one JSON object each): the deterministic network (XYDeblur) or, for a
diffusion config, the predictor g, one denoiser step f, and a T-step sample.
FLOPs come from XLA's cost analysis of the compiled program; `peak_fraction`
divides the achieved FLOP/s by a large float32 matmul's FLOP/s measured in the
same run on the same backend. XLA counts a loop body once, so the T-step
sample's FLOPs are the predictor's plus T denoiser steps'. `peak_bytes` is the device's peak memory where
the backend reports it (GPU/TPU), else XLA's temporary-buffer estimate.
"""

import argparse

from common import emit, load_config, timed


def _matmul_flops_per_s(n=4096):
  import jax
  import jax.numpy as jnp
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  matmul = jax.jit(lambda x: x @ x)
  _, seconds = timed(matmul, a)
  return 2 * n ** 3 / seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--config', default='xydiff/configs/xydeblur_gopro.py')
  parser.add_argument('--height', type=int, default=720)
  parser.add_argument('--width', type=int, default=1280)
  parser.add_argument('--steps', type=int, default=10, help='T of the sampled case')
  parser.add_argument('--dtype', default=None, help='override config.model.dtype')
  args = parser.parse_args()

  import jax
  from flax import nnx
  from xydiff import diffusion, models

  config = load_config(args.config)
  if args.dtype:
    config.model.dtype = args.dtype
  graphdef, params = nnx.split(models.build_model(config.model))
  blur = jax.random.uniform(jax.random.key(0), (1, args.height, args.width, 3))
  peak = _matmul_flops_per_s()

  cases = {}
  if models.is_diffusion(config.model):
    level = jax.numpy.full((1,), 0.5)
    cases['predictor'] = lambda p, y: nnx.merge(graphdef, p).predict(y)['restored']
    cases['denoiser_step'] = lambda p, y: nnx.merge(graphdef, p).denoise(y, level, y)
    schedule = diffusion.linear_schedule(args.steps, 1e-4, min(0.9, 10.0 / args.steps))

    def sample(p, y):
      m = nnx.merge(graphdef, p)
      return diffusion.sample(lambda x: m.predict(x)['restored'], m.denoise, y,
                              diffusion.sample_keys(jax.random.key(1), 1), schedule=schedule,
                              residual_scale=config.diffusion.residual_scale)['mean']
    cases[f'sample_T{args.steps}'] = sample
  else:
    cases['restore'] = lambda p, y: nnx.merge(graphdef, p)(y)['restored']

  flops_of = {}
  for name, fn in cases.items():
    compiled = jax.jit(fn).lower(params, blur).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get('flops', 0.0)) if cost else 0.0
    if name.startswith('sample_'):
      flops = flops_of['predictor'] + args.steps * flops_of['denoiser_step']
    flops_of[name] = flops
    memory = compiled.memory_analysis()
    _, seconds = timed(compiled, params, blur, repeats=2)
    stats = jax.devices()[0].memory_stats() or {}
    peak_bytes = stats.get('peak_bytes_in_use',
                           getattr(memory, 'temp_size_in_bytes', 0) if memory else 0)
    emit({'config': args.config, 'case': name, 'backend': jax.default_backend(),
          'dtype': config.model.dtype, 'size': [args.height, args.width],
          'latency_s': round(seconds, 4), 'gflops': round(flops / 1e9, 2),
          'achieved_gflops_per_s': round(flops / seconds / 1e9, 2),
          'matmul_gflops_per_s': round(peak / 1e9, 2),
          'peak_fraction': round(flops / seconds / peak, 3), 'peak_bytes': int(peak_bytes)})


if __name__ == '__main__':
  main()
