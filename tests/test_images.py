"""xydiff.images: 8- and 16-bit PNG and JPEG files, without TensorFlow."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from xydiff import images
from xydiff.errors import ImageReadError, ImageValueError

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
