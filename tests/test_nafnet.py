"""NAFNet: its authors' PyTorch network (plain and TLC), checkpoints, XY with TLC, the CPU
forms, tiles, the loss and the recipe.

What every family must do (sizes of the packaged configs, the XY transform,
key maps, bfloat16, validation) is the family contract's: tests/test_families.py.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import GOPRO_SAMPLE
from xydiff import configs, images, models
from xydiff.configs import base, nafnet_gopro
from xydiff.inference import tiles
from xydiff.interop import keymaps, official as weights
from xydiff.models import complexity, nafnet

torch = pytest.importorskip('torch')
from torch_refs import nafnet as ref  # noqa: E402

FRAME = GOPRO_SAMPLE / 'test' / 'GOPR0869_11_00' / 'blur' / '000020.png'
TINY = dict(width=4, enc_blocks=(1, 1, 1, 1), middle_blocks=1, dec_blocks=(1, 1, 1, 1))


def _num_params(tree) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))


class _ShapeOnlyKeys:
  """Stands in for nnx.Rngs under eval_shape: one fixed key, no counter.

  nnx.Rngs advances a counter per key, and under eval_shape each advance
  builds a tracer error message (getattr(tracer, 'sharding')): a full-size
  NAFNet took ~4x longer to trace that way. Shapes do not depend on the key.
  """

  def params(self):
    return jax.random.key(0)


@functools.cache
def _abstract_cached(items):
  model = nnx.eval_shape(lambda: nafnet.NAFNet(rngs=_ShapeOnlyKeys(), **dict(items)))
  graphdef, params = nnx.split(model, nnx.Param)
  return graphdef, nnx.to_pure_dict(params)


def _abstract(**section):
  """(graphdef, abstract params) of NAFNet(**section), nothing initialised."""
  return _abstract_cached(tuple(sorted(section.items())))


def _model_config(**section):
  config = base.get_config('nafnet').model
  config.update(section)
  return config


def _torch_net(width, enc_blocks, middle_blocks, dec_blocks, tlc_train_size=0, seed=0):
  torch.manual_seed(seed)
  kwargs = dict(width=width, middle_blk_num=middle_blocks, enc_blk_nums=list(enc_blocks),
                dec_blk_nums=list(dec_blocks))
  if tlc_train_size:
    net = ref.NAFNetLocal(train_size=(1, 3, tlc_train_size, tlc_train_size), **kwargs)
  else:
    net = ref.NAFNet(**kwargs)
  return ref.randomize(net.eval(), seed)


def _state_dict(net):
  return {k: v.numpy() for k, v in net.state_dict().items()}


def _torch_restore(net, x):
  with torch.no_grad():
    return net(torch.from_numpy(np.asarray(x)).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()


def _apply(graphdef):
  return jax.jit(lambda params, x: nnx.merge(graphdef, params)(x))


def _crop(h, w, top=300, left=500):
  return images.to_float(images.read_image(str(FRAME)))[top:top + h, left:left + w]


# ------------------------------------------------------------------ the official network

@pytest.mark.parametrize('tlc_train_size', [0, 32], ids=['NAFNet', 'NAFNetLocal'])
def test_imported_checkpoint_restores_like_the_pytorch_network(tmp_path, tlc_train_size):
  """torch.save({'params': ...}) as BasicSR saves it, imported as the registry's nafnet32.

  61x45 is zero-padded to 64x48. With train_size 32 the TLC windows are 48,
  24, 12, 6 and 3 feature pixels at levels 0-4: at every level the box slides
  down the height and spans the whole width (min(w, window) = w), so both
  branches of the window size and the replicate padding are exercised.
  """
  net = _torch_net(**TINY, tlc_train_size=tlc_train_size)
  path = tmp_path / 'net_g_latest.pth'
  ref.save_official(path, net)
  config = weights.config_for('nafnet32')
  config.model.update(dict(TINY, tlc_train_size=tlc_train_size))
  params = weights.official_params(str(path), config)
  graphdef, _ = _abstract(**TINY, tlc_train_size=tlc_train_size)
  x = np.random.default_rng(0).uniform(size=(2, 61, 45, 3)).astype(np.float32)
  ours = np.asarray(_apply(graphdef)(params, x)['restored'])
  theirs = _torch_restore(net, x)
  assert np.abs(ours - theirs).max() <= 1e-5
  assert np.abs(theirs - x).max() > 0.1  # The network does something.
  if tlc_train_size:  # The local windows matter here: the plain network differs.
    plain = _torch_net(**TINY)
    assert np.abs(_torch_restore(plain, x) - theirs).max() > 1e-3


def test_tlc_equals_the_plain_network_up_to_384_pixels():
  """NAFNetLocal at the authors' train size 256 pools globally while both sides are <= 384."""
  section = dict(width=4, enc_blocks=(1, 1), middle_blocks=1, dec_blocks=(1, 1))
  graphdef_plain, target = _abstract(**section)
  graphdef_local, _ = _abstract(**section, tlc_train_size=256)
  params = weights.convert(_state_dict(_torch_net(**section)),
                           keymaps.nafnet_keys(_model_config(**section)), target)
  both = jax.jit(lambda p, x: (nnx.merge(graphdef_local, p)(x)['restored'],
                               nnx.merge(graphdef_plain, p)(x)['restored']))
  rng = np.random.default_rng(1)
  local, plain = both(params, rng.uniform(size=(1, 384, 224, 3)).astype(np.float32))
  np.testing.assert_array_equal(local, plain)
  # 400 rows > 384: the finest level averages over 384-row windows instead.
  local, plain = both(params, rng.uniform(size=(1, 400, 32, 3)).astype(np.float32))
  assert np.abs(np.asarray(local) - np.asarray(plain)).max() > 1e-4
  assert nafnet.tlc_windows(256, 4) == (384, 192, 96, 48, 24)
  assert nafnet.tlc_windows(0, 4) == (None,) * 5


def test_a_basicsr_checkpoint_with_only_the_ema_weights_reads(tmp_path):
  """(Every key at fault listed in one line: the family contract.)"""
  path = tmp_path / 'net_g_latest.pth'
  # BasicSR checkpoints with an EMA hold 'params_ema' too; one with only that reads.
  torch.save({'params_ema': _torch_net(**TINY).state_dict()}, str(path))
  config = weights.config_for('nafnet32')
  config.model.update(TINY)
  assert set(keymaps.FORMATS['nafnet'].read(str(path))) == set(
      keymaps.nafnet_keys(config.model))
  assert weights.official_params(str(path), config)


# ------------------------------------------------------------------ XY transform

def test_rotated_decoders_equal_the_decoder_on_rotated_features():
  """Decoder i (kernels turned, pixel shuffle and TLC box means rotated) = rot90^-i D(rot90^i f).

  With TLC on (local windows at every level) and a non-square image, so
  neither the pixel shuffle nor the asymmetric replicate padding is symmetric.
  """
  section = dict(TINY, tlc_train_size=32)
  graphdef, target = _abstract(**section, decoders=4)
  # One shared decoder has the plain network's tree: the torch weights fit as they are.
  params = weights.convert(_state_dict(_torch_net(**section)),
                           keymaps.nafnet_keys(_model_config(**section)), target)
  x = jnp.asarray(_crop(64, 96))[None]
  rot = lambda t, k: jnp.rot90(t, k, axes=(1, 2))

  @jax.jit
  def run(params, x):
    model = nnx.merge(graphdef, params)
    out = model(x)
    z, skips = model.encoder(x)
    feature_form = [rot(model.decoder(rot(z, i), tuple(rot(s, i) for s in skips)), -i)
                    for i in range(4)]
    return out, feature_form

  out, feature_form = run(params, x)
  for i in range(4):
    np.testing.assert_allclose(out['residuals'][i], feature_form[i], atol=1e-5, err_msg=str(i))
  assert np.abs(out['residuals'][1] - out['residuals'][0]).max() > 1e-2
  np.testing.assert_allclose(out['restored'], x + sum(out['residuals']), atol=1e-5)


# ------------------------------------------------------------------ CPU forms

# Two levels; TLC at train size 42 gives windows of 66, 33 and 16 feature pixels.
SMALL = dict(width=4, enc_blocks=(1, 1), middle_blocks=1, dec_blocks=(1, 1), tlc_train_size=42)
SMALL_IMAGE = (76, 72)


def test_the_registry_builds_auto_forms_and_complexity_counts_the_reference_forms():
  """layer_impl='reference' (what xydiff.models.complexity sets) asks for the official forms;
  'auto' leaves them to the backend. The CPU forms count fewer MACs (the depthwise products
  are elementwise, the TLC 1x1 convs run on the valid positions only)."""
  config = _model_config(**SMALL)
  block = nnx.eval_shape(lambda: models.build(config)).encoder.encoders[0][0]
  assert (block.conv2.impl, block.conv1.impl, block.tlc_impl) == ('auto',) * 3
  config.layer_impl = 'reference'
  block = nnx.eval_shape(lambda: models.build(config)).encoder.encoders[0][0]
  assert (block.conv2.impl, block.conv1.impl, block.tlc_impl) == ('reference',) * 3

  def macs(conv, tlc):
    graphdef, params = nnx.split(nnx.eval_shape(lambda: nafnet.NAFNet(
        **SMALL, conv_impl=conv, tlc_impl=tlc, rngs=_ShapeOnlyKeys())), nnx.Param)
    jaxpr = jax.make_jaxpr(lambda p, x: nnx.merge(graphdef, p)(x)['restored'])(
        params, jax.ShapeDtypeStruct((1, *SMALL_IMAGE, 3), jnp.float32))
    return complexity.jaxpr_macs(jaxpr.jaxpr)
  counted = complexity.gmacs(_model_config(**SMALL), size=SMALL_IMAGE) * 1e9
  assert counted == pytest.approx(macs('reference', 'reference'), abs=1)
  assert macs('xla_cpu', 'separable') < macs('reference', 'reference')


# ------------------------------------------------------------------ tiles

def test_tlc_makes_tiles_agree_with_the_whole_image():
  """A 128x192 GoPro crop restored whole and in 96x96 tiles overlapping by >= 48 pixels.

  Two-level network (small receptive field), channel attention made strong.
  Measured mean |tiled - whole|: 1.7e-4 with TLC (train size 32: 48-pixel
  windows), 7.5e-4 with global pooling; max 2.9e-3 and 3.7e-3.
  """
  section = dict(width=8, enc_blocks=(1, 1), middle_blocks=1, dec_blocks=(1, 1))
  net = _torch_net(**section)
  with torch.no_grad():
    for name, p in net.named_parameters():
      if name.endswith('sca.1.weight'):
        p.mul_(5.0)
  state_dict = _state_dict(net)
  image = _crop(128, 192)
  differences = {}
  for tlc in (0, 32):
    graphdef, target = _abstract(**section, tlc_train_size=tlc)
    params = weights.convert(state_dict, keymaps.nafnet_keys(_model_config(**section)), target)
    fn = jax.jit(lambda p, blur, key, g=graphdef: {'image': nnx.merge(g, p)(blur)['restored']})
    whole = tiles.restore_image(fn, params, image, jax.random.key(0), align=4)['image']
    tiled = tiles.restore_image(fn, params, image, jax.random.key(0), align=4, tile=96,
                                    overlap=48)['image']
    differences[tlc] = np.abs(tiled - whole)
  assert differences[32].mean() <= 2.5e-4 and differences[32].max() <= 4e-3
  assert differences[0].mean() >= 3 * differences[32].mean()

  plain, local = _model_config(tlc_train_size=0), _model_config()
  assert not nafnet.FAMILY.tile_safe(plain) and nafnet.FAMILY.tile_safe(local)
  tiled_config = nafnet.FAMILY.for_tiles(plain)
  assert tiled_config.tlc_train_size == 256 and plain.tlc_train_size == 0
  assert nafnet.FAMILY.for_tiles(_model_config(tlc_train_size=32)).tlc_train_size == 32


# ------------------------------------------------------------------ loss and config

def test_the_loss_is_basicsr_psnr_loss():
  rng = np.random.default_rng(2)
  blur, sharp = (rng.uniform(size=(3, 8, 8, 3)).astype(np.float32) for _ in range(2))
  blur[2] = sharp[2]  # A perfect image: the 1e-8 keeps the log finite.
  loss_fn = nafnet.FAMILY.loss(nafnet_gopro.get_config().model)
  loss, metrics = loss_fn(lambda b: {'restored': b}, {'blur': blur, 'sharp': sharp}, None)
  # PSNRLoss: 10 / ln(10) * mean over images of ln(MSE + 1e-8), i.e. -mean PSNR.
  mse = ((blur - sharp) ** 2).mean(axis=(1, 2, 3))
  expected = 10 / math.log(10) * np.log(mse + 1e-8).mean()
  assert float(loss) == pytest.approx(expected, rel=1e-5)
  assert float(metrics['psnr_loss']) == float(loss)
  assert float(loss) == pytest.approx(np.mean(10 * np.log10(mse + 1e-8)), rel=1e-5)


def test_packaged_config_is_the_authors_recipe():
  for variant, width, batch, steps, decay in (('', 64, 64, 400_000, 1e-3),
                                              ('width64', 64, 64, 400_000, 1e-3),
                                              ('width32', 32, 32, 200_000, 0.0)):
    config = nafnet_gopro.get_config(variant)
    t = config.train
    assert (config.model.name, config.model.width) == ('nafnet', width)
    assert (t.batch_size, t.num_steps, t.weight_decay) == (batch, steps, decay)
    assert (t.optimizer, t.lr, t.lr_schedule, t.lr_min) == ('adamw', 1e-3, 'cosine', 1e-7)
    assert (tuple(t.adam_betas), t.grad_clip, config.data.crop) == ((0.9, 0.9), 0.01, 256)
    assert config.data.flip and config.data.rot90
    assert config.model.tlc_train_size == 256
  with pytest.raises(ValueError, match="'width32'"):
    nafnet_gopro.get_config('width16')
  assert configs.get_config('nafnet32').model.width == 32

  model_config = nafnet_gopro.get_config().model
  assert nafnet.FAMILY.size_multiple(model_config) == 16
  # TLC is a test-time choice: the same weights run with it or without.
  assert 'tlc_train_size' not in models.output_fields(model_config)
  assert 'width' in models.output_fields(model_config)
