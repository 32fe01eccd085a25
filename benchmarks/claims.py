"""The XYDeblur paper's decoupling claim, measured at CPU scale.

  python benchmarks/claims.py --workdir=/tmp/xydiff_claims [--steps=600]

Trains a small XYDeblur on scikit-image's photographs blurred with straight
kernels that are either purely horizontal or purely vertical (drawn per
pair), then measures on held-out photographs blurred along x only and along
y only the signal power (1/M)||r||^2 of each decoder's residual. The paper:
the horizontal decoder dominates on x-blur and the vertical one on y-blur.
Writes <workdir>/claims.md and claims_decoupling.png; prints one JSON object.
"""

import argparse
import os

from common import emit


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--steps', type=int, default=600)
  args = parser.parse_args()

  import jax
  import numpy as np
  from flax import nnx
  from configs import demo
  from xydiff import images, train
  from xydiff.data import synthetic

  config = demo.get_config()
  config.data.synthetic.update(dict(kernel='xy', kernel_size=21, kernel_length=(9.0, 21.0)))
  config.train.update(dict(num_steps=args.steps, eval_every=args.steps,
                           checkpoint_every=args.steps, lr_halve_steps=(int(args.steps * 0.75),)))
  train.train_and_evaluate(config, args.workdir)

  graphdef, params, _ = train.load_for_inference(config, args.workdir)
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
      out = forward(images.to_float(blur)[None])
      for name in power:
        power[name].append(float(np.mean(np.square(out[name]))))
    rows[axis] = {k: float(np.mean(v)) for k, v in power.items()}

  import matplotlib
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt
  fig, ax = plt.subplots(figsize=(5, 3.5))
  width = 0.35
  for j, name in enumerate(('horizontal', 'vertical')):
    ax.bar(np.arange(2) + (j - 0.5) * width, [rows[a][name] for a in ('x', 'y')], width,
           label=f'{name} decoder')
  ax.set_xticks(range(2), ['x-only blur', 'y-only blur'])
  ax.set_ylabel('residual power (1/M)||r||²')
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(args.workdir, 'claims_decoupling.png'), dpi=120)
  plt.close(fig)

  lines = ['# XYDeblur decoupling at CPU scale', '',
           f'XYDeblur width {config.model.xydeblur.width}, {config.model.xydeblur.num_res} '
           f'residual blocks, {args.steps} steps on x-or-y line blur; evaluated on '
           f'{len(photos)} held-out photographs x 4 kernels per direction.', '',
           '| blur | horizontal decoder | vertical decoder | ratio hor/ver |', '|---|---|---|---|']
  for axis in ('x', 'y'):
    r = rows[axis]
    lines.append(f'| {axis}-only | {r["horizontal"]:.3e} | {r["vertical"]:.3e} | '
                 f'{r["horizontal"] / r["vertical"]:.2f} |')
  lines += ['', '![decoupling](claims_decoupling.png)', '']
  with open(os.path.join(args.workdir, 'claims.md'), 'w') as f:
    f.write('\n'.join(lines))
  emit({'claim': 'xydeblur_decoupling', 'steps': args.steps, **{
      f'{axis}_blur_{name}_power': rows[axis][name] for axis in rows for name in rows[axis]}})


if __name__ == '__main__':
  main()
