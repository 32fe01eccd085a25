"""The papers' claims at CPU scale, written up as a markdown report with plots.

  python experiments/claims.py --workdir=/tmp/xydiff_claims [--steps=600] [--diffusion_steps=800]

(a) XYDeblur's decoupling. Trains a small XYDeblur on scikit-image's
    photographs blurred with straight kernels that are either purely
    horizontal or purely vertical (drawn per pair), then measures on held-out
    photographs blurred along x only and along y only the signal power
    (1/M)||r||^2 of each decoder's residual. The paper: the horizontal decoder
    dominates on x-blur and the vertical one on y-blur.
(b) DvSR's perception-distortion trade-off. Trains the diffusion demo
    (xydiff/configs/demo.py:diffusion, xydiff at small scale) and runs `xydiff sweep`'s
    grid on 512^2 held-out crops: PSNR of the N-sample mean, its LPIPS and
    NIQE (and FID/KID with --inception_weights) against the number of steps T
    and of averaged samples N. The paper: many steps and one sample give the
    most realistic images (lowest LPIPS/FID), few steps and sample averaging
    the highest PSNR, from the same weights.

(c) DvSR's perceptual ordering against training length: the diffusion demo
    trained for each of --lengths steps, one 100-step chain against the mean
    of 8 ten-step samples.
(d) XYDeblur's Table 2 direction: each --backbones family (tiny) as baseline,
    XY, Channel and Layer (and U-Net^2D, 4 decoders), trained the same steps
    on the demo's camera shake, over --seeds: PSNR/SSIM mean and spread.
(e) Figure 5: 1, 2 and 4 decoders, PSNR against GMACs (plotted).
(f) Figure 3: each decoder alone (input + r_i) of XY and of U-Net^2D on a
    blurred ColorChecker; the neutral patches' CIELAB chroma shift.
(g) Figure 4's decoupling for every backbone's XY variant.

  python experiments/claims.py --workdir=DIR --parts=xy --backbones=xydeblur,dmphn,deepdeblur

Writes <workdir>/claims.md and its PNGs (each file written whole, then
renamed) and prints one JSON object per claim. Every training run keeps its
result in a JSON file of its own, so an interrupted run resumes.
"""

import argparse
import json
import os
import sys

# Run as a script from anywhere: the working tree's xydiff, not an installed one.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from xydiff import files  # pylint: disable=wrong-import-position

# `xydiff sweep`'s grid for (b): (T, beta_start, beta_end) and sample counts N.
SCHEDULES = ((5, 1e-3, 0.9), (10, 1e-4, 0.8), (20, 1e-5, 0.5), (50, 1e-6, 0.2), (100, 1e-6, 0.2))
SAMPLE_COUNTS = (1, 2, 4, 8)


def emit(record: dict) -> None:
  """One JSON line per claim, as the benchmarks print theirs."""
  print(json.dumps(record), flush=True)


def decoupling(workdir: str, steps: int) -> tuple[dict, dict]:
  import jax
  import numpy as np
  from flax import nnx
  from xydiff.configs import demo
  from xydiff import images
  from xydiff.runs import checkpoint
  from xydiff.train import loop as train
  from xydiff.data import synthetic

  config = demo.get_config()
  config.data.synthetic.update(dict(kernel='xy', kernel_size=21, kernel_length=(9.0, 21.0)))
  config.train.update(dict(num_steps=steps, eval_every=steps, checkpoint_every=steps,
                           lr_halve_steps=(int(steps * 0.75),)))
  train.train_and_evaluate(config, workdir)

  graphdef, params, _ = checkpoint.load_params(config, workdir)
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
  setup = {'width': config.model.width, 'num_res': config.model.num_res,
           'steps': steps, 'num_photos': len(photos)}
  return rows, setup


def perception_distortion(workdir: str, steps: int, inception_weights: str = '', *,
                          grids=((SCHEDULES, SAMPLE_COUNTS),)) -> tuple[list[dict], dict]:
  """Trains the diffusion demo for `steps` and sweeps each (schedules, sample counts) grid."""
  from xydiff.configs import demo
  from xydiff.evaluation import sweep
  from xydiff.train import loop as train

  config = demo.get_config('diffusion')
  config.train.update(dict(num_steps=steps, eval_every=steps, checkpoint_every=steps,
                           lr_halve_steps=(int(steps * 0.625), int(steps * 0.875))))
  train.train_and_evaluate(config, workdir)
  # Larger held-out crops than training's 256^2: NIQE needs many 96x96 blocks.
  config.data.synthetic.photo_crop = 512
  config.eval.inception_weights = inception_weights
  rows = []
  for schedules, sample_counts in grids:
    config.eval.sweep.schedules = schedules
    config.eval.sweep.num_samples = sample_counts
    rows += sweep.run_sweep(config, workdir)
  setup = {'steps': steps, 'num_photos': config.data.synthetic.num_eval, 'crop': 512}
  return rows, setup


# (c) The perceptual ordering against training length: one long single chain
# against short averaged ones. Two grids, so the 100-step chain draws one
# sample, not eight; sample i's noise depends only on its own key, so its
# scores equal those of the first of eight.
LENGTH_GRIDS = ((((10, 1e-4, 0.8),), (1, 8)), (((100, 1e-6, 0.2),), (1,)))


def training_length(workdir: str, lengths: list[int]) -> list[dict]:
  """The diffusion demo trained from scratch for each length (its schedule scaled), swept.

  Each length's result is kept in <workdir>/length_<L>.json, so a rerun resumes.
  Returns one row per length: PSNR / LPIPS / NIQE of a single 100-step chain
  (the paper's "Ours") and of the mean of 8 ten-step samples ("Ours-SA").
  """
  results = []
  for length in lengths:
    path = os.path.join(workdir, f'length_{length}.json')
    if not os.path.exists(path):
      rows, _ = perception_distortion(os.path.join(workdir, f'diffusion_{length}'), length,
                                      grids=LENGTH_GRIDS)
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


# ------------------------------------------------------------------ XYDeblur's Table 2, Figures 3 and 5

# Backbones for (d)-(g): each family's tiny section (CPU scale), and the fields
# (width, depth) that Table 2's Channel and Layer rows widen and deepen.
BACKBONES = {
    'xydeblur': {'width': 8, 'num_res': 1},
    'dmphn': {'levels': 4, 'width': 8, 'num_res': 1},  # Table 2's 1-2-4-8, narrow.
    'deepdeblur': {'width': 8, 'num_res': 4},  # MSCNN: 3 scales, 4 ResBlocks (XY: the last 2).
}
WIDTH_AND_DEPTH = {family: ('width', 'num_res') for family in BACKBONES}
# Table 2's rows for its backbones; 4 decoders for Figure 5 on the first of
# them; Figure 3 (XY against U-Net^2D, each decoder alone) on XYDeblur's own
# network. (What a 2-core CPU trains in an hour.)
TABLE2_VARIANTS = ('baseline', 'xy', 'channel', 'layer')
FIGURE5_VARIANTS = ('decoders4',)
FIGURE3_VARIANTS = ('xy', 'unet2d')
VARIANT_ORDER = ('baseline', 'xy', 'channel', 'layer', 'unet2d', 'decoders4')
MEASURE_SIZE = (64, 64)  # GMACs for sizing Channel/Layer (ratios do not depend on the size).


def backbone_config(family: str, variant: str, steps: int, seed: int):
  """The demo's data and schedule with `family`'s tiny network as `variant`.

  baseline / xy / unet2d / decoders4 set the XY transform (decoders, share);
  channel and layer widen or deepen the baseline (WIDTH_AND_DEPTH) to the
  smallest size whose MACs reach the XY variant's, as XYDeblur's Table 2
  sizes them ("about the XY variant's compute").
  """
  import ml_collections
  from xydiff import models
  from xydiff.models import complexity
  from xydiff.configs import demo
  config = demo.get_config()
  config.seed = seed
  config.model = ml_collections.ConfigDict(models.section_defaults(family))
  section = models.family(family).xy_section(config.model)
  section.update(dict(BACKBONES[family], decoders=1, share='rotate'))
  config.train.update(dict(num_steps=steps, eval_every=steps, checkpoint_every=steps,
                           lr_halve_steps=(int(steps * 0.625), int(steps * 0.875))))
  config.eval.num_image_summaries = 0
  xy_kinds = {'baseline': (1, 'rotate'), 'xy': (2, 'rotate'), 'unet2d': (2, 'none'),
              'decoders4': (4, 'rotate')}
  if variant in xy_kinds:
    decoders, share = xy_kinds[variant]
    section.update(dict(decoders=decoders, share=share))
    return config
  section.decoders = 2
  target = complexity.gmacs(config.model, MEASURE_SIZE)
  section.decoders = 1
  width, depth = WIDTH_AND_DEPTH[family]
  field = width if variant == 'channel' else depth
  while complexity.gmacs(config.model, MEASURE_SIZE) < target:
    section[field] += 1
  return config


def train_backbone(workdir: str, family: str, variant: str, steps: int, seed: int) -> dict:
  """Trains (or reads back) one backbone variant; returns its scores and cost."""
  from xydiff import models
  from xydiff.models import complexity
  from xydiff.train import loop as train
  path = os.path.join(workdir, f'{family}_{variant}_seed{seed}_steps{steps}.json')
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  config = backbone_config(family, variant, steps, seed)
  run_dir = os.path.join(workdir, f'{family}_{variant}_seed{seed}_steps{steps}')
  summary = train.train_and_evaluate(config, run_dir)
  section = models.family(family).xy_section(config.model)
  row = {'family': family, 'variant': variant, 'seed': seed, 'steps': steps,
         'section': {k: v for k, v in section.items()},
         'psnr': summary['outputs']['restored']['psnr'],
         'ssim': summary['outputs']['restored']['ssim'],
         'input_psnr': summary['input']['psnr'],
         'params': complexity.count_params(config.model),
         'gmacs_720p': complexity.gmacs(config.model), 'workdir': run_dir}
  files.write_atomic(path, json.dumps(row))
  return row


def table2(workdir: str, families, variants, seeds, steps, *, trained_only=False) -> list[dict]:
  """Every (family, variant, seed) trained the same number of steps on the demo's camera shake.

  `trained_only`: report the runs already finished and train nothing.
  """
  runs = [(family, variant, seed) for family in families for variant in variants
          for seed in seeds]
  if trained_only:
    runs = [r for r in runs if os.path.exists(
        os.path.join(workdir, f'{r[0]}_{r[1]}_seed{r[2]}_steps{steps}.json'))]
  return [train_backbone(workdir, family, variant, steps, seed) for family, variant, seed in runs]


def summarize_runs(rows) -> list[dict]:
  """Mean and spread (population std) over seeds of each (family, variant)."""
  import numpy as np
  out = []
  for family in dict.fromkeys(r['family'] for r in rows):
    for variant in VARIANT_ORDER:
      runs = [r for r in rows if r['family'] == family and r['variant'] == variant]
      if not runs:
        continue
      out.append({'family': family, 'variant': variant, 'seeds': len(runs),
                  'params': runs[0]['params'], 'gmacs_720p': runs[0]['gmacs_720p'],
                  'psnr': float(np.mean([r['psnr'] for r in runs])),
                  'psnr_std': float(np.std([r['psnr'] for r in runs])),
                  'ssim': float(np.mean([r['ssim'] for r in runs])),
                  'ssim_std': float(np.std([r['ssim'] for r in runs]))})
  return out


# The ColorChecker Classic's 24 patches in sRGB (8 bits, D65), row by row, as
# published for the chart (BabelColor / X-Rite); the last row is the neutral series.
COLORCHECKER_SRGB = (
    (115, 82, 68), (194, 150, 130), (98, 122, 157), (87, 108, 67), (133, 128, 177),
    (103, 189, 170), (214, 126, 44), (80, 91, 166), (193, 90, 99), (94, 60, 108),
    (157, 188, 64), (224, 163, 46), (56, 61, 150), (70, 148, 73), (175, 54, 60),
    (231, 199, 31), (187, 86, 149), (8, 133, 161), (243, 243, 242), (200, 200, 200),
    (160, 160, 160), (122, 122, 121), (85, 85, 85), (52, 52, 52))
PATCH, BORDER = 40, 8


def colorchecker():
  """The chart as a float HxWx3 image: 4 x 6 patches on black, (H, W) multiples of 8."""
  import numpy as np
  h, w = 4 * (PATCH + BORDER) + BORDER, 6 * (PATCH + BORDER) + BORDER
  chart = np.zeros((h, w, 3), np.float32)
  for i, rgb in enumerate(COLORCHECKER_SRGB):
    r, c = divmod(i, 6)
    y, x = BORDER + r * (PATCH + BORDER), BORDER + c * (PATCH + BORDER)
    chart[y:y + PATCH, x:x + PATCH] = np.asarray(rgb, np.float32) / 255
  return chart


def neutral_chroma(image) -> list[float]:
  """CIELAB chroma sqrt(a*^2 + b*^2) of the six neutral patches (their inner halves)."""
  import numpy as np
  from skimage import color
  lab = color.rgb2lab(np.clip(image, 0, 1))
  values = []
  for i in range(18, 24):
    r, c = divmod(i, 6)
    y = BORDER + r * (PATCH + BORDER) + PATCH // 4
    x = BORDER + c * (PATCH + BORDER) + PATCH // 4
    patch = lab[y:y + PATCH // 2, x:x + PATCH // 2]
    values.append(float(np.hypot(patch[..., 1].mean(), patch[..., 2].mean())))
  return values


def figure3(rows, num_kernels: int = 4) -> list[dict]:
  """For each XY and U-Net^2D model of `rows`: each decoder alone (input + r_i) on a blurred
  ColorChecker, the neutral patches' mean chroma shift against the sharp chart."""
  import jax
  import numpy as np
  from flax import nnx
  from xydiff import config as run_config
  from xydiff.data import synthetic
  from xydiff.runs import checkpoint
  chart = colorchecker()
  sharp_chroma = np.asarray(neutral_chroma(chart))
  rng = np.random.default_rng(11)
  blurred = [synthetic.blur(chart, synthetic.random_trajectory_kernel(rng, 15)) for _ in range(num_kernels)]
  out = []
  for row in rows:
    if row['variant'] not in ('xy', 'unet2d'):
      continue
    config = run_config.load(row['workdir'])
    graphdef, params, _ = checkpoint.load_params(config, row['workdir'])
    forward = jax.jit(lambda y: nnx.merge(graphdef, params)(y))
    shifts = [[], []]
    for image in blurred:
      result = forward(image[None].astype(np.float32))
      for i, r in enumerate(result['residuals']):
        alone = np.asarray(image + r[0])
        shifts[i].append(np.mean(np.abs(np.asarray(neutral_chroma(alone)) - sharp_chroma)))
    input_shift = float(np.mean([np.mean(np.abs(np.asarray(neutral_chroma(b)) - sharp_chroma))
                                 for b in blurred]))
    out.append({'family': row['family'], 'variant': row['variant'], 'seed': row['seed'],
                'input_chroma_shift': input_shift,
                'decoder_chroma_shift': [float(np.mean(s)) for s in shifts]})
  return out


def decoupling_of(rows, num_photos_kernels: int = 4) -> list[dict]:
  """Figure 4's check for every XY model of `rows`: each decoder's residual power on
  held-out photographs blurred along x only and along y only."""
  import jax
  import numpy as np
  from flax import nnx
  from xydiff import images
  from xydiff import config as run_config
  from xydiff.data import synthetic
  from xydiff.runs import checkpoint
  out = []
  for row in rows:
    if row['variant'] != 'xy':
      continue
    config = run_config.load(row['workdir'])
    graphdef, params, _ = checkpoint.load_params(config, row['workdir'])
    forward = jax.jit(lambda y: nnx.merge(graphdef, params)(y)['residuals'])
    photos = sorted(synthetic.skimage_photos())[-config.data.synthetic.num_eval:]
    powers = {}
    for axis in ('x', 'y'):
      source = synthetic.SyntheticPairs(photos, kernel=axis, kernel_size=15,
                                        kernel_length=(9.0, 15.0), seed=7,
                                        crop=config.data.synthetic.photo_crop,
                                        pairs_per_photo=num_photos_kernels)
      power = [[], []]
      for i in range(len(source)):
        blur, _ = source.load(i)
        for j, r in enumerate(forward(images.to_float(blur)[None])):
          power[j].append(float(np.mean(np.square(r))))
      powers[axis] = [float(np.mean(p)) for p in power]
    out.append({'family': row['family'], 'seed': row['seed'], 'x_blur': powers['x'],
                'y_blur': powers['y']})
  return out


def plot_figure5(summary_rows, path):
  from matplotlib import pyplot as plt
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for family in dict.fromkeys(r['family'] for r in summary_rows):
    pts = [r for r in summary_rows if r['family'] == family
           and r['variant'] in ('baseline', 'xy', 'decoders4')]
    pts.sort(key=lambda r: r['gmacs_720p'])
    ax.errorbar([r['gmacs_720p'] for r in pts], [r['psnr'] for r in pts],
                yerr=[r['psnr_std'] for r in pts], marker='o', capsize=3, label=family)
    for r in pts:
      ax.annotate({'baseline': '1', 'xy': '2', 'decoders4': '4'}[r['variant']],
                  (r['gmacs_720p'], r['psnr']), fontsize=8, xytext=(4, 4),
                  textcoords='offset points')
  ax.set_xlabel('GMACs at 1280x720')
  ax.set_ylabel('PSNR (dB, uint8)')
  ax.set_title('decoders: 1, 2, 4')
  ax.grid(alpha=0.3)
  ax.legend()
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


def xy_report(summary_rows, fig3_rows, decoupling_rows, steps, seeds) -> str:
  """Markdown for (d)-(g): Table 2's direction, Figure 5, Figure 3, decoupling per backbone."""
  lines = ['## (d) XYDeblur Table 2 at CPU scale: baseline vs XY vs Channel vs Layer', '',
           f'Each backbone tiny (experiments/claims.py BACKBONES), trained {steps} steps on the '
           f'demo\'s camera shake, seeds {list(seeds)}; PSNR/SSIM on the demo\'s held-out '
           'photographs (uint8 protocol), mean ± std over seeds. Channel and Layer are the '
           'baseline widened / deepened to the XY variant\'s MACs, as in the paper.', '',
           '| backbone | variant | params | GMACs 720p | PSNR | SSIM |', '|---|---|---|---|---|---|']
  for r in summary_rows:
    lines.append(f'| {r["family"]} | {r["variant"]} | {r["params"]:,} | {r["gmacs_720p"]:.2f} | '
                 f'{r["psnr"]:.2f} ± {r["psnr_std"]:.2f} | {r["ssim"]:.4f} ± {r["ssim_std"]:.4f} |')
  lines += ['', '## (e) Figure 5: 1, 2 and 4 decoders', '', '![decoders](claims_figure5.png)', '',
            '## (f) Figure 3: each decoder alone on a blurred ColorChecker', '',
            'Mean |ΔC*ab| of the six neutral patches against the sharp chart (CIELAB chroma; '
            'lower keeps the greys grey), for input + r̂ᵢ of each decoder alone.', '',
            '| backbone | model | seed | input | decoder 1 alone | decoder 2 alone |',
            '|---|---|---|---|---|---|']
  for r in fig3_rows:
    d = r['decoder_chroma_shift']
    lines.append(f'| {r["family"]} | {"XY (shared, rotated)" if r["variant"] == "xy" else "U-Net²ᴰ (independent)"}'
                 f' | {r["seed"]} | {r["input_chroma_shift"]:.2f} | {d[0]:.2f} | {d[1]:.2f} |')
  lines += ['', '## (g) Decoupling (Figure 4) for every backbone\'s XY variant', '',
            'Residual power (1/M)||r||² of decoder 1 / decoder 2 on held-out photographs '
            'blurred along x only and along y only.', '',
            '| backbone | seed | x-blur: d1 / d2 | y-blur: d1 / d2 |', '|---|---|---|---|']
  for r in decoupling_rows:
    lines.append(f'| {r["family"]} | {r["seed"]} | {r["x_blur"][0]:.2e} / {r["x_blur"][1]:.2e} | '
                 f'{r["y_blur"][0]:.2e} / {r["y_blur"][1]:.2e} |')
  return '\n'.join(lines) + '\n'


def length_report(rows) -> str:
  lines = ['## (c) DvSR\'s perceptual ordering against training length', '',
           'The diffusion demo trained from scratch for each length (its step schedule scaled). '
           'Long chain: one 100-step sample ("Ours"); short averaged: the mean of 8 ten-step '
           'samples ("Ours-SA"). The paper: the long chain has the better (lower) LPIPS/NIQE, '
           'the averaged one the higher PSNR.', '',
           '| steps | long chain PSNR / LPIPS / NIQE | short averaged PSNR / LPIPS / NIQE | '
           'LPIPS long − averaged |', '|---|---|---|---|']
  for r in rows:
    a, b = r['long_chain'], r['short_averaged']
    lines.append(f'| {r["steps"]} | {a["psnr"]:.2f} / {a["lpips"]:.4f} / {a["niqe"]:.2f} | '
                 f'{b["psnr"]:.2f} / {b["lpips"]:.4f} / {b["niqe"]:.2f} | '
                 f'{a["lpips"] - b["lpips"]:+.4f} |')
  return '\n'.join(lines) + '\n'


PARTS = ('decoupling', 'perception', 'length', 'xy')


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--parts', default=','.join(PARTS), help=f'comma-separated of {PARTS}')
  parser.add_argument('--steps', type=int, default=600, help='XYDeblur training steps for (a)')
  parser.add_argument('--diffusion_steps', type=int, default=800,
                      help='diffusion demo training steps for (b)')
  parser.add_argument('--lengths', default='800,3200,6400',
                      help='(c): diffusion demo training lengths')
  parser.add_argument('--backbones', default='dmphn,deepdeblur',
                      help="(d): Table 2's backbones (families)")
  parser.add_argument('--figure3_backbone', default='xydeblur',
                      help='(f): the family for Figure 3 (XY against U-Net^2D)')
  parser.add_argument('--backbone_steps', type=int, default=300, help='(d)-(g): steps per run')
  parser.add_argument('--seeds', default='0,1', help='(d)-(g): seeds')
  parser.add_argument('--trained_only', action='store_true',
                      help='(d)-(g): report the runs already trained, train no more')
  parser.add_argument('--inception_weights', default='',
                      help="FID/KID in (b): a pt_inception-2015-12-05-6726825d.pth or 'fetch'")
  args = parser.parse_args()
  parts = args.parts.split(',')

  import matplotlib
  matplotlib.use('Agg')

  os.makedirs(args.workdir, exist_ok=True)
  sections = []
  if 'decoupling' in parts and 'perception' in parts:
    decoupling_result = decoupling(os.path.join(args.workdir, 'xydeblur_xy_blur'), args.steps)
    plot_decoupling(decoupling_result[0], os.path.join(args.workdir, 'claims_decoupling.png'))
    rows = decoupling_result[0]
    emit({'claim': 'xydeblur_decoupling', 'steps': args.steps, **{
        f'{axis}_blur_{name}_power': rows[axis][name] for axis in rows for name in rows[axis]}})
    pd_result = perception_distortion(os.path.join(args.workdir, 'diffusion'),
                                      args.diffusion_steps, args.inception_weights)
    plot_perception_distortion(pd_result[0],
                               os.path.join(args.workdir, 'claims_perception_distortion.png'))
    emit({'claim': 'perception_distortion', 'steps': args.diffusion_steps,
          'rows': [{k: r.get(k) for k in ('num_steps', 'num_samples', 'psnr', 'lpips', 'niqe',
                                          'fid', 'kid')} for r in pd_result[0]]})
    sections.append(report(decoupling_result, pd_result))
  if 'length' in parts:
    rows = training_length(os.path.join(args.workdir, 'length'),
                           [int(x) for x in args.lengths.split(',')])
    emit({'claim': 'perceptual_ordering_vs_training_length', 'rows': rows})
    sections.append(length_report(rows))
  if 'xy' in parts:
    seeds = [int(x) for x in args.seeds.split(',')]
    backbones = args.backbones.split(',')
    xy_dir, partial = os.path.join(args.workdir, 'xy'), dict(trained_only=args.trained_only)
    # The first backbone's Table 2 rows, then Figures 3 and 5, then the other
    # backbones: an interrupted run has something of every experiment.
    runs = (table2(xy_dir, backbones[:1], TABLE2_VARIANTS, seeds, args.backbone_steps, **partial)
            + table2(xy_dir, [args.figure3_backbone], FIGURE3_VARIANTS, seeds[:1],
                     args.backbone_steps, **partial)
            + table2(xy_dir, backbones[:1], FIGURE5_VARIANTS, seeds, args.backbone_steps,
                     **partial)
            + table2(xy_dir, backbones[1:], TABLE2_VARIANTS, seeds, args.backbone_steps,
                     **partial))
    summary_rows = summarize_runs(runs)
    emit({'claim': 'table2_direction', 'rows': summary_rows})
    plot_figure5(summary_rows, os.path.join(args.workdir, 'claims_figure5.png'))
    fig3 = figure3(runs)
    emit({'claim': 'figure3_colour', 'rows': fig3})
    coupling = decoupling_of(runs)
    emit({'claim': 'decoupling_every_backbone', 'rows': coupling})
    sections.append(xy_report(summary_rows, fig3, coupling, args.backbone_steps, seeds))
  files.write_atomic(os.path.join(args.workdir, 'claims.md'), '\n'.join(sections))


if __name__ == '__main__':
  main()
