"""`xydiff sweep`: DvSR's inference grid, one checkpoint, the perception-distortion curve.

The grid is config.eval.sweep: samplers x schedules (T, beta range) x sample
counts N. Every sampler walks the same levels of a schedule, so T is its
number of denoiser calls (NFE) and the sampler is the only difference.
Each (sampler, schedule) is run once with the largest number of
samples N_max; because sample i's noise depends only on its own key, the
first N of those samples are exactly what an N-sample run draws, so every N
of the grid comes from the same batch. Each grid point reports PSNR and SSIM
of the N-sample mean (distortion), its LPIPS (perceptual distance), the mean
per-pixel standard deviation over the N samples (the spread that buys realism), the detail ratio
(high-frequency Laplacian energy of the output over that of the sharp image:
1 = as much detail as the real photo), and NIQE, the no-reference naturalness
score (lower is better); with `config.eval.inception_weights`, FID and KID of
the N-sample means against the sharp images.

Images stream one at a time, so memory does not grow with the split. Every
finished (schedule, image) is recorded in `sweep/step_<N>.progress.json`
(written atomically), and a re-run with the same grid resumes after the last
one recorded. The results go to `<workdir>/sweep/step_<N>.{json,csv,png}`, and
with more than one sampler `step_<N>_samplers.png`: LPIPS against PSNR, one
curve per sampler, points labelled by NFE.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from xydiff import config as config_lib
from xydiff import data, files, models
from xydiff.errors import ConfigError
from xydiff.evaluation import evaluator
from xydiff.inference import restorer
from xydiff.runs import checkpoint
from xydiff.evaluation.scoring import METRICS, Progress, SetScores, metric_names, score


def detail_ratio(image, sharp) -> float:
  """Laplacian energy of `image` relative to `sharp` (HWC or NHWC, [0, 1])."""
  def energy(x):
    x = jnp.asarray(x)
    lap = (4 * x[..., 1:-1, 1:-1, :] - x[..., :-2, 1:-1, :] - x[..., 2:, 1:-1, :]
           - x[..., 1:-1, :-2, :] - x[..., 1:-1, 2:, :])
    return jnp.mean(lap ** 2)
  return float(energy(image) / energy(sharp))


# The metric table's rows the sweep reports, and two of its own.
METRIC_LABELS = {**{name: METRICS[name].label for name in metric_names('sweep')},
                 'spread': 'mean per-pixel std over the N samples, [0, 1] units',
                 'detail': 'Laplacian energy of the output / of the sharp image'}


def _score_samples(samples, sharp, counts, with_lpips: bool, set_scores, features_path):
  """{N: {metric: value}} of the first N samples' mean, for each N in `counts`.

  With FID on, the Inception features of the sharp image and of each N-sample
  mean go to `features_path` (one small .npy per image, written atomically),
  so that an interrupted sweep keeps them too.
  """
  scores, features = {}, []
  if set_scores.enabled:
    features.append(set_scores.features(sharp))
  for n in counts:
    mean = samples[:n].mean(axis=0)
    if set_scores.enabled:
      features.append(set_scores.features(mean))
    scores[str(n)] = {'lpips': float('nan'), **score(metric_names('sweep', with_lpips), mean, sharp),
                      'spread': float(samples[:n].std(axis=0).mean()),
                      'detail': detail_ratio(mean, sharp)}
  if features:
    with files.atomic_path(features_path) as tmp:
      with open(tmp, 'wb') as f:
        np.save(f, np.stack(features))
  return scores


def schedule_settings(config, num_steps: int, beta_start: float, beta_end: float,
                      num_samples: int, sampler: str = 'ancestral'):
  """The family's restore settings for one schedule of the grid, as an extra preset.

  DDIM runs with eta = 0 (deterministic): with eta = 1 it is the ancestral chain.
  """
  family = models.family(config.model.name)
  swept = config.copy_and_resolve_references()
  with swept.unlocked():
    # A preset's neutral fields (eta 0, linear betas) come from the family: none goes missing.
    swept.inference.presets[SWEPT] = {
        **family.settings_entry_defaults()['inference.presets'], 'num_steps': num_steps,
        'beta_start': beta_start, 'beta_end': beta_end, 'num_samples': num_samples,
        'sampler': sampler}
  return family.settings(swept, preset=SWEPT)


# The name of the preset each schedule of the grid runs as.
SWEPT = 'sweep'


def run_sweep(config, workdir: str, *, config_from_user: bool = False) -> list[dict]:
  config_lib.check(config)
  if 'sweep' not in config.eval:
    raise ConfigError(f'config.model.name={config.model.name!r}: this model samples nothing to '
                      'sweep (config.eval has no sweep grid; diffusion models have one)')
  data.validate(config.data, models.size_multiple(config.model))
  evaluator.validate(config.eval)
  step = None if config.eval.checkpoint_step < 0 else config.eval.checkpoint_step
  graphdef, params, step = checkpoint.load_params(config, workdir, step,
                                                  config_from_user=config_from_user)
  source = data.get_source(config.data, 'eval')
  max_images = config.data.eval_max_images
  num_images = data.eval_count(source, max_images)
  counts = sorted(set(int(n) for n in config.eval.sweep.num_samples))
  schedules = [(str(sampler), int(t), float(b0), float(b1))
               for sampler in config.eval.sweep.samplers
               for t, b0, b1 in config.eval.sweep.schedules]
  base_key = jax.random.key(config.seed + 1)
  is_chief = jax.process_index() == 0

  out_dir = os.path.join(workdir, 'sweep')
  stem = os.path.join(out_dir, f'step_{step}')
  progress_path = f'{stem}.progress.json'
  # A progress file is only resumed for exactly this grid, seed and split.
  settings = {'schedules': schedules, 'num_samples': counts, 'seed': config.seed,
              'split': config.data.eval_split, 'num_images': num_images}
  done = _load_progress(progress_path, settings)
  set_scores = SetScores(config.eval.inception_weights)
  features_dir = f'{stem}.features'
  if is_chief:
    os.makedirs(out_dir, exist_ok=True)
    if set_scores.enabled:
      os.makedirs(features_dir, exist_ok=True)

  finished = sum(len(v) for v in done.values())
  with Progress(f'sweep step {step}', len(schedules) * num_images, done=finished) as progress:
    for s_index, (sampler, num_steps, beta_start, beta_end) in enumerate(schedules):
      key = f'{sampler},{num_steps},{beta_start!r},{beta_end!r}'
      results = done.setdefault(key, [])
      if len(results) >= num_images:
        continue
      sample = restorer.restore_fn(config, graphdef, schedule_settings(
          config, num_steps, beta_start, beta_end, counts[-1], sampler))
      for index, (name, blur, sharp) in enumerate(data.eval_pairs(source, max_images)):
        if index < len(results):
          continue  # Recorded by an earlier run.
        samples = np.asarray(sample(params, jnp.asarray(blur)[None],
                                    jax.random.fold_in(base_key, index))['samples'][:, 0])
        results.append({'name': name, 'scores': _score_samples(
            samples, sharp, counts, config.eval.lpips, set_scores,
            os.path.join(features_dir, f'{s_index}_{index}.npy'))})
        if is_chief:
          files.write_atomic(progress_path, json.dumps({'settings': settings, 'done': done}))
        finished += 1
        progress(finished)

  rows = []
  for s_index, (sampler, num_steps, beta_start, beta_end) in enumerate(schedules):
    results = done[f'{sampler},{num_steps},{beta_start!r},{beta_end!r}']
    set_results = _set_scores_of(set_scores, features_dir, s_index, num_images, counts)
    for n in counts:
      row = {'sampler': sampler, 'num_steps': num_steps, 'beta_start': beta_start,
             'beta_end': beta_end, 'num_samples': n}
      for metric in METRIC_LABELS:
        row[metric] = float(np.mean([r['scores'][str(n)][metric] for r in results]))
      row.update(set_results.get(f'N={n}', {}))
      for metric in ('niqe', 'lpips'):
        if not np.isfinite(row[metric]):
          row[metric] = None  # JSON null: too small for NIQE's two blocks, or LPIPS off.
      rows.append(row)
      logging.info('sweep %s T=%d N=%d: %.2f dB / %.4f, spread %.4f, detail %.3f', sampler,
                   num_steps, n, row['psnr'], row['ssim'], row['spread'], row['detail'])
  if is_chief:
    labels = {**METRIC_LABELS, **set_scores.labels}
    _write(rows, stem, step, config, num_images, labels)
    os.remove(progress_path)
    if set_scores.enabled:
      shutil.rmtree(features_dir)
  return rows


def _set_scores_of(set_scores, features_dir, s_index, num_images, counts) -> dict:
  """{'N=n': {'fid', 'kid'}} of one schedule, from the features its images stored."""
  if not set_scores.enabled:
    return {}
  accumulator = set_scores.fresh()
  for index in range(num_images):
    stacked = np.load(os.path.join(features_dir, f'{s_index}_{index}.npy'))
    accumulator.restore_rows({'sharp': stacked[:1],
                              **{f'N={n}': stacked[1 + i:2 + i] for i, n in enumerate(counts)}})
  return accumulator.results()


def _load_progress(path: str, settings: dict) -> dict:
  """The (schedule -> per-image results) an earlier run of the same grid recorded."""
  if not os.path.exists(path):
    return {}
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, ValueError):
    logging.warning('%s is unreadable; the sweep starts over.', path)
    return {}
  if saved.get('settings') != json.loads(json.dumps(settings)):
    logging.warning('%s records another grid, seed or split; the sweep starts over.', path)
    return {}
  logging.info('Resuming the sweep: %d (schedule, image) results recorded in %s.',
               sum(len(v) for v in saved['done'].values()), path)
  return saved['done']


def _write(rows, stem, step, config, num_images, labels):
  files.write_atomic(f'{stem}.json', json.dumps(
      {'step': step, 'split': config.data.eval_split, 'num_images': num_images,
       'metrics': labels, 'rows': rows}, indent=1))
  text = io.StringIO()
  writer = csv.DictWriter(text, fieldnames=list(rows[0]))
  writer.writeheader()
  writer.writerows(rows)
  files.write_atomic(f'{stem}.csv', text.getvalue())
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel
  panels = [('spread', 'sample spread (mean per-pixel std)'),
            ('detail', 'detail ratio (Laplacian energy vs sharp)')]
  for metric, label in (('lpips', 'LPIPS (AlexNet; lower is closer)'),
                        ('niqe', 'NIQE (lower is more natural)'),
                        ('fid', 'FID (lower is closer)'), ('kid', 'KID (unscaled)')):
    if all(r.get(metric) is not None for r in rows):
      panels.append((metric, label))
  samplers = list(dict.fromkeys(r['sampler'] for r in rows))
  fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5), sharey=True)
  for ax, (x_key, x_label) in zip(axes, panels):
    for sampler in samplers:
      for n in sorted({r['num_samples'] for r in rows}):
        pts = [r for r in rows if r['num_samples'] == n and r['sampler'] == sampler]
        label = f'N = {n}' if len(samplers) == 1 else f'{sampler}, N = {n}'
        ax.plot([r[x_key] for r in pts], [r['psnr'] for r in pts], 'o-', label=label)
      for r in pts:
        ax.annotate(f'T={r["num_steps"]}', (r[x_key], r['psnr']), fontsize=7,
                    textcoords='offset points', xytext=(3, 3))
    ax.set_xlabel(x_label)
    ax.grid(alpha=0.3)
  axes[0].set_ylabel('PSNR of the N-sample mean (dB, uint8)')
  axes[-1].legend()
  fig.suptitle(f'Perception-distortion sweep, step {step}, {num_images} images')
  fig.tight_layout()
  with files.atomic_path(f'{stem}.png') as tmp:
    fig.savefig(tmp, dpi=120, format='png')
  plt.close(fig)
  if len(samplers) > 1 and all(r.get('lpips') is not None for r in rows):
    _plot_samplers(plt, rows, samplers, f'{stem}_samplers.png', step, num_images)


def _plot_samplers(plt, rows, samplers, path, step, num_images):
  """LPIPS against PSNR, one curve per sampler (and sample count), points labelled by NFE."""
  counts = sorted({r['num_samples'] for r in rows})
  fig, axes = plt.subplots(1, len(counts), figsize=(5.5 * len(counts), 4.5), squeeze=False)
  for ax, n in zip(axes[0], counts):
    for sampler in samplers:
      pts = sorted((r for r in rows if r['sampler'] == sampler and r['num_samples'] == n),
                   key=lambda r: r['num_steps'])
      ax.plot([r['lpips'] for r in pts], [r['psnr'] for r in pts], 'o-', label=sampler)
      for r in pts:
        ax.annotate(str(r['num_steps']), (r['lpips'], r['psnr']), fontsize=7,
                    textcoords='offset points', xytext=(3, 3))
    ax.set_title(f'mean of {n} sample{"s" * (n > 1)}')
    ax.set_xlabel('LPIPS (lower is closer)')
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel('PSNR (dB, uint8)')
  axes[0][-1].legend(title='sampler (labels: NFE)')
  fig.suptitle(f'Samplers on the same weights, step {step}, {num_images} images')
  fig.tight_layout()
  with files.atomic_path(path) as tmp:
    fig.savefig(tmp, dpi=120, format='png')
  plt.close(fig)
