"""Image value ranges and image files: the one place that knows them.

Inside xydiff every image is float32 RGB in [0, 1], NHWC. Files hold integers
(8- or 16-bit); the field's metrics are computed on images rounded to uint8.
Everything that crosses between those worlds goes through this module.

It is also the one home of the pixel limit (`PixelLimit`): `read_image` reads a
file's header and refuses an image over the limit before decoding a pixel, in
one line naming the file and the flag or field that sets the limit. Sizes are
written width x height everywhere (as image viewers and `PIL.Image.size` do).
"""

from __future__ import annotations

import dataclasses
import struct
import warnings
import zlib

import numpy as np

from xydiff import files
from xydiff.errors import ConfigError, ImageReadError, ImageTooLargeError, ImageValueError

UINT8_PEAK = 255.0
UINT16_PEAK = 65535.0
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.tif', '.tiff')
# The default of config.inference.max_megapixels and of `xydiff serve --max-megapixels`: a
# 50 MP photo takes a few GB to restore on a CPU; a 631-byte file can claim 4,000 MP.
DEFAULT_MAX_MEGAPIXELS = 50.0


def size_text(width: int, height: int) -> str:
  """'WxH = N MP': how every refusal writes an image's size (width first, as the page does)."""
  mp = width * height / 1e6
  return f'{width}x{height} = {mp:.1f} MP' if mp >= 1 else f'{width}x{height} = {mp:.2g} MP'


@dataclasses.dataclass(frozen=True)
class PixelLimit:
  """At most `megapixels` million pixels per image (0: no limit), set by `source`, the flag
  or field that every refusal names (e.g. '--max-megapixels').

  Checked on a file's header (read_image) or an array's shape (inference.Restorer),
  before anything is decoded or restored.
  """
  megapixels: float
  source: str

  def __post_init__(self):
    value = self.megapixels
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
      raise ConfigError(f'{self.source}={value!r}: must be a number of megapixels >= 0 '
                        '(0: no limit)')

  def check(self, what: str, width: int, height: int) -> None:
    """Raises ImageTooLargeError when `what` (a file, or 'the image') of width x height
    pixels is over the limit."""
    if self.megapixels and width * height > self.megapixels * 1e6:
      raise ImageTooLargeError(f'{what} is {size_text(width, height)}, over the limit of '
                               f'{self.megapixels:g} MP ({self.source})')


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


def _decode_opencv(path: str, data: np.ndarray) -> np.ndarray:
  """OpenCV's IMREAD_UNCHANGED decode of a file's bytes: HxW, or HxWxC in BGR / BGRA order.

  The bytes go through np.fromfile + imdecode so that any path the OS accepts
  works. OpenCV returns None rather than raising on a damaged file: both become
  ImageReadError naming it.
  """
  import cv2  # Local: only 16-bit PNGs and TIFFs need it.
  try:
    array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
  except cv2.error as e:
    raise ImageReadError(f'cannot read image {path}: {str(e).strip().splitlines()[-1]}') from None
  if array is None:
    raise ImageReadError(f'cannot read image {path}: not decodable (damaged or truncated?)')
  return array


def _to_rgb_order(array: np.ndarray) -> np.ndarray:
  """OpenCV's BGR / BGRA channel order as RGB / RGBA."""
  if array.ndim == 3 and array.shape[-1] == 3:
    return array[..., ::-1]
  if array.ndim == 3 and array.shape[-1] == 4:
    return array[..., [2, 1, 0, 3]]
  return array


def _decode_png16(path: str, colour_type: int) -> np.ndarray:
  """A 16-bit PNG as HxW grey, HxWx2 grey + alpha, HxWx3 RGB or HxWx4 RGBA uint16, upright.

  OpenCV, because Pillow decodes 16-bit colour as 8-bit. OpenCV expands grey +
  alpha to BGRA; IMREAD_UNCHANGED ignores a PNG's EXIF, so the orientation of
  the file's eXIf chunk is applied here, as Pillow applies it to every other file.
  """
  data = np.fromfile(path, np.uint8)
  array = _decode_opencv(path, data)
  if array.dtype != np.uint16:
    raise ImageReadError(f'cannot read image {path}: not a decodable 16-bit PNG '
                         '(damaged or truncated?)')
  if array.ndim == 3 and colour_type == PNG_GREY_ALPHA and array.shape[-1] == 4:
    array = array[..., [0, 3]]
  array = _to_rgb_order(array)
  try:
    orientation = _png_orientation(data.tobytes())
  except (struct.error, ValueError, SyntaxError) as e:  # A damaged EXIF block.
    raise ImageReadError(f'cannot read image {path}: its EXIF block: {e}') from None
  if orientation != 1:
    array = _UPRIGHT[orientation](array)
  return np.ascontiguousarray(array)


# TIFF tags (TIFF 6.0 specification) that decide how a TIFF is decoded.
_TIFF_PHOTOMETRIC, _TIFF_BITS, _TIFF_SAMPLES, _TIFF_PLANAR, _TIFF_SAMPLE_FORMAT = (
    262, 258, 277, 284, 339)
_TIFF_MINISBLACK, _TIFF_RGB = 1, 2


def _tiff_layout(img) -> tuple[int, int, int, int, int]:
  """(bits per sample, samples per pixel, photometric, planar configuration, orientation) of
  a TIFF that Pillow has opened (its header only); bits 0 when the samples differ in depth
  or are not unsigned integers."""
  tags = img.tag_v2
  bits = set(np.atleast_1d(tags.get(_TIFF_BITS, 1)).tolist())
  formats = set(np.atleast_1d(tags.get(_TIFF_SAMPLE_FORMAT, 1)).tolist())
  depth = bits.pop() if len(bits) == 1 and formats == {1} else 0
  return (depth, tags.get(_TIFF_SAMPLES, 1), tags.get(_TIFF_PHOTOMETRIC, -1),
          tags.get(_TIFF_PLANAR, 1), tags.get(_EXIF_ORIENTATION, 1))


def _decode_tiff(path: str, img):
  """A TIFF as HxW(xC) uint8 or uint16, upright; None when Pillow should decode it.

  OpenCV decodes grey and RGB at 8 and 16 bits and RGBA at 16, upright by the
  orientation tag: Pillow decodes 16-bit colour as 8-bit, and turns 8-bit grey
  and RGBA wrongly for orientations 5-8 (tests/test_images.py checks every
  layout and orientation of both). Other 8-bit layouts (palette, CMYK, RGBA,
  grey + alpha) go to Pillow where it turns them right; what neither decodes
  right is refused by name rather than decoded wrongly.
  """
  bits, samples, photometric, planar, orientation = _tiff_layout(img)
  by_opencv = bits in (8, 16) and (
      (samples == 1 and photometric == _TIFF_MINISBLACK) or
      (photometric == _TIFF_RGB and (samples == 3 or (samples == 4 and bits == 16)) and
       (planar == 1 or bits == 8)))
  if not by_opencv:
    if bits == 8 and orientation in (1, 2, 3, 4):
      return None
    layout = (f'{samples} {bits}-bit samples' if bits else f'{samples} samples of mixed depth '
              'or float values')
    turned = f', orientation {orientation}' if bits == 8 else ''
    raise ImageReadError(
        f'cannot read image {path}: a TIFF of {layout} (photometric {photometric}, planar '
        f'{planar}{turned}), a layout xydiff cannot decode faithfully; xydiff reads 8- and '
        '16-bit grey and RGB TIFFs and 16-bit RGBA ones: save it as a PNG')
  array = _decode_opencv(path, np.fromfile(path, np.uint8))
  channels = 1 if array.ndim == 2 else array.shape[-1]
  if array.dtype != (np.uint8 if bits == 8 else np.uint16) or channels != samples:
    raise ImageReadError(f'cannot read image {path}: its header says {samples} {bits}-bit '
                         f'samples, OpenCV decoded {channels} of {array.dtype}')
  return np.ascontiguousarray(_to_rgb_order(array))


def _upright(img):
  """The Pillow image turned as its EXIF Orientation tag says (phone photos), else itself."""
  from PIL import ImageOps
  if img.getexif().get(_EXIF_ORIENTATION, 1) in (None, 1):
    return img
  return ImageOps.exif_transpose(img)


def _decode_pillow(path: str, limit: PixelLimit | None) -> np.ndarray:
  """8-bit PNG, JPEG, TIFF and anything else Pillow reads, upright, as its stored channels.

  Pillow reads the header first; `limit` is checked on its size before any
  pixel is decoded.
  """
  from PIL import Image  # Local: this module is imported by code that reads no images.
  with warnings.catch_warnings():
    # Pillow warns beyond half its own limit; the caller's limit is the one that applies here.
    warnings.simplefilter('ignore', Image.DecompressionBombWarning)
    with Image.open(path) as img:
      if limit is not None:
        limit.check(path, *img.size)
      if img.format == 'TIFF':
        array = _decode_tiff(path, img)
        if array is not None:
          return array
      img.load()
      return _stored_channels(_upright(img))


def _stored_channels(img) -> np.ndarray:
  """A decoded Pillow image as HxW(xC) uint8 or uint16, its channels as stored."""
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


def _beyond_pillow(path: str, limit: PixelLimit | None) -> str:
  """The refusal of a file whose header claims more pixels than Pillow opens at all."""
  from PIL import Image
  ceiling = 2 * Image.MAX_IMAGE_PIXELS  # Pillow raises DecompressionBombError beyond this.
  over = f'{path} is larger than {ceiling / 1e6:.1f} MP (its header says so)'
  if limit is not None and limit.megapixels and limit.megapixels * 1e6 < ceiling:
    return f'{over}, over the limit of {limit.megapixels:g} MP ({limit.source})'
  return f'{over}, more than Pillow opens (PIL.Image.MAX_IMAGE_PIXELS)'


def read_image(path: str, *, keep_channels: bool = False,
               limit: PixelLimit | None = None) -> np.ndarray:
  """Reads a PNG, JPEG or TIFF as an HxWx3 uint8 or uint16 RGB array.

  Grayscale is repeated to three channels and alpha is dropped, so every image
  a user hands xydiff is RGB. 16-bit PNGs and TIFFs, grey or colour, come back
  as uint16 at full precision (decoded by OpenCV: Pillow would silently decode
  16-bit colour as 8-bit); everything else is decoded by Pillow. A photo
  carrying an EXIF Orientation tag (as phones write them) comes back upright,
  as viewers show it.

  With `keep_channels` the channels are returned as stored, HxWx1 grey, HxWx2
  grey + alpha, HxWx3 RGB or HxWx4 RGBA (palette images become RGB, or RGBA
  when they carry transparency), so that a tool can write its result back in
  the format it was given. A file that cannot be opened or decoded raises
  ImageReadError naming it. With `limit`, a file whose header says it has more
  pixels raises ImageTooLargeError (an ImageReadError) before any decoding;
  without one, Pillow's own decompression-bomb limit (about 179 MP) still
  refuses larger 8-bit files, in the same one line.
  """
  from PIL import Image  # Local: this module is imported by code that reads no images.
  try:
    header = png_header(path)
    if header is not None and limit is not None:
      limit.check(path, header[0], header[1])
    if header is not None and header[2] == 16:
      array = _decode_png16(path, header[3])
    else:
      array = _decode_pillow(path, limit)
  except ImageReadError:
    raise
  except Image.DecompressionBombError:  # Not an OSError: it would escape as a traceback.
    raise ImageTooLargeError(_beyond_pillow(path, limit)) from None
  except Image.UnidentifiedImageError:
    raise ImageReadError(f'cannot read image {path}: not a PNG, JPEG or TIFF that xydiff '
                         'reads, or damaged') from None
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
