"""The CPU forms of NAFNet's slow layers compute what the reference forms do.

Depthwise convolutions as shifted multiply-adds, 1x1 ones as matmuls
(layers.CONV_IMPLS), and
TLC's box means axis by axis with the 1x1 conv before the edge padding
(nafnet.TLC_IMPLS): outputs and gradients (input, kernel, every parameter),
float32 and bfloat16, with turned kernels and turned features.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from xydiff.models import layers, nafnet

# Float32: the two forms sum in other orders, a few units of 2**-24 apart.
# Bfloat16 keeps 8 significant bits, and the reference form itself is up to
# ~6% off the float32 result in a block's gradients (sums over every pixel):
# the CPU form is held to the float32 result, as close as the reference form
# or within 5% of the largest value.
FLOAT32_TOLERANCE, BFLOAT16_TOLERANCE = 1e-5, 5e-2


def _relative_error(ours, reference) -> float:
  ours, reference = np.asarray(ours, np.float32), np.asarray(reference, np.float32)
  return float(np.abs(ours - reference).max()) / max(1.0, float(np.abs(reference).max()))


def _randomized(module, seed):
  """(graphdef, params) of `module`, every parameter random (beta, gamma and biases included)."""
  graphdef, params = nnx.split(module, nnx.Param)
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  # Around the initial value where it is one (the norms' scales), else around zero.
  leaves = [0.5 * jax.random.normal(k, p.shape) + (p == 1) for k, p in zip(keys, leaves)]
  return graphdef, jax.tree.unflatten(tree, leaves)


def _compare(forms, params, x, turns=(0, 1, 2, 3)):
  """Graphdefs (CPU form, reference form[, reference form in float32]) of modules called as
  module(x, quarter_turns), at each of `turns`: outputs, and the gradients w.r.t. x and the
  params of sum(out * a random cotangent). The CPU form held against the reference form in
  float32, against the float32 result in bfloat16. One compiled program for all of it."""

  def outputs_and_grads(graphdef, params, x, cotangents):
    def objective(params, x):
      outs = [nnx.merge(graphdef, params)(x, k) for k in turns]
      return sum(jnp.sum(o.astype(jnp.float32) * c) for o, c in zip(outs, cotangents)), outs
    (_, outs), grads = jax.value_and_grad(objective, argnums=(0, 1), has_aux=True)(params, x)
    return jax.tree.leaves((outs, grads))

  shapes = jax.eval_shape(lambda p, x: [nnx.merge(forms[1], p)(x, k) for k in turns], params, x)
  cotangents = [jax.random.normal(jax.random.key(9 + i), s.shape) for i, s in enumerate(shapes)]
  results = jax.jit(lambda p, x, c: [outputs_and_grads(g, p, x, c) for g in forms])(
      params, x, cotangents)
  names = [f'output, {k} turns' for k in turns] + [
      f'gradient {jax.tree_util.keystr(path)}'
      for path, _ in jax.tree.leaves_with_path((params, x))]
  assert len(names) == len(results[0])
  for name, ours, reference, *truth in zip(names, *results):
    assert ours.dtype == reference.dtype
    assert np.abs(np.asarray(reference, np.float32)).max() > 0, name  # A real value.
    if not truth:
      assert _relative_error(ours, reference) <= FLOAT32_TOLERANCE, name
    else:
      error = _relative_error(ours, truth[0])
      assert error <= max(BFLOAT16_TOLERANCE, 1.5 * _relative_error(reference, truth[0])), (
          name, error)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16], ids=['float32', 'bfloat16'])
def test_cpu_forms_of_depthwise_and_1x1_convs_are_conv_general_dilated(dtype):
  """Same parameters; outputs, input and kernel and bias gradients; kernels turned or not.

  NAFNet's depthwise 3x3 'same' conv, a depthwise 5x5 one with stride 2 and
  padding 1, and a 1x1 conv. (All four turns: in the NAFBlock test below.)
  """
  channels = 6

  def convs(impl, dtype=dtype):
    make = lambda k, stride, padding, groups: layers.Conv(
        channels, channels, k, stride=stride, padding=padding, groups=groups, dtype=dtype,
        impl=impl, rngs=nnx.Rngs(0))
    return _Convs(make(3, 1, None, channels), make(5, 2, 1, channels), make(1, 1, None, 1))
  graphdef, params = _randomized(convs('reference'), 1)
  forms = [nnx.split(convs(impl, d), nnx.Param)[0] for impl, d in (
      ('xla_cpu', dtype), ('reference', dtype), ('reference', jnp.float32))]
  x = jax.random.normal(jax.random.key(2), (2, 9, 12, channels))
  _compare(forms if dtype == jnp.bfloat16 else forms[:2], params, x, turns=(0, 1))


class _Convs(nnx.Module):
  """Convs of x, one output (theirs flattened, one after the other)."""

  def __init__(self, *convs):
    self.convs = nnx.List(convs)

  def __call__(self, x, quarter_turns):
    return jnp.concatenate([conv(x, quarter_turns).reshape(-1) for conv in self.convs])


def test_auto_picks_the_cpu_forms_on_cpu_and_conv_general_dilated_elsewhere(monkeypatch):
  x = jax.random.normal(jax.random.key(0), (1, 5, 5, 4))

  def ops(*args, **kwargs):  # Of building and calling the conv: traced, nothing compiled.
    conv = lambda x: layers.Conv(*args, **kwargs, rngs=nnx.Rngs(0))(x)
    return {e.primitive.name for e in jax.make_jaxpr(conv)(x).eqns}
  monkeypatch.setattr(jax, 'default_backend', lambda: 'cpu')
  assert layers.resolve_conv_impl('auto') == 'xla_cpu'
  assert 'conv_general_dilated' not in ops(4, 4, 3, groups=4) | ops(4, 8, 1)
  assert 'dot_general' in ops(4, 8, 1)
  assert nafnet.resolve_tlc_impl('auto') == 'separable'
  # Other convolutions have one form: grouped but not depthwise, 3x3, 1x1 with stride 2.
  for args, kwargs in (((4, 8, 3), dict(groups=2)), ((4, 8, 3), {}), ((4, 8, 1), dict(stride=2))):
    assert 'conv_general_dilated' in ops(*args, **kwargs, impl='xla_cpu'), (args, kwargs)
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert layers.resolve_conv_impl('auto') == 'reference'
  assert 'conv_general_dilated' in ops(4, 4, 3, groups=4) & ops(4, 8, 1)
  assert 'dot_general' not in ops(4, 8, 1)
  assert nafnet.resolve_tlc_impl('auto') == 'reference'
  with pytest.raises(ValueError, match='impl must be one of'):
    layers.Conv(4, 4, 3, groups=4, impl='fast', rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='tlc_impl must be one of'):
    nafnet.NAFBlock(4, pool_window=3, dtype=jnp.float32, tlc_impl='fast', rngs=nnx.Rngs(0))


def _box_means(x, window):
  """AvgPool2d(kernel_size=window, auto_pad=True) of local_arch.py, in float64 numpy: the mean
  over every min(h, window) x min(w, window) box at its valid positions, replicate-padded
  back with the odd pixel at the bottom and right."""
  x = np.asarray(x, np.float64)
  _, h, w, _ = x.shape
  k1, k2 = min(h, window), min(w, window)
  out = np.stack([np.stack([x[:, i:i + k1, j:j + k2].mean(axis=(1, 2))
                            for j in range(w - k2 + 1)], axis=1) for i in range(h - k1 + 1)],
                 axis=1)
  dh, dw = h - out.shape[1], w - out.shape[2]
  return np.pad(out, ((0, 0), (dh // 2, (dh + 1) // 2), (dw // 2, (dw + 1) // 2), (0, 0)),
                mode='edge')


@pytest.fixture(params=['band', 'scan'])
def window_sums(request, monkeypatch):
  """Runs a test with each way of summing a window along an axis."""
  if request.param == 'scan':
    monkeypatch.setattr(nafnet, '_BAND_MAX_OUTPUTS', 0)
    monkeypatch.setattr(nafnet, '_BAND_MAX_MACS', 0)
  else:
    monkeypatch.setattr(nafnet, '_BAND_MAX_OUTPUTS', 10 ** 9)
  return request.param


@pytest.mark.parametrize('shape,window', [
    ((2, 130, 101, 3), 96),  # TLC's level-0 window of 256-pixel training, both axes sliding.
    ((1, 40, 97, 2), 48),  # The window spans H: one valid row, broadcast.
    ((1, 11, 15, 2), 6),  # Odd padding on both axes.
])
def test_separable_box_means_are_avgpool2d(shape, window, window_sums):
  x = jax.random.uniform(jax.random.key(3), shape) * 4 - 1
  expected = _box_means(x, window)
  np.testing.assert_allclose(jax.jit(nafnet.local_mean, static_argnums=1)(x, window), expected,
                             atol=2e-6)  # The reference form.
  padded = jax.jit(lambda x: [nafnet.edge_pad(nafnet.window_means(x, window), *shape[1:3], k)
                              for k in range(4)])(x)
  for turns, ours in enumerate(padded):
    turned = np.rot90(_box_means(np.rot90(np.asarray(x), turns, axes=(1, 2)), window), -turns,
                      axes=(1, 2))
    np.testing.assert_allclose(np.broadcast_to(ours, shape), turned, atol=2e-6, err_msg=turns)
  if shape[1:3] == (11, 15):  # The odd pixel's side matters: each turn pads another corner.
    turned = [np.rot90(_box_means(np.rot90(np.asarray(x), k, axes=(1, 2)), window), -k, axes=(1, 2))
              for k in range(4)]
    assert all(np.abs(turned[k] - turned[0]).max() > 1e-3 for k in (1, 2, 3))


@pytest.mark.parametrize('dtype,shape,window,turns', [
    # Both axes slide, with odd padding: every turn pads another corner.
    (jnp.float32, (2, 11, 15, 4), 6, (0, 1, 2, 3)),
    (jnp.bfloat16, (2, 11, 15, 4), 6, (0, 1)),
    # The window spans H (one valid row, broadcast); W's odd pixel goes right or left.
    (jnp.float32, (1, 5, 15, 4), 6, (0, 1)),
], ids=['sliding', 'sliding_bfloat16', 'spans_h'])
def test_nafblock_cpu_forms_are_the_reference_forms(dtype, shape, window, turns):
  """A whole block, turned: convs and TLC in the CPU forms, against the official forms.

  (Window sums by band matrix here; the prefix-sum scan is held to AvgPool2d above.)
  """

  def block(conv, tlc, dtype=dtype):
    return nafnet.NAFBlock(shape[-1], pool_window=window, dtype=dtype, conv_impl=conv,
                           tlc_impl=tlc, rngs=nnx.Rngs(0))
  _, params = _randomized(block('reference', 'reference'), 4)
  forms = [nnx.split(block(*impls), nnx.Param)[0] for impls in (
      ('xla_cpu', 'separable'), ('reference', 'reference'),
      ('reference', 'reference', jnp.float32))]
  x = jax.random.normal(jax.random.key(5), shape)
  _compare(forms if dtype == jnp.bfloat16 else forms[:2], params, x, turns)
