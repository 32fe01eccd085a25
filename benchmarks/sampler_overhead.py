"""What one sampling step costs beyond one denoiser call, per sampler (issue #26).

  python benchmarks/sampler_overhead.py --config=xydiff/configs/dvsr_gopro.py --size=256 \
      --num_samples=1 --steps=2,6 --repeats=5

A step's cost is measured as the difference of two whole samples of T1 and T2
steps, over T2 - T1: whatever runs once per sample (g(y), the first draw,
the tiling of y, the mean and std) cancels, and only what every step repeats
is left. It is compared with one bare, jitted denoiser call on the same
[N x B, H, W, 3] batch. g(y) is the identity here: it runs once per sample and
would cancel anyway, at the cost of its compilation and its run.

Each repeat times every case once, in turn, so the machine's load drifts over
all of them alike; CPU seconds are `time.process_time` (all of this process's
threads), wall seconds `time.perf_counter`. Prints one JSON object per case
with the median, min and max over the repeats, and `overhead` = median step
over median bare call, minus one.

--ablations adds two loops that split a step's extra cost: `denoiser_loop`
(the bare call inside a `lax.fori_loop`: what the loop itself costs) and
`noise` (one step's per-sample draw of xi alone).
"""

import argparse
import statistics
import time

from common import emit, initial_state, load_config


def _clock(fn, *args):
  import jax
  wall, cpu = time.perf_counter(), time.process_time()
  jax.block_until_ready(fn(*args))
  return time.process_time() - cpu, time.perf_counter() - wall


def _summary(values):
  return {'median': round(statistics.median(values), 5), 'min': round(min(values), 5),
          'max': round(max(values), 5)}


def measure(config, *, size: int, num_samples: int, steps: tuple[int, int], repeats: int,
            sampler_names: list[str], ablations: bool) -> list[dict]:
  """One record per case: seconds per step (or per call) in CPU and wall time."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from xydiff.diffusion import samplers, schedules
  from xydiff.runs import state as state_lib

  graphdef, state = initial_state(config)
  params = jax.device_put(state_lib.eval_params(state))
  blur = jax.random.uniform(jax.random.key(0), (1, size, size, 3))
  keys = samplers.sample_keys(jax.random.key(1), num_samples)
  stacked = jnp.tile(blur, (num_samples, 1, 1, 1))
  level = jnp.full((num_samples,), 0.5)

  bare = jax.jit(lambda p, z, lv, y: nnx.merge(graphdef, p).denoise(z, lv, y))
  cases = {'denoiser_call': (1, lambda: bare(params, stacked, level, stacked))}

  def sampler_fn(name, num_steps):
    # The schedule's values do not change the work; its length does.
    schedule = schedules.sampling_schedule(num_steps, 1e-4, min(0.9, 10.0 / num_steps))
    run = jax.jit(lambda p, y, k: samplers.sample(
        lambda x: x, nnx.merge(graphdef, p).denoise, y, k, schedule=schedule,
        residual_scale=config.model.diffusion.residual_scale, sampler=name)['samples'])
    return lambda: run(params, blur, keys)

  def denoiser_loop(num_steps):
    run = jax.jit(lambda p, y, lv: jax.lax.fori_loop(
        0, num_steps, lambda i, z: nnx.merge(graphdef, p).denoise(z, lv, y), y))
    return lambda: run(params, stacked, level)

  def noise_loop(num_steps):
    draw = samplers.per_sample_noise(keys, blur.shape)
    run = jax.jit(lambda y: jax.lax.fori_loop(0, num_steps, lambda i, z: z + draw(i), y))
    return lambda: run(stacked)

  makers = {name: (lambda t, name=name: sampler_fn(name, t)) for name in sampler_names}
  if ablations:
    makers.update({'denoiser_loop': denoiser_loop, 'noise': noise_loop})
  for name, make in makers.items():
    cases[name] = (steps[1] - steps[0], (make(steps[0]), make(steps[1])))

  for divisor, fns in cases.values():  # Compile and warm every case first.
    for fn in (fns if isinstance(fns, tuple) else (fns,)):
      jax.block_until_ready(fn())
  times = {name: {'cpu': [], 'wall': []} for name in cases}
  for _ in range(repeats):
    for name, (divisor, fns) in cases.items():
      if isinstance(fns, tuple):
        (cpu_1, wall_1), (cpu_2, wall_2) = _clock(fns[0]), _clock(fns[1])
        cpu, wall = (cpu_2 - cpu_1) / divisor, (wall_2 - wall_1) / divisor
      else:
        cpu, wall = _clock(fns)
      times[name]['cpu'].append(cpu)
      times[name]['wall'].append(wall)

  bare_cpu = statistics.median(times['denoiser_call']['cpu'])
  bare_wall = statistics.median(times['denoiser_call']['wall'])
  records = []
  for name, t in times.items():
    record = {'case': name, 'per': 'call' if name == 'denoiser_call' else 'step',
              'cpu_s': _summary(t['cpu']), 'wall_s': _summary(t['wall'])}
    if name != 'denoiser_call':
      record['overhead_cpu'] = round(statistics.median(t['cpu']) / bare_cpu - 1, 4)
      record['overhead_wall'] = round(statistics.median(t['wall']) / bare_wall - 1, 4)
    records.append(record)
  return records


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', default='xydiff/configs/dvsr_gopro.py')
  parser.add_argument('--size', type=int, default=256, help='square image side')
  parser.add_argument('--num_samples', type=int, default=1)
  parser.add_argument('--steps', default='2,6', help='T1,T2: per step = (t(T2) - t(T1)) / (T2 - T1)')
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--samplers', default='ancestral,ddim,dpmpp_2m,dpmpp_2m_sde')
  parser.add_argument('--ablations', action='store_true')
  parser.add_argument('--dtype', default=None, help='override config.model.dtype')
  args = parser.parse_args()

  config = load_config(args.config, dtype=args.dtype)
  t1, t2 = (int(t) for t in args.steps.split(','))
  common = {'config': args.config, 'size': args.size, 'num_samples': args.num_samples,
            'steps': [t1, t2], 'repeats': args.repeats, 'dtype': config.model.dtype}
  for record in measure(config, size=args.size, num_samples=args.num_samples, steps=(t1, t2),
                        repeats=args.repeats, sampler_names=args.samplers.split(','),
                        ablations=args.ablations):
    emit({**common, **record})


if __name__ == '__main__':
  main()
