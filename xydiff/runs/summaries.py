"""A run's summaries: TensorBoard event files where the train extra is installed, log lines always.

`create_writer(logdir)` is clu's default writer (TensorBoard events plus log
lines) when clu and TensorFlow are importable (`pip install 'xydiff[train]'`),
and a writer of log lines alone otherwise, so training, evaluation and the
demo run on the core install; only the event files need TensorFlow.
"""

from __future__ import annotations

from absl import logging

from xydiff.data import tf_cpu


class LoggingWriter:
  """The writer interface of clu.metric_writers (scalars, images, hparams), as log lines."""

  def write_scalars(self, step: int, scalars: dict) -> None:
    logging.info('[%d] %s', step, ', '.join(f'{k}={float(v):.6g}' for k, v in scalars.items()))

  def write_images(self, step: int, images: dict) -> None:
    del step, images  # Evaluation writes its pictures as PNG files too.

  def write_hparams(self, hparams: dict) -> None:
    del hparams  # The run's config.json holds them.

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


def tensorboard_available() -> bool:
  """Whether clu and TensorFlow import (the train extra), so event files can be written."""
  try:
    tf_cpu.keep_tensorflow_off_accelerators()
    from clu import metric_writers  # pylint: disable=import-outside-toplevel,unused-import  # The train extra, optional.
  except ImportError:
    return False
  return True


_NOTED = []


def create_writer(logdir: str, *, just_logging: bool = False):
  """clu's default writer for `logdir` where it can write events, else a LoggingWriter."""
  if not just_logging and tensorboard_available():
    from clu import metric_writers  # pylint: disable=import-outside-toplevel  # The train extra, optional.
    return metric_writers.create_default_writer(logdir)
  if not just_logging and not _NOTED:
    _NOTED.append(True)
    logging.info("TensorBoard summaries are off: they need TensorFlow and clu, "
                 "pip install 'xydiff[train]'; metrics go to the log and the eval JSON files.")
  return LoggingWriter()
