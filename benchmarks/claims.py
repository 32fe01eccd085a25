"""The papers' claims at CPU scale, written up as a markdown report with plots.

  python benchmarks/claims.py --workdir=/tmp/xydiff_claims [--steps=600] [--diffusion_steps=800]

(a) XYDeblur's decoupling. Trains a small XYDeblur on scikit-image's
    photographs blurred with straight kernels that are either purely
    horizontal or purely vertical (drawn per pair), then measures on held-out
    photographs blurred along x only and along y only the signal power
    (1/M)||r||^2 of each decoder's residual. The paper: the horizontal decoder
    dominates on x-blur and the vertical one on y-blur.
(b) DvSR's perception-distortion trade-off. Trains the diffusion demo
    (xydiff/configs/demo.py:diffusion, xydiff at small scale) and runs --mode=sweep's
    grid on 512^2 held-out crops: PSNR of the N-sample mean, its LPIPS and
    NIQE (and FID/KID with --inception_weights) against the number of steps T
    and of averaged samples N. The paper: many steps and one sample give the
    most realistic images (lowest LPIPS/FID), few steps and sample averaging
    the highest PSNR, from the same weights.

Writes <workdir>/claims.md, claims_decoupling.png and
claims_perception_distortion.png (each file written whole, then renamed) and
prints one JSON object per claim.
"""

import argparse
import os

from common import emit
from xydiff import files

# --mode=sweep grid for (b): (T, beta_start, beta_end) and sample counts N.
SCHEDULES = ((5, 1e-3, 0.9), (10, 1e-4, 0.8), (20, 1e-5, 0.5), (50, 1e-6, 0.2), (100, 1e-6, 0.2))
SAMPLE_COUNTS = (1, 2, 4, 8)


def decoupling(workdir: str, steps: int) -> tuple[dict, dict]:
  import jax
  import numpy as np
  from flax import nnx
  from xydiff.configs import demo
  from xydiff import images, inference, train
  from xydiff.data import synthetic

  config = demo.get_config()
  config.data.synthetic.update(dict(kernel='xy', kernel_size=21, kernel_length=(9.0, 21.0)))
  config.train.update(dict(num_steps=steps, eval_every=steps, checkpoint_every=steps,
                           lr_halve_steps=(int(steps * 0.75),)))
  train.train_and_evaluate(config, workdir)

  graphdef, params, _ = inference.load_for_inference(config, workdir)
  model = nnx.merge(graphdef, params)
  forward = jax.jit(lambda y: model(y))
  photos = sorted(synthetic.skimage_photos())[-config.data.synthetic.num_eval:]
  rows = {}
  for axis in ('x', 'y'):
    source = synthetic.SyntheticPairs(photos, kernel=axis, kernel_size=21,
                                      kernel_length=(15.0, 21.0), seed=7,
                                      crop=config.data.synthetic.photo_crop, pairs_per_photo=4)
    power = {'horizontal': [], 'vertical': []}
    for i in range(len(source)):
      blur, _ = source.load(i)
      residuals = forward(images.to_float(blur)[None])['residuals']
      for name, r in zip(power, residuals):
        power[name].append(float(np.mean(np.square(r))))
    rows[axis] = {k: float(np.mean(v)) for k, v in power.items()}
  setup = {'width': config.model.xydeblur.width, 'num_res': config.model.xydeblur.num_res,
           'steps': steps, 'num_photos': len(photos)}
  return rows, setup


def perception_distortion(workdir: str, steps: int, inception_weights: str = '', *,
                          schedules=SCHEDULES, sample_counts=SAMPLE_COUNTS
                          ) -> tuple[list[dict], dict]:
  from xydiff.configs import demo
  from xydiff import sweep, train

  config = demo.get_config('diffusion')
  config.train.update(dict(num_steps=steps, eval_every=steps, checkpoint_every=steps,
                           lr_halve_steps=(int(steps * 0.625), int(steps * 0.875))))
  train.train_and_evaluate(config, workdir)
  # Larger held-out crops than training's 256^2: NIQE needs many 96x96 blocks.
  config.data.synthetic.photo_crop = 512
  config.sweep.schedules = schedules
  config.sweep.num_samples = sample_counts
  config.eval.inception_weights = inception_weights
  rows = sweep.run_sweep(config, workdir)
  setup = {'steps': steps, 'num_photos': config.data.synthetic.num_eval, 'crop': 512}
  return rows, setup


# (c) The perceptual ordering against training length: a smaller grid, one
# long single chain against short averaged ones.
LENGTH_SCHEDULES = ((10, 1e-4, 0.8), (100, 1e-6, 0.2))
LENGTH_SAMPLE_COUNTS = (1, 8)


def training_length(workdir: str, lengths: list[int]) -> list[dict]:
  """The diffusion demo trained from scratch for each length (its schedule scaled), swept.

  Each length's result is kept in <workdir>/length_<L>.json, so a rerun resumes.
  Returns one row per length: PSNR / LPIPS / NIQE of a single 100-step chain
  (the paper's "Ours") and of the mean of 8 ten-step samples ("Ours-SA").
  """
  import json
  results = []
  for length in lengths:
    path = os.path.join(workdir, f'length_{length}.json')
    if not os.path.exists(path):
      rows, _ = perception_distortion(os.path.join(workdir, f'diffusion_{length}'), length,
                                      schedules=LENGTH_SCHEDULES,
                                      sample_counts=LENGTH_SAMPLE_COUNTS)
      pick = lambda t, n: next(r for r in rows if r['num_steps'] == t and r['num_samples'] == n)
      row = {'steps': length}
      for name, (t, n) in (('long_chain', (100, 1)), ('short_averaged', (10, 8)),
                           ('short_single', (10, 1))):
        row[name] = {k: pick(t, n)[k] for k in ('psnr', 'lpips', 'niqe')}
      files.write_atomic(path, json.dumps(row))
    with open(path) as f:
      results.append(json.load(f))
  return results


def _save(fig, path):
  fig.tight_layout()
  with files.atomic_path(path) as tmp:
    fig.savefig(tmp, dpi=120, format='png')


def plot_decoupling(rows, path):
  import numpy as np
  from matplotlib import pyplot as plt
  fig, ax = plt.subplots(figsize=(5, 3.5))
  width = 0.35
  for j, name in enumerate(('horizontal', 'vertical')):
    ax.bar(np.arange(2) + (j - 0.5) * width, [rows[a][name] for a in ('x', 'y')], width,
           label=f'{name} decoder')
  ax.set_xticks(range(2), ['x-only blur', 'y-only blur'])
  ax.set_ylabel('residual power (1/M)||r||²')
  ax.legend()
  _save(fig, path)
  plt.close(fig)


def plot_perception_distortion(rows, path):
  from matplotlib import pyplot as plt
  panels = [('psnr', 'PSNR of the N-sample mean (dB, uint8)'),
            ('lpips', 'LPIPS (AlexNet; lower is closer)'),
            ('niqe', 'NIQE (lower is more natural)')]
  panels += [(k, k.upper()) for k in ('fid', 'kid') if rows[0].get(k) is not None]
  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
  for ax, (key, label) in zip(axes, panels):
    for n in SAMPLE_COUNTS:
      pts = [r for r in rows if r['num_samples'] == n]
      ax.plot([r['num_steps'] for r in pts], [r[key] for r in pts], 'o-', label=f'N = {n}')
    ax.set_xscale('log')
    ax.set_xlabel('sampling steps T')
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
  axes[0].legend()
  _save(fig, path)
  plt.close(fig)


def report(decoupling_result, pd_result) -> str:
  rows, setup = decoupling_result
  lines = ['# The papers\' claims at CPU scale', '',
           '## (a) XYDeblur: decoupling of the two decoders', '',
           f'XYDeblur width {setup["width"]}, {setup["num_res"]} residual blocks, '
           f'{setup["steps"]} steps on x-or-y line blur; residual power (1/M)||r||² of each '
           f'decoder on {setup["num_photos"]} held-out photographs x 4 kernels per direction.', '',
           '| blur | horizontal decoder | vertical decoder | ratio hor/ver |', '|---|---|---|---|']
  for axis in ('x', 'y'):
    r = rows[axis]
    lines.append(f'| {axis}-only | {r["horizontal"]:.3e} | {r["vertical"]:.3e} | '
                 f'{r["horizontal"] / r["vertical"]:.2f} |')
  lines += ['', '![decoupling](claims_decoupling.png)', '']
  pd_rows, pd_setup = pd_result
  lines += ['## (b) DvSR: perception-distortion trade-off', '',
            f'xydiff/configs/demo.py:diffusion trained {pd_setup["steps"]} steps; '
            f'{pd_setup["num_photos"]} held-out photographs ({pd_setup["crop"]}² crops). '
            'Each cell: PSNR of the N-sample mean (dB, uint8 protocol) / LPIPS (AlexNet, '
            'lower is closer to the sharp image) / NIQE (lower is more natural)'
            + (' / FID / KID' if pd_rows[0].get('fid') is not None else '') + '.', '',
            '| T | ' + ' | '.join(f'N={n}' for n in SAMPLE_COUNTS) + ' |',
            '|---|' + '---|' * len(SAMPLE_COUNTS)]
  for t in sorted({r['num_steps'] for r in pd_rows}):
    cells = []
    for n in SAMPLE_COUNTS:
      r = next(r for r in pd_rows if r['num_steps'] == t and r['num_samples'] == n)
      cell = f'{r["psnr"]:.2f} / {r["lpips"]:.4f} / {r["niqe"]:.2f}'
      if r.get('fid') is not None:
        cell += f' / {r["fid"]:.1f} / {r["kid"]:.4f}'
      cells.append(cell)
    lines.append(f'| {t} | ' + ' | '.join(cells) + ' |')
  describe = lambda r: (f'T={r["num_steps"]}, N={r["num_samples"]} ({r["psnr"]:.2f} dB, '
                        f'LPIPS {r["lpips"]:.4f}, NIQE {r["niqe"]:.2f})')
  lines += ['', f'Highest PSNR: {describe(max(pd_rows, key=lambda r: r["psnr"]))}. '
            f'Lowest LPIPS: {describe(min(pd_rows, key=lambda r: r["lpips"]))}. '
            f'Lowest NIQE: {describe(min(pd_rows, key=lambda r: r["niqe"]))}.', '',
            '![perception-distortion](claims_perception_distortion.png)', '']
  return '\n'.join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--steps', type=int, default=600, help='XYDeblur training steps for (a)')
  parser.add_argument('--diffusion_steps', type=int, default=800,
                      help='diffusion demo training steps for (b)')
  parser.add_argument('--inception_weights', default='',
                      help="FID/KID in (b): a pt_inception-2015-12-05-6726825d.pth or 'fetch'")
  args = parser.parse_args()

  import matplotlib
  matplotlib.use('Agg')

  os.makedirs(args.workdir, exist_ok=True)
  decoupling_result = decoupling(os.path.join(args.workdir, 'xydeblur_xy_blur'), args.steps)
  plot_decoupling(decoupling_result[0], os.path.join(args.workdir, 'claims_decoupling.png'))
  rows = decoupling_result[0]
  emit({'claim': 'xydeblur_decoupling', 'steps': args.steps, **{
      f'{axis}_blur_{name}_power': rows[axis][name] for axis in rows for name in rows[axis]}})

  pd_result = perception_distortion(os.path.join(args.workdir, 'diffusion'), args.diffusion_steps,
                                    args.inception_weights)
  plot_perception_distortion(pd_result[0],
                             os.path.join(args.workdir, 'claims_perception_distortion.png'))
  emit({'claim': 'perception_distortion', 'steps': args.diffusion_steps,
        'rows': [{k: r.get(k) for k in ('num_steps', 'num_samples', 'psnr', 'lpips', 'niqe',
                                        'fid', 'kid')} for r in pd_result[0]]})

  files.write_atomic(os.path.join(args.workdir, 'claims.md'), report(decoupling_result, pd_result))


if __name__ == '__main__':
  main()
