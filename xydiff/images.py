"""Image value ranges and image files: the one place that knows them.

Inside xydiff every image is float32 RGB in [0, 1], NHWC. Files hold integers
(8- or 16-bit); the field's metrics are computed on images rounded to uint8.
Everything that crosses between those worlds goes through this module.
"""

from __future__ import annotations

import os

import numpy as np

from xydiff.errors import ImageReadError

UINT8_PEAK = 255.0
UINT16_PEAK = 65535.0
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')


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


def _tensorflow():
  """TensorFlow, imported lazily (slow, and needed for 16-bit PNG only), on the CPU."""
  from xydiff import tf_guard
  return tf_guard.keep_tensorflow_off_accelerators()


def read_image(path: str, *, keep_channels: bool = False) -> np.ndarray:
  """Reads a PNG or JPEG as an HxWx3 uint8 or uint16 RGB array.

  Grayscale is repeated to three channels and alpha is dropped, so every image
  a user hands xydiff is RGB. 16-bit PNGs, grey or colour, come back as uint16
  at full precision: Pillow would silently decode 16-bit colour as 8-bit, so
  they go through TensorFlow's PNG decoder instead.

  With `keep_channels` the channels are returned as stored, HxWx1 grey, HxWx2
  grey + alpha, HxWx3 RGB or HxWx4 RGBA (palette images become RGB, or RGBA
  when they carry transparency), so that a tool can write its result back in
  the format it was given. A file that cannot be decoded raises
  ImageReadError naming it.
  """
  from PIL import Image  # Local: this module is imported by code that reads no images.
  try:
    with open(path, 'rb') as f:
      header = f.read(26)
    # Byte 24 of a PNG is the bit depth: after the signature (8 bytes), IHDR's
    # length and type (8) and the width and height (8).
    is_png16 = (header[:8] == b'\x89PNG\r\n\x1a\n' and header[12:16] == b'IHDR'
                and header[24] == 16)
    if is_png16:
      tf = _tensorflow()
      with open(path, 'rb') as f:
        contents = f.read()
      try:
        array = tf.io.decode_png(contents, channels=0, dtype=tf.uint16).numpy()
      except tf.errors.OpError as e:
        # Drop TF's '{{function_node ...}}' prefix and ' [Op:DecodePng]' suffix.
        reason = e.message.split('}}')[-1].split(' [Op:')[0].strip()
        raise ImageReadError(f'cannot read image {path}: {reason}') from None
    else:
      with Image.open(path) as img:
        img.load()
        mode = img.mode
        if mode in ('I;16', 'I;16B', 'I;16L', 'I'):
          array = (np.asarray(img, dtype=np.uint16) if mode != 'I' else
                   np.asarray(img).astype(np.uint16))[..., None]
        elif mode in ('1', 'L', 'LA', 'RGB', 'RGBA'):
          array = np.asarray(img.convert('L') if mode == '1' else img)
        elif mode in ('La', 'PA') or (mode == 'P' and 'transparency' in img.info):
          array = np.asarray(img.convert('LA' if mode == 'La' else 'RGBA'))
        else:  # Palette, CMYK, YCbCr, premultiplied RGBa, ...
          array = np.asarray(img.convert('RGBA' if mode == 'RGBa' else 'RGB'))
  except ImageReadError:
    raise
  except (OSError, SyntaxError, ValueError) as e:  # PIL reports truncation as OSError.
    raise ImageReadError(f'cannot read image {path}: {e}') from None
  if array.ndim == 2:
    array = array[..., None]
  if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4):
    raise ImageReadError(f'cannot read image {path}: unexpected shape {array.shape}')
  if keep_channels:
    return array
  if array.shape[-1] <= 2:
    return np.repeat(array[..., :1], 3, axis=-1)
  return np.ascontiguousarray(array[..., :3])


def write_png(path: str, image: np.ndarray) -> None:
  """Writes a PNG atomically: uint8 as 8-bit, uint16 as 16-bit, float in [0, 1] as 8-bit.

  HxW and HxWx1 are grey, HxWx2 grey + alpha, HxWx3 RGB, HxWx4 RGBA. The file
  appears under its name only once complete (written to a temporary name, then
  renamed), so an interrupted run never leaves a truncated PNG behind. Pillow
  cannot encode 16-bit colour, so 16-bit images go through TensorFlow.
  """
  from PIL import Image
  image = np.asarray(image)
  if image.dtype not in (np.uint8, np.uint16):
    image = to_uint8(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 2, 3, 4):
    raise ValueError(f'cannot write an image of shape {image.shape} to {path}')
  tmp = f'{path}.tmp-{os.getpid()}'
  try:
    if image.dtype == np.uint16:
      tf = _tensorflow()
      with open(tmp, 'wb') as f:
        f.write(tf.io.encode_png(image).numpy())
    else:
      Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(tmp, format='PNG')
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_image(path: str, image, *, bit_depth: int = 8) -> None:
  """Writes a float image in [0, 1] as an 8- or 16-bit PNG (clipped, rounded).

  Tools that restore a user's photo save it at the depth it was read with, so
  a 16-bit input keeps its precision.
  """
  if bit_depth not in (8, 16):
    raise ValueError(f'bit_depth must be 8 or 16, got {bit_depth}')
  write_png(path, to_uint16(image) if bit_depth == 16 else to_uint8(image))
