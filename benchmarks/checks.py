"""Checks whose answer depends on the device: each a function of `tiny` returning a record.

  python benchmarks/checks.py [--tiny]       # one JSON line per check

The one home of each check. benchmarks/accelerator.py prints their records
among its figures; tests/test_on_accelerator.py asserts them (on an
accelerator at full size, on CPU at --tiny size where they mean something
there). Every record carries `passed` (None: nothing to compare on this
machine, with a `note` saying why) and the numbers it was decided on. Each
check also proves that its two sides differ in what they are meant to differ
in, so a check cannot pass by comparing one thing with itself.

  bf16_vs_f32                     the XY U-Net in bfloat16 against float32:
                                  output, kernel and bias gradients
  upsample_reference_vs_subpixel  lax.conv_transpose (what 'auto' picks off
                                  CPU) against the sub-pixel form, forward and
                                  gradients, XYDeblur
  donation                        a donated train step deletes the old state;
                                  an undonated argument survives
  sharded_vs_one_device           a train step with the batch split over every
                                  device against the same step on one device
"""

import argparse
import sys

from common import compile_cheaply, emit, initial_state, load_config, random_pairs

# bfloat16 keeps 8 significant bits (relative rounding 2^-9 per value); through
# a dozen layers the errors add up to about a percent of the signal. Relative
# L2 errors of the whole output and of the whole gradient beyond these mean a
# layer lost precision (e.g. a float32 accumulation that went bf16).
BF16_FORWARD_TOL = 3e-2
BF16_GRAD_TOL = 6e-2
# The two up-convolution implementations compute the same sums in another
# order: in float32 at full precision they agree to rounding.
UPSAMPLE_TOL = 1e-4
# One step on one device against the batch split over all: the same loss and
# gradient up to the order of the cross-device sum.
SHARDING_RTOL = 1e-4
SHARDING_PARAM_FRACTION = 1e-3


def image_side(tiny: bool) -> int:
  """Side of the checks' square images: small, since they check values, not speed."""
  return 32 if tiny else 128


def relative_error(a, b) -> float:
  """||a - b|| / ||b|| over every leaf of two pytrees together."""
  import jax
  import numpy as np
  pairs = list(zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
  diff = sum(float(np.sum((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2))
             for x, y in pairs)
  norm = sum(float(np.sum(np.asarray(y, np.float64) ** 2)) for _, y in pairs)
  return (diff / max(norm, 1e-30)) ** 0.5


def max_abs_diff(a, b) -> float:
  import jax
  import numpy as np
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _output_and_grads(model_fn, params, x, target):
  """Output and parameter gradient of a mean-square loss, jitted, at full matmul precision."""
  import jax
  import jax.numpy as jnp

  def loss(params):
    out = model_fn(params, x)
    return jnp.mean((out - target) ** 2), out
  with jax.default_matmul_precision('highest'):
    (_, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  return out, grads


def _random_images(seed: int, side: int):
  """An input and a target batch of two side x side images (NumPy: no eager compiles)."""
  import numpy as np
  rng = np.random.default_rng(seed)
  return rng.random((2, side, side, 3), np.float32), rng.random((2, side, side, 3), np.float32)


def bf16_vs_f32(tiny: bool) -> dict:
  """The xydiff predictor (an XY U-Net at the gopro config's widths) in bfloat16 against
  float32, from the same weights: output, kernel gradients and bias gradients."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx
  from xydiff.models.unet import UNet

  section = load_config('gopro', tiny=tiny).model.predictor
  kwargs = dict(in_channels=3, base=section.base, multipliers=tuple(section.multipliers),
                num_res=section.num_res, decoders=section.decoders, share=section.share,
                upsample_impl='auto')
  side = image_side(tiny)
  x, target = _random_images(0, side)
  _, params = nnx.split(UNet(rngs=nnx.Rngs(0), **kwargs))
  # The output convolution starts at zero (a U-Net predicts a residual);
  # random weights there make the output, and every gradient, non-trivial.
  # (NumPy, not eager JAX: one small compile per shape would cost seconds.)
  rng = np.random.default_rng(4)
  params = jax.tree.map(
      lambda p: p if p.ndim < 4 or np.any(p) else rng.uniform(-1.0, 1.0, p.shape).astype(
          p.dtype) / (p.shape[0] * p.shape[1] * p.shape[2]) ** 0.5,
      jax.device_get(params))
  results = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    graphdef = nnx.graphdef(nnx.eval_shape(lambda d=dtype: UNet(dtype=d, rngs=nnx.Rngs(0),
                                                                **kwargs)))
    results[jnp.dtype(dtype).name] = _output_and_grads(
        lambda p, y, g=graphdef: nnx.merge(g, p)(y)['output'], params, x, target)
  (out16, g16), (out32, g32) = results['bfloat16'], results['float32']
  forward = relative_error(out16, out32)

  # Kernels and biases apart: a bias gradient is a sum over the whole batch
  # and image, the first thing to go wrong if it is accumulated in bf16.
  def pick(tree, biases: bool):
    return [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
            if ('bias' in jax.tree_util.keystr(path)) == biases]
  grads = {kind: relative_error(pick(g16, kind == 'bias'), pick(g32, kind == 'bias'))
           for kind in ('kernel', 'bias')}
  # bfloat16 rounds every activation: an error of exactly zero means both
  # sides ran in float32.
  return {'network': 'XY U-Net (gopro predictor)', 'size': side,
          'forward_rel_error': round(forward, 5), 'forward_tol': BF16_FORWARD_TOL,
          'kernel_grad_rel_error': round(grads['kernel'], 5),
          'bias_grad_rel_error': round(grads['bias'], 5), 'grad_tol': BF16_GRAD_TOL,
          'passed': bool(0 < forward <= BF16_FORWARD_TOL
                         and max(grads.values()) <= BF16_GRAD_TOL)}


def upsample_reference_vs_subpixel(tiny: bool) -> dict:
  """XYDeblur with lax.conv_transpose up-convolutions against the sub-pixel form, same
  weights: forward and every gradient, float32 at full precision."""
  import jax
  import numpy as np
  from flax import nnx
  from xydiff.models.xydeblur import XYDeblur

  section = load_config('xydeblur_gopro', tiny=tiny).model
  build = lambda impl: XYDeblur(width=section.width, num_res=section.num_res,
                                upsample_impl=impl, rngs=nnx.Rngs(0))
  _, params = nnx.split(build('reference'))
  x, target = _random_images(1, image_side(tiny))
  results = {}
  for impl in ('reference', 'subpixel'):
    graphdef = nnx.graphdef(nnx.eval_shape(lambda impl=impl: build(impl)))
    results[impl] = _output_and_grads(lambda p, y, g=graphdef: nnx.merge(g, p)(y)['restored'],
                                      params, x, target)
  (out_r, g_r), (out_s, g_s) = results['reference'], results['subpixel']
  forward = max_abs_diff(out_r, out_s)
  grad_scale = max(1.0, max(float(np.max(np.abs(g))) for g in jax.tree.leaves(g_s)))
  grad = max_abs_diff(g_r, g_s) / grad_scale
  # The two forms add their products in different orders, so bitwise equal
  # outputs and gradients mean one form was compared with itself.
  return {'network': 'XYDeblur', 'precision': 'highest', 'forward_max_abs_diff': forward,
          'grad_max_abs_diff_scaled': grad, 'tol': UPSAMPLE_TOL,
          'passed': bool(0 < max(forward, grad)
                         and forward <= UPSAMPLE_TOL and grad <= UPSAMPLE_TOL)}


_TRAIN_STEPS = {}


def _train_step_on(tiny: bool, mesh):
  """(config, step, state, batch): xydeblur_gopro's train step as training builds it
  (donated), at 64² crops and two rows per device, state and batch placed on `mesh`.

  The step is built once per mesh (the donation and sharding checks share its
  compile); the state and batch are fresh on every call.
  """
  import jax
  from xydiff.runs import state as state_lib
  from xydiff.train import step as step_lib
  config = load_config('xydeblur_gopro', tiny=tiny)
  config.data.crop = min(config.data.crop, 64)  # Checks, not timings: small is enough.
  config.train.batch_size = 2 * jax.device_count()
  graphdef, state = initial_state(config)
  if (tiny, mesh) not in _TRAIN_STEPS:
    _TRAIN_STEPS[tiny, mesh] = step_lib.make_train_step(config, graphdef, mesh)
  # From host memory: fresh buffers that the donated step may consume.
  state = jax.device_put(state, state_lib.replicated(mesh))
  batch = state_lib.shard_batch(random_pairs(config.train.batch_size, config.data.crop),
                                state_lib.batch_sharding(mesh))
  return config, _TRAIN_STEPS[tiny, mesh], state, batch


def _run_step(step, state, batch):
  """One step, blocked on; at full matmul precision, which the sharding check needs and
  the donation check shares, so that both run one compiled program."""
  import jax
  with jax.default_matmul_precision('highest'):
    return jax.block_until_ready(step(state, batch))


def donation(tiny: bool) -> dict:
  """step.make_train_step donates the state: after one step the old state's buffers are
  deleted, and the batch, passed to the same call undonated, is not."""
  import jax
  from xydiff.runs import state as state_lib
  _, step, state, batch = _train_step_on(tiny, state_lib.make_mesh())
  old = jax.tree.leaves(state)
  _run_step(step, state, batch)
  # The batch went through the same call undonated: it must still be there,
  # or is_deleted() proves nothing.
  batch_deleted = sum(x.is_deleted() for x in jax.tree.leaves(batch))
  deleted = sum(x.is_deleted() for x in old)
  return {'state_arrays': len(old), 'deleted_after_donated_step': deleted,
          'undonated_batch_arrays_deleted': batch_deleted,
          'passed': deleted == len(old) and batch_deleted == 0}


def sharded_vs_one_device(tiny: bool) -> dict:
  """One train step (xydeblur_gopro, Adam) with the batch split over every device against
  the same step on the first device alone: loss, gradient norm and the updated weights."""
  import jax
  import numpy as np
  from xydiff.runs import state as state_lib
  devices = jax.devices()
  if len(devices) == 1:
    return {'devices': 1, 'passed': None,
            'note': 'one device: the sharded step is the one-device step; nothing to compare'}
  meshes = {'all': state_lib.make_mesh(),
            'one': jax.sharding.Mesh(np.asarray(devices[:1]), ('data',),
                                     axis_types=(jax.sharding.AxisType.Auto,))}
  out = {}
  for name, mesh in meshes.items():
    config, step, state, batch = _train_step_on(tiny, mesh)
    new, metrics = _run_step(step, state, batch)
    out[name] = (jax.device_get(new), jax.device_get(metrics),
                 len(batch['blur'].sharding.device_set))
  (s_all, m_all, split_all), (s_one, m_one, split_one) = out['all'], out['one']
  loss_err = abs(float(m_all['loss']) - float(m_one['loss'])) / abs(float(m_one['loss']))
  grad_err = (abs(float(m_all['grad_norm']) - float(m_one['grad_norm']))
              / abs(float(m_one['grad_norm'])))
  # Adam's first step moves each weight by about lr * sign(gradient): only
  # weights whose gradient is about zero may move differently, so count the
  # weights whose updates differ by over a hundredth of the learning rate.
  differ = sum(int(np.sum(np.abs(a - b) > 0.01 * config.train.lr))
               for a, b in zip(jax.tree.leaves(s_all['params']),
                               jax.tree.leaves(s_one['params']), strict=True))
  fraction = differ / sum(x.size for x in jax.tree.leaves(s_one['params']))
  return {'devices': len(devices), 'batch_split_over': split_all,
          'reference_split_over': split_one, 'rows': config.train.batch_size,
          'loss_rel_diff': loss_err, 'grad_norm_rel_diff': grad_err, 'rtol': SHARDING_RTOL,
          'params_updated_differently': fraction, 'params_fraction_tol': SHARDING_PARAM_FRACTION,
          'passed': bool(split_all == len(devices) and split_one == 1
                         and loss_err <= SHARDING_RTOL and grad_err <= SHARDING_RTOL
                         and fraction <= SHARDING_PARAM_FRACTION)}


CHECKS = {check.__name__: check for check in (
    bf16_vs_f32, upsample_reference_vs_subpixel, donation, sharded_vs_one_device)}


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--tiny', action='store_true', help='tiny networks and images (CPU)')
  parser.add_argument('--checks', default=','.join(CHECKS), help='comma-separated subset')
  args = parser.parse_args()
  if args.tiny:
    compile_cheaply()
  failed = []
  for name in args.checks.split(','):
    record = {'check': name, **CHECKS[name](args.tiny)}
    emit(record)  # As it comes: a check that crashes leaves the earlier ones' records.
    if record['passed'] is False:
      failed.append(name)
  sys.exit(1 if failed else 0)


if __name__ == '__main__':
  main()
