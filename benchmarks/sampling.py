"""Time per DvSR sampling step, for several T: it must not grow with T.

  python benchmarks/sampling.py --config=xydiff/configs/gopro.py --size=128 --steps=5,10,20

Prints one JSON object per T: total seconds (after compilation), seconds per
denoiser step, and the cost of the one predictor call measured on its own.
Sampling T steps should cost about T denoiser calls plus one predictor call.
"""

import argparse

from common import emit, load_config, timed


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--config', default='xydiff/configs/gopro.py')
  parser.add_argument('--size', type=int, default=128, help='square image side')
  parser.add_argument('--steps', default='5,10,20', help='comma-separated T values')
  parser.add_argument('--num_samples', type=int, default=1)
  parser.add_argument('--dtype', default=None, help='override config.model.dtype')
  args = parser.parse_args()

  import jax
  from flax import nnx
  from xydiff import diffusion, models

  config = load_config(args.config)
  if args.dtype:
    config.model.dtype = args.dtype
  model = models.build_model(config.model)
  graphdef, params = nnx.split(model)
  blur = jax.random.uniform(jax.random.key(0), (1, args.size, args.size, 3))

  @jax.jit
  def predict(p, y):
    return nnx.merge(graphdef, p).predict(y)['restored']

  _, predictor_s = timed(predict, params, blur)
  for num_steps in [int(t) for t in args.steps.split(',')]:
    schedule = diffusion.linear_schedule(num_steps, 1e-4, min(0.9, 10.0 / num_steps))

    @jax.jit
    def sample(p, y):
      m = nnx.merge(graphdef, p)
      return diffusion.sample(lambda x: m.predict(x)['restored'], m.denoise, y,
                              diffusion.sample_keys(jax.random.key(1), args.num_samples),
                              schedule=schedule, residual_scale=2.0)['mean']

    compile_and_run, total = timed(sample, params, blur, repeats=2)
    emit({'config': args.config, 'backend': jax.default_backend(), 'size': args.size,
          'num_samples': args.num_samples, 'num_steps': num_steps,
          'first_call_s': round(compile_and_run, 3), 'sample_s': round(total, 4),
          'predictor_s': round(predictor_s, 4),
          'per_step_s': round((total - predictor_s) / num_steps, 4)})


if __name__ == '__main__':
  main()
