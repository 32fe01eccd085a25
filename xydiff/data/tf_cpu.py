"""TensorFlow, for the parts that need it (tf.data, tfds, clu's writers), kept on the CPU.

Models, the train step, inference and metrics never import TensorFlow; the
training loop and dataset preparation get it from here.
"""

from __future__ import annotations


def keep_tensorflow_off_accelerators():
  """Imports TensorFlow with its GPUs and TPUs hidden; returns `tf`.

  Left alone, TF would claim GPU memory (or TPU cores) that JAX needs. Must
  run before TF's first op; harmless where TF is already configured.
  """
  import tensorflow as tf
  for kind in ('GPU', 'TPU'):
    try:
      tf.config.set_visible_devices([], kind)
    except RuntimeError:  # TF already initialised its devices.
      pass
  return tf
