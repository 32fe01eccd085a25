"""`xydiff deblur` on a user's own photos (inference/photos.py): formats, sizes, tiles,
failures, diffusion std maps, and outputs named NAME_deblurred.png that never overwrite."""

import contextlib
import io
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from conftest import GOPRO_SAMPLE, run_launch, tiny
from test_ensemble import random_state, save_run
from test_images import _jpeg_bytes, claim_size
from xydiff import images
from xydiff.cli import launch
from xydiff.errors import DataError
from xydiff.inference import photos, restorer as inference, tiles
from xydiff.runs import checkpoint, state as state_lib

FRAME = GOPRO_SAMPLE / 'test' / 'GOPR0869_11_00' / 'blur' / '000020.png'


@pytest.fixture(scope='module')
def frame():
  return images.read_image(str(FRAME))  # 720x1280 uint8.


def _save_checkpoint(config, workdir):
  """A step-0 checkpoint of random weights and the stored config: what a user's workdir holds."""
  graphdef, state = random_state(config)
  save_run(workdir, config, state)
  return graphdef, state['params']


def _initial_params(config, seed=0):
  """(graphdef, params) drawn as the layers' initialisers draw them (PyTorch's: kernel and bias
  uniform within 1 / sqrt(fan in)), in numpy: nnx's eager initialisers compile once per
  parameter shape, minutes on a busy CPU."""
  graphdef, target = state_lib.abstract_state(config)
  rng = np.random.default_rng(seed)

  def layer(params):
    if hasattr(params.get('kernel'), 'shape'):
      bound = 1 / np.sqrt(np.prod(params['kernel'].shape[:-1]))
      return {k: rng.uniform(-bound, bound, v.shape).astype(v.dtype) for k, v in params.items()}
    return {k: layer(v) if isinstance(v, dict) else v for k, v in params.items()}
  return graphdef, layer(target['params'])


def _network(config, graphdef, params):
  """image [H, W, 3] -> the network's restore of it, whole (it pads inside, as in training)."""
  fn = inference.restore_fn(config, graphdef, None)
  return lambda image: np.asarray(fn(params, jnp.asarray(image)[None], None)['image'][0])


@pytest.fixture(scope='module')
def xydeblur_run(tmp_path_factory, frame):
  """One deblur run over a folder holding every format and failure a user may hand it."""
  from xydiff.configs import demo
  config = tiny(demo.get_config())
  config.inference.size_bucket = 0  # Outputs compared pixel for pixel with the network's.
  root = tmp_path_factory.mktemp('deblur')
  graphdef, params = _save_checkpoint(config, root / 'workdir')
  inputs = root / 'photos'
  inputs.mkdir()
  crop = frame[300:380, 500:600]
  gray = np.round(crop.mean(axis=-1)).astype(np.uint8)
  alpha = np.tile(np.linspace(0, 255, 44).astype(np.uint8), (36, 1))
  deep = (crop[:32, :40].astype(np.uint16) * 257 + np.arange(40, dtype=np.uint16)[:, None])
  images.write_png(str(inputs / 'odd.png'), crop[:37, :53])
  images.write_png(str(inputs / 'gray.png'), gray[:40, :48])
  images.write_png(str(inputs / 'rgba.png'), np.dstack([crop[:36, :44], alpha]))
  images.write_png(str(inputs / 'deep.png'), deep)
  images.write_png(str(inputs / 'deep_gray.png'), deep[..., :1])
  Image.fromarray(crop[:40, :40]).save(inputs / 'photo.jpg', quality=95)
  images.write_png(str(inputs / 'tiny.png'), crop[:2, :2])
  data = (inputs / 'odd.png').read_bytes()
  (inputs / 'broken.png').write_bytes(data[:len(data) // 2])
  # Headers that claim what would take minutes and gigabytes to decode (the audit's files).
  (inputs / 'bomb.jpg').write_bytes(claim_size(_jpeg_bytes(), 65000, 65000))
  (inputs / 'vast.png').write_bytes(claim_size((inputs / 'deep.png').read_bytes(), 12000, 12000))
  import tifffile  # pylint: disable=import-outside-toplevel  # scikit-image's TIFF library.
  tifffile.imwrite(inputs / 'scan.tif', deep, photometric='rgb')
  (inputs / 'notes.txt').write_text('not an image: skipped by the folder listing')
  stderr = io.StringIO()
  with contextlib.redirect_stderr(stderr):
    status = photos.run(config, str(root / 'workdir'), str(inputs), str(root / 'out'))
  return dict(status=status, stderr=stderr.getvalue(), inputs=inputs, out=root / 'out',
              model=_network(config, graphdef, params), config=config,
              workdir=root / 'workdir')


def _read(path):
  return images.read_image(str(path), keep_channels=True)


def test_a_corrupt_and_a_too_small_file_fail_alone(xydeblur_run):
  assert xydeblur_run['status'] == 1
  written = sorted(os.listdir(xydeblur_run['out']))
  assert written == ['deep_deblurred.png', 'deep_gray_deblurred.png', 'gray_deblurred.png',
                     'odd_deblurred.png', 'photo_deblurred.png', 'rgba_deblurred.png',
                     'scan_deblurred.png']
  lines = xydeblur_run['stderr'].splitlines()
  assert any(line.startswith('error: cannot read image') and 'broken.png' in line
             for line in lines)
  assert any('tiny.png: image of 2x2 pixels is too small: xydeblur needs at least 3x3' in line
             for line in lines)
  inputs = xydeblur_run['inputs']
  assert f"error: {inputs / 'bomb.jpg'} is larger than 179.0 MP (its header says so), over the " \
         'limit of 50 MP (--config.inference.max_megapixels)' in lines
  assert f"error: {inputs / 'vast.png'} is 12000x12000 = 144.0 MP, over the limit of 50 MP " \
         '(--config.inference.max_megapixels)' in lines
  assert len(lines) == 4  # The folder's notes.txt is not an image: not listed, not an error.


def test_a_16_bit_tiff_is_restored_into_a_16_bit_png(xydeblur_run):
  source = _read(xydeblur_run['inputs'] / 'scan.tif')
  assert source.dtype == np.uint16
  np.testing.assert_array_equal(source, _read(xydeblur_run['inputs'] / 'deep.png'))
  np.testing.assert_array_equal(_read(xydeblur_run['out'] / 'scan_deblurred.png'),
                                _read(xydeblur_run['out'] / 'deep_deblurred.png'))


def test_odd_sizes_restore_exactly_as_the_network_on_the_whole_image(xydeblur_run):
  source = images.to_float(_read(xydeblur_run['inputs'] / 'odd.png'))
  restored = _read(xydeblur_run['out'] / 'odd_deblurred.png')
  assert restored.shape == (37, 53, 3) and restored.dtype == np.uint8
  np.testing.assert_array_equal(restored, images.to_uint8(xydeblur_run['model'](source)))
  assert _read(xydeblur_run['out'] / 'photo_deblurred.png').shape == (40, 40, 3)  # JPEG in, PNG out.


def test_grayscale_is_restored_as_rgb_and_saved_grey(xydeblur_run):
  source = _read(xydeblur_run['inputs'] / 'gray.png')
  restored = _read(xydeblur_run['out'] / 'gray_deblurred.png')
  assert restored.shape == (40, 48, 1) and restored.dtype == np.uint8
  as_rgb = xydeblur_run['model'](images.to_float(np.repeat(source, 3, axis=-1)))
  np.testing.assert_array_equal(restored[..., 0], images.to_uint8(as_rgb.mean(axis=-1)))


def test_rgba_keeps_its_alpha_unchanged(xydeblur_run):
  source = _read(xydeblur_run['inputs'] / 'rgba.png')
  restored = _read(xydeblur_run['out'] / 'rgba_deblurred.png')
  assert restored.shape == (36, 44, 4)
  np.testing.assert_array_equal(restored[..., 3], source[..., 3])
  np.testing.assert_array_equal(
      restored[..., :3], images.to_uint8(xydeblur_run['model'](images.to_float(source[..., :3]))))


def test_16_bit_input_gives_16_bit_output_at_full_precision(xydeblur_run):
  source = _read(xydeblur_run['inputs'] / 'deep.png')
  assert source.dtype == np.uint16 and source.shape == (32, 40, 3)
  restored = _read(xydeblur_run['out'] / 'deep_deblurred.png')
  assert restored.dtype == np.uint16 and restored.shape == (32, 40, 3)
  expected = images.to_uint16(xydeblur_run['model'](images.to_float(source)))
  assert np.abs(restored.astype(np.int32) - expected).max() <= 1
  assert np.any(restored % 257 != 0)  # Not an 8-bit image stretched to 16 bits.
  grey = _read(xydeblur_run['out'] / 'deep_gray_deblurred.png')
  assert grey.dtype == np.uint16 and grey.shape == (32, 40, 1)


def test_tiles_match_the_whole_image_away_from_their_borders_without_seams(frame):
  from xydiff.configs import demo
  config = tiny(demo.get_config())
  graphdef, params = _initial_params(config)
  # Larger weights make the network far more sensitive to a tile's zero-padded
  # border than the tiny random one is, so a seam would show.
  params = jax.tree.map(lambda p: 1.5 * p if p.ndim == 4 else p, params)
  fn = inference.restore_fn(config, graphdef, None)
  image = images.to_float(frame[100:420, 300:1004])  # 320x704: 2 x 3 tiles of 256.
  key = jax.random.key(0)
  whole = tiles.restore_image(fn, params, image, key, align=4)['image']
  tiled = tiles.restore_image(fn, params, image, key, align=4, tile=256, overlap=32)['image']
  diff = tiled - whole

  edges = {}
  for axis, length in ((0, 320), (1, 704)):
    starts = tiles.tile_starts(length, 256, 32, 4)
    edges[axis] = sorted({s for s in starts if s > 0} |
                         {s + 256 for s in starts if s + 256 < length})
  assert edges == {0: [64, 256], 1: [224, 256, 448, 480]}
  # Identical wherever no tile border lies within the network's receptive field (~37 px).
  far = lambda length, cuts: np.array([min(abs(i - c) for c in cuts) > 40 for i in range(length)])
  mask = far(320, edges[0])[:, None] & far(704, edges[1])[None, :]
  assert np.abs(diff[mask]).max() <= 1e-5

  # On its own, a tile is far off at its border: a hard cut would leave that step.
  alone = np.asarray(fn(params, jnp.asarray(image[None, :, 224:480]), key)['image'][0])
  assert np.abs(alone[:, :2] - whole[:, 224:226]).max() > 0.1
  # Blended, no tile border adds a step of even one 8-bit level to the output...
  for c in edges[1]:
    assert np.abs(diff[:, c] - diff[:, c - 1]).max() < 1 / 255
  for r in edges[0]:
    assert np.abs(diff[r] - diff[r - 1]).max() < 1 / 255
  # ... and the output stays within one 8-bit level of the whole-image one everywhere.
  assert np.abs(diff).max() < 1 / 255


def test_diffusion_model_writes_the_std_map_from_a_given_step(tmp_path, frame):
  from xydiff.configs import demo
  config = tiny(demo.get_config('diffusion'))
  _save_checkpoint(config, tmp_path / 'run')
  images.write_png(str(tmp_path / 'shot.png'), frame[200:248, 400:464])
  status = photos.run(config, str(tmp_path / 'run'), str(tmp_path / 'shot.png'),
                      str(tmp_path / 'out'), step=0)
  assert status == 0
  assert sorted(os.listdir(tmp_path / 'out')) == ['shot_deblurred.png', 'shot_deblurred_std.png']
  assert _read(tmp_path / 'out' / 'shot_deblurred.png').shape == (48, 64, 3)
  std = _read(tmp_path / 'out' / 'shot_deblurred_std.png')
  assert std.shape == (48, 64, 1) and std.max() == 255  # Scaled to its own maximum.
  assert len(np.unique(std)) > 10  # The preset's 2 samples differ: a real map, not a constant.


def test_launch_turns_a_checkpoint_folder_into_its_workdir_and_step(tmp_path, capsys):
  """launch.py's --checkpoint=<workdir>/checkpoints/<step>: `xydiff deblur`'s --workdir, --step."""
  given = tmp_path / 'run' / 'checkpoints' / '7'
  assert launch.verb_args(['--mode=deblur', '--input=in', '--output=out', f'--checkpoint={given}',
                           f'--workdir={tmp_path / "elsewhere"}']) == [
      'deblur', 'in', '-o', 'out', f'--workdir={tmp_path / "run"}', '--step=7']
  bad = tmp_path / 'run' / 'not_a_step'
  with pytest.raises(SystemExit) as e:
    launch.verb_args(['--mode=deblur', '--input=in', '--output=out', f'--checkpoint={bad}'])
  assert e.value.code == 1
  assert capsys.readouterr().err == (f'error: --checkpoint={bad} is not a checkpoint folder '
                                     '<workdir>/checkpoints/<step>\n')


def test_run_refuses_bad_paths_with_one_line_errors(tmp_path, xydeblur_run):
  config, workdir, inputs = (xydeblur_run[k] for k in ('config', 'workdir', 'inputs'))
  out = str(tmp_path / 'out')
  with pytest.raises(FileNotFoundError, match=f'no checkpoint for step 7 in {workdir}'):
    photos.run(config, str(workdir), str(inputs), out, step=7)
  with pytest.raises(FileNotFoundError, match=f'no checkpoint in {tmp_path}'):
    photos.run(config, str(tmp_path), str(inputs), out)
  with pytest.raises(FileNotFoundError, match='matches no .png/.jpg/.jpeg/.tif/.tiff images'):
    photos.run(config, str(workdir), str(inputs / '*.bmp'), out)
  (tmp_path / 'a.png').write_bytes(b'')
  (tmp_path / 'a.jpg').write_bytes(b'')
  with pytest.raises(DataError, match='share a name'):
    photos.run(config, str(workdir), str(tmp_path / 'a.*'), out)
  with pytest.raises(DataError, match='would overwrite the input'):  # No suffix: odd.png itself.
    photos.run(config, str(workdir), str(inputs / 'odd.png'), str(inputs), suffix='')
  assert not os.path.exists(out)


def test_outputs_that_exist_are_refused_unless_skipped_or_overwritten(tmp_path, xydeblur_run):
  config, workdir, inputs = (xydeblur_run[k] for k in ('config', 'workdir', 'inputs'))
  out = tmp_path / 'out'
  out.mkdir()
  (out / 'odd_deblurred.png').write_bytes(b'an earlier result')
  (out / 'gray_deblurred.png').write_bytes(b'another')
  sources = [str(inputs / 'odd.png'), str(inputs / 'gray.png')]
  with pytest.raises(DataError) as e:
    photos.run(config, str(workdir), sources, str(out))
  assert str(e.value) == (f"2 outputs exist already: {out / 'odd_deblurred.png'}, "
                          f"{out / 'gray_deblurred.png'}; pass --overwrite to replace them or "
                          '--skip-existing to restore only the other inputs')
  assert (out / 'odd_deblurred.png').read_bytes() == b'an earlier result'
  (out / 'gray_deblurred.png').unlink()
  assert photos.run(config, str(workdir), sources, str(out), existing='skip') == 0
  assert (out / 'odd_deblurred.png').read_bytes() == b'an earlier result'  # Skipped.
  np.testing.assert_array_equal(_read(out / 'gray_deblurred.png'),
                                _read(xydeblur_run['out'] / 'gray_deblurred.png'))
  assert photos.run(config, str(workdir), sources[0], str(out), existing='overwrite') == 0
  np.testing.assert_array_equal(_read(out / 'odd_deblurred.png'),
                                _read(xydeblur_run['out'] / 'odd_deblurred.png'))


def test_launch_deblur_exits_non_zero_after_restoring_the_readable_files(tmp_path, frame):
  from xydiff.configs import demo
  config = tiny(demo.get_config())
  _save_checkpoint(config, tmp_path / 'run')
  (tmp_path / 'in').mkdir()
  images.write_png(str(tmp_path / 'in' / 'good.png'), frame[:64, :64])
  (tmp_path / 'in' / 'bad.png').write_bytes(b'\x89PNG\r\n\x1a\n broken')
  (tmp_path / 'in' / 'bomb.jpg').write_bytes(claim_size(_jpeg_bytes(), 65000, 65000))
  result = run_launch(f'--workdir={tmp_path / "run"}', '--mode=deblur',
                      f'--input={tmp_path / "in"}', f'--output={tmp_path / "out"}', timeout=300)
  assert result.returncode == 1, result.stderr[-2000:]
  assert 'error: cannot read image' in result.stderr and 'bad.png' in result.stderr
  assert 'bomb.jpg is larger than 179.0 MP' in result.stderr  # Pillow's bomb, as one line.
  assert os.listdir(tmp_path / 'out') == ['good_deblurred.png']
  assert 'Traceback' not in result.stderr


def test_a_crop_the_network_takes_as_it_is_is_restored_as_the_official_network_does(
    tmp_path, frame):
  """The audit: with size buckets on by default a 256x320 crop, which needs no padding, was
  padded to 256x384 and came out up to 5 levels off near its right edge."""
  torch = pytest.importorskip('torch')
  from torch_refs.xydeblur import OfficialXYDeblur
  from xydiff.interop import official
  torch.manual_seed(0)
  net = OfficialXYDeblur(width=8, num_res=2).eval()
  torch.save({'model': net.state_dict()}, tmp_path / 'official.pkl')
  config = official.config_for('xydeblur')  # The defaults: no buckets.
  config.model.update(dict(width=8, num_res=2))
  params = official.official_params(str(tmp_path / 'official.pkl'), config, name='xydeblur')
  checkpoint.write_imported_run(str(tmp_path / 'run'), config, params)
  crop = frame[300:556, 500:820]  # 256x320: multiples of the network's 4 already.
  images.write_png(str(tmp_path / 'crop.png'), crop)
  assert photos.run(None, str(tmp_path / 'run'), str(tmp_path / 'crop.png'),
                    str(tmp_path / 'out')) == 0
  with torch.no_grad():
    theirs = net(torch.from_numpy(images.to_float(crop)).permute(2, 0, 1)[None])[2]
  theirs = images.to_uint8(theirs[0].permute(1, 2, 0).numpy())
  ours = _read(tmp_path / 'out' / 'crop_deblurred.png')
  assert ours.shape == (256, 320, 3)
  assert np.abs(ours.astype(int) - theirs).max() <= 1  # At most one 8-bit level (rounding).
  assert np.abs(theirs.astype(int) - crop).max() > 20  # The network does change the image.
  # Buckets are opt-in, and the comparison sees what their padding changes.
  config.inference.size_bucket = 128
  bucketed = inference.Restorer.from_workdir(str(tmp_path / 'run'), config=config)
  assert np.abs(images.to_uint8(bucketed.restore(crop)['image']).astype(int) - theirs).max() > 1


def test_the_restorer_refuses_what_is_not_an_image_in_one_line(xydeblur_run):
  from xydiff.errors import ImageValueError
  restorer = inference.Restorer.from_workdir(str(xydeblur_run['workdir']))
  levels = _read(xydeblur_run['inputs'] / 'odd.png')
  want = restorer.restore(levels)['image']
  np.testing.assert_array_equal(restorer.restore(levels.astype(np.uint16) * 257)['image'], want)
  np.testing.assert_array_equal(restorer.restore(images.to_float(levels))['image'], want)
  with_nan = images.to_float(levels)
  with_nan[5, 7, 1] = np.nan  # One pixel once turned the whole output to NaN.
  for image, message in ((levels.astype(np.int64), 'int64 values'),
                         (levels.astype(np.float32), r'run from \d+ to \d+, outside \[0, 1\] '
                          r'\(8-bit levels\? divide by 255\)'),
                         (with_nan, 'holds 1 NaN or infinite value ')):
    with pytest.raises(ImageValueError, match=message) as e:
      restorer.restore(image)
    assert '\n' not in str(e.value)


def test_the_overwrite_guard_sees_through_symlinked_folders(tmp_path, xydeblur_run):
  config, workdir, inputs = (xydeblur_run[k] for k in ('config', 'workdir', 'inputs'))
  before = (inputs / 'odd.png').read_bytes()
  (tmp_path / 'link').symlink_to(inputs, target_is_directory=True)
  # With no suffix the output is named as its input: the guard, not the name, protects it.
  for source, output in ((tmp_path / 'link' / 'odd.png', inputs),
                         (inputs / 'odd.png', tmp_path / 'link')):
    with pytest.raises(DataError, match='would overwrite the input'):
      photos.run(config, str(workdir), str(source), str(output), suffix='')
  os.link(inputs / 'odd.png', tmp_path / 'odd.png')  # The same file under a second name.
  with pytest.raises(DataError, match='would overwrite the input'):
    photos.run(config, str(workdir), str(inputs / 'odd.png'), str(tmp_path), suffix='')
  # An output name that is the input's under its suffix: refused, even with --overwrite.
  os.link(inputs / 'odd.png', tmp_path / 'odd_x.png')
  with pytest.raises(DataError, match='would overwrite the input'):
    photos.run(config, str(workdir), str(inputs / 'odd.png'), str(tmp_path), suffix='_x',
               existing='overwrite')
  assert (inputs / 'odd.png').read_bytes() == before


_CACHED_DEBLUR = '''
import sys
from xydiff.inference import photos
sys.exit(photos.run(None, sys.argv[1], sys.argv[2], sys.argv[3]))
'''


def test_deblur_keeps_its_compiled_networks_in_the_users_cache(tmp_path, xydeblur_run):
  import subprocess
  import sys
  from conftest import REPO
  cache = tmp_path / 'cache'
  env = dict(os.environ, XYDIFF_CACHE=str(cache),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')  # The tiny network compiles fast.
  env.pop('JAX_COMPILATION_CACHE_DIR', None)
  result = subprocess.run([sys.executable, '-c', _CACHED_DEBLUR, str(xydeblur_run['workdir']),
                           str(xydeblur_run['inputs'] / 'odd.png'), str(tmp_path / 'out')],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert os.listdir(tmp_path / 'out') == ['odd_deblurred.png']
  assert len(os.listdir(cache / 'jax')) >= 1  # The compiled network, for the next run.


def test_a_non_finite_output_fails_its_file_in_one_line_and_writes_nothing(tmp_path, xydeblur_run):
  config = xydeblur_run['config']
  graphdef, state = random_state(config)
  broken = jax.tree.map(lambda p: p.at[(0,) * p.ndim].set(jnp.inf) if p.ndim == 4 else p,
                        jax.tree.map(jnp.asarray, state['params']))
  restorer = inference.Restorer(config, graphdef, broken, 0)
  path, out_path = xydeblur_run['inputs'] / 'odd.png', tmp_path / 'odd_deblurred.png'
  # pylint: disable=protected-access
  with pytest.raises(photos._FileFailed) as e:
    photos._restore_file(str(path), str(out_path), restorer.restore,
                         images.PixelLimit(50, photos.LIMIT_FLAG))
  assert str(e.value).startswith(f'{path}: the restored image holds ')
  assert 'NaN or infinite values' in str(e.value) and '\n' not in str(e.value)
  assert not out_path.exists()  # Never a black PNG.
