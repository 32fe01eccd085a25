"""DMPHN: its levels, equality with the authors' PyTorch network, checkpoint folders, its recipe.

What every family must do (sizes of the packaged configs, the XY transform,
key maps, bfloat16, validation) is the family contract's: tests/test_families.py.

The PyTorch reference is tests/torch_refs/dmphn.py, transcribed from the
authors' models.py and DMPHN_1_2_4{,_8}_test.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import GOPRO_SAMPLE
from xydiff import images, models
from xydiff.errors import CheckpointImportError
from xydiff.interop import keymaps, official as weights
from xydiff.models import dmphn
from xydiff.models.dmphn import DMPHN
from xydiff.runs import state as state_lib

torch = pytest.importorskip('torch')
from torch_refs import dmphn as ref  # noqa: E402

FRAME = GOPRO_SAMPLE / 'test' / 'GOPR0869_11_00' / 'blur' / '000020.png'
ENCODER, DECODER = 868_288, 939_843  # One level's networks at width 32 (models.py).


def _num_params(module) -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def _abstract(**kwargs):
  return nnx.eval_shape(lambda: DMPHN(**kwargs, rngs=nnx.Rngs(0)))


def _config(model, **section):
  config = weights.config_for(model)
  config.model.update(section)
  return config


def _gopro_crop(h, w):
  frame = images.to_float(images.read_image(str(FRAME)))
  return frame[300:300 + h, 500:500 + w]


def _torch_restore(nets, levels, x):
  """The authors' test script on an NHWC numpy batch, back to NHWC."""
  restore = ref.restore_1_2_4 if levels == 3 else ref.restore_1_2_4_8
  return restore(nets, torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()


def _imported_model(model_name, folder, config):
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: models.build(config.model)), nnx.Param)
  return nnx.merge(graphdef, weights.official_params(str(folder), config, name=model_name))


def _restore(model, x):
  """model(x) compiled once: far faster on a CPU than op-by-op for these many small layers."""
  graphdef, state = nnx.split(model)
  return np.asarray(jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)['restored'])(state, x))


# ------------------------------------------------------------------ levels

def test_each_level_is_the_authors_encoder_and_decoder():
  three = _abstract(levels=3)
  assert len(three.levels) == 3
  for level in three.levels:
    assert _num_params(level.encoder) == ENCODER
    assert _num_params(level.decoder) == DECODER
  assert ENCODER + DECODER == 1_808_131  # 3 of them: DMPHN(1-2-4)'s 5,424,393.
  # The decoder sits where their decoder_lv<k> does.
  key_map = keymaps.FORMATS['dmphn'].key_map(_config('dmphn_1_2_4', width=4).model)
  assert key_map['decoder_lv3.layer24.weight'][0] == ('levels', 2, 'decoder', 'out', 'kernel')
  assert len(key_map) == 6 * 30  # 30 tensors in each of the 6 files.


# ------------------------------------------------------------------ the authors' network

@pytest.mark.parametrize('levels,model_name,legacy', [
    (3, 'dmphn_1_2_4', True),  # The published files are PyTorch 0.4's legacy format.
    (4, 'dmphn_1_2_4_8', False)])
def test_imported_checkpoints_restore_like_the_authors_test_script(tmp_path, levels, model_name,
                                                                    legacy):
  torch.manual_seed(levels)
  nets = ref.make_networks(levels, width=4)  # The authors' keys; a tiny width.
  ref.save_checkpoints(nets, tmp_path, legacy=legacy)
  model = _imported_model(model_name, tmp_path, _config(model_name, width=4))

  # The smallest sizes the official splits take: H a multiple of 8 (16 with 4 levels), W of 8.
  crop = _gopro_crop(32, 40)[None]
  theirs = _torch_restore(nets, levels, crop)
  ours = _restore(model, jnp.asarray(crop))
  assert ours.dtype == np.float32
  np.testing.assert_allclose(ours, theirs, atol=1e-5)
  # The comparison is of real outputs: a random network moves the image a lot.
  assert np.abs(theirs - crop).max() > 0.1

  if levels == 4:  # Where H and W need different multiples (16 and 8).
    # Other sizes: reflect-padded to the multiples and cropped back, as the
    # official script on the padded image.
    odd = _gopro_crop(21, 27)[None]
    padded = np.pad(odd, ((0, 0), (0, 11), (0, 5), (0, 0)), mode='reflect')  # 32x32.
    np.testing.assert_allclose(_restore(model, jnp.asarray(odd)),
                               _torch_restore(nets, levels, padded)[:, :21, :27], atol=1e-5)


def test_a_folder_that_does_not_fit_is_named(tmp_path):
  """(Every key at fault listed in one line: the family contract.)"""
  config = _config('dmphn_1_2_4', width=4)
  # A DMPHN(1-2-4-8) folder read for DMPHN(1-2-4): its fourth level is named.
  ref.save_checkpoints(ref.make_networks(4, width=4), tmp_path)
  with pytest.raises(CheckpointImportError, match=r'unexpected: decoder_lv4\.layer13\.0\.bias'):
    weights.official_params(str(tmp_path), config)
  with pytest.raises(CheckpointImportError, match='is a file'):
    weights.official_params(str(tmp_path / 'encoder_lv1.pkl'), config)
  (tmp_path / 'empty').mkdir()
  with pytest.raises(CheckpointImportError, match='holds no encoder_lv'):
    weights.official_params(str(tmp_path / 'empty'), config)


# ------------------------------------------------------------------ loss, sizes, config

def test_loss_is_the_mse_of_the_restored_image():
  model = DMPHN(levels=2, width=4, num_res=1, rngs=nnx.Rngs(0))
  batch = {'blur': jax.random.uniform(jax.random.key(1), (2, 8, 8, 3)),
           'sharp': jax.random.uniform(jax.random.key(2), (2, 8, 8, 3))}
  loss_fn = models.family('dmphn').loss(_config('dmphn_1_2_4').model)
  graphdef, state = nnx.split(model)
  loss, metrics = jax.jit(lambda s: loss_fn(nnx.merge(graphdef, s), batch, None))(state)
  expected = np.mean((_restore(model, batch['blur']) - np.asarray(batch['sharp'])) ** 2)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  assert set(metrics) == {'mse'}


def test_sizes_tiles_and_packaged_config():
  family = models.family('dmphn')
  assert dmphn.size_multiples(3) == (8, 8) and dmphn.size_multiples(4) == (16, 8)
  assert family.size_multiple(_config('dmphn_1_2_4_8').model) == 16
  assert not family.tile_safe(_config('dmphn_1_2_4').model)  # Patch seams move with the size.
  with pytest.raises(ValueError, match='too small'):
    DMPHN(levels=4, width=4, num_res=1, rngs=nnx.Rngs(0))(jnp.zeros((1, 8, 8, 3)))

  from xydiff.configs import dmphn_gopro
  base, deep = dmphn_gopro.get_config(), dmphn_gopro.get_config('1_2_4_8_layer')
  assert base.model.levels == 3 and base.train.num_steps == 2400 * 1052
  assert {k: deep.model[k] for k in ('levels', 'width', 'num_res', 'decoders', 'share')} == dict(
      levels=4, width=32, num_res=3, decoders=1, share='rotate')
  assert deep.train.num_steps == 4000 * 1052
  assert (base.train.batch_size, base.data.crop, base.data.flip) == (2, 256, False)
  lr = jax.vmap(state_lib.make_lr_schedule(base.train))(
      jnp.array([0, 1052 * 1000 - 1, 1052 * 1000 + 3, 1052 * 2000 + 3]))
  np.testing.assert_allclose(lr, [1e-4, 1e-4, 1e-5, 1e-6], rtol=1e-6)  # StepLR gamma 0.1.
  with pytest.raises(ValueError, match="no variant '1_2_4_16'; one of '1_2_4'"):
    dmphn_gopro.get_config('1_2_4_16')
