"""Where XYDeblur's CPU training time goes: single layers, forward and both gradients.

  python benchmarks/conv_ops.py

Prints one JSON object per case: the layer, its shape, the backend and the
best-of-3 milliseconds of the forward pass, the input gradient (dx) and the
kernel gradient (dw). Two findings shaped xydiff's CPU path:
  * the 4x4 stride-2 transposed convolution's kernel gradient is computed by
    a slow generic loop on XLA:CPU; the sub-pixel form (one 3x3 convolution
    to 4x the channels, then depth-to-space) is the same function without it
    (config.model.upsample_impl);
  * a 3x3 convolution slows down sharply once it has more than about
    2 x 256^2 rows (batch x height x width), so a batch of 4 crops of 256^2
    trains faster as micro-batches (config.train.microbatches).
"""

import argparse

from common import emit, timed


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()

  import jax
  import jax.numpy as jnp
  import numpy as np
  from xydiff.models import layers

  rng = np.random.default_rng(0)
  backend = jax.default_backend()

  def report(layer, shape, fn, x, kernel):
    cases = {'fwd': fn,
             'dx': lambda x, k: jax.grad(lambda x: fn(x, k).sum())(x),
             'dw': lambda x, k: jax.grad(lambda k: fn(x, k).sum())(k)}
    record = {'layer': layer, 'shape': shape, 'backend': backend}
    for name, case in cases.items():
      _, best = timed(jax.jit(case), x, kernel, repeats=args.repeats)
      record[f'{name}_ms'] = round(best * 1e3, 1)
    emit(record)

  def conv3(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)),
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  for batch, size, channels in ((1, 256, 32), (2, 256, 32), (4, 256, 32), (4, 128, 64),
                                (4, 64, 128)):
    x = jnp.asarray(rng.random((batch, size, size, channels), np.float32))
    kernel = jnp.asarray(rng.random((3, 3, channels, channels), np.float32) * 0.01)
    report('conv3x3', [batch, size, size, channels], conv3, x, kernel)

  from flax import nnx
  x = jnp.asarray(rng.random((4, 128, 128, 64), np.float32))
  for impl in ('reference', 'subpixel'):
    graphdef, params = nnx.split(layers.ConvTranspose(64, 32, impl=impl, rngs=nnx.Rngs(0)))

    def upconv(x, kernel, graphdef=graphdef, params=params):
      return nnx.merge(graphdef, {**params, 'kernel': kernel})(x)
    report(f'upconv4x4s2 ({impl})', [4, 128, 128, 64], upconv, x, params['kernel'][...])

if __name__ == '__main__':
  main()
