"""xydiff's one entry point: parses flags and dispatches.

  python launch.py --config=configs/gopro.py --workdir=DIR [--mode=train|eval]
                   [--config.train.batch_size=8 ...]
"""

import os
import sys

# TensorFlow (tfds, clu's summary writer) must never take an accelerator from JAX.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags, logging
from ml_collections import config_flags

from xydiff import cli

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, e.g. configs/gopro.py or configs/demo.py:diffusion.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints, logs and evaluations go.')
_MODE = flags.DEFINE_enum(
    'mode', 'train', ['train', 'eval', 'sweep', 'deblur'],
    'train: train (resuming) and evaluate; eval: score a checkpoint; sweep: grid of diffusion '
    'sampling schedules on the eval split; deblur: restore your own photos.')
_INPUT = flags.DEFINE_string('input', None, '--mode=deblur: an image file, a folder or a glob.')
_OUTPUT = flags.DEFINE_string('output', None, '--mode=deblur: folder for the restored PNGs.')
_CHECKPOINT = flags.DEFINE_string(
    'checkpoint', None, '--mode=deblur: a checkpoint folder (<workdir>/checkpoints/<step>) '
    'instead of the workdir\'s latest.')

_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'Multi-process runs: host:port of process 0. On TPU pods and '
    'under SLURM leave it out: the platform supplies it.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Multi-process runs: process count.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'Multi-process runs: this process.')


class _QuietLibraries:
  """Drops INFO chatter of orbax and friends (a dozen lines per checkpoint)."""

  _NOISY = ('/orbax/', '/jax/_src/')

  def filter(self, record) -> bool:
    return record.levelno >= logging.converter.STANDARD_WARNING or not any(
        part in record.pathname for part in self._NOISY)


def main(argv):
  handler = logging.get_absl_handler()
  for h in (handler, handler.python_handler):  # ABSLHandler delegates to its python_handler.
    h.addFilter(_QuietLibraries())
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  config = _CONFIG.value

  from xydiff import distributed, evaluate, tf_guard, train
  from xydiff.errors import USER_ERRORS
  tf_guard.keep_tensorflow_off_accelerators()
  try:
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  except ValueError as e:
    cli.fail(cli.one_line(e))
  logging.info('xydiff %s, workdir %s', _MODE.value, _WORKDIR.value)
  try:
    if _MODE.value == 'train':
      train.train_and_evaluate(config, _WORKDIR.value)
    elif _MODE.value == 'eval':
      evaluate.evaluate_checkpoint(config, _WORKDIR.value)
    elif _MODE.value == 'sweep':
      from xydiff import sweep
      sweep.run_sweep(config, _WORKDIR.value)
    elif _MODE.value == 'deblur':
      from xydiff import deblur
      if not _INPUT.value or not _OUTPUT.value:
        cli.fail('--mode=deblur needs --input (a file, folder or glob) and --output (a folder)')
      sys.exit(deblur.run(config, _WORKDIR.value, _INPUT.value, _OUTPUT.value,
                          checkpoint=_CHECKPOINT.value))
  except USER_ERRORS as e:
    cli.fail(cli.one_line(e))


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main, flags_parser=cli.parse_flags)
