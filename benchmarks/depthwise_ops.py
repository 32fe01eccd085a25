"""NAFNet's slow ops on XLA:CPU, each form of them, beside PyTorch: depthwise 3x3 convs and TLC's box mean.

  python benchmarks/depthwise_ops.py [--repeats=5] [--no-torch]

Prints one JSON object per case, at the feature sizes NAFNet-32 and -64 see on
a 640x360 image (padded to 368x640):
  * 'depthwise3x3': `layers.Conv(groups=C)` with impl 'reference'
    (lax.conv_general_dilated, feature_group_count=C) and 'xla_cpu' (nine
    shifted multiply-adds): forward, input gradient (dx), kernel gradient (dw);
    PyTorch's nn.Conv2d(groups=C) forward;
  * 'tlc_attention': NAFBlock's TLC channel attention, sca(pool(x)) times x,
    with tlc_impl 'reference' (summed-area table, 1x1 conv at every pixel)
    and 'separable' (window sums axis by axis, the 1x1 conv on the valid
    positions); PyTorch's local_arch.AvgPool2d + 1x1 conv + product.
Times are milliseconds of process time (CPU seconds of every thread), the
median of --repeats calls after one warm-up, cases interleaved call by call.
Torch runs in this process (torch threads = XLA threads = the cores), so a
side's process time also counts the other's idle threads: a rough figure;
benchmarks/zoo_forward.py keeps the sides in two processes. Outputs of every
form are checked against the reference (`max_abs_difference`).
"""

import argparse
import os
import statistics
import time

from common import emit

# (H, W, C) of conv2 (2x the block's channels) and of the pool (the block's
# channels), level by level, for NAFNet width 32 on 368x640; width 64 doubles C.
LEVELS = ((368, 640, 1), (184, 320, 2), (92, 160, 4), (46, 80, 8), (23, 40, 16))
WINDOWS = (384, 192, 96, 48, 24)  # tlc_windows(256, 4).


def _cpu_ms(fn):
  start = time.process_time()
  fn()
  return (time.process_time() - start) * 1e3


def interleaved(cases: dict, repeats: int) -> dict:
  """{name: median ms} of each zero-argument callable, called in turn `repeats` times after a warm-up."""
  for fn in cases.values():
    fn()
  times = {name: [] for name in cases}
  for _ in range(repeats):
    for name, fn in cases.items():
      times[name].append(_cpu_ms(fn))
  return {name: round(statistics.median(t), 2) for name, t in times.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--widths', default='32,64', help='NAFNet widths')
  parser.add_argument('--no-torch', dest='torch', action='store_false')
  args = parser.parse_args()

  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx
  from xydiff.models import layers, nafnet

  torch = None
  if args.torch:
    import torch
    from torch_refs import nafnet as torch_nafnet
    torch.set_num_threads(os.cpu_count())
  rng = np.random.default_rng(0)
  backend = jax.default_backend()

  def torch_case(fn, *args_):
    def run():
      with torch.no_grad():
        fn(*args_)
    return run

  for width in (int(w) for w in args.widths.split(',')):
    for (h, w, multiple), window in zip(LEVELS, WINDOWS):
      # ---------------------------------------------------------------- depthwise 3x3
      channels = 2 * width * multiple
      x = jnp.asarray(rng.standard_normal((1, h, w, channels), np.float32))
      convs = {}
      for impl in ('reference', 'xla_cpu'):
        graphdef, params = nnx.split(layers.Conv(channels, channels, 3, groups=channels,
                                                 impl=impl, rngs=nnx.Rngs(0)))

        def conv(x, kernel, graphdef=graphdef, params=params):
          return nnx.merge(graphdef, {**params, 'kernel': kernel})(x)
        convs[impl] = (conv, params['kernel'][...])
      cases, outputs = {}, {}
      for impl, (conv, kernel) in convs.items():
        forward = jax.jit(conv)
        dx = jax.jit(lambda x, k, conv=conv: jax.grad(lambda x: conv(x, k).sum())(x))
        dw = jax.jit(lambda x, k, conv=conv: jax.grad(lambda k: conv(x, k).sum())(k))
        outputs[impl] = np.asarray(forward(x, kernel))
        for name, fn in (('fwd', forward), ('dx', dx), ('dw', dw)):
          cases[f'{impl}_{name}'] = lambda fn=fn, k=kernel: jax.block_until_ready(fn(x, k))
      if torch is not None:
        conv = torch.nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        xt = torch.from_numpy(np.asarray(x)).permute(0, 3, 1, 2).contiguous()
        cases['torch_fwd'] = torch_case(conv, xt)
      ms = interleaved(cases, args.repeats)
      record = {'op': 'depthwise3x3', 'shape': [1, h, w, channels], 'backend': backend,
                **{f'{k}_ms': v for k, v in ms.items()},
                'max_abs_difference': float(np.abs(outputs['xla_cpu'] - outputs['reference']).max())}
      for name in ('fwd', 'dx', 'dw'):
        record[f'speedup_{name}'] = round(ms[f'reference_{name}'] / ms[f'xla_cpu_{name}'], 1)
      if torch is not None:
        record['xla_cpu_vs_torch_fwd'] = round(ms['torch_fwd'] / ms['xla_cpu_fwd'], 2)
        record['reference_vs_torch_fwd'] = round(ms['torch_fwd'] / ms['reference_fwd'], 2)
      emit(record)

      # ---------------------------------------------------------------- TLC attention
      channels = width * multiple
      x = jnp.asarray(rng.random((1, h, w, channels), np.float32))
      cases, outputs = {}, {}
      for impl in ('reference', 'separable'):
        block = nafnet.NAFBlock(channels, pool_window=window, dtype=jnp.float32, tlc_impl=impl,
                                rngs=nnx.Rngs(0))
        graphdef, params = nnx.split(block)
        fn = jax.jit(lambda p, x, graphdef=graphdef: x * nnx.merge(graphdef, p)._attention(x, 0))
        outputs[impl] = np.asarray(fn(params, x))
        cases[impl] = lambda fn=fn, p=params: jax.block_until_ready(fn(p, x))
      if torch is not None:
        pool = torch_nafnet.AvgPool2d(kernel_size=[window, window])
        sca = torch.nn.Conv2d(channels, channels, 1)
        xt = torch.from_numpy(np.asarray(x)).permute(0, 3, 1, 2).contiguous()
        cases['torch'] = torch_case(lambda t: t * sca(pool(t)), xt)
      ms = interleaved(cases, args.repeats)
      record = {'op': 'tlc_attention', 'shape': [1, h, w, channels], 'window': window,
                'backend': backend, **{f'{k}_ms': v for k, v in ms.items()},
                'max_abs_difference': float(np.abs(outputs['separable'] -
                                                   outputs['reference']).max()),
                'speedup': round(ms['reference'] / ms['separable'], 1)}
      if torch is not None:
        record['separable_vs_torch'] = round(ms['torch'] / ms['separable'], 2)
        record['reference_vs_torch'] = round(ms['torch'] / ms['reference'], 2)
      emit(record)


if __name__ == '__main__':
  main()
