"""DMPHN: official sizes, equality with the authors' PyTorch network, checkpoint import, XY.

The PyTorch reference is tests/torch_refs/dmphn.py, transcribed from the
authors' models.py and DMPHN_1_2_4{,_8}_test.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, traverse_util

from conftest import GOPRO_SAMPLE
from xydiff import images, models
from xydiff.interop import official as weights
from xydiff.errors import CheckpointImportError, ConfigError
from xydiff.models import dmphn
from xydiff.models.dmphn import DMPHN, Decoder

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
  config.model.dmphn.update(section)
  return config


def _gopro_crop(h, w):
  frame = images.to_float(images.read_image(str(FRAME)))
  return frame[300:300 + h, 500:500 + w]


def _torch_restore(nets, levels, x):
  """The authors' test script on an NHWC numpy batch, back to NHWC."""
  restore = ref.restore_1_2_4 if levels == 3 else ref.restore_1_2_4_8
  return restore(nets, torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()


def _imported_model(model_name, folder, config):
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: models.build_model(config.model)), nnx.Param)
  return nnx.merge(graphdef, weights.official_params(model_name, str(folder), config))


def _restore(model, x):
  """model(x) compiled once: far faster on a CPU than op-by-op for these many small layers."""
  graphdef, state = nnx.split(model)
  return np.asarray(jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)['restored'])(state, x))


# ------------------------------------------------------------------ sizes

def _variant_params(name) -> int:
  """Parameters of a registered variant, built through the registry as training builds it."""
  return _num_params(nnx.eval_shape(lambda: models.build_model(weights.config_for(name).model)))


def test_official_parameter_counts():
  three = _abstract(levels=3)
  assert _num_params(three.levels[0].encoder) == ENCODER
  assert _num_params(three.levels[0].decoder) == DECODER
  assert ENCODER + DECODER == 1_808_131
  assert _num_params(three) == 5_424_393  # DMPHN(1-2-4).
  assert _variant_params('dmphn_1_2_4_8') == 7_232_524  # DMPHN(1-2-4-8), Table 2's 7.23M.
  assert _variant_params('dmphn_1_2_4_8_channel') == 19_082_764  # Table 2: 18.63M.
  assert _variant_params('dmphn_1_2_4_8_layer') == 10_332_684  # Table 2: 10.33M.


def test_xy_transform_parameter_counts():
  # Checked small (two levels, width 4): which parameters exist does not depend on the width.
  small = dict(levels=2, width=4, num_res=1)
  baseline = _num_params(_abstract(**small))
  decoder = _num_params(Decoder(4, 1, dtype=jnp.float32, upsample_impl='auto',
                                rngs=nnx.Rngs(0)))
  for n in (2, 4):
    assert _num_params(_abstract(**small, decoders=n, share='rotate')) == baseline
    # U-Net^2D: every level's decoder copied n-1 times.
    assert _num_params(_abstract(**small, decoders=n, share='none')) == (
        baseline + (n - 1) * 2 * decoder)


def test_one_decoder_is_the_untransformed_network():
  def tree(**kwargs):
    model = _abstract(levels=3, width=4, num_res=1, **kwargs)
    return {k: v.shape for k, v in traverse_util.flatten_dict(
        nnx.to_pure_dict(nnx.state(model, nnx.Param))).items()}

  default = tree()
  for share in ('rotate', 'none'):
    assert tree(decoders=1, share=share) == default
  # Every parameter has its place in the authors' checkpoint format, and the
  # decoder sits where their decoder_lv<k> does.
  key_map = dmphn.official_keys(_config('dmphn_1_2_4', width=4, num_res=1).model)
  assert {path for path, _ in key_map.values()} == set(default)
  assert key_map['decoder_lv3.layer24.weight'][0] == ('levels', 2, 'decoder', 'out', 'kernel')


@pytest.mark.parametrize('turns', [1, 2, 3])
def test_rotated_decoder_equals_feature_rotation(turns):
  decoder = Decoder(4, 1, dtype=jnp.float32, upsample_impl='reference', rngs=nnx.Rngs(0))
  features = jax.random.normal(jax.random.key(1), (2, 3, 5, 16))  # Non-square on purpose.
  rotated = decoder(features, rotation=turns)
  official = jnp.rot90(decoder(jnp.rot90(features, turns, axes=(1, 2))), -turns, axes=(1, 2))
  np.testing.assert_allclose(rotated, official, atol=1e-5)
  assert np.abs(np.asarray(rotated - decoder(features))).max() > 1e-3


@pytest.mark.parametrize('share', ['rotate', 'none'])
def test_xy_output_is_the_sum_of_the_decoders(share):
  model = DMPHN(levels=2, width=4, num_res=1, decoders=2, share=share, rngs=nnx.Rngs(0))
  x = jax.random.uniform(jax.random.key(1), (1, 16, 24, 3))
  graphdef, state = nnx.split(model)
  out = jax.jit(lambda s: nnx.merge(graphdef, s)(x))(state)
  first, second = out['residuals']
  np.testing.assert_allclose(out['restored'], x + first + second, atol=1e-6)
  assert np.abs(np.asarray(first - second)).max() > 1e-3


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


def test_full_size_key_map_covers_the_authors_files_with_their_shapes():
  nets = ref.make_networks(4)
  state_dict = {f'{name}.{k}': v.numpy() for name, net in nets.items()
                for k, v in net.state_dict().items()}
  assert len(state_dict) == 8 * 30  # 30 tensors a file.
  assert sum(v.size for v in state_dict.values()) == 7_232_524
  config = weights.config_for('dmphn_1_2_4_8')
  key_map = dmphn.official_keys(config.model)
  assert set(key_map) == set(state_dict)
  target = nnx.to_pure_dict(nnx.state(jax.eval_shape(lambda: models.build_model(config.model)),
                                      nnx.Param))
  params = weights.convert(state_dict, key_map, target)
  np.testing.assert_array_equal(  # ConvTranspose2d [in, out, kh, kw] -> HWOI.
      params['levels'][3]['decoder']['up1']['kernel'],
      state_dict['decoder_lv4.layer16.weight'].transpose(2, 3, 1, 0))
  assert params['levels'][3]['decoder']['up1']['kernel'].shape == (4, 4, 64, 128)
  np.testing.assert_array_equal(
      params['levels'][1]['encoder']['res3']['blocks'][1]['conv2']['kernel'],
      state_dict['encoder_lv2.layer11.2.weight'].transpose(2, 3, 1, 0))


def test_every_missing_extra_and_misshaped_tensor_is_listed_in_one_error(tmp_path):
  nets = ref.make_networks(3, width=4)
  ref.save_checkpoints(nets, tmp_path)
  decoder = dict(nets['decoder_lv2'].state_dict())
  del decoder['layer17.0.bias']
  torch.save(decoder, str(tmp_path / 'decoder_lv2.pkl'))
  encoder = dict(nets['encoder_lv1'].state_dict())
  encoder['layer4.0.weight'] = torch.zeros(4, 4, 3, 3)
  encoder['layer5.weight'] = torch.zeros(8, 4, 5, 5)
  torch.save(encoder, str(tmp_path / 'encoder_lv1.pkl'))
  config = _config('dmphn_1_2_4', width=4)
  with pytest.raises(CheckpointImportError) as error:
    weights.official_params('dmphn_1_2_4', str(tmp_path), config)
  message = str(error.value)
  assert 'missing: decoder_lv2.layer17.0.bias' in message
  assert 'unexpected: encoder_lv1.layer4.0.weight' in message
  assert 'wrong shape: encoder_lv1.layer5.weight (8, 4, 5, 5)' in message

  # A DMPHN(1-2-4-8) folder read for DMPHN(1-2-4): its fourth level is named.
  ref.save_checkpoints(ref.make_networks(4, width=4), tmp_path)
  with pytest.raises(CheckpointImportError, match=r'unexpected: decoder_lv4\.layer13\.0\.bias'):
    weights.official_params('dmphn_1_2_4', str(tmp_path), config)
  with pytest.raises(CheckpointImportError, match='is a file'):
    weights.official_params('dmphn_1_2_4', str(tmp_path / 'encoder_lv1.pkl'), config)
  with pytest.raises(CheckpointImportError, match="share='none'"):
    weights.official_params('dmphn_1_2_4', str(tmp_path),
                            _config('dmphn_1_2_4', width=4, decoders=2, share='none'))


# ------------------------------------------------------------------ loss, sizes, config

def test_loss_is_the_mse_of_the_restored_image_and_reaches_every_parameter():
  model = DMPHN(levels=2, width=4, num_res=1, rngs=nnx.Rngs(0))
  batch = {'blur': jax.random.uniform(jax.random.key(1), (2, 8, 8, 3)),
           'sharp': jax.random.uniform(jax.random.key(2), (2, 8, 8, 3))}
  loss_fn = models.family('dmphn').make_loss(None)
  graphdef, params = nnx.split(model, nnx.Param)
  run = jax.jit(lambda p: jax.value_and_grad(
      lambda p: loss_fn(nnx.merge(graphdef, p), batch, None), has_aux=True)(p))
  (loss, metrics), grads = run(params)
  expected = np.mean((_restore(model, batch['blur']) - np.asarray(batch['sharp'])) ** 2)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  assert set(metrics) == {'mse'}
  for path, g in jax.tree.leaves_with_path(grads):
    assert np.abs(np.asarray(g)).max() > 0, f'no gradient reaches {jax.tree_util.keystr(path)}'


def test_sizes_validation_and_packaged_config():
  spec = models.family('dmphn')
  assert dmphn.size_multiples(3) == (8, 8) and dmphn.size_multiples(4) == (16, 8)
  assert spec.size_multiple(_config('dmphn_1_2_4_8').model) == 16
  assert not spec.tile_safe(_config('dmphn_1_2_4').model)  # Patch seams move with the size.
  with pytest.raises(ValueError, match='too small'):
    DMPHN(levels=4, width=4, num_res=1, rngs=nnx.Rngs(0))(jnp.zeros((1, 8, 8, 3)))
  for field, value in (('levels', 5), ('width', 0), ('decoders', 3)):
    with pytest.raises(ConfigError, match=f'config.model.dmphn.{field}='):
      spec.validate(_config('dmphn_1_2_4', **{field: value}).model)

  from xydiff.configs import dmphn_gopro
  base, deep = dmphn_gopro.get_config(), dmphn_gopro.get_config('1_2_4_8_layer')
  assert base.model.dmphn.levels == 3 and base.train.num_steps == 2400 * 1052
  assert deep.model.dmphn.to_dict() == dict(levels=4, width=32, num_res=3, decoders=1,
                                           share='rotate')
  assert deep.train.num_steps == 4000 * 1052
  assert (base.train.batch_size, base.data.crop, base.data.flip) == (2, 256, False)
  lr = jax.vmap(__import__('xydiff.runs.state', fromlist=['_']).make_lr_schedule(base.train))(
      jnp.array([0, 1052 * 1000 - 1, 1052 * 1000 + 3, 1052 * 2000 + 3]))
  np.testing.assert_allclose(lr, [1e-4, 1e-4, 1e-5, 1e-6], rtol=1e-6)  # StepLR gamma 0.1.
  with pytest.raises(ValueError, match='no variant .1_2_4_16.; one of dmphn_1_2_4'):
    dmphn_gopro.get_config('1_2_4_16')
