"""XYDeblur and the DvSR U-Net: what is special to them (tests/test_families.py holds what
every family must do): XYDeblur's per-block sizes and decoder order, the noise-conditioned
U-Net, the sub-pixel up-convolution, XYDeblur's padding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from xydiff.models.unet import UNet, UNetDeblur
from xydiff.models.xydeblur import XYDeblur


def _num_params(module) -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def _rot(t):
  return jnp.rot90(t, 1, axes=(1, 2))


def _unrot(t):
  return jnp.rot90(t, -1, axes=(1, 2))


def test_xydeblur_blocks_have_the_official_parameter_counts():
  model = nnx.eval_shape(lambda: XYDeblur(rngs=nnx.Rngs(0)))
  # Per-block counts from the official network (METHOD.md §2); the total: family_cases.
  assert _num_params(model.encoder.stem) + _num_params(model.encoder.res1) == 111_872
  assert _num_params(model.decoder.res1) + _num_params(model.decoder.up1) == 1_902_144
  assert _num_params(model.decoder.out) == 867


def test_xydeblur_adds_the_two_decoders_in_the_official_order():
  model = XYDeblur(width=8, num_res=2, rngs=nnx.Rngs(0))
  x = jax.random.uniform(jax.random.key(1), (2, 12, 20, 3))  # Non-square on purpose.
  out = model(x)
  z, e2, e1 = model.encoder(x)
  # Bit for bit the pre-transform XYDeblur: x + D(z) + D_rot(z), in that order.
  np.testing.assert_array_equal(
      out['restored'], x + model.decoder(z, e2, e1) + model.decoder(z, e2, e1, rotation=1))


def test_xy_unet_decoder_equals_feature_rotation():
  net = UNet(in_channels=6, base=4, multipliers=(1, 2, 2), num_res=1, decoders=2,
             noise_conditioned=True, rngs=nnx.Rngs(0))
  # Give the zero-initialised output conv weights so the check is not 0 == 0.
  net.decoder.out.kernel[...] = jax.random.normal(jax.random.key(3), net.decoder.out.kernel.shape)
  x = jax.random.normal(jax.random.key(1), (2, 16, 24, 6))
  level = jnp.array([0.3, 0.9])
  out = net(x, level)
  # The plain decoder on the encoder's features rotated 90°, rotated back.
  emb = net.embed(level)
  feat, skips = net.encode(x, emb)
  official = _unrot(net.decoder(_rot(feat), [_rot(s) for s in skips], emb))
  np.testing.assert_allclose(out['residuals'][1], official, atol=1e-5)
  assert np.abs(out['residuals'][1]).max() > 1e-2


@pytest.mark.parametrize('build', [
    lambda impl: XYDeblur(width=4, num_res=1, upsample_impl=impl, rngs=nnx.Rngs(0)),
    lambda impl: UNet(base=4, multipliers=(1, 2, 2), num_res=1, decoders=2, upsample_impl=impl,
                      rngs=nnx.Rngs(0))], ids=['xydeblur', 'xy_unet'])
def test_subpixel_upsampling_equals_the_transposed_convolution(build):
  """Same parameters, same outputs and same gradients, both decoders (non-square input)."""
  x = jax.random.uniform(jax.random.key(1), (2, 12, 20, 3))
  target = jax.random.uniform(jax.random.key(2), (2, 12, 20, 3))
  results = {}
  for impl in ('reference', 'subpixel'):
    graphdef, params = nnx.split(build(impl), nnx.Param)
    if impl == 'reference':
      # Non-zero output convs, so the gradient of every layer is exercised.
      params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(4), p.shape),
                            params)
      reference_params = params
    loss = lambda p: sum(jnp.mean(jnp.abs(o - target))
                         for o in jax.tree.leaves(nnx.merge(graphdef, p)(x)))
    outputs = nnx.merge(graphdef, reference_params)(x)
    results[impl] = (outputs, jax.grad(loss)(reference_params))
  for a, b in zip(jax.tree.leaves(results['subpixel'][0]), jax.tree.leaves(results['reference'][0])):
    np.testing.assert_allclose(a, b, atol=1e-5)
  for a, b in zip(jax.tree.leaves(results['subpixel'][1]), jax.tree.leaves(results['reference'][1])):
    np.testing.assert_allclose(a, b, atol=1e-5)
  assert max(np.abs(g).max() for g in jax.tree.leaves(results['reference'][1])) > 1e-3


@pytest.mark.parametrize('shape', [(7, 9), (3, 5)])  # Down to the smallest it takes.
def test_any_size_is_padded_and_cropped_back(shape):
  model = XYDeblur(width=4, num_res=1, rngs=nnx.Rngs(0))
  x = jax.random.uniform(jax.random.key(1), (1, *shape, 3))
  out = model(x)['restored']
  assert out.shape == x.shape
  assert np.isfinite(np.asarray(out)).all()


def test_padding_is_invisible_away_from_the_padded_border():
  model = XYDeblur(width=4, num_res=1, rngs=nnx.Rngs(0))
  x = jax.random.uniform(jax.random.key(1), (1, 40, 40, 3))
  full = model(x)['restored']
  cropped = model(x[:, :38, :37])['restored']  # Padded back to 40x40 internally.
  # The padded rows and columns do reach the top-left (the encoder's strided
  # convolutions widen every receptive field to the whole image), but their
  # effect fades with distance: far from the padded border the outputs agree.
  np.testing.assert_allclose(cropped[:, :16, :16], full[:, :16, :16], atol=1e-5)


def test_too_small_an_image_is_refused_with_the_minimum():
  model = XYDeblur(width=4, num_res=1, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='too small.*at least 3x3'):
    model(jnp.zeros((1, 2, 8, 3)))


def test_noise_conditioned_unet_requires_the_level():
  net = UNet(base=4, multipliers=(1, 2), num_res=1, noise_conditioned=True, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='noise_level'):
    net(jnp.zeros((1, 8, 8, 3)))


def test_zero_initialised_unet_predictor_starts_as_identity():
  from xydiff.models.dvsr import DvSR
  g = UNetDeblur(base=4, multipliers=(1, 2), num_res=1, decoders=2, rngs=nnx.Rngs(0))
  f = UNet(in_channels=6, base=4, multipliers=(1, 2), num_res=1, noise_conditioned=True,
           rngs=nnx.Rngs(1))
  model = DvSR(g, f)
  y = jax.random.uniform(jax.random.key(1), (1, 16, 16, 3))
  np.testing.assert_array_equal(model.predict(y)['restored'], y)
  assert set(model.predict(y)) == {'restored', 'residuals'}

