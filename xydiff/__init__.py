"""xydiff: XYDeblur and DvSR deblurring, and both at once, in JAX/Flax."""

from xydiff.checkpoint import CheckpointMismatchError
from xydiff.config_check import ConfigError
from xydiff.data.folders import DataError
from xydiff.images import ImageReadError

__version__ = '0.1.0'

# Errors caused by the user's input (flags, files, workdir): launch.py prints
# their one-line message instead of a traceback.
USER_ERRORS = (ConfigError, DataError, ImageReadError, CheckpointMismatchError,
               FileNotFoundError, PermissionError, FloatingPointError)


def keep_tensorflow_off_accelerators():
  """TensorFlow (tfds, tf.data, clu's summary writer) runs on the CPU only; returns `tf`.

  Left alone, TF would claim GPU memory (or TPU cores) that JAX needs. Must run before TF's
  first op; harmless where TF is already configured. Code that imports TensorFlow
  lazily gets it from here.
  """
  import tensorflow as tf
  for kind in ('GPU', 'TPU'):
    try:
      tf.config.set_visible_devices([], kind)
    except RuntimeError:  # TF already initialised its devices.
      pass
  return tf
