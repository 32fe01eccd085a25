"""Inference latency, multiply-accumulates and memory at full GoPro resolution.

  python benchmarks/inference.py --config=gopro --height=720 --width=1280 --steps=10

One JSON object per output the family reports (`models.family(name).outputs(config)`,
each run by `inference.restorer.restore_fn`, what the Restorer and `xydiff deblur`
compile): XYDeblur's `restored`; for DvSR the predictor g and each preset of
config.eval.presets (--steps sets their T, --sampler their sampler). GMACs
are xydiff.models.complexity's count of the timed program's real multiply-accumulates
(convention 'true', not the tables' thop rules: what the device computes, so
a T-step loop counts T denoiser calls and CPU's sub-pixel up-convolutions
their 9/4 MACs); `peak_fraction` divides the achieved 2 x MACs/s by a large
float32 matmul's FLOP/s measured in the same run. `temp_bytes` is XLA's
estimate of the program's temporaries; `peak_bytes_so_far` the device's peak
(GPU/TPU).
"""

import argparse
import time

from common import emit, initial_state, load_config, peak_bytes, timed


def matmul_gflops_per_s(n: int = 4096) -> float:
  """GFLOP/s of an n x n float32 matmul on the default device: the yardstick of `peak_fraction`."""
  import jax
  import jax.numpy as jnp
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  _, seconds = timed(jax.jit(lambda x: x @ x), a)
  return 2 * n ** 3 / seconds / 1e9


def outputs(config) -> dict:
  """{output name: restore settings} the family reports for `config` (evaluation's outputs)."""
  from xydiff import models
  return models.family(config.model.name).outputs(config)


def measure(config, output: str, *, height: int, width: int, repeats: int = 3,
            matmul_gflops: float | None = None) -> dict:
  """Latency of the family's restore with `outputs(config)[output]`'s settings on one
  height x width image, compile apart."""
  import jax
  from xydiff.models import complexity
  from xydiff.inference import restorer as inference
  from xydiff.runs import state as state_lib

  graphdef, state = initial_state(config)
  params = jax.device_put(state_lib.eval_params(state))
  fn = inference.restore_fn(config, graphdef, outputs(config)[output])
  blur = jax.random.uniform(jax.random.key(0), (1, height, width, 3))
  key = jax.random.key(1)
  start = time.perf_counter()
  traced = fn.trace(params, blur, key)
  compiled = traced.lower().compile()
  compile_s = time.perf_counter() - start
  macs = complexity.jaxpr_macs(traced.jaxpr.jaxpr, 'true')
  _, seconds = timed(compiled, params, blur, key, repeats=repeats)
  memory = compiled.memory_analysis()
  record = {'output': output, 'backend': jax.default_backend(), 'dtype': config.model.dtype,
            'size': [height, width], 'compile_s': round(compile_s, 2),
            'latency_s': round(seconds, 5), 'gmacs': round(macs / 1e9, 3),
            'gflops_per_s': round(2 * macs / seconds / 1e9, 2),
            'temp_bytes': memory.temp_size_in_bytes if memory else None,
            'peak_bytes_so_far': peak_bytes()}
  if matmul_gflops:
    record.update({'matmul_gflops_per_s': round(matmul_gflops, 2),
                   'peak_fraction': round(record['gflops_per_s'] / matmul_gflops, 3)})
  return record


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', default='xydeblur_gopro')
  parser.add_argument('--height', type=int, default=720)
  parser.add_argument('--width', type=int, default=1280)
  parser.add_argument('--steps', type=int, default=0,
                      help="T of every sampling preset (0: each preset's own)")
  parser.add_argument('--sampler', default=None,
                      help="every sampling preset's sampler (diffusion.samplers.SAMPLERS; "
                      "default: each preset's own)")
  parser.add_argument('--repeats', type=int, default=2, help='timed calls; the best is shown')
  parser.add_argument('--dtype', default=None, help='override config.model.dtype')
  parser.add_argument('--tiny', action='store_true', help='tiny networks: the code runs, seconds')
  parser.add_argument('--matmul_side', type=int, default=4096,
                      help="side of the matmul that measures the device's FLOP/s")
  args = parser.parse_args()

  from xydiff import config as config_lib
  from xydiff.errors import ConfigError
  config = load_config(args.config, dtype=args.dtype, tiny=args.tiny)
  for name, preset in config.inference.get('presets', {}).items():  # DvSR's alone.
    if args.steps:
      preset.num_steps = args.steps
    if args.sampler:
      preset.sampler = args.sampler
      preset.eta = 0.0  # DDIM's noise; 0 for every sampler.
  try:
    config_lib.check(config)  # A bad --sampler or --steps named before any compile.
  except ConfigError as e:
    parser.error(str(e))
  matmul = matmul_gflops_per_s(args.matmul_side)
  for output in outputs(config):
    emit({'config': args.config, **measure(config, output, height=args.height, width=args.width,
                                            repeats=args.repeats, matmul_gflops=matmul)})


if __name__ == '__main__':
  main()
