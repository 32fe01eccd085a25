"""The XY transform (models/xy.py) for every family: rotations, parameter tying, decoders=1."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import tiny
from xydiff import models
from xydiff.models import complexity
from xydiff.configs import default
from xydiff.models import layers


@pytest.mark.parametrize('quarter_turns', [0, 1, 2, 3])
def test_turned_kernels_equal_turned_features(quarter_turns):
  """Run i of a shared decoder: every kernel turned i quarter turns == the official form
  rot90(layer(rot90(x, i)), -i), for the 'same' convolutions and the 4x4 up-convolution."""
  x = jax.random.normal(jax.random.key(0), (2, 10, 14, 5))  # Non-square on purpose.
  for layer in (layers.Conv(5, 6, 3, rngs=nnx.Rngs(1)), layers.Conv(5, 6, 5, rngs=nnx.Rngs(2)),
                layers.ConvTranspose(5, 6, impl='reference', rngs=nnx.Rngs(3)),
                layers.ConvTranspose(5, 6, impl='subpixel', rngs=nnx.Rngs(3))):
    turned = layer(x, rotation=quarter_turns)
    official = layers.rotated_call(layer, x, quarter_turns)
    np.testing.assert_allclose(turned, official, atol=2e-5)
    if quarter_turns:
      assert np.abs(turned - layer(x)).max() > 1e-2  # The turn is not a no-op.


def _tiny_config(family):
  config = tiny(default.get_config())
  config.model.name = family
  return config


XY_FAMILIES = [f for f in models.FAMILIES if models.family(f).xy_section is not None]


@pytest.mark.parametrize('family', XY_FAMILIES)
def test_rotated_decoders_share_every_parameter(family):
  config = _tiny_config(family)
  section = config.model[models.family(family).xy_section]
  counts = {}
  for decoders, share in ((1, 'rotate'), (2, 'rotate'), (4, 'rotate'), (2, 'none'),
                          (4, 'none')):
    section.update(dict(decoders=decoders, share=share))
    counts[decoders, share] = complexity.count_params(config.model)
  baseline = counts[1, 'rotate']
  assert counts[2, 'rotate'] == counts[4, 'rotate'] == baseline
  decoder = counts[2, 'none'] - baseline  # One more independent decoder (U-Net^2D).
  assert decoder > 0
  assert counts[4, 'none'] == baseline + 3 * decoder


@pytest.mark.parametrize('family', XY_FAMILIES)
def test_each_decoder_is_one_residual_and_they_sum(family):
  config = _tiny_config(family)
  config.model[models.family(family).xy_section].update(dict(decoders=4, share='rotate'))
  model = models.build_model(config.model)
  x = jax.random.uniform(jax.random.key(1), (1, 16, 24, 3))
  out = model.predict(x) if models.is_diffusion(config.model) else model(x)
  residuals = out['residuals']
  assert len(residuals) == 4
  np.testing.assert_allclose(out['restored'], x + sum(residuals), atol=1e-5)


def test_one_decoder_is_the_untransformed_network():
  """decoders=1 keeps the family's parameter names: its tree is the XY model's tree."""
  config = _tiny_config('xydeblur')
  config.model.xydeblur.decoders = 1
  plain = nnx.state(models.build_model(config.model), nnx.Param)
  config.model.xydeblur.decoders = 2
  xy = nnx.state(models.build_model(config.model), nnx.Param)
  assert jax.tree.structure(plain) == jax.tree.structure(xy)
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(xy)):
    np.testing.assert_array_equal(a, b)
  # Same weights: the one-decoder output is the XY output less the turned decoder's residual.
  x = jax.random.uniform(jax.random.key(2), (1, 16, 20, 3))
  config.model.xydeblur.decoders = 1
  one = models.build_model(config.model)(x)
  config.model.xydeblur.decoders = 2
  two = models.build_model(config.model)(x)
  np.testing.assert_array_equal(one['residuals'][0], two['residuals'][0])
  np.testing.assert_allclose(one['restored'], two['restored'] - two['residuals'][1], atol=1e-6)
