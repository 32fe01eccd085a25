"""MIMO-UNet / MIMO-UNet+: equality with the authors' PyTorch network and training loss,
checkpoint import, MIMO-UNet+'s dropout, the XY transform at the coarse scales.

What every family must do (sizes of the packaged configs, the XY transform,
key maps, bfloat16, validation) is the family contract's: tests/test_families.py.

The PyTorch reference is tests/torch_refs/mimo_unet.py, transcribed from the
authors' models/MIMOUNet.py, models/layers.py and train.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import GOPRO_SAMPLE
from xydiff import config as config_lib
from xydiff import images, models
from xydiff.interop import keymaps, official as weights
from xydiff.models import mimo_unet
from xydiff.models.mimo_unet import MIMOUNet

torch = pytest.importorskip('torch')
import torch.nn.functional as F  # noqa: E402
from torch_refs import mimo_unet as ref  # noqa: E402

FRAME = GOPRO_SAMPLE / 'test' / 'GOPR0869_11_00' / 'blur' / '000020.png'
SHARP = GOPRO_SAMPLE / 'test' / 'GOPR0869_11_00' / 'sharp' / '000020.png'
# One image shape for the tiny networks (width 4) throughout, so the
# convolutions compile once for the whole file.
IMAGE = (1, 16, 24, 3)


def _abstract(**kwargs):
  return nnx.eval_shape(lambda: MIMOUNet(**kwargs, rngs=nnx.Rngs(0)))


def _with_random_weights(abstract, seed=0):
  """An abstract (eval_shape) module with PyTorch-like random weights, U(+-1/sqrt(fan_in)).

  Filled from numpy: initialising eagerly compiles one random kernel per
  parameter shape, which costs more than the rest of this file.
  """
  graphdef, state = nnx.split(abstract)
  rng = np.random.RandomState(seed)

  def fill(leaf):
    # HWIO kernels and HWOI transposed-conv kernels both: PyTorch's fan_in is H * W * dim 2.
    bound = 1 / np.sqrt(np.prod(leaf.shape[:3])) if len(leaf.shape) == 4 else 0.1
    return jnp.asarray(rng.uniform(-bound, bound, leaf.shape).astype(np.float32))

  return nnx.merge(graphdef, jax.tree.map(fill, state))


def _tiny(seed=0, **kwargs):
  """A MIMO-UNet of width 4 and one ResBlock a block, random weights."""
  kwargs = dict(dict(width=4, num_res=1), **kwargs)
  return _with_random_weights(_abstract(**kwargs), seed)


def _config(model, **section):
  config = weights.config_for(model)
  config.model.update(section)
  return config


def _crop(path, h, w):
  return images.to_float(images.read_image(str(path)))[300:300 + h, 500:500 + w]


def _nchw(x):
  return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)


def _nhwc(t):
  return t.permute(0, 2, 3, 1).numpy()


def _imported_model(model_name, path, config):
  graphdef, _ = nnx.split(jax.eval_shape(lambda: models.build(config.model)), nnx.Param)
  return nnx.merge(graphdef, weights.official_params(str(path), config, name=model_name))


def _save_as_train_py(net, path, *, final):
  """As the official train.py: Final.pkl/Best.pkl hold only 'model'; model.pkl and
  model_N.pkl also the optimizer, scheduler and epoch."""
  payload = {'model': net.state_dict()}
  if not final:
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [500, 1000], 0.5)
    payload.update(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), epoch=7)
  torch.save(payload, str(path))


# ------------------------------------------------------------------ the XY transform

@pytest.mark.parametrize('share', ['rotate', 'none'])
def test_xy_outputs_at_every_scale_are_the_sum_of_the_decoders(share):
  model = _tiny(decoders=2, share=share)
  x = jax.random.uniform(jax.random.key(1), IMAGE)
  out = model(x)
  # Every scale sums the decoders' residuals onto the (nearest) downscaled input.
  z, skip_half, skip_full = model.encoder(x, x[:, ::2, ::2], x[:, ::4, ::4])
  decoders = model.decoder if share == 'none' else [model.decoder, model.decoder]
  per = [d(z, skip_half, skip_full, rotation=0 if share == 'none' else i)
         for i, d in enumerate(decoders)]
  np.testing.assert_allclose(out['restored_half'], x[:, ::2, ::2] + per[0][1] + per[1][1],
                             atol=1e-6)
  np.testing.assert_allclose(out['restored_quarter'], x[:, ::4, ::4] + per[0][0] + per[1][0],
                             atol=1e-6)


# ------------------------------------------------------------------ the authors' network

@pytest.mark.parametrize('model_name,num_res,final', [
    ('mimo_unet', 2, True), ('mimo_unet_plus', 3, False)])
def test_imported_checkpoints_restore_like_the_official_test(tmp_path, model_name, num_res,
                                                             final):
  torch.manual_seed(num_res)
  net = ref.MIMOUNet(num_res=num_res, base_channel=4, dropout=model_name.endswith('plus')).eval()
  pkl = tmp_path / ('Final.pkl' if final else 'model_7.pkl')
  _save_as_train_py(net, pkl, final=final)
  model = _imported_model(model_name, pkl, _config(model_name, width=4, num_res=num_res))

  crop = _crop(FRAME, *IMAGE[1:3])[None]  # H, W multiples of 4: what eval.py feeds.
  with torch.no_grad():
    theirs = [_nhwc(t) for t in net(_nchw(crop))]
  out = model(jnp.asarray(crop))
  for name, reference in zip(('restored_quarter', 'restored_half', 'restored'), theirs):
    assert out[name].dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out[name]), reference, atol=1e-5, err_msg=name)
  # A real comparison: the random network moves the image a lot.
  assert np.abs(theirs[2] - crop).max() > 0.1

  # Other sizes: reflect-padded to multiples of 4 and cropped back.
  odd = _crop(FRAME, 13, 23)[None]
  padded = np.pad(odd, ((0, 0), (0, 3), (0, 1), (0, 0)), mode='reflect')
  with torch.no_grad():
    theirs = _nhwc(net(_nchw(padded))[2])[:, :13, :23]
  np.testing.assert_allclose(np.asarray(model(jnp.asarray(odd))['restored']), theirs, atol=1e-5)


# ------------------------------------------------------------------ the training loss

def test_target_downscaling_is_pytorchs_bilinear_interpolation():
  x = np.random.RandomState(0).rand(2, 13, 18, 3).astype(np.float32)  # Odd sizes too.
  for factor in (2, 4):
    theirs = _nhwc(F.interpolate(_nchw(x), scale_factor=1 / factor, mode='bilinear'))
    ours = mimo_unet.torch_bilinear_downscale(jnp.asarray(x), factor)
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-6)


def test_loss_is_the_official_training_loss():
  torch.manual_seed(0)
  net = ref.MIMOUNet(num_res=1, base_channel=4).eval()
  state_dict = {k: v.numpy() for k, v in net.state_dict().items()}
  config = _config('mimo_unet', width=4, num_res=1)
  graphdef, target = nnx.split(jax.eval_shape(lambda: models.build(config.model)),
                               nnx.Param)
  params = weights.convert(state_dict, keymaps.mimo_unet_keys(config.model),
                           nnx.to_pure_dict(target))
  model = nnx.merge(graphdef, params)
  blur, sharp = _crop(FRAME, *IMAGE[1:3])[None], _crop(SHARP, *IMAGE[1:3])[None]
  loss_fn = models.family('mimo_unet').loss(config.model)
  loss, metrics = loss_fn(model, {'blur': jnp.asarray(blur), 'sharp': jnp.asarray(sharp)},
                          jax.random.key(0))
  with torch.no_grad():
    theirs, content, fft = ref.official_loss(net(_nchw(blur)), _nchw(sharp))
  np.testing.assert_allclose(float(metrics['content']), content.item(), rtol=1e-5)
  np.testing.assert_allclose(float(metrics['fft']), fft.item(), rtol=1e-5)
  np.testing.assert_allclose(float(loss), theirs.item(), rtol=1e-5)
  assert fft.item() > content.item()  # Both terms matter: the 0.1 weight is not a no-op.


def test_plus_drops_whole_skip_channels_only_in_training():
  x = jax.random.uniform(jax.random.key(1), IMAGE)
  plain, plus = _tiny(), _tiny(dropout=0.1)  # The same weights.
  evaluated = plus(x)['restored']
  np.testing.assert_array_equal(evaluated, plain(x)['restored'])  # Eval mode: no dropout.
  np.testing.assert_array_equal(plain(x, dropout_key=jax.random.key(2))['restored'], evaluated)
  trained = plus(x, dropout_key=jax.random.key(2))['restored']
  assert np.abs(np.asarray(trained - evaluated)).max() > 1e-4
  # nn.Dropout2d: each (image, channel) all zero or all scaled by 1 / (1 - p).
  features = jnp.ones((64, 4, 4, 32))
  dropped = mimo_unet._channel_dropout(features, 0.1, jax.random.key(3))
  values = np.asarray(dropped).reshape(64, 16, 32)
  assert (values == values[:, :1]).all()
  np.testing.assert_allclose(np.unique(values), [0.0, 1 / 0.9], rtol=1e-6)
  assert 0.05 < (values[:, 0] == 0).mean() < 0.15


# ------------------------------------------------------------------ config

def test_packaged_config_is_the_authors_recipe():
  from xydiff.configs import mimo_unet_gopro
  config = mimo_unet_gopro.get_config('plus')
  assert {k: config.model[k] for k in ('width', 'num_res', 'dropout', 'decoders', 'share')} == (
      dict(width=32, num_res=20, dropout=0.1, decoders=1, share='rotate'))
  assert config.train.num_steps == 3000 * 526
  assert config.train.lr_halve_steps == (263_000, 526_000, 789_000, 1_052_000, 1_315_000)
  config_lib.check(config)
  with pytest.raises(ValueError, match="'plus_xy'"):
    mimo_unet_gopro.get_config('plus_plus')
