"""--mode=sweep: DvSR's inference grid, one checkpoint, the perception-distortion curve.

Each sampling schedule (T, beta range) is run once with the largest number of
samples N_max; because sample i's noise depends only on its own key, the
first N of those samples are exactly what an N-sample run draws, so every N
of the grid comes from the same batch. Each grid point reports PSNR and SSIM
of the N-sample mean (distortion) and the mean per-pixel standard deviation
over the N samples (how far the model strays from the mean: the spread that
buys realism), and the detail ratio: high-frequency (Laplacian) energy of the
output over that of the sharp image, a no-reference proxy for the texture that
averaging washes out (1 = as much detail as the real photo), and NIQE, the
no-reference naturalness score (lower is better). Writes <workdir>/sweep/step_<N>.{json,csv,png}.
"""

from __future__ import annotations

import csv
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from xydiff import config_check, data, diffusion, evaluate, metrics, models, train


def detail_ratio(image, sharp) -> float:
  """Laplacian energy of `image` relative to `sharp` (HWC or NHWC, [0, 1])."""
  def energy(x):
    x = jnp.asarray(x)
    lap = (4 * x[..., 1:-1, 1:-1, :] - x[..., :-2, 1:-1, :] - x[..., 2:, 1:-1, :]
           - x[..., 1:-1, :-2, :] - x[..., 1:-1, 2:, :])
    return jnp.mean(lap ** 2)
  return float(energy(image) / energy(sharp))


def _niqe_or_nan(image) -> float:
  """NIQE, or NaN for an image too small for two 96x96 blocks (reported as null)."""
  try:
    return float(metrics.niqe(image)[0])
  except ValueError:
    return float('nan')


def run_sweep(config, workdir: str) -> list[dict]:
  config_check.validate(config, jax.device_count())
  if not models.is_diffusion(config.model):
    raise ConfigError(
        f"config.model.name={config.model.name!r}: --mode=sweep needs a diffusion model ('dvsr')")
  step = None if config.eval.checkpoint_step < 0 else config.eval.checkpoint_step
  graphdef, params, step = train.load_for_inference(config, workdir, step)
  pairs = list(data.eval_pairs(data.get_source(config.data, 'eval'), config.data.eval_max_images))
  counts = sorted(set(int(n) for n in config.sweep.num_samples))
  base_key = jax.random.key(config.seed + 1)

  rows = []
  for num_steps, beta_start, beta_end in config.sweep.schedules:
    schedule = diffusion.linear_schedule(int(num_steps), beta_start, beta_end)
    sample = evaluate.make_sampler(graphdef, schedule, counts[-1], config.diffusion.residual_scale)
    scores = {n: {'psnr': [], 'ssim': [], 'spread': [], 'detail': [], 'niqe': []}
              for n in counts}
    for index, (_, blur, sharp) in enumerate(pairs):
      samples = sample(params, jnp.asarray(blur)[None],
                       jax.random.fold_in(base_key, index))['samples']
      for n in counts:
        mean = samples[:n].mean(axis=0)
        scores[n]['psnr'].append(float(metrics.psnr_uint8(mean, sharp[None])[0]))
        scores[n]['ssim'].append(float(metrics.ssim(mean, sharp[None])[0]))
        scores[n]['spread'].append(float(samples[:n].std(axis=0).mean()))
        scores[n]['detail'].append(detail_ratio(mean, sharp))
        scores[n]['niqe'].append(_niqe_or_nan(mean))
    for n in counts:
      row = {'num_steps': int(num_steps), 'beta_start': float(beta_start),
             'beta_end': float(beta_end), 'num_samples': n,
             **{k: float(np.mean(v)) for k, v in scores[n].items()}}
      if not np.isfinite(row['niqe']):
        row['niqe'] = None  # JSON null: the images are smaller than NIQE's two blocks.
      rows.append(row)
      logging.info('sweep T=%d N=%d: %.2f dB / %.4f, spread %.4f, detail %.3f',
                   row['num_steps'], n, row['psnr'], row['ssim'], row['spread'], row['detail'])
  if jax.process_index() == 0:
    _write(rows, os.path.join(workdir, 'sweep'), step, config, len(pairs))
  return rows


def _write(rows, out_dir, step, config, num_images):
  os.makedirs(out_dir, exist_ok=True)
  stem = os.path.join(out_dir, f'step_{step}')
  # Each file is written under a temporary name and renamed when complete.
  with open(f'{stem}.json.tmp', 'w') as f:
    json.dump({'step': step, 'split': config.data.eval_split, 'num_images': num_images,
               'metrics': {'psnr': metrics.PSNR_UINT8_LABEL, 'ssim': metrics.SSIM_2D_LABEL,
                           'spread': 'mean per-pixel std over the N samples, [0, 1] units',
                           'detail': 'Laplacian energy of the output / of the sharp image',
                           'niqe': metrics.NIQE_LABEL},
               'rows': rows}, f, indent=1)
  with open(f'{stem}.csv.tmp', 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  import matplotlib
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt
  panels = [('spread', 'sample spread (mean per-pixel std)'),
            ('detail', 'detail ratio (Laplacian energy vs sharp)')]
  if all(r['niqe'] is not None for r in rows):
    panels.append(('niqe', 'NIQE (lower is more natural)'))
  fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5), sharey=True)
  for ax, (x_key, x_label) in zip(axes, panels):
    for n in sorted({r['num_samples'] for r in rows}):
      pts = [r for r in rows if r['num_samples'] == n]
      ax.plot([r[x_key] for r in pts], [r['psnr'] for r in pts], 'o-', label=f'N = {n}')
      for r in pts:
        ax.annotate(f'T={r["num_steps"]}', (r[x_key], r['psnr']), fontsize=7,
                    textcoords='offset points', xytext=(3, 3))
    ax.set_xlabel(x_label)
    ax.grid(alpha=0.3)
  axes[0].set_ylabel('PSNR of the N-sample mean (dB, uint8)')
  axes[-1].legend()
  fig.suptitle(f'Perception-distortion sweep, step {step}, {num_images} images')
  fig.tight_layout()
  fig.savefig(f'{stem}.png.tmp', dpi=120, format='png')
  plt.close(fig)
  for ext in ('json', 'csv', 'png'):
    os.replace(f'{stem}.{ext}.tmp', f'{stem}.{ext}')
