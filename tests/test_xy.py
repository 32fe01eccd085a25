"""The XY transform's layers (models/layers.py): a turned kernel is a turned feature map.

What it makes of every family (tied parameters, turned decoders, decoders=1)
is the family contract's: tests/test_families.py."""

import jax
import numpy as np
import pytest
from flax import nnx

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

