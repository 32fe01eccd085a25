"""Deblurring a folder of photos of mixed sizes: compiles and time, with and without size buckets.

  python benchmarks/deblur_sizes.py [--config=xydeblur_gopro] [--count=12] [--bucket=128]

Makes `--count` photos whose sides vary by a few dozen pixels (as photos from
a few phones and crops do), restores them with `Restorer` at
`config.inference.size_bucket` 0 (one compile per distinct size) and at
`--bucket`, and prints one JSON object per setting: distinct compiled shapes,
total and per-image seconds, and how far the two outputs differ at the
borders and in the interior.
"""

import argparse
import tempfile
import time

from common import emit, load_config


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--config', default='xydeblur_gopro')
  parser.add_argument('--count', type=int, default=12)
  parser.add_argument('--bucket', type=int, default=128)
  parser.add_argument('--base', type=int, default=480, help='typical side, pixels')
  parser.add_argument('--tiny', action='store_true', help='a tiny network: the code runs, seconds')
  args = parser.parse_args()

  import jax
  import numpy as np
  from xydiff.runs import checkpoint
  from xydiff.inference import restorer as inference
  from xydiff import config as run_config
  from xydiff.runs import state as state_lib

  config = load_config(args.config, tiny=args.tiny)
  rng = np.random.default_rng(0)
  sizes = [(args.base + int(rng.integers(-40, 41)), args.base * 4 // 3 + int(rng.integers(-40, 41)))
           for _ in range(args.count)]
  photos = [rng.random((h, w, 3)).astype(np.float32) for h, w in sizes]
  with tempfile.TemporaryDirectory() as run:
    graphdef, state = state_lib.init_state(config)
    with checkpoint.Checkpointer(run, config) as ckpt:
      ckpt.save(0, state)
    run_config.save(run, config)
    outputs = {}
    for bucket in (0, args.bucket):
      config.inference.size_bucket = bucket
      restorer = inference.Restorer.from_workdir(run, config=config)
      # Every shape kept, so that compiled_shapes counts each compile (the Restorer's own
      # bound, MAX_COMPILED_SHAPES, would clear them along the way).
      restorer.MAX_COMPILED_SHAPES = len(photos) + 1
      start = time.perf_counter()
      outputs[bucket] = [restorer.restore(p)['image'] for p in photos]
      total = time.perf_counter() - start
      emit({'config': args.config, 'backend': jax.default_backend(), 'images': len(photos),
            'distinct_sizes': len(set(sizes)), 'size_bucket': bucket,
            'compiled_shapes': sum(fn._cache_size()  # pylint: disable=protected-access
                                   for fn in restorer._compiled.values()),  # pylint: disable=protected-access
            'total_s': round(total, 2), 'per_image_s': round(total / len(photos), 3)})
  margin = min(64, min(min(size) for size in sizes) // 2)  # Some interior on small photos too.
  interior = max(float(np.abs(a[:-margin, :-margin] - b[:-margin, :-margin]).max())
                 for a, b in zip(outputs[0], outputs[args.bucket]))
  border = max(float(np.abs(a - b).max()) for a, b in zip(outputs[0], outputs[args.bucket]))
  emit({'max_abs_diff_anywhere': round(border, 5),
        f'max_abs_diff_beyond_{margin}px_of_bottom_right': round(interior, 7)})


if __name__ == '__main__':
  main()
