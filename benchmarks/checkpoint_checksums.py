"""What the checkpoint checksums cost: save and restore of a train state with and without them.

  python benchmarks/checkpoint_checksums.py [--config=nafnet_gopro] [--repeats=3] [--dir=/tmp]

Builds the config's train state (state.init_state; NAFNet-64 for GoPro: 68M
parameters, 204M values with Adam's two moments), gives the moments random
values as a trained state has (zeros compress to nothing and would flatter
both cases), then per repeat, in alternating order, saves it synchronously
and restores it with the checks (xydiff's Checkpointer as it is) and without
them (the same Checkpointer, its three checks replaced by no-ops). One JSON
line per measurement, then one per case with the min/median/max; the parts
(checksums written, checked, finite check) are timed on their own too.
Restores read from the page cache here, as a resume right after a save
would; a cold read from disk adds the same read to both cases.
"""

import argparse
import os
import shutil
import statistics
import tempfile
import time

from common import emit, load_config


def _folder_bytes(path):
  return sum(os.path.getsize(os.path.join(root, name))
             for root, _, names in os.walk(path) for name in names)


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--config', default='nafnet_gopro')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--dir', default=None, help='where to write (default: the temp folder)')
  args = parser.parse_args()

  import jax
  import numpy as np
  from xydiff.runs import checkpoint
  from xydiff.runs import state as state_lib

  config = load_config(args.config)
  start = time.perf_counter()
  _, state = state_lib.init_state(config)
  rng = np.random.default_rng(0)

  def trained_like(path, x):
    names = [str(getattr(k, 'key', getattr(k, 'name', ''))) for k in path]
    if ('mu' in names or 'nu' in names) and np.issubdtype(x.dtype, np.floating):
      values = rng.standard_normal(x.shape, np.float32) * 1e-3
      return jax.numpy.asarray(np.abs(values) if 'nu' in names else values, x.dtype)
    return x
  state = jax.tree_util.tree_map_with_path(trained_like, state)
  jax.block_until_ready(state)
  leaves = jax.tree.leaves(state)
  emit({'config': args.config, 'params': sum(x.size for x in jax.tree.leaves(state['params'])),
        'values': sum(x.size for x in leaves), 'bytes': sum(x.nbytes for x in leaves),
        'init_s': round(time.perf_counter() - start, 1), 'cpus': os.cpu_count(),
        'load_avg_1m': os.getloadavg()[0], 'device': str(jax.devices()[0])})
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        state)

  checks = {'write_checksums': checkpoint.write_checksums,
            'verify_checksums': checkpoint.verify_checksums,
            'non_finite_leaves': checkpoint.non_finite_leaves}
  off = {'write_checksums': lambda step_dir: None, 'verify_checksums': lambda step_dir: False,
         'non_finite_leaves': lambda state: []}
  root = tempfile.mkdtemp(prefix='checksums-bench-', dir=args.dir)
  times = {}
  try:
    for repeat in range(args.repeats):
      for case in (('checked', 'unchecked') if repeat % 2 == 0 else ('unchecked', 'checked')):
        for name, fn in (checks if case == 'checked' else off).items():
          setattr(checkpoint, name, fn)
        workdir = os.path.join(root, f'{case}-{repeat}')
        start = time.perf_counter()
        with checkpoint.Checkpointer(workdir, config) as ckpt:
          ckpt.save(1, state)
        save_s = time.perf_counter() - start
        start = time.perf_counter()
        with checkpoint.Checkpointer(workdir, config, read_only=True) as ckpt:
          jax.block_until_ready(ckpt.restore(target, 1))
        restore_s = time.perf_counter() - start
        step_dir = os.path.join(workdir, checkpoint.CHECKPOINTS, '1')
        record = {'case': case, 'repeat': repeat, 'save_s': round(save_s, 3),
                  'restore_s': round(restore_s, 3), 'step_bytes': _folder_bytes(step_dir),
                  'load_avg_1m': os.getloadavg()[0]}
        if case == 'checked':
          record['checksums_file_bytes'] = os.path.getsize(
              os.path.join(step_dir, checkpoint.CHECKSUMS_FILE))
          for name, fn, arg in (('write_checksums_s', checks['write_checksums'], step_dir),
                                ('verify_checksums_s', checks['verify_checksums'], step_dir),
                                ('finite_check_s', checks['non_finite_leaves'], state)):
            start = time.perf_counter()
            fn(arg)
            record[name] = round(time.perf_counter() - start, 3)
        emit(record)
        for key, value in record.items():
          if key.endswith('_s'):
            times.setdefault((case, key), []).append(value)
        shutil.rmtree(workdir)
  finally:
    for name, fn in checks.items():
      setattr(checkpoint, name, fn)
    shutil.rmtree(root, ignore_errors=True)
  for (case, key), values in sorted(times.items()):
    emit({'case': case, 'measure': key, 'min': min(values),
          'median': round(statistics.median(values), 3), 'max': max(values), 'n': len(values)})


if __name__ == '__main__':
  main()
