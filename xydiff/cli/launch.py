"""The launcher (`xydiff --config=... --workdir=...`): parses flags and runs a mode.

  xydiff --config=gopro --workdir=DIR [--mode=train|eval|sweep|deblur|score]
         [--config.train.batch_size=8 ...]

`python launch.py ...` in a checkout is the same command (xydiff/command.py). `--config` is a
config file or a packaged config's name (`--config=gopro`,
`--config=demo:diffusion`); eval, sweep and deblur may leave it out and use
the config stored with the run in --workdir.
"""

import os
import sys

# TensorFlow (tfds, clu's summary writer) logs a lot at start-up; keep it quiet.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags, logging
from ml_collections import config_flags

from xydiff.cli import common as cli

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file or packaged config name, e.g. xydiff/configs/gopro.py, gopro or '
    'demo:diffusion; eval/sweep/deblur default to the config stored in --workdir.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints, logs and evaluations go.')
_MODE = flags.DEFINE_enum(
    'mode', 'train', ['train', 'eval', 'sweep', 'deblur', 'score'],
    'train: train (resuming) and evaluate; eval: score a checkpoint; sweep: grid of diffusion '
    'sampling schedules on the eval split; deblur: restore your own photos; score: score a '
    'folder of restored images against a folder of sharp ones (no model).')
_INPUT = flags.DEFINE_string('input', None, '--mode=deblur: an image file, a folder or a glob; '
                             '--mode=score: the folder of restored images.')
_OUTPUT = flags.DEFINE_string('output', None, '--mode=deblur: folder for the restored PNGs.')
_TARGET = flags.DEFINE_string('target', None, '--mode=score: the folder of sharp images.')
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
  config, workdir, mode = _CONFIG.value, _WORKDIR.value, _MODE.value
  # Given on the command line, or the workdir's own (cli.resolve_config_argv):
  # only a given config may read a checkpoint that stores none.
  config_from_user = any(a == '--config' or a.startswith('--config=') for a in sys.argv[1:])

  from xydiff.runs import distributed
  from xydiff.errors import USER_ERRORS
  try:
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  except ValueError as e:
    cli.fail(cli.one_line(e))
  logging.info('xydiff %s, workdir %s', mode, workdir)
  # Each mode imports only what it needs: deblur and score run without TensorFlow.
  try:
    if mode == 'train':
      from xydiff.train import loop as train
      train.train_and_evaluate(config, workdir)
    elif mode == 'score':
      from xydiff.evaluation import folders as score
      if not _INPUT.value or not _TARGET.value:
        cli.fail('--mode=score needs --input (restored images) and --target (sharp images)')
      score.run(config, workdir, _INPUT.value, _TARGET.value)
    elif mode == 'eval':
      from xydiff.evaluation import evaluator as evaluate
      evaluate.evaluate_checkpoint(config, workdir, config_from_user=config_from_user)
    elif mode == 'sweep':
      from xydiff.evaluation import sweep
      sweep.run_sweep(config, workdir, config_from_user=config_from_user)
    elif mode == 'deblur':
      from xydiff.inference import photos as deblur
      if not _INPUT.value or not _OUTPUT.value:
        cli.fail('--mode=deblur needs --input (a file, folder or glob) and --output (a folder)')
      sys.exit(deblur.run(config, workdir, _INPUT.value, _OUTPUT.value,
                          checkpoint=_CHECKPOINT.value, config_from_user=config_from_user))
  except USER_ERRORS as e:
    cli.fail(cli.one_line(e))


def launch() -> None:
  """Parses the launcher's flags (defined above) and runs the mode."""
  flags.mark_flags_as_required(['workdir'])
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == '__main__':
  launch()
