"""Image value ranges and image files: the one place that knows them.

Inside xydiff every image is float32 RGB in [0, 1], NHWC. Files hold integers
(8- or 16-bit); the field's metrics are computed on images rounded to uint8.
Everything that crosses between those worlds goes through this module.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from xydiff import files
from xydiff.errors import ImageReadError, ImageValueError

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


# How far outside [0, 1] a float image may stray (filters and resampling
# overshoot a little); an image beyond it holds other units, e.g. 0-255 levels.
FLOAT_TOLERANCE = 0.01


def to_unit_float(image) -> np.ndarray:
  """An image array as float32 in [0, 1], refusing what is not one (ImageValueError).

  uint8 and uint16 are scaled by their peak; floats must already be in
  [0, 1] (to within FLOAT_TOLERANCE) and finite. Other integer types are
  refused rather than guessed at: 0-255 and 0-65535 levels both come as int32
  or int64, and a wrong guess would be off by a factor of 257.
  """
  image = np.asarray(image)
  if image.dtype in (np.uint8, np.uint16):
    return to_float(image)
  if not np.issubdtype(image.dtype, np.floating):
    raise ImageValueError(
        f'an image of {image.dtype} values: give uint8 (0-255), uint16 (0-65535) or float in '
        '[0, 1], e.g. image.astype(np.uint8) if these are 8-bit levels')
  image = image.astype(np.float32)
  finite = np.isfinite(image)
  if not finite.all():
    bad = image.size - int(finite.sum())
    raise ImageValueError(f'the image holds {bad} NaN or infinite value{"s" * (bad > 1)} (of '
                          f'{image.size}): every value must be a number in [0, 1]')
  low, high = (float(image.min()), float(image.max())) if image.size else (0.0, 0.0)
  if low < -FLOAT_TOLERANCE or high > 1 + FLOAT_TOLERANCE:
    hint = (' (8-bit levels? divide by 255)' if 1 < high <= UINT8_PEAK else
            ' (16-bit levels? divide by 65535)' if UINT8_PEAK < high <= UINT16_PEAK else '')
    raise ImageValueError(f'float image values run from {low:g} to {high:g}, outside [0, 1]'
                          f'{hint}; clip or rescale it to [0, 1]')
  return image


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


PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
# IHDR colour types (the PNG specification, table 11.1).
PNG_GREY, PNG_RGB, PNG_PALETTE, PNG_GREY_ALPHA, PNG_RGBA = 0, 2, 3, 4, 6
# EXIF tag of the camera's orientation (1: upright, 2-8: flips and rotations).
_EXIF_ORIENTATION = 0x0112


def png_header(path: str) -> tuple[int, int, int, int] | None:
  """(width, height, bit depth, colour type) from a PNG's IHDR chunk; None if not a PNG.

  Reads 26 bytes: the signature (8), IHDR's length and type (8), then width,
  height (4 bytes each, big-endian), bit depth and colour type (1 each). Lets
  callers route a file (16-bit, or already 8-bit RGB) without decoding it.
  OSError (missing or unreadable file) propagates.
  """
  with open(path, 'rb') as f:
    head = f.read(26)
  if len(head) < 26 or head[:8] != PNG_SIGNATURE or head[12:16] != b'IHDR':
    return None
  width, height = struct.unpack('>II', head[16:24])
  return width, height, head[24], head[25]


# numpy's form of each EXIF orientation (2-8), the turns Pillow's
# ImageOps.exif_transpose makes (FLIP_LEFT_RIGHT, ROTATE_180, FLIP_TOP_BOTTOM,
# TRANSPOSE, ROTATE_270, TRANSVERSE, ROTATE_90), for images Pillow cannot hold.
_UPRIGHT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}


def _png_orientation(data: bytes) -> int:
  """The EXIF Orientation of a PNG's eXIf chunk (1 when it has none), from its bytes.

  Walks the chunks (length, type, data, CRC) up to IEND without decoding
  pixels; Pillow parses the EXIF block.
  """
  from PIL import Image  # Local: this module is imported by code that reads no images.
  pos = len(PNG_SIGNATURE)
  while pos + 8 <= len(data):
    (length,), kind = struct.unpack('>I', data[pos:pos + 4]), data[pos + 4:pos + 8]
    if kind == b'eXIf':
      exif = Image.Exif()
      exif.load(data[pos + 8:pos + 8 + length])
      orientation = exif.get(_EXIF_ORIENTATION, 1)
      return orientation if orientation in _UPRIGHT else 1
    if kind == b'IEND':
      break
    pos += 12 + length
  return 1


def _decode_png16(path: str, colour_type: int) -> np.ndarray:
  """A 16-bit PNG as HxW grey, HxWx2 grey + alpha, HxWx3 RGB or HxWx4 RGBA uint16, upright.

  OpenCV, because Pillow decodes 16-bit colour as 8-bit. The bytes go through
  np.fromfile + imdecode so that any path the OS accepts works. OpenCV returns
  BGR / BGRA (grey + alpha expanded to BGRA), and None rather than raising on
  a damaged file; IMREAD_UNCHANGED ignores EXIF, so the orientation of the
  file's eXIf chunk is applied here, as Pillow applies it to every other file.
  """
  import cv2  # Local: only 16-bit PNGs need it.
  data = np.fromfile(path, np.uint8)
  try:
    array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
  except cv2.error as e:
    raise ImageReadError(f'cannot read image {path}: {str(e).strip().splitlines()[-1]}') from None
  if array is None or array.dtype != np.uint16:
    raise ImageReadError(f'cannot read image {path}: not a decodable 16-bit PNG '
                         '(damaged or truncated?)')
  if array.ndim == 3:
    if colour_type == PNG_GREY_ALPHA and array.shape[-1] == 4:
      array = array[..., [0, 3]]
    elif array.shape[-1] == 3:
      array = array[..., ::-1]
    elif array.shape[-1] == 4:
      array = array[..., [2, 1, 0, 3]]
  try:
    orientation = _png_orientation(data.tobytes())
  except (struct.error, ValueError, SyntaxError) as e:  # A damaged EXIF block.
    raise ImageReadError(f'cannot read image {path}: its EXIF block: {e}') from None
  if orientation != 1:
    array = _UPRIGHT[orientation](array)
  return np.ascontiguousarray(array)


def _upright(img):
  """The Pillow image turned as its EXIF Orientation tag says (phone photos), else itself."""
  from PIL import ImageOps
  if img.getexif().get(_EXIF_ORIENTATION, 1) in (None, 1):
    return img
  return ImageOps.exif_transpose(img)


def _decode_pillow(path: str) -> np.ndarray:
  """8-bit PNG, JPEG and anything else Pillow reads, upright, as its stored channels."""
  from PIL import Image  # Local: this module is imported by code that reads no images.
  with Image.open(path) as img:
    img.load()
    img = _upright(img)
    mode = img.mode
    if mode in ('I;16', 'I;16B', 'I;16L', 'I'):
      return (np.asarray(img, dtype=np.uint16) if mode != 'I' else
              np.asarray(img).astype(np.uint16))[..., None]
    if mode in ('1', 'L', 'LA', 'RGB', 'RGBA'):
      return np.asarray(img.convert('L') if mode == '1' else img)
    if mode in ('La', 'PA') or (mode == 'P' and 'transparency' in img.info):
      return np.asarray(img.convert('LA' if mode == 'La' else 'RGBA'))
    # Palette, CMYK, YCbCr, premultiplied RGBa, ...
    return np.asarray(img.convert('RGBA' if mode == 'RGBa' else 'RGB'))


def read_image(path: str, *, keep_channels: bool = False) -> np.ndarray:
  """Reads a PNG or JPEG as an HxWx3 uint8 or uint16 RGB array.

  Grayscale is repeated to three channels and alpha is dropped, so every image
  a user hands xydiff is RGB. 16-bit PNGs, grey or colour, come back as uint16
  at full precision (decoded by OpenCV: Pillow would silently decode 16-bit
  colour as 8-bit); everything else is decoded by Pillow. A photo carrying an
  EXIF Orientation tag (as phones write them) comes back upright, as viewers
  show it.

  With `keep_channels` the channels are returned as stored, HxWx1 grey, HxWx2
  grey + alpha, HxWx3 RGB or HxWx4 RGBA (palette images become RGB, or RGBA
  when they carry transparency), so that a tool can write its result back in
  the format it was given. A file that cannot be opened or decoded raises
  ImageReadError naming it.
  """
  try:
    header = png_header(path)
    if header is not None and header[2] == 16:
      array = _decode_png16(path, header[3])
    else:
      array = _decode_pillow(path)
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


def _png_chunk(kind: bytes, data: bytes) -> bytes:
  return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))


def _encode_png16(image: np.ndarray) -> bytes:
  """HxWxC uint16 (C = 1, 2, 3, 4) -> the bytes of a 16-bit PNG.

  OpenCV encodes grey, RGB (given as BGR) and RGBA (as BGRA). It refuses two
  channels, so 16-bit grey + alpha is written here directly: IHDR, one IDAT of
  unfiltered big-endian rows, IEND.
  """
  channels = image.shape[-1]
  if channels == 2:
    height, width = image.shape[:2]
    rows = image.astype('>u2').view(np.uint8).reshape(height, width * 4)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1)  # Filter 0: none.
    ihdr = struct.pack('>IIBBBBB', width, height, 16, PNG_GREY_ALPHA, 0, 0, 0)
    return (PNG_SIGNATURE + _png_chunk(b'IHDR', ihdr) +
            _png_chunk(b'IDAT', zlib.compress(raw.tobytes(), 6)) + _png_chunk(b'IEND', b''))
  import cv2  # Local: only 16-bit PNGs need it.
  if channels == 3:
    image = image[..., ::-1]
  elif channels == 4:
    image = image[..., [2, 1, 0, 3]]
  ok, encoded = cv2.imencode('.png', np.ascontiguousarray(image))
  if not ok:
    raise ValueError(f'OpenCV could not encode a 16-bit PNG of shape {image.shape}')
  return encoded.tobytes()


def write_png(path: str, image: np.ndarray) -> None:
  """Writes a PNG atomically: uint8 as 8-bit, uint16 as 16-bit, float in [0, 1] as 8-bit.

  HxW and HxWx1 are grey, HxWx2 grey + alpha, HxWx3 RGB, HxWx4 RGBA. The file
  appears under its name only once complete (written to a temporary name, then
  renamed), so an interrupted run never leaves a truncated PNG behind. Pillow
  cannot encode 16-bit colour, so 16-bit images go through OpenCV.
  """
  from PIL import Image
  image = np.asarray(image)
  if image.dtype not in (np.uint8, np.uint16):
    image = to_uint8(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 2, 3, 4):
    raise ValueError(f'cannot write an image of shape {image.shape} to {path}')
  if image.dtype == np.uint16:
    files.write_atomic(path, _encode_png16(image))
  else:
    with files.atomic_path(path) as tmp:
      Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(tmp, format='PNG')


def write_image(path: str, image, *, bit_depth: int = 8) -> None:
  """Writes a float image in [0, 1] as an 8- or 16-bit PNG (clipped, rounded).

  Tools that restore a user's photo save it at the depth it was read with, so
  a 16-bit input keeps its precision.
  """
  if bit_depth not in (8, 16):
    raise ValueError(f'bit_depth must be 8 or 16, got {bit_depth}')
  write_png(path, to_uint16(image) if bit_depth == 16 else to_uint8(image))
