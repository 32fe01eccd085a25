"""xydiff.images: 8- and 16-bit PNG and JPEG files, without TensorFlow."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from xydiff import images
from xydiff.errors import ConfigError, ImageReadError, ImageTooLargeError, ImageValueError

H, W = 9, 13


def _deep(channels: int, seed: int = 0) -> np.ndarray:
  """HxWxC uint16 with every channel different and low bytes that 8 bits would lose."""
  rng = np.random.default_rng(seed)
  return rng.integers(0, 65536, (H, W, channels), dtype=np.uint16)


@pytest.mark.parametrize('channels,colour_type', [(1, 0), (2, 4), (3, 2), (4, 6)])
def test_16_bit_pngs_round_trip_at_full_precision(tmp_path, channels, colour_type):
  deep = _deep(channels)
  path = str(tmp_path / f'deep{channels}.png')
  images.write_png(path, deep)
  assert images.png_header(path) == (W, H, 16, colour_type)
  stored = images.read_image(path, keep_channels=True)
  assert stored.dtype == np.uint16 and stored.flags.c_contiguous
  np.testing.assert_array_equal(stored, deep)
  rgb = images.read_image(path)
  assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint16
  expected = np.repeat(deep[..., :1], 3, axis=-1) if channels <= 2 else deep[..., :3]
  np.testing.assert_array_equal(rgb, expected)
  assert os.listdir(tmp_path) == [f'deep{channels}.png']  # No temporary file left behind.


@pytest.mark.parametrize('channels', [1, 2, 3, 4])
def test_16_bit_channel_order_agrees_with_pillow(tmp_path, channels):
  """Pillow, an independent decoder, sees the 16-bit file's high bytes in the same order."""
  deep = _deep(channels, seed=1)
  path = tmp_path / 'deep.png'
  images.write_png(str(path), deep)
  with Image.open(path) as img:
    if img.mode.startswith('I'):  # 16-bit grey: Pillow keeps all 16 bits.
      np.testing.assert_array_equal(np.asarray(img), deep[..., 0])
    else:  # Pillow keeps the high byte of 16-bit RGB and RGBA; grey + alpha becomes RGBA.
      decoded = np.asarray(img)[..., [0, 3]] if channels == 2 else np.asarray(img)
      np.testing.assert_array_equal(decoded, deep >> 8)


def test_8_bit_files_and_floats(tmp_path):
  rng = np.random.default_rng(2)
  rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
  for name, image, colour_type in [('grey.png', rgb[..., 0], 0), ('la.png', rgb[..., :2], 4),
                                   ('rgb.png', rgb, 2),
                                   ('rgba.png', np.dstack([rgb, rgb[..., :1]]), 6)]:
    path = str(tmp_path / name)
    images.write_png(path, image)
    assert images.png_header(path) == (W, H, 8, colour_type)
    stored = images.read_image(path, keep_channels=True)
    assert stored.dtype == np.uint8
    np.testing.assert_array_equal(stored, image.reshape(H, W, -1))
  # Floats are clipped and rounded to 8 bits; write_image can keep 16.
  ramp = np.linspace(-0.1, 1.1, H * W * 3, dtype=np.float32).reshape(H, W, 3)
  images.write_png(str(tmp_path / 'float.png'), ramp)
  np.testing.assert_array_equal(images.read_image(str(tmp_path / 'float.png')),
                                images.to_uint8(ramp))
  images.write_image(str(tmp_path / 'float16.png'), ramp, bit_depth=16)
  np.testing.assert_array_equal(images.read_image(str(tmp_path / 'float16.png')),
                                images.to_uint16(ramp))
  with pytest.raises(ValueError, match='bit_depth'):
    images.write_image(str(tmp_path / 'x.png'), ramp, bit_depth=12)
  with pytest.raises(ValueError, match='shape'):
    images.write_png(str(tmp_path / 'x.png'), np.zeros((H, W, 5), np.uint8))
  (tmp_path / 'notes.txt').write_text('not a png')
  assert images.png_header(str(tmp_path / 'notes.txt')) is None


def test_unicode_paths(tmp_path):
  folder = tmp_path / 'фото été'
  folder.mkdir()
  deep = _deep(3, seed=3)
  images.write_png(str(folder / 'снимок.png'), deep)
  np.testing.assert_array_equal(images.read_image(str(folder / 'снимок.png')), deep)


@pytest.mark.parametrize('depth', [8, 16])
def test_damaged_and_missing_files_name_the_file(tmp_path, depth):
  image = _deep(3) if depth == 16 else (_deep(3) >> 8).astype(np.uint8)
  path = tmp_path / f'broken{depth}.png'
  images.write_png(str(path), np.tile(image, (8, 8, 1)))
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  with pytest.raises(ImageReadError, match=f'cannot read image .*broken{depth}.png'):
    images.read_image(str(path))
  corrupt = bytearray(data)
  corrupt[len(data) // 2] ^= 0xFF  # Inside IDAT: the chunk's CRC no longer matches.
  path.write_bytes(bytes(corrupt))
  with pytest.raises(ImageReadError, match=f'broken{depth}.png'):
    images.read_image(str(path))
  with pytest.raises(ImageReadError, match='nowhere.png'):
    images.read_image(str(tmp_path / 'nowhere.png'))


@pytest.mark.parametrize('orientation,turn', [
    (3, lambda a: np.rot90(a, 2)),
    (6, lambda a: np.rot90(a, -1)),  # Camera held upright: the picture is turned clockwise.
    (8, lambda a: np.rot90(a, 1)),
    (2, lambda a: a[:, ::-1]),
])
def test_jpeg_with_an_exif_orientation_comes_back_upright(tmp_path, orientation, turn):
  rng = np.random.default_rng(4)
  pixels = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
  pixels[:8, :8] = 255  # A corner that shows which way up the picture is.
  Image.fromarray(pixels).save(tmp_path / 'plain.jpg', quality=95)
  exif = Image.Exif()
  exif[0x0112] = orientation
  Image.fromarray(pixels).save(tmp_path / 'phone.jpg', quality=95, exif=exif)
  plain = images.read_image(str(tmp_path / 'plain.jpg'))
  phone = images.read_image(str(tmp_path / 'phone.jpg'))
  assert plain.shape == (16, 24, 3)
  # Same encoder, same pixels: only the orientation differs.
  np.testing.assert_array_equal(phone, turn(plain))


def test_reads_and_writes_with_tensorflow_unimportable(tmp_path):
  """8- and 16-bit PNG and JPEG IO never import TensorFlow."""
  script = textwrap.dedent(f'''
      import sys
      sys.modules['tensorflow'] = None  # `import tensorflow` now raises ImportError.
      import numpy as np
      from xydiff import images
      folder = {str(tmp_path)!r}
      rng = np.random.default_rng(0)
      for channels in (1, 2, 3, 4):
        for dtype, peak in ((np.uint8, 256), (np.uint16, 65536)):
          image = rng.integers(0, peak, (5, 7, channels), dtype=dtype)
          path = f'{{folder}}/{{channels}}_{{image.itemsize}}.png'
          images.write_png(path, image)
          assert np.array_equal(images.read_image(path, keep_channels=True), image), path
      images.write_image(folder + '/f.png', rng.random((5, 7, 3)), bit_depth=16)
      assert images.read_image(folder + '/f.png').dtype == np.uint16
      from PIL import Image
      Image.fromarray(image[..., :3].astype(np.uint8)).save(folder + '/p.jpg')
      assert images.read_image(folder + '/p.jpg').shape == (5, 7, 3)
      try:
        import tensorflow
      except ImportError:
        print('tensorflow unimportable')
      ''')
  result = subprocess.run([sys.executable, '-c', script], cwd=str(REPO), capture_output=True,
                          text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == 'tensorflow unimportable'


def _with_exif_orientation(png: bytes, orientation: int) -> bytes:
  """`png` with an eXIf chunk after IHDR saying `orientation`, as cameras and editors write it."""
  exif = Image.Exif()
  exif[0x0112] = orientation
  block = exif.tobytes()
  block = block[6:] if block.startswith(b'Exif\0\0') else block
  end_of_ihdr = len(images.PNG_SIGNATURE) + 25
  return png[:end_of_ihdr] + images._png_chunk(b'eXIf', block) + png[end_of_ihdr:]  # pylint: disable=protected-access


@pytest.mark.parametrize('orientation', range(1, 9))
@pytest.mark.parametrize('channels', [1, 3, 4])
def test_16_bit_pngs_honour_their_exif_orientation_as_8_bit_files_do(tmp_path, orientation,
                                                                     channels):
  """The audit: 16-bit PNGs (decoded by OpenCV) ignored the EXIF orientation Pillow applies."""
  deep = _deep(channels, seed=orientation)
  path = tmp_path / 'deep.png'
  images.write_png(str(path), deep)
  path.write_bytes(_with_exif_orientation(path.read_bytes(), orientation))
  shallow = tmp_path / 'shallow.png'  # The same picture in 8 bits: Pillow turns it upright.
  exif = Image.Exif()
  exif[0x0112] = orientation
  Image.fromarray((deep >> 8).astype(np.uint8).squeeze(-1) if channels == 1 else
                  (deep >> 8).astype(np.uint8)).save(shallow, exif=exif)
  got = images.read_image(str(path), keep_channels=True)
  want = images.read_image(str(shallow), keep_channels=True)
  assert got.dtype == np.uint16 and got.shape == want.shape
  np.testing.assert_array_equal(got >> 8, want)
  if orientation in (5, 6, 7, 8):
    assert got.shape[:2] == (W, H)  # Turned a quarter: the file's width is now its height.


def test_image_arrays_are_uint8_uint16_or_floats_in_0_1():
  rng = np.random.default_rng(5)
  levels = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
  unit = images.to_unit_float(levels)
  assert unit.dtype == np.float32
  np.testing.assert_array_equal(unit, levels / np.float32(255))
  np.testing.assert_array_equal(images.to_unit_float(levels.astype(np.uint16) * 257), unit)
  np.testing.assert_array_equal(images.to_unit_float(unit.astype(np.float64)), unit)
  within = unit.copy()
  within[0, 0] = (1.005, -0.004, 1.0)  # Resampling overshoots a little: accepted as it is.
  np.testing.assert_array_equal(images.to_unit_float(within), within)
  for array, message in (
      (levels.astype(np.int64), 'an image of int64 values: give uint8'),
      (levels.astype(np.int32), 'int32'),
      (levels.astype(bool), 'bool'),
      (levels.astype(np.float32), rf'run from {levels.min()} to {levels.max()}, outside \[0, 1\] '
       r'\(8-bit levels\? divide by 255\)'),
      (levels.astype(np.float32) * 257, r'\(16-bit levels\? divide by 65535\)'),
      (unit - 0.5, r'run from -0.49\d+ to 0.48\d+, outside \[0, 1\]; clip'),
      (np.where(levels == levels.max(), np.nan, unit), 'holds 1 NaN or infinite value '),
      (np.full((2, 2, 3), np.inf, np.float32), 'holds 12 NaN or infinite values'),
  ):
    with pytest.raises(ImageValueError, match=message) as e:
      images.to_unit_float(array)
    assert '\n' not in str(e.value)


# ------------------------------------------------------------------ the pixel limit

def claim_size(data: bytes, width: int, height: int) -> bytes:
  """A PNG's or baseline JPEG's bytes with a header claiming width x height: the
  few-hundred-byte file that asks a decoder for gigabytes."""
  if data.startswith(images.PNG_SIGNATURE):
    return data[:16] + struct.pack('>II', width, height) + data[24:]
  sof = data.index(b'\xff\xc0')  # SOF0: length (2), precision (1), height, width (2 each).
  return data[:sof + 5] + struct.pack('>HH', height, width) + data[sof + 9:]


def _jpeg_bytes() -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buffer, 'JPEG', quality=50)
  return buffer.getvalue()


@pytest.fixture
def no_decoding(monkeypatch):
  """Makes every pixel decoder fail the test: what is refused must be refused from its header."""
  import cv2
  from PIL import ImageFile

  def decoded(*args, **kwargs):
    raise AssertionError('pixels were decoded')
  monkeypatch.setattr(cv2, 'imdecode', decoded)
  monkeypatch.setattr(ImageFile.ImageFile, 'load', decoded)


@pytest.mark.parametrize('kind', ['png8', 'png16', 'jpeg', 'tiff8', 'tiff16'])
def test_every_format_is_refused_over_the_limit_from_its_header(tmp_path, kind, no_decoding):
  tifffile = pytest.importorskip('tifffile')
  path = str(tmp_path / f'photo.{kind[:4]}')
  deep = _deep(3)
  if kind.startswith('png'):
    images.write_png(path, deep if kind == 'png16' else (deep >> 8).astype(np.uint8))
  elif kind == 'jpeg':
    Image.fromarray((deep >> 8).astype(np.uint8)).save(path, quality=90)
  else:
    tifffile.imwrite(path, deep if kind == 'tiff16' else (deep >> 8).astype(np.uint8),
                     photometric='rgb')
  limit = images.PixelLimit(1e-4, '--max_megapixels')  # 100 pixels; the image has 9 x 13.
  with pytest.raises(ImageTooLargeError) as e:
    images.read_image(path, limit=limit)
  assert str(e.value) == (f'{path} is 13x9 = 0.00012 MP, over the limit of 0.0001 MP '
                          '(--max_megapixels)')
  assert isinstance(e.value, ImageReadError) and isinstance(e.value, ImageValueError)


def test_a_631_byte_jpeg_claiming_65000_squared_is_one_line_not_a_pillow_bomb(tmp_path,
                                                                             no_decoding):
  """The audit: PIL's DecompressionBombError is no OSError, and escaped read_image."""
  bomb = tmp_path / 'bomb.jpg'
  bomb.write_bytes(claim_size(_jpeg_bytes(), 65000, 65000))
  assert bomb.stat().st_size < 1000
  with pytest.raises(ImageTooLargeError, match=r'bomb\.jpg is larger than 179\.0 MP \(its header '
                     r'says so\), over the limit of 50 MP \(--config\.inference\.max_megapixels\)$'):
    images.read_image(str(bomb), limit=images.PixelLimit(50, '--config.inference.max_megapixels'))
  # Without a limit of xydiff's (the data readers, score), Pillow's own still holds, in one line.
  with pytest.raises(ImageTooLargeError, match=r'more than Pillow opens \(PIL\.Image\.MAX_IMAGE'):
    images.read_image(str(bomb))


def test_jpegs_and_16_bit_pngs_claiming_too_much_are_refused_with_their_size(tmp_path,
                                                                            no_decoding):
  big = tmp_path / 'big.jpg'
  big.write_bytes(claim_size(_jpeg_bytes(), 9000, 9000))  # 81 MP: once 374 s and 5.9 GB.
  limit = images.PixelLimit(50, '--config.inference.max_megapixels')
  with pytest.raises(ImageTooLargeError) as e:
    images.read_image(str(big), limit=limit)
  assert str(e.value) == (f'{big} is 9000x9000 = 81.0 MP, over the limit of 50 MP '
                          '(--config.inference.max_megapixels)')
  deep = tmp_path / 'deep.png'
  images.write_png(str(deep), _deep(3))
  deep.write_bytes(claim_size(deep.read_bytes(), 12000, 12000))  # OpenCV's path: once 1.7 GB.
  with pytest.raises(ImageTooLargeError, match=r'deep\.png is 12000x12000 = 144\.0 MP, over the '
                     r'limit of 50 MP'):
    images.read_image(str(deep), limit=limit)


def test_a_limit_is_a_number_of_megapixels_and_0_turns_it_off(tmp_path):
  path = str(tmp_path / 'photo.png')
  images.write_png(path, _deep(3))
  for megapixels in (0, 0.0, H * W / 1e6):  # Off, off, and exactly the image's pixels.
    np.testing.assert_array_equal(
        images.read_image(path, limit=images.PixelLimit(megapixels, '--m')), _deep(3))
  for bad in (-1, float('nan'), '50', True):
    with pytest.raises(ConfigError, match=r'^--max_megapixels=.*: must be a number of megapixels'
                       r' >= 0 \(0: no limit\)$'):
      images.PixelLimit(bad, '--max_megapixels')


# ------------------------------------------------------------------ TIFF

# (samples, bits, planar) of the TIFF layouts read_image decodes, and how the file's
# stored pixels must come back for each EXIF orientation (the turns Pillow makes for JPEGs).
TIFF_LAYOUTS = [(1, 8, 'contig'), (1, 16, 'contig'), (3, 8, 'contig'), (3, 16, 'contig'),
                (3, 8, 'separate'), (4, 16, 'contig')]
TURNS = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1],
         4: lambda a: a[::-1], 5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1),
         7: lambda a: np.rot90(a, -1)[::-1], 8: lambda a: np.rot90(a, 1)}


def _write_tiff(tifffile, path, image, planar='contig', orientation=1):
  samples = image.shape[-1]
  stored = image.transpose(2, 0, 1) if planar == 'separate' else image
  tifffile.imwrite(path, stored[..., 0] if samples == 1 else stored,
                   photometric='minisblack' if samples <= 2 else 'rgb',
                   planarconfig=planar if samples > 1 else None,
                   extrasamples=['unassalpha'] if samples in (2, 4) else None,
                   extratags=[(0x0112, 'H', 1, orientation, True)])


@pytest.mark.parametrize('orientation', range(1, 9))
@pytest.mark.parametrize('samples,bits,planar', TIFF_LAYOUTS)
def test_tiffs_are_read_at_full_depth_and_upright(tmp_path, samples, bits, planar, orientation):
  tifffile = pytest.importorskip('tifffile')
  rng = np.random.default_rng(orientation)
  image = rng.integers(0, 2 ** bits, (H, W, samples), dtype=np.uint8 if bits == 8 else np.uint16)
  path = str(tmp_path / 'photo.tif')
  _write_tiff(tifffile, path, image, planar, orientation)
  stored = images.read_image(path, keep_channels=True)
  want = TURNS[orientation](image)
  assert stored.dtype == image.dtype and stored.shape == want.shape
  np.testing.assert_array_equal(stored, want)
  rgb = images.read_image(path)
  np.testing.assert_array_equal(rgb, np.repeat(want, 3, -1) if samples == 1 else want[..., :3])


def test_8_bit_rgba_tiffs_go_to_pillow_and_layouts_read_wrongly_are_refused(tmp_path):
  tifffile = pytest.importorskip('tifffile')
  rgba = np.random.default_rng(7).integers(0, 256, (H, W, 4), dtype=np.uint8)
  for orientation in (1, 3):
    _write_tiff(tifffile, str(tmp_path / 'rgba.tif'), rgba, orientation=orientation)
    np.testing.assert_array_equal(images.read_image(str(tmp_path / 'rgba.tif'),
                                                    keep_channels=True), TURNS[orientation](rgba))
  _write_tiff(tifffile, str(tmp_path / 'rgba.tif'), rgba, orientation=6)
  deep = _deep(3)
  _write_tiff(tifffile, str(tmp_path / 'planar16.tif'), deep, planar='separate')
  tifffile.imwrite(tmp_path / 'float.tif', deep / np.float32(65535), photometric='rgb')
  _write_tiff(tifffile, str(tmp_path / 'grey_alpha16.tif'), deep[..., :2])
  for name, message in (
      ('rgba.tif', r'a TIFF of 4 8-bit samples \(photometric 2, planar 1, orientation 6\), a '
       'layout xydiff cannot decode faithfully; .* save it as a PNG'),
      ('planar16.tif', r'a TIFF of 3 16-bit samples \(photometric 2, planar 2\)'),
      ('float.tif', 'not a PNG, JPEG or TIFF that xydiff reads, or damaged'),
      ('grey_alpha16.tif', 'not a PNG, JPEG or TIFF that xydiff reads, or damaged')):
    with pytest.raises(ImageReadError, match=f'cannot read image .*{name}: {message}') as e:
      images.read_image(str(tmp_path / name))
    assert '\n' not in str(e.value)
