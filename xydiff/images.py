"""Image value ranges and image files: the one place that knows them.

Inside xydiff every image is float32 RGB in [0, 1], NHWC. Files hold integers
(8- or 16-bit); the field's metrics are computed on images rounded to uint8.
Everything that crosses between those worlds goes through this module.
"""

from __future__ import annotations

import os

import numpy as np

UINT8_PEAK = 255.0
UINT16_PEAK = 65535.0
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')


class ImageReadError(ValueError):
  """An image file could not be decoded; the message names the file."""


def to_float(image: np.ndarray) -> np.ndarray:
  """uint8 / uint16 integers -> float32 in [0, 1]."""
  if image.dtype == np.uint8:
    return image.astype(np.float32) / UINT8_PEAK
  if image.dtype == np.uint16:
    return image.astype(np.float32) / UINT16_PEAK
  raise TypeError(f'expected uint8 or uint16 pixels, got {image.dtype}')


def to_uint8(image) -> np.ndarray:
  """Float in [0, 1] -> uint8: clip, then round to the nearest level."""
  image = np.asarray(image, dtype=np.float32)
  return np.round(np.clip(image, 0.0, 1.0) * UINT8_PEAK).astype(np.uint8)


def to_uint16(image) -> np.ndarray:
  image = np.asarray(image, dtype=np.float32)
  return np.round(np.clip(image, 0.0, 1.0) * UINT16_PEAK).astype(np.uint16)


def quantize(image):
  """Clip to [0, 1] and round to uint8 levels, staying float (jit-able).

  This is the GoPro/HIDE table protocol (MPRNet, Restormer, NAFNet): metrics are
  computed on the image a user would save as an 8-bit PNG.
  """
  import jax.numpy as jnp  # Local: this module is also used by the input pipeline.
  return jnp.round(jnp.clip(image, 0.0, 1.0) * UINT8_PEAK) / UINT8_PEAK


def read_image(path: str) -> np.ndarray:
  """Reads a PNG or JPEG as an HxWx3 uint8 or uint16 RGB array.

  Grayscale is repeated to three channels and alpha is dropped, so every image
  a user hands xydiff is RGB. A file that cannot be decoded raises
  ImageReadError naming it.
  """
  from PIL import Image  # Pillow decodes 8-bit; 16-bit PNG goes through PIL's I;16 modes.
  try:
    with Image.open(path) as img:
      img.load()
      mode = img.mode
      if mode in ('I;16', 'I;16B', 'I;16L', 'I'):
        array = np.asarray(img, dtype=np.uint16) if mode != 'I' else np.asarray(img).astype(np.uint16)
        return np.repeat(array[..., None], 3, axis=-1)
      if mode == 'RGB':
        array = np.asarray(img)
      else:
        array = np.asarray(img.convert('RGB'))
  except (OSError, SyntaxError, ValueError) as e:  # PIL reports truncation as OSError.
    raise ImageReadError(f'cannot read image {path}: {e}') from None
  if array.ndim != 3 or array.shape[-1] != 3:
    raise ImageReadError(f'cannot read image {path}: unexpected shape {array.shape}')
  return array


def write_png(path: str, image: np.ndarray) -> None:
  """Writes an HxWx3 uint8 (or float in [0, 1], saved as uint8) image atomically."""
  from PIL import Image
  if image.dtype != np.uint8:
    image = to_uint8(image)
  tmp = f'{path}.tmp-{os.getpid()}'
  Image.fromarray(image).save(tmp, format='PNG')
  os.replace(tmp, path)
