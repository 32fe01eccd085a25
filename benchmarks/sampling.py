"""Time per DvSR sampling step, for several T: it must not grow with T.

  python benchmarks/sampling.py --config=gopro --size=128 --steps=5,10,20 [--sampler=ddim]

Prints one JSON object with one bare predictor call and one bare denoiser
call, then one per T: the first call (compiling included), the T-step sample
(DvSR's restore with a T-step `dvsr.Sampling` of --sampler, as the Restorer
compiles it, after compilation), the seconds per step (the sample minus its
one predictor call, over T) and `loop_overhead`, the per-step time over the
bare denoiser call, minus one (a one-sample call: at --num_samples > 1 each
step denoises N samples at once).
"""

import argparse

from common import emit, initial_state, load_config, timed


def measure_calls(config, *, height: int, width: int, repeats: int = 3,
                  predictor_call_s: float | None = None) -> dict:
  """Seconds of one bare predictor call and one bare denoiser call: a sample's parts.

  `predictor_call_s`: the predictor's latency where it is already measured
  (benchmarks/inference.py's `predictor` output, at this config's dtype and size).
  """
  import jax
  import jax.numpy as jnp
  from flax import nnx
  import inference as inference_benchmark  # benchmarks/inference.py
  from xydiff.runs import state as state_lib

  if predictor_call_s is None:
    predictor_call_s = inference_benchmark.measure(
        config, 'predictor', height=height, width=width, repeats=repeats)['latency_s']
  graphdef, state = initial_state(config)
  params = jax.device_put(state_lib.eval_params(state))
  denoise = jax.jit(lambda p, z, level, y: nnx.merge(graphdef, p).denoise(z, level, y))
  blur = jax.random.uniform(jax.random.key(0), (1, height, width, 3))
  _, denoiser_s = timed(denoise, params, blur, jnp.full((1,), 0.5), blur, repeats=repeats)
  return {'dtype': config.model.dtype, 'size': [height, width],
          'predictor_call_s': predictor_call_s, 'denoiser_call_s': round(denoiser_s, 5)}


def measure(config, *, height: int, width: int, num_steps: int, num_samples: int = 1,
            sampler: str = 'ancestral', calls: dict | None = None) -> dict:
  """Seconds of one `num_steps`-step sample with `sampler` (the first call, compiling
  included, and one more); given measure_calls' `calls`, also per step and the loop's
  overhead."""
  import jax
  from xydiff.inference import restorer as inference
  from xydiff.models import dvsr
  from xydiff.runs import state as state_lib

  graphdef, state = initial_state(config)
  params = jax.device_put(state_lib.eval_params(state))
  # The schedule's values do not change the work; its length does.
  settings = dvsr.Sampling('benchmark', num_steps, 1e-4, min(0.9, 10.0 / num_steps),
                           num_samples, config.model.diffusion.residual_scale, sampler)
  sample = inference.restore_fn(config, graphdef, settings)
  blur = jax.random.uniform(jax.random.key(0), (1, height, width, 3))
  first, total = timed(sample, params, blur, jax.random.key(1), repeats=1)
  record = {'dtype': config.model.dtype, 'size': [height, width], 'sampler': sampler,
            'num_samples': num_samples, 'num_steps': num_steps, 'first_call_s': round(first, 3),
            'sample_s': round(total, 4)}
  if calls:
    per_step = (total - calls['predictor_call_s']) / num_steps
    record.update({'per_step_s': round(per_step, 5),
                   'denoiser_call_s': calls['denoiser_call_s'],
                   'loop_overhead': round(per_step / calls['denoiser_call_s'] - 1.0, 4)})
  return record


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', default='gopro')
  parser.add_argument('--size', type=int, default=128, help='square image side')
  parser.add_argument('--steps', default='5,10,20', help='comma-separated T values')
  parser.add_argument('--num_samples', type=int, default=1)
  parser.add_argument('--sampler', default='ancestral', help='diffusion.samplers.SAMPLERS')
  parser.add_argument('--tiny', action='store_true', help='tiny networks: the code runs, seconds')
  parser.add_argument('--repeats', type=int, default=3, help='timed bare calls; the best is shown')
  parser.add_argument('--dtype', default=None, help='override config.model.dtype')
  args = parser.parse_args()

  from xydiff.diffusion import samplers
  if args.sampler not in samplers.SAMPLERS:  # Refused before any compile.
    parser.error(f'--sampler={args.sampler}: must be one of {", ".join(samplers.SAMPLERS)}')
  config = load_config(args.config, dtype=args.dtype, tiny=args.tiny)
  calls = measure_calls(config, height=args.size, width=args.size, repeats=args.repeats)
  emit({'config': args.config, 'case': 'bare_calls', **calls})
  for num_steps in [int(t) for t in args.steps.split(',')]:
    emit({'config': args.config, 'case': f'T{num_steps}',
          **measure(config, height=args.size, width=args.size, num_steps=num_steps,
                    num_samples=args.num_samples, sampler=args.sampler, calls=calls)})


if __name__ == '__main__':
  main()
