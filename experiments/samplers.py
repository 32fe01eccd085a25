"""Few-step samplers on the trained diffusion demo: quality against denoiser calls (issue #26).

  nice -n 5 python experiments/samplers.py --workdir=/work/runs/claims/length/diffusion_3200 \
      --out=experiments/samplers --images=8 --crop=256 --minutes=65

On the diffusion demo that `benchmarks/claims.py --parts=length` trained, and
the same weights throughout, tabulates PSNR / LPIPS / NIQE against the number
of denoiser calls (NFE) for each sampler of `xydiff.diffusion.samplers`
(ancestral, DDIM with eta = 0, DPM-Solver++ 2M and its SDE form), for a single
sample and for the mean of --samples samples. The single sample is sample 0 of
those: the same key, and a sample's noise depends on its own key alone.

Levels: every run is the 'perceptual' preset (T = 500 ancestral steps, linear
betas from 1e-6 to 4e-2; the paper's "Ours") with a steps override, built the
way DvSR builds it (`models.dvsr.Sampling.schedule`): ancestral keeps the beta
range, the other samplers keep the preset's first and last level and spread
the steps evenly in logSNR between them. The reference is that preset as it
is: the 500-step ancestral chain, single sample.

Images: held-out crops of the photographs the run never trained on (the last
config.data.synthetic.num_eval of scikit-image's photographs, sorted by name,
as `data.get_source(config.data, 'eval')` and claims.py's perception_distortion
choose them), blurred with the run's kernel distribution and the evaluation
seed (1): crop i gets kernel i. More crops than claims.py's two centre crops,
spread over both photos, so that LPIPS differences of 0.005 can be told from
the spread over images (paired per image).

Also times one denoiser and one predictor call of the full-size 'dvsr_gopro'
config on a 1280x720 input on this CPU (random weights, jit, one warm call,
then the median of two) and turns it into seconds per 1280x720 photo.

Work runs in priority order under a --minutes budget (the reference, then the
single samples from few to many calls, then the means of --samples, then the
long solver chains); what does not fit is left out of the tables and named in
the report. Finished runs are kept in --progress, so a rerun resumes.
Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import flax  # pylint: disable=wrong-import-position
import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
from flax import nnx  # pylint: disable=wrong-import-position

# pylint: disable=wrong-import-position
from xydiff import config as config_lib
from xydiff import configs, files, images, metrics, models
from xydiff.data import synthetic
from xydiff.diffusion import samplers
from xydiff.inference import restorer
from xydiff.metrics import lpips
from xydiff.models import dvsr
from xydiff.runs import checkpoint
# pylint: enable=wrong-import-position

# The reference: the 'perceptual' preset ("Ours") of the full-size configs.
REFERENCE = dict(num_steps=500, beta_start=1e-6, beta_end=4e-2)
TOLERANCE = 0.005  # LPIPS within which a solver "matches" the reference.
GOAL_NFE = 20  # The issue's goal: the reference's LPIPS in at most this many calls.
METRICS = ('psnr', 'lpips', 'niqe')


# ------------------------------------------------------------------ held-out crops

def crop_origins(height: int, width: int, crop: int) -> list[tuple[int, int]]:
  """Row-major top-left corners of ceil(H/crop) x ceil(W/crop) crops spread evenly over the photo."""
  def spread(size):
    count = -(-size // crop)
    return [0] if count == 1 else [round(i * (size - crop) / (count - 1)) for i in range(count)]
  return [(top, left) for top in spread(height) for left in spread(width)]


def held_out_pairs(config, crop: int, num_images: int):
  """(names, blurred [N, crop, crop, 3], sharp [N, crop, crop, 3]) float32, and their origins.

  The held-out photos are the run's evaluation split (the last num_eval photos
  by name). Each photo is tiled by `crop_origins`; the crops alternate between
  the photos, the second photo's in reverse order, so that the first N cover
  different parts of the scene. Crop i is blurred (then cropped by nothing
  more) like claims.py's held-out pairs: SyntheticPairs with the run's kernel
  settings and the evaluation seed 1.
  """
  cfg = config.data.synthetic
  photos = sorted(synthetic.skimage_photos(), key=lambda item: item[0])[-cfg.num_eval:]
  tiles = []
  for p, (name, photo) in enumerate(photos):
    origins = crop_origins(*photo.shape[:2], crop)
    tiles.append([(f'{name}@{top},{left}', photo[top:top + crop, left:left + crop], (top, left))
                  for top, left in (origins if p % 2 == 0 else origins[::-1])])
  ordered = [tile for group in zip(*tiles) for tile in group]
  ordered += [t for group in tiles for t in group[min(len(g) for g in tiles):]]
  if num_images > len(ordered):
    raise SystemExit(f'--images={num_images}: the held-out photos give only {len(ordered)} '
                     f'crops of {crop}x{crop}')
  chosen = ordered[:num_images]
  source = synthetic.SyntheticPairs(
      [(name, tile) for name, tile, _ in chosen], kernel=cfg.kernel,
      kernel_size=cfg.kernel_size, kernel_length=tuple(cfg.kernel_length),
      noise_std=cfg.noise_std, seed=1, crop=None)
  pairs = [source.load(i) for i in range(len(source))]
  blur = np.stack([images.to_float(b) for b, _ in pairs]).astype(np.float32)
  sharp = np.stack([images.to_float(s) for _, s in pairs]).astype(np.float32)
  return source.names, blur, sharp, [origin for _, _, origin in chosen]


# ------------------------------------------------------------------ sampling and scores

def sampling(config, sampler: str, nfe: int, num_samples: int):
  """DvSR's settings for the reference preset at `nfe` calls with `sampler` (DDIM: eta 0)."""
  return dvsr.Sampling(
      'perceptual', nfe, REFERENCE['beta_start'], REFERENCE['beta_end'], num_samples,
      config.model.diffusion.residual_scale, sampler, 0.0, 'linear_beta',
      REFERENCE['num_steps'])


def scores(restored, sharp) -> dict[str, list[float]]:
  """Per-image PSNR (uint8), LPIPS (AlexNet) and NIQE of [N, H, W, 3] images."""
  restored, sharp = jnp.asarray(restored), jnp.asarray(sharp)
  return {'psnr': np.asarray(metrics.psnr_uint8(restored, sharp)).tolist(),
          'lpips': np.asarray(jax.jit(lpips.lpips)(restored, sharp)).tolist(),
          'niqe': np.asarray(metrics.niqe(restored)).tolist()}


def run_task(config, graphdef, params, blur, sharp, key, sampler, nfe, num_samples) -> dict:
  """One (sampler, NFE, N) run on every image at once: one compile, one call."""
  settings = sampling(config, sampler, nfe, num_samples)
  restore = restorer.restore_fn(config, graphdef, settings)  # jit; the sampler inside.
  start = time.perf_counter()
  compiled = restore.lower(params, blur, key).compile()
  compile_s = time.perf_counter() - start
  start, cpu_start = time.perf_counter(), time.process_time()
  out = compiled(params, blur, key)
  samples = np.asarray(out['samples'])  # [N, B, H, W, 3]
  run_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
  result = {'sampler': sampler, 'nfe': nfe, 'num_samples': num_samples,
            'compile_s': compile_s, 'run_s': run_s, 'cpu_s': cpu_s,
            'load_average': os.getloadavg()[0],
            'single': scores(samples[0], sharp)}
  if num_samples > 1:
    result['mean'] = scores(samples.mean(axis=0), sharp)
  result['sample0_checksum'] = float(np.abs(samples[0]).astype(np.float64).sum())
  result['_sample0'] = samples[0]
  return result


def task_list(args) -> list[tuple[str, int, int]]:
  """(sampler, NFE, N) in priority order; the reference first."""
  ref = ('ancestral', REFERENCE['num_steps'], 1)
  short = [n for n in args.nfe if n < REFERENCE['num_steps']]
  tasks = [ref]
  tasks += [(s, n, 1) for n in short for s in args.samplers]
  tasks += [(s, n, args.samples) for n in args.mean_nfe if n in args.nfe for s in args.samplers]
  tasks += [(s, n, 1) for n in args.nfe if n >= REFERENCE['num_steps'] for s in args.samplers]
  seen, ordered = set(), []
  for task in tasks:
    if task not in seen and not (task[2] == 1 and task[1] >= REFERENCE['num_steps']
                                 and task[0] == 'ancestral' and task != ref):
      seen.add(task)
      ordered.append(task)
  return ordered


def task_key(task) -> str:
  return '{}|{}|{}'.format(*task)


# ------------------------------------------------------------------ full-size timing

def time_full_size(height: int = 720, width: int = 1280) -> dict:
  """Wall and process-CPU seconds of one denoiser and one predictor call of 'dvsr_gopro'.

  Each is jitted and called once to compile and warm; then the denoiser's
  median of two calls, and one timed predictor call (it runs once per photo,
  and at full size it is the slower of the two on a shared CPU).
  """
  config = configs.get_config('dvsr_gopro')
  model = models.build(config.model)
  graphdef, state = nnx.split(model)
  blur = jnp.asarray(np.random.default_rng(0).uniform(size=(1, height, width, 3)), jnp.float32)
  z = jnp.asarray(np.random.default_rng(1).normal(size=(1, height, width, 3)), jnp.float32)
  level = jnp.full((1,), 0.5, jnp.float32)
  calls = {
      'denoiser': (jax.jit(lambda s, z, l, y: nnx.merge(graphdef, s).denoise(z, l, y)),
                   (state, z, level, blur), 2),
      'predictor': (jax.jit(lambda s, y: nnx.merge(graphdef, s).predict(y)['restored']),
                    (state, blur), 1),
  }
  result = {'config': 'dvsr_gopro', 'size': [height, width]}
  for name, (fn, call_args, repeats) in calls.items():
    start = time.perf_counter()
    jax.block_until_ready(fn(*call_args))  # Compile and warm.
    first = time.perf_counter() - start
    walls, cpus = [], []
    for _ in range(repeats):
      start, cpu_start = time.perf_counter(), time.process_time()
      jax.block_until_ready(fn(*call_args))
      walls.append(time.perf_counter() - start)
      cpus.append(time.process_time() - cpu_start)
    result[name] = {'wall_s': float(np.median(walls)), 'cpu_s': float(np.median(cpus)),
                    'walls': walls, 'cpus': cpus, 'compile_and_first_s': first,
                    'load_average': os.getloadavg()[0]}
    print(f'dvsr_gopro {name} at {width}x{height}: {result[name]["wall_s"]:.2f} s wall, '
          f'{result[name]["cpu_s"]:.2f} CPU-s', flush=True)
  return result


def photo_seconds(timing: dict, nfe: int, kind: str = 'wall_s') -> float:
  """NFE denoiser calls plus one predictor call (a sampling step's own overhead not counted)."""
  return nfe * timing['denoiser'][kind] + timing['predictor'][kind]


# ------------------------------------------------------------------ summary

def summarize(done: dict, args, reference_key: str) -> dict:
  ref = np.asarray(done[reference_key]['single']['lpips'])
  rows, matches = [], {}
  for sampler in args.samplers:
    for nfe in args.nfe:
      single_task = done.get(task_key((sampler, nfe, 1)))
      mean_task = done.get(task_key((sampler, nfe, args.samples)))
      if sampler == 'ancestral' and nfe == REFERENCE['num_steps'] and single_task is None:
        single_task = done[reference_key]
      single = (single_task or mean_task or {}).get('single')
      if single is None:
        continue
      row = {'sampler': sampler, 'nfe': nfe}
      for metric in METRICS:
        row[metric] = float(np.mean(single[metric]))
        row[f'{metric}_std'] = float(np.std(single[metric]))
      diff = np.asarray(single['lpips']) - ref
      row['lpips_diff'] = float(diff.mean())
      row['lpips_diff_std'] = float(diff.std())
      row['lpips_diff_per_image'] = diff.tolist()
      if mean_task is not None:
        for metric in METRICS:
          row[f'mean{args.samples}_{metric}'] = float(np.mean(mean_task['mean'][metric]))
      if single_task is not None and mean_task is not None:
        row['single_equals_sample0'] = bool(np.isclose(
            single_task['sample0_checksum'], mean_task['sample0_checksum'], rtol=1e-5))
      rows.append(row)
    within = [r for r in rows if r['sampler'] == sampler and abs(r['lpips_diff']) <= TOLERANCE]
    at_most = [r for r in rows if r['sampler'] == sampler and r['lpips_diff'] <= TOLERANCE]
    matches[sampler] = {
        'nfe_within': min((r['nfe'] for r in within), default=None),
        'nfe_not_worse': min((r['nfe'] for r in at_most), default=None),
        'best_within_goal': min(((r['lpips_diff'], r['nfe']) for r in rows
                                 if r['sampler'] == sampler and r['nfe'] <= GOAL_NFE),
                                default=None, key=lambda x: abs(x[0])),
        'nfe_measured': sorted(r['nfe'] for r in rows if r['sampler'] == sampler)}
  return {'reference_lpips': float(ref.mean()), 'reference_lpips_std': float(ref.std()),
          'reference_per_image': {m: done[reference_key]['single'][m] for m in METRICS},
          'rows': rows, 'matches': matches}


def fmt(value, digits=4):
  return '–' if value is None else f'{value:.{digits}f}'


def markdown(result: dict, args) -> str:
  setup, summary, timing = result['setup'], result['summary'], result.get('full_size_timing')
  n = args.samples
  lines = [
      '# Few-step samplers on the diffusion demo (issue #26)', '',
      f'Made by `experiments/samplers.py` on {setup["date"]}: {setup["machine"]}, '
      f'jax {setup["jax"]}, flax {setup["flax"]}, Python {setup["python"]}. The machine was '
      f'shared with other jobs (load average {setup["load_average_min"]:.1f}–'
      f'{setup["load_average_max"]:.1f} over the run), so wall times are inflated; the CPU-second '
      'columns are this process\'s own.', '',
      f'Model: `{setup["workdir"]}` (the diffusion demo of `claims.py --parts=length`, '
      f'checkpoint {setup["step"]}; residual scale {setup["residual_scale"]}). Only the '
      '3,200-step model exists: its 6,400- and 12,800-step siblings were never saved.', '',
      f'Images: {len(setup["images"])} held-out crops of {setup["crop"]}x{setup["crop"]} '
      f'(photos never trained on: {", ".join(setup["photos"])}), each blurred by its own '
      f'synthetic camera-shake kernel (evaluation seed 1, kernels 0–{len(setup["images"]) - 1}): '
      + ', '.join(f'`{name}`' for name in setup['images']) + '.'
      + (f' Crops of {setup["crop"]}² rather than claims.py\'s 512², to fit the budget on a shared '
         'CPU.' if setup['crop'] < 512 else ''), '',
      f'Levels: the `perceptual` preset ({REFERENCE["num_steps"]} steps, linear betas '
      f'{REFERENCE["beta_start"]:g} to {REFERENCE["beta_end"]:g}) with a steps override, as '
      '`models.dvsr.Sampling` builds it: ancestral keeps the beta range (so fewer steps reach '
      'less noise); DDIM (eta = 0), DPM-Solver++(2M) and its SDE form keep the preset\'s first '
      'and last level and spread the steps evenly in logSNR. Reference: the 500-step ancestral '
      f'chain, single sample: LPIPS {summary["reference_lpips"]:.4f} ± '
      f'{summary["reference_lpips_std"]:.4f} over images.', '',
      f'Single = sample 0 of the {n} (same keys). ΔLPIPS = LPIPS − the reference\'s, paired per '
      'image, mean ± std over images. PSNR on uint8 levels; LPIPS AlexNet v0.1; NIQE (MATLAB '
      f'release; a {setup["crop"]}² crop holds {(setup["crop"] // 96) ** 2} of its 96² blocks).',
      '']
  if timing:
    lines += [f'Seconds per 1280x720 photo: NFE x one full-size `dvsr_gopro` denoiser call + one '
              f'predictor call, timed on this CPU (random weights, jit, one warm call, then the '
              f'denoiser\'s median of 2 calls and one predictor call: denoiser '
              f'{timing["denoiser"]["wall_s"]:.2f} s '
              f'wall / {timing["denoiser"]["cpu_s"]:.2f} CPU-s, predictor '
              f'{timing["predictor"]["wall_s"]:.2f} s / {timing["predictor"]["cpu_s"]:.2f} CPU-s; '
              'a sampling step\'s own work beside the call not counted: '
              'benchmarks/sampler_overhead.py finds it within the spread of a bare call).', '']
  head = (f'| sampler | NFE | PSNR | LPIPS | ΔLPIPS vs ref | NIQE | PSNR mean{n} | LPIPS mean{n} '
          f'| NIQE mean{n} | s/photo (wall) |')
  lines += [head, '|' + '|'.join(['---'] * (head.count('|') - 1)) + '|']
  for r in summary['rows']:
    seconds = fmt(photo_seconds(timing, r['nfe']), 0) if timing else '–'
    lines.append(
        f'| {r["sampler"]} | {r["nfe"]} | {r["psnr"]:.2f} | {r["lpips"]:.4f} | '
        f'{r["lpips_diff"]:+.4f} ± {r["lpips_diff_std"]:.4f} | {r["niqe"]:.2f} | '
        f'{fmt(r.get(f"mean{n}_psnr"), 2)} | {fmt(r.get(f"mean{n}_lpips"))} | '
        f'{fmt(r.get(f"mean{n}_niqe"), 2)} | {seconds} |')
  lines += ['', f'## Smallest NFE within {TOLERANCE} LPIPS of the reference', '',
            '| sampler | NFE measured | smallest NFE with abs(ΔLPIPS) ≤ 0.005 | '
            'smallest NFE with ΔLPIPS ≤ 0.005 | s/photo there (wall / CPU-s) | '
            f'closest at ≤ {GOAL_NFE} calls |', '|---|---|---|---|---|---|']
  for sampler, m in summary['matches'].items():
    nfe = m['nfe_within']
    seconds = (f'{photo_seconds(timing, nfe):.0f} / {photo_seconds(timing, nfe, "cpu_s"):.0f}'
               if timing and nfe else '–')
    best = m['best_within_goal']
    lines.append(f'| {sampler} | {", ".join(map(str, m["nfe_measured"]))} | {nfe or "none"} | '
                 f'{m["nfe_not_worse"] or "none"} | {seconds} | '
                 + (f'{best[0]:+.4f} at {best[1]}' if best else '–') + ' |')
  if timing:
    t = REFERENCE['num_steps']
    lines += ['', f'Today\'s `perceptual` ({t} ancestral calls): {photo_seconds(timing, t):.0f} s '
              f'wall ({photo_seconds(timing, t) / 60:.1f} min) / '
              f'{photo_seconds(timing, t, "cpu_s"):.0f} CPU-s per 1280x720 photo on this CPU.']
  if result['skipped']:
    lines += ['', f'Not run within the {args.minutes:g}-minute budget: '
              + ', '.join(f'{s} NFE {nfe} N={k}' for s, nfe, k in result['skipped']) + '.']
  reached = [s for s, m in summary['matches'].items()
             if m['nfe_within'] is not None and m['nfe_within'] <= GOAL_NFE]
  lines += ['', '## Goal: the reference LPIPS in ≤ 20 denoiser calls', '',
            (f'Reached by: {", ".join(reached)}.' if reached else
             f'No sampler reaches the reference LPIPS within {TOLERANCE} in ≤ {GOAL_NFE} calls.')]
  return '\n'.join(lines) + '\n'


# ------------------------------------------------------------------ main

def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', default='/work/runs/claims/length/diffusion_3200')
  parser.add_argument('--out', default=os.path.join(REPO, 'experiments', 'samplers'),
                      help='writes OUT.json and OUT.md')
  parser.add_argument('--nfe', default='5,10,20,50,100,500')
  parser.add_argument('--samplers', default='ancestral,ddim,dpmpp_2m,dpmpp_2m_sde')
  parser.add_argument('--images', type=int, default=8, help='held-out crops')
  parser.add_argument('--crop', type=int, default=256)
  parser.add_argument('--samples', type=int, default=8, help='N of the N-sample mean')
  parser.add_argument('--mean_nfe', default='5,10,20,50,100',
                      help='the NFEs that also get the mean of --samples')
  parser.add_argument('--minutes', type=float, default=65.0,
                      help='start no run expected to end after this many minutes')
  parser.add_argument('--progress', default=os.path.join(tempfile.gettempdir(),
                                                         'xydiff_samplers_progress.json'))
  parser.add_argument('--skip_full_timing', action='store_true')
  args = parser.parse_args()
  args.nfe = sorted(int(n) for n in args.nfe.split(','))
  args.mean_nfe = sorted(int(n) for n in args.mean_nfe.split(',') if n)
  args.samplers = args.samplers.split(',')
  started = time.perf_counter()
  deadline = started + 60.0 * args.minutes
  loads = [os.getloadavg()[0]]

  for s in args.samplers:
    samplers.check(s)
  config = config_lib.load(args.workdir)
  graphdef, params, step = checkpoint.load_params(config, args.workdir)
  names, blur, sharp, origins = held_out_pairs(config, args.crop, args.images)
  blur_j = jnp.asarray(blur)
  key = jax.random.key(config.seed + 1)  # As the sweep's base key.

  setup = {
      'date': datetime.date.today().isoformat(),
      'machine': f'{os.cpu_count()}-core CPU ({_cpu_name()}), {platform.system()}',
      'jax': jax.__version__, 'flax': flax.__version__,
      'python': platform.python_version(), 'workdir': args.workdir, 'step': step,
      'residual_scale': float(config.model.diffusion.residual_scale),
      'images': names, 'origins': origins, 'crop': args.crop,
      'photos': sorted({name.split('@')[0] for name in names}),
      'kernel': {k: (list(v) if isinstance(v, (tuple, list)) else v)
                 for k, v in config.data.synthetic.items()
                 if k in ('kernel', 'kernel_size', 'kernel_length', 'noise_std')},
      'eval_seed': 1, 'key': f'jax.random.key({config.seed + 1})',
      'nfe': args.nfe, 'samplers': args.samplers, 'num_samples': args.samples,
      'mean_nfe': args.mean_nfe, 'reference': dict(REFERENCE, sampler='ancestral'),
      'tolerance': TOLERANCE, 'minutes': args.minutes}
  settings_id = json.dumps({k: setup[k] for k in ('workdir', 'step', 'images', 'crop', 'key')})
  done = {}
  if os.path.exists(args.progress):
    with open(args.progress) as f:
      saved = json.load(f)
    if saved.get('settings') == settings_id:
      done = saved['done']
      print(f'resuming {len(done)} finished runs from {args.progress}', flush=True)

  tasks = task_list(args)
  # Measured seconds per image-call of the demo's denoiser, and per compile.
  per_call = compile_s = None
  skipped, sample0 = [], {}
  for task in tasks:
    sampler, nfe, count = task
    if task_key(task) in done:
      continue
    image_calls = nfe * count * len(names)
    if per_call is not None:
      expected = compile_s + image_calls * per_call
      if time.perf_counter() + expected > deadline:
        skipped.append(task)
        print(f'skipped {task}: ~{expected / 60:.1f} min would pass the budget', flush=True)
        continue
    result = run_task(config, graphdef, params, blur_j, sharp, key, sampler, nfe, count)
    sample0[task_key(task)] = result.pop('_sample0')
    per_call, compile_s = result['run_s'] / image_calls, result['compile_s']
    loads.append(result['load_average'])
    done[task_key(task)] = result
    files.write_atomic(args.progress, json.dumps({'settings': settings_id, 'done': done}))
    print(f'{sampler} NFE {nfe} N={count}: {result["run_s"]:.0f} s (+{result["compile_s"]:.0f} s '
          f'compile), LPIPS {np.mean(result["single"]["lpips"]):.4f}, '
          f'{(time.perf_counter() - started) / 60:.1f} min in', flush=True)
  # After the sweep, so that a busy machine spends its budget on the sweep first.
  timing = done.get('__timing__')
  if timing is None and not args.skip_full_timing:
    timing = time_full_size()
    done['__timing__'] = timing
    files.write_atomic(args.progress, json.dumps({'settings': settings_id, 'done': done}))
  loads.append(os.getloadavg()[0])

  # A single run and sample 0 of the mean with the same keys must agree (independent of N).
  for (s, nfe, count) in tasks:
    a, b = sample0.get(task_key((s, nfe, 1))), sample0.get(task_key((s, nfe, count)))
    if count > 1 and a is not None and b is not None:
      done[task_key((s, nfe, count))]['sample0_max_abs_diff_vs_single'] = float(
          np.abs(a - b).max())

  reference_key = task_key(tasks[0])
  setup['load_average_min'], setup['load_average_max'] = min(loads), max(loads)
  setup['wall_minutes'] = (time.perf_counter() - started) / 60
  result = {'setup': setup, 'full_size_timing': timing,
            'runs': {k: v for k, v in done.items() if k != '__timing__'},
            'skipped': skipped, 'summary': summarize(done, args, reference_key)}
  if timing:
    result['seconds_per_photo'] = {
        'perceptual_500_ancestral': {'wall_s': photo_seconds(timing, REFERENCE['num_steps']),
                                     'cpu_s': photo_seconds(timing, REFERENCE['num_steps'],
                                                            'cpu_s')},
        **{s: ({'nfe': m['nfe_within'], 'wall_s': photo_seconds(timing, m['nfe_within']),
                'cpu_s': photo_seconds(timing, m['nfe_within'], 'cpu_s')}
               if m['nfe_within'] else None)
           for s, m in result['summary']['matches'].items()}}
  files.write_atomic(args.out + '.json', json.dumps(result, indent=1))
  files.write_atomic(args.out + '.md', markdown(result, args))
  print(open(args.out + '.md').read())


def _cpu_name() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or 'unknown'


if __name__ == '__main__':
  main()
