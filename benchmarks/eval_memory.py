"""Peak memory of evaluation and of the sweep against the number of images.

  python benchmarks/eval_memory.py [--images=4,16] [--size=256]

For each count N it writes N synthetic blur/sharp pairs (size x size PNGs),
trains nothing (a step-0 checkpoint of the tiny diffusion demo model is
enough to exercise the pipeline), and runs `--mode=eval` and `--mode=sweep`
in fresh processes, printing each one's peak resident memory (ru_maxrss):
streaming means the figure does not grow with N.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

from common import REPO, emit


def _child(mode, workdir, root):
  """Runs one mode in this process (called in a fresh interpreter) and reports its peak RSS."""
  from xydiff.evaluation import evaluator as evaluate
  from xydiff import config as run_config
  from xydiff.evaluation import sweep
  config = run_config.load(workdir)
  config.data.update(dict(name='folder', root=root, eval_max_images=0))
  config.eval.update(dict(num_image_summaries=0, lpips=True))
  config.eval.sweep.update(dict(schedules=((5, 1e-4, 0.5),), num_samples=(1, 2)))
  if mode == 'eval':
    evaluate.evaluate_checkpoint(config, workdir)
  else:
    sweep.run_sweep(config, workdir)
  print(json.dumps({'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--images', default='4,16')
  parser.add_argument('--size', type=int, default=256)
  parser.add_argument('--child', nargs=3, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    _child(*args.child)
    return

  import numpy as np
  from xydiff import images
  from xydiff.runs import checkpoint
  from xydiff import config as run_config
  from xydiff.runs import state as state_lib
  from xydiff.configs import demo

  config = demo.get_config('diffusion')
  config.inference.presets.perceptual.num_steps = 5
  config.inference.presets.sa.update(dict(num_steps=5, num_samples=2))
  rng = np.random.default_rng(0)
  with tempfile.TemporaryDirectory() as tmp:
    run = os.path.join(tmp, 'run')
    graphdef, state = state_lib.init_state(config)
    with checkpoint.Checkpointer(run, config) as ckpt:
      ckpt.save(0, state)
    run_config.save(run, config)
    for count in (int(n) for n in args.images.split(',')):
      root = os.path.join(tmp, f'data_{count}')
      for kind in ('blur', 'sharp'):
        os.makedirs(os.path.join(root, 'test', kind))
      for i in range(count):
        sharp = rng.integers(0, 256, (args.size, args.size, 3), np.uint8)
        blur = np.clip(sharp.astype(int) + rng.integers(-20, 21, sharp.shape), 0, 255)
        images.write_png(os.path.join(root, 'test', 'sharp', f'{i:04d}.png'), sharp)
        images.write_png(os.path.join(root, 'test', 'blur', f'{i:04d}.png'), blur.astype(np.uint8))
      for mode in ('eval', 'sweep'):
        out = subprocess.run([sys.executable, __file__, '--child', mode, run, root], cwd=REPO,
                             capture_output=True, text=True, check=True)
        peak = json.loads(out.stdout.strip().splitlines()[-1])['peak_rss_mb']
        emit({'mode': mode, 'images': count, 'size': args.size, 'peak_rss_mb': round(peak)})


if __name__ == '__main__':
  main()
