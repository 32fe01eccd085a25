"""Building blocks shared by every xydiff network.

The one idea that sets XYDeblur apart lives here: a convolution can be called
with its kernel turned by k quarter turns (`rotation=k`). A decoder called
once plainly and once with rotation 1 is XYDeblur's pair of weight-sharing
decoders, with no second copy of the weights and no transposed feature maps
(xy.py runs any number of them). For 'same'-padded odd convolutions and for
the 4x4 stride-2 transposed convolution below, running on unrotated features
with `rot90(W, -k)` equals the official code's rotate-features / run /
rotate-back formulation (tests/test_models.py). Layers with no such kernel
form (pixel shuffles, odd paddings) use `rotated_call`, which is that
formulation itself.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

# PyTorch's default initialisation (kaiming_uniform with a=sqrt(5)) is
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for both weights and biases; the official
# XYDeblur recipe was tuned with it.
_KERNEL_INIT = nnx.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def turned_kernel(kernel: jax.Array, rotation: int, dtype) -> jax.Array:
  """`kernel` turned by `rotation` quarter turns (the XY transform) and cast to `dtype`."""
  if rotation:
    kernel = rotate_kernel(kernel, rotation)
  return kernel.astype(dtype)


def rotate_kernel(kernel: jax.Array, quarter_turns: int = 1) -> jax.Array:
  """Turns an HWIO (or HW-OI) kernel clockwise by `quarter_turns` x 90 degrees in H and W.

  Clockwise on the kernel is counter-clockwise on the features: with it, a
  convolution computes rot90(conv(rot90(x, k)), -k), the official form.
  """
  return jnp.rot90(kernel, -int(quarter_turns), axes=(0, 1))


def rotated_call(fn, x: jax.Array, quarter_turns: int) -> jax.Array:
  """fn on the NHWC features turned counter-clockwise by k quarter turns, turned back.

  The feature-rotation form of a rotated layer, for layers whose kernels
  cannot simply be turned (a pixel shuffle, an asymmetric padding).
  """
  k = int(quarter_turns) % 4
  if k == 0:
    return fn(x)
  return jnp.rot90(fn(jnp.rot90(x, k, axes=(1, 2))), -k, axes=(1, 2))


def _bias_init(key, shape, fan_in, dtype=jnp.float32):
  bound = 1.0 / math.sqrt(fan_in)
  return jax.random.uniform(key, shape, dtype, -bound, bound)


class Conv(nnx.Module):
  """2-D convolution, NHWC, with bias; the codebase's only convolution.

  `padding` defaults to symmetric 'same' padding (k // 2 on each side), which
  for odd kernels and any stride matches PyTorch's `padding=k // 2`; that
  symmetry is also what lets a rotated kernel stand in for rotated features.
  An explicit `padding` (pixels on every side, PyTorch's `padding=p`) is for
  layers such as NAFNet's 2x2 stride-2 down-convolution (padding 0).
  `groups` splits the channels as PyTorch's `groups` does (groups=in_features
  is a depthwise convolution); the kernel is then [k, k, in/groups, out].
  `impl` (CONV_IMPLS) picks the form of depthwise (groups = in = out
  features) and 1x1 convolutions.
  """

  def __init__(self, in_features: int, out_features: int, kernel_size: int = 3,
               *, stride: int = 1, use_bias: bool = True,
               dtype=jnp.float32, zero_init: bool = False, groups: int = 1,
               padding: int | None = None, impl: str = 'auto', rngs: nnx.Rngs):
    if in_features % groups or out_features % groups:
      raise ValueError(f'groups={groups} must divide in_features={in_features} and '
                       f'out_features={out_features}')
    if impl not in CONV_IMPLS:
      raise ValueError(f'impl must be one of {CONV_IMPLS}, got {impl!r}')
    shape = (kernel_size, kernel_size, in_features // groups, out_features)
    # PyTorch's fan_in of a grouped convolution: in/groups * k * k.
    fan_in = in_features // groups * kernel_size * kernel_size
    init = nnx.initializers.zeros_init() if zero_init else _KERNEL_INIT
    self.kernel = nnx.Param(init(rngs.params(), shape, jnp.float32))
    if use_bias:
      self.bias = nnx.Param(jnp.zeros((out_features,)) if zero_init else
                            _bias_init(rngs.params(), (out_features,), fan_in))
    else:
      self.bias = None
    self.stride = stride
    self.pad = kernel_size // 2 if padding is None else padding
    self.groups = groups
    self.depthwise = 1 < groups == in_features == out_features
    self.pointwise = kernel_size == 1 and stride == 1 and self.pad == 0 and groups == 1
    self.impl = impl
    self.dtype = dtype

  def __call__(self, x: jax.Array, rotation: int = 0) -> jax.Array:
    x, kernel = x.astype(self.dtype), turned_kernel(self.kernel[...], rotation, self.dtype)
    cpu_form = resolve_conv_impl(self.impl) == 'xla_cpu'
    if cpu_form and self.depthwise:
      y = depthwise_conv_shifted(x, kernel, self.stride, self.pad)
    elif cpu_form and self.pointwise:
      y = jax.lax.dot_general(x, kernel[0, 0], (((3,), (0,)), ((), ())))
    else:
      y = jax.lax.conv_general_dilated(
          x, kernel, window_strides=(self.stride, self.stride),
          padding=((self.pad, self.pad), (self.pad, self.pad)),
          dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=self.groups)
    if self.bias is not None:
      y = _add_bias(y, self.bias[...], self.dtype)
    return y


# How depthwise and 1x1 convolutions are computed; the same parameters and the
# same function either way (tests/test_cpu_forms.py), a different speed.
#   'reference': `conv_general_dilated` (feature_group_count = channels for a
#     depthwise one), what GPU/TPU convolution libraries are built for (kept
#     there: the other forms were not measured on a GPU).
#   'xla_cpu': a depthwise convolution as k x k shifted multiply-adds of the
#     zero-padded input, one fused loop (XLA:CPU's grouped convolution runs
#     5-50x slower, forward and backward); a 1x1 convolution as a matmul
#     (dot_general), the same products, ~12% less time in NAFNet-64
#     (benchmarks/depthwise_ops.py, benchmarks/zoo_forward.py).
#   'auto': 'xla_cpu' on CPU, 'reference' elsewhere, decided when traced.
# Other convolutions have one form.
CONV_IMPLS = ('auto', 'reference', 'xla_cpu')


def resolve_impl(impl: str, impls: tuple[str, ...], on_cpu: str, name: str = 'impl') -> str:
  """`impl`, one of `impls`; 'auto' is `on_cpu` on CPU and 'reference' elsewhere, decided
  when traced (the CPU forms were measured against XLA:CPU; no GPU form beats the reference)."""
  if impl not in impls:
    raise ValueError(f'{name} must be one of {impls}, got {impl!r}')
  if impl == 'auto':
    return on_cpu if jax.default_backend() == 'cpu' else 'reference'
  return impl


def resolve_conv_impl(impl: str) -> str:
  return resolve_impl(impl, CONV_IMPLS, 'xla_cpu')


def depthwise_conv_shifted(x: jax.Array, kernel: jax.Array, stride: int = 1,
                           pad: int = 0) -> jax.Array:
  """NHWC depthwise convolution by a [k, k, 1, C] kernel as k x k shifted products.

  What `conv_general_dilated(..., feature_group_count=C)` computes, with
  `pad` zeros on every side: each tap's products over the strided window,
  summed tap by tap. In float32 whatever x's dtype, cast back once: summed in
  bfloat16, the k x k terms (and their gradients) would round at every step.
  """
  n, h, w, c = x.shape
  kh, kw = kernel.shape[:2]
  padded = jnp.pad(x.astype(jnp.float32), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  kernel = kernel.astype(jnp.float32)
  out_h, out_w = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1
  total = None
  for i in range(kh):
    for j in range(kw):
      window = jax.lax.slice(
          padded, (0, i, j, 0), (n, i + stride * (out_h - 1) + 1, j + stride * (out_w - 1) + 1, c),
          (1, stride, stride, 1))
      total = window * kernel[i, j, 0] if total is None else total + window * kernel[i, j, 0]
  return total.astype(x.dtype)


def _add_bias(y: jax.Array, bias: jax.Array, dtype) -> jax.Array:
  """y + bias, added in float32 and cast back to the activation dtype.

  The bias gradient is a sum over every pixel of the batch; added in bfloat16,
  that sum would be taken in bfloat16 too and stall far from its value.
  """
  return (y.astype(jnp.float32) + bias).astype(dtype)


# How the 4x4 stride-2 up-convolutions are computed; the same parameters and
# the same function either way (tests/test_models.py), a different speed.
#   'reference': `lax.conv_transpose`, what GPU/TPU convolution libraries do best.
#   'subpixel': one 'same' 3x3 convolution to 4x the channels, then
#     depth-to-space. XLA:CPU computes the kernel gradient of a transposed
#     convolution with a slow generic loop, several times slower than this
#     form (benchmarks/conv_ops.py measures both; README, "Speed").
#   'auto': 'subpixel' on CPU, 'reference' elsewhere, decided when traced.
UPSAMPLE_IMPLS = ('auto', 'reference', 'subpixel')

# PyTorch's ConvTranspose2d(k=4, s=2, p=1) writes output row 2m from kernel
# rows 3 and 1 at input rows m-1 and m, and row 2m+1 from kernel rows 2 and 0
# at input rows m and m+1. As taps of a 3-wide window centred on input row m
# (None: a zero tap), for the even and the odd output phase:
_PHASE_TAPS = ((3, 1, None), (None, 2, 0))


def resolve_upsample_impl(impl: str) -> str:
  if impl not in UPSAMPLE_IMPLS:
    raise ValueError(f'config.model.upsample_impl must be one of {UPSAMPLE_IMPLS}, got {impl!r}')
  if impl == 'auto':
    return 'subpixel' if jax.default_backend() == 'cpu' else 'reference'
  return impl


def subpixel_kernel(kernel: jax.Array) -> jax.Array:
  """HWOI 4x4 transposed-conv kernel -> 3x3 HWIO kernel with the 4 output phases.

  Output channels are ordered (row phase, column phase, channel).
  """
  k = jnp.swapaxes(kernel, 2, 3)  # [4, 4, in, out]
  zero = jnp.zeros_like(k[0, 0])
  tap = lambda r, c: zero if r is None or c is None else k[r, c]
  phases = [jnp.stack([jnp.stack([tap(r, c) for c in cols]) for r in rows])
            for rows in _PHASE_TAPS for cols in _PHASE_TAPS]
  return jnp.concatenate(phases, axis=-1)


class ConvTranspose(nnx.Module):
  """4x4 stride-2 transposed convolution that doubles H and W.

  Matches PyTorch's `ConvTranspose2d(k=4, s=2, p=1)`: `lax.conv_transpose` with
  padding (2, 2) and `transpose_kernel=True`. The kernel is stored HWOI
  (PyTorch's [in, out, kh, kw] permuted (2, 3, 1, 0)), which is the layout
  `transpose_kernel=True` expects. `impl` picks one of UPSAMPLE_IMPLS.
  """

  def __init__(self, in_features: int, out_features: int, *,
               dtype=jnp.float32, impl: str = 'auto', rngs: nnx.Rngs):
    k = 4
    # PyTorch computes fan_in of a transposed conv from weight.size(1) * k * k.
    fan_in = out_features * k * k
    bound = 1.0 / math.sqrt(fan_in)
    self.kernel = nnx.Param(jax.random.uniform(
        rngs.params(), (k, k, out_features, in_features), jnp.float32, -bound, bound))
    self.bias = nnx.Param(_bias_init(rngs.params(), (out_features,), fan_in))
    self.dtype = dtype
    self.impl = impl

  def __call__(self, x: jax.Array, rotation: int = 0) -> jax.Array:
    x, kernel = x.astype(self.dtype), turned_kernel(self.kernel[...], rotation, self.dtype)
    if resolve_upsample_impl(self.impl) == 'subpixel':
      n, h, w, _ = x.shape
      out = kernel.shape[2]
      y = jax.lax.conv_general_dilated(
          x, subpixel_kernel(kernel), window_strides=(1, 1), padding=((1, 1), (1, 1)),
          dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
      y = y.reshape(n, h, w, 2, 2, out).transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, out)
    else:
      y = jax.lax.conv_transpose(
          x, kernel, strides=(2, 2), padding=((2, 2), (2, 2)),
          dimension_numbers=('NHWC', 'HWIO', 'NHWC'), transpose_kernel=True)
    return _add_bias(y, self.bias[...], self.dtype)


class ResBlock(nnx.Module):
  """x + conv(relu(conv(x))), 3x3 'same' convolutions, no normalisation, nothing after
  the sum: the residual block of XYDeblur and DMPHN (and the ResBlocks of many
  early deblurring networks)."""

  def __init__(self, features: int, *, dtype, rngs: nnx.Rngs):
    self.conv1 = Conv(features, features, 3, dtype=dtype, rngs=rngs)
    self.conv2 = Conv(features, features, 3, dtype=dtype, rngs=rngs)

  def __call__(self, x, rotation: int = 0):
    return x + self.conv2(jax.nn.relu(self.conv1(x, rotation)), rotation)


class ResStack(nnx.Module):
  """`num_blocks` ResBlocks in a row (parameters under blocks/<i>/conv1|conv2)."""

  def __init__(self, features: int, num_blocks: int, *, dtype, rngs: nnx.Rngs):
    self.blocks = nnx.List([ResBlock(features, dtype=dtype, rngs=rngs)
                            for _ in range(num_blocks)])

  def __call__(self, x, rotation: int = 0):
    for block in self.blocks:
      x = block(x, rotation)
    return x


def pad_to_multiple(x: jax.Array, multiple: int) -> tuple[jax.Array, tuple[int, int]]:
  """Reflect-pads H and W of an NHWC batch up to a multiple; returns the original size.

  Reflection (not zeros) keeps image statistics at the border, so the cropped
  result is unaffected by the padding except within a few pixels of the edge.
  """
  h, w = x.shape[1], x.shape[2]
  ph, pw = (-h) % multiple, (-w) % multiple
  if ph or pw:
    if ph >= h or pw >= w:
      raise ValueError(
          f'image of {h}x{w} pixels is too small: the network needs at least '
          f'{multiple // 2 + 1}x{multiple // 2 + 1}')
    x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode='reflect')
  return x, (h, w)


def sinusoidal_embedding(level: jax.Array, dim: int, scale: float) -> jax.Array:
  """Transformer-style sinusoids of a continuous noise level (WaveGrad/SR3).

  `scale` stretches levels in [0, 1] before the sinusoids; WaveGrad uses 5000.
  With scale 1 every frequency sees only a tiny phase range and the embedding
  is nearly linear, which is why the scale is a config field.
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / half)
  args = scale * level.astype(jnp.float32)[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


class ThreeScaleEncoder(nnx.Module):
  """Conv, ResBlocks, stride-2 conv, ResBlocks, stride-2 conv, ResBlocks: features at full,
  1/2 and 1/4 resolution, returned coarsest first (z, e2, e1).

  The encoder of XYDeblur (Encoder1..3 of its official code; `relu` after each
  conv) and of DMPHN's levels (models.Encoder; no activation outside the ResBlocks).
  """

  def __init__(self, in_channels: int, width: int, num_res: int, *, relu: bool, dtype,
               rngs: nnx.Rngs):
    self.stem = Conv(in_channels, width, 3, dtype=dtype, rngs=rngs)
    self.res1 = ResStack(width, num_res, dtype=dtype, rngs=rngs)
    self.down2 = Conv(width, 2 * width, 3, stride=2, dtype=dtype, rngs=rngs)
    self.res2 = ResStack(2 * width, num_res, dtype=dtype, rngs=rngs)
    self.down3 = Conv(2 * width, 4 * width, 3, stride=2, dtype=dtype, rngs=rngs)
    self.res3 = ResStack(4 * width, num_res, dtype=dtype, rngs=rngs)
    self.relu = relu

  def __call__(self, x):
    act = jax.nn.relu if self.relu else (lambda h: h)
    e1 = self.res1(act(self.stem(x)))
    e2 = self.res2(act(self.down2(e1)))
    return self.res3(act(self.down3(e2))), e2, e1

