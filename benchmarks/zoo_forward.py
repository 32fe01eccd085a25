"""Every zoo model's forward pass against the official PyTorch code, CPU seconds, one process pair.

  python benchmarks/zoo_forward.py                      # 640x360, batch 1, float32, 5 rounds
  python benchmarks/zoo_forward.py --models=nafnet32,nafnet64 --rounds=7
  python benchmarks/zoo_forward.py --upsample_impl=reference   # xydiff's GPU/TPU forms on the CPU

This process runs xydiff; a second one, started here, runs the official
networks (the tests/torch_refs transcriptions, with their checkpoint keys). For
each model the worker builds the official network with seeded random weights
(NAFNet's beta, gamma and norms randomised too: a fresh block is the identity),
hands over its state dict, and xydiff loads it as an official checkpoint
(xydiff.interop.keymaps.FORMATS[family].key_map through official.convert). Both
restore the same image; the outputs must agree (--atol). Then `--rounds`
rounds, each one forward pass on either side, one side at a time, the side
that goes first alternating: both see the same load. A side's time is its
process time (all its threads' CPU seconds) and its wall time; torch and XLA
both use every core. `speedup` is official / xydiff per round; the median and
the range over the rounds are printed.

What a forward pass covers: the image in, the restored image out, as each
side's test code runs it. DMPHN's official splits need H a multiple of 16:
the worker reflect-pads and crops, as xydiff does inside its forward.
DeepDeblur's official pyramid is scikit-image's, computed before the network
(tests/torch_refs/deepdeblur.restore); xydiff computes its pyramid inside the
forward, so the worker's time includes the pyramid (`official_pyramid_cpu_s`
reports its part). NAFNet runs as NAFNetLocal (TLC at the authors' 256 training
size), as the authors' GoPro test configs run it.

Prints one JSON object per model, then a Markdown table. Needs torch and
scikit-image: pip install -e '.[torch]'.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

from common import REPO, emit

MODELS = ('xydeblur', 'mimo_unet', 'mimo_unet_plus', 'dmphn_1_2_4_8', 'deepdeblur', 'nafnet32',
          'nafnet64')
LABELS = {'xydeblur': 'XYDeblur', 'mimo_unet': 'MIMO-UNet', 'mimo_unet_plus': 'MIMO-UNet+',
          'dmphn_1_2_4_8': 'DMPHN-1-2-4-8', 'deepdeblur': 'DeepDeblur',
          'nafnet32': 'NAFNet-32 (TLC)', 'nafnet64': 'NAFNet-64 (TLC)'}
SEED = 0


def image(height: int, width: int):
  """The one test image both sides build: uniform noise in [0, 1], HxWx3 float32."""
  import numpy as np
  return np.random.default_rng(SEED).random((height, width, 3), np.float32)


# ------------------------------------------------------------------ the official side


class _Official:
  """The official network of `model`, its state dict (official keys) and its forward pass."""

  def __init__(self, model: str):
    import torch
    import torch.nn.functional as F
    from torch_refs import deepdeblur, dmphn, mimo_unet, nafnet, xydeblur

    torch.manual_seed(SEED)
    self.pyramid_s = None
    if model == 'xydeblur':
      net = xydeblur.OfficialXYDeblur().eval()
      self.state_dict = net.state_dict()
      self.forward = lambda x: net(x)[2]
    elif model in ('mimo_unet', 'mimo_unet_plus'):
      plus = model == 'mimo_unet_plus'
      net = mimo_unet.MIMOUNet(num_res=20 if plus else 8, dropout=plus).eval()
      self.state_dict = net.state_dict()
      self.forward = lambda x: net(x)[2]
    elif model == 'dmphn_1_2_4_8':
      nets = dmphn.make_networks(4)
      self.state_dict = {f'{name}.{k}': v for name, net in nets.items()
                         for k, v in net.state_dict().items()}

      def forward(x):
        h = x.shape[2]
        padded = F.pad(x, (0, 0, 0, -h % 16), mode='reflect')
        return dmphn.restore_1_2_4_8(nets, padded)[:, :, :h]
      self.forward = forward
    elif model == 'deepdeblur':
      net = deepdeblur.MSResNet().eval()
      self.state_dict = net.state_dict()

      def forward(x):  # The authors' demo path: 0..255 image, skimage pyramid, network.
        img = x[0].permute(1, 2, 0).numpy() * 255
        start = time.process_time()
        padded, _ = deepdeblur.pad_edge(img, 4)
        pyramid = [torch.from_numpy(level.transpose(2, 0, 1).copy())[None]
                   for level in deepdeblur.generate_pyramid(padded, 3)]
        self.pyramid_s = time.process_time() - start
        out = net(pyramid)[0][:, :, :img.shape[0], :img.shape[1]]
        return out / 255
      self.forward = forward
    elif model in ('nafnet32', 'nafnet64'):
      width = 32 if model == 'nafnet32' else 64
      net = nafnet.NAFNetLocal(width=width, middle_blk_num=1, enc_blk_nums=[1, 1, 1, 28],
                               dec_blk_nums=[1, 1, 1, 1], train_size=(1, 3, 256, 256))
      net = nafnet.randomize(net.eval(), SEED)
      self.state_dict = net.state_dict()
      self.forward = net
    else:
      raise ValueError(f'no official network for {model!r}')


def worker():
  """The official side: one JSON command a line on stdin, one JSON answer a line on stdout."""
  import numpy as np
  import torch
  torch.set_num_threads(os.cpu_count())
  networks = {}
  for line in sys.stdin:
    command = json.loads(line)
    op = command['op']
    if op == 'hello':
      answer = {'torch': torch.__version__, 'threads': torch.get_num_threads()}
    elif op == 'load':
      official = networks[command['model']] = _Official(command['model'])
      path = os.path.join(command['dir'], f"{command['model']}.npz")
      np.savez(path, **{k: v.numpy() for k, v in official.state_dict.items()})
      answer = {'state_dict': path}
    elif op == 'run':
      official = networks[command['model']]
      x = torch.from_numpy(image(*command['size'])).permute(2, 0, 1)[None].contiguous()
      wall, cpu = time.perf_counter(), time.process_time()
      with torch.no_grad():
        out = official.forward(x)
      cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
      answer = {'cpu_s': cpu, 'wall_s': wall, 'pyramid_cpu_s': official.pyramid_s}
      if command.get('save'):
        answer['output'] = os.path.join(command['dir'], f"{command['model']}_out.npy")
        np.save(answer['output'], out[0].permute(1, 2, 0).numpy())
    elif op == 'drop':
      networks.pop(command['model'], None)
      answer = {}
    else:
      answer = {'error': f'unknown op {op!r}'}
    print(json.dumps(answer), flush=True)


class _Worker:
  """The official side's process, spoken to one command at a time."""

  def __init__(self):
    self.process = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), '--worker'], cwd=REPO, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)

  def __call__(self, **command):
    self.process.stdin.write(json.dumps(command) + '\n')
    self.process.stdin.flush()
    line = self.process.stdout.readline()
    if not line:
      raise RuntimeError(f'the PyTorch worker stopped (exit code {self.process.wait()})')
    return json.loads(line)

  def close(self):
    self.process.stdin.close()
    self.process.wait()


# ------------------------------------------------------------------ the xydiff side


def _xydiff_forward(model: str, state_dict: dict, upsample_impl: str):
  """jit(params, x) -> restored of the registered `model`, and its params from the official state dict."""
  import jax
  from flax import nnx
  from xydiff import models
  from xydiff.interop import keymaps, official
  config = official.config_for(model)
  config.model.dtype = 'float32'
  # NAFNet's depthwise convs and TLC (layer_impl: 'auto' or 'reference') choose as the
  # up-convolutions of the others do.
  for field in ('upsample_impl', 'layer_impl'):
    if field in config.model and (field == 'upsample_impl' or upsample_impl != 'subpixel'):
      config.model[field] = upsample_impl
  graphdef, target = nnx.split(nnx.eval_shape(lambda: models.build(config.model)), nnx.Param)
  key_map = keymaps.FORMATS[config.model.name].key_map(config.model)
  params = official.convert(state_dict, key_map, nnx.to_pure_dict(target))
  return jax.jit(lambda p, x: nnx.merge(graphdef, p)(x)['restored']), jax.device_put(params)


def _spread(values, digits=3):
  return [round(min(values), digits), round(max(values), digits)]


def measure(model: str, worker, *, height: int, width: int, rounds: int, upsample_impl: str,
            atol: float, workdir: str) -> dict:
  import jax
  import numpy as np
  state_dict = dict(np.load(worker(op='load', model=model, dir=workdir)['state_dict']))
  fn, params = _xydiff_forward(model, state_dict, upsample_impl)
  x = jax.device_put(image(height, width)[None])
  start = time.perf_counter()
  ours = np.asarray(jax.block_until_ready(fn(params, x)))[0]  # Compiles.
  compile_s = time.perf_counter() - start
  theirs = np.load(worker(op='run', model=model, size=[height, width], save=True,
                          dir=workdir)['output'])
  difference = float(np.abs(ours - theirs).max())
  if not difference <= atol:
    raise AssertionError(f'{model}: xydiff and the official network differ by {difference} '
                         f'(--atol={atol})')

  def ours_once():
    wall, cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn(params, x))
    return {'cpu_s': time.process_time() - cpu, 'wall_s': time.perf_counter() - wall}

  times = {'xydiff': [], 'official': []}
  for r in range(rounds):
    sides = [('xydiff', ours_once),
             ('official', lambda: worker(op='run', model=model, size=[height, width]))]
    for side, run in sides if r % 2 == 0 else sides[::-1]:
      times[side].append(run())
  worker(op='drop', model=model)

  def median(side, key):
    return statistics.median(t[key] for t in times[side])
  ratios = {key: [theirs[key] / mine[key]
                  for theirs, mine in zip(times['official'], times['xydiff'])]
            for key in ('cpu_s', 'wall_s')}
  record = {'model': model, 'size': [height, width], 'batch': 1, 'dtype': 'float32',
            'upsample_impl': upsample_impl, 'rounds': rounds,
            'xydiff_cpu_s': round(median('xydiff', 'cpu_s'), 3),
            'xydiff_cpu_s_range': _spread([t['cpu_s'] for t in times['xydiff']]),
            'official_cpu_s': round(median('official', 'cpu_s'), 3),
            'official_cpu_s_range': _spread([t['cpu_s'] for t in times['official']]),
            'speedup_cpu': round(statistics.median(ratios['cpu_s']), 2),
            'speedup_cpu_range': _spread(ratios['cpu_s'], 2),
            'xydiff_wall_s': round(median('xydiff', 'wall_s'), 3),
            'official_wall_s': round(median('official', 'wall_s'), 3),
            'speedup_wall': round(statistics.median(ratios['wall_s']), 2),
            'max_abs_difference': float(f'{difference:.2g}'),
            'xydiff_compile_s': round(compile_s, 1)}
  if times['official'][0]['pyramid_cpu_s'] is not None:
    record['official_pyramid_cpu_s'] = round(
        statistics.median(t['pyramid_cpu_s'] for t in times['official']), 3)
  return record


def markdown(records, machine: str) -> str:
  lines = [f'Forward pass, {machine}.', '',
           '| model | xydiff CPU s | official CPU s | speedup (CPU s), median [range] | '
           'speedup (wall) | max abs difference |',
           '|---|---|---|---|---|---|']
  for r in records:
    lines.append(
        f"| {LABELS.get(r['model'], r['model'])} | {r['xydiff_cpu_s']:.3f} | "
        f"{r['official_cpu_s']:.3f} | {r['speedup_cpu']:.2f}x [{r['speedup_cpu_range'][0]:.2f}, "
        f"{r['speedup_cpu_range'][1]:.2f}] | {r['speedup_wall']:.2f}x | "
        f"{r['max_abs_difference']:.1e} |")
  return '\n'.join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--models', default=','.join(MODELS),
                      help=f'comma-separated, of {", ".join(MODELS)}')
  parser.add_argument('--height', type=int, default=360)
  parser.add_argument('--width', type=int, default=640)
  parser.add_argument('--rounds', type=int, default=5, help='timed forward passes a side')
  parser.add_argument('--upsample_impl', default='auto',
                      help="xydiff's config.model.upsample_impl, and NAFNet's layer_impl "
                           "('reference': the GPU/TPU forms)")
  parser.add_argument('--atol', type=float, default=1e-4,
                      help='largest allowed |xydiff - official| of the restored image')
  parser.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    worker()
    return

  import jax
  import jaxlib
  models = [m.strip() for m in args.models.split(',') if m.strip()]
  unknown = sorted(set(models) - set(MODELS))
  if unknown:
    parser.error(f'unknown models {unknown}; choose from {MODELS}')
  official = _Worker()
  hello = official(op='hello')
  cores = os.cpu_count()
  machine_info = {'backend': jax.default_backend(), 'cores': cores, 'jax': jax.__version__,
                  'jaxlib': jaxlib.__version__, 'torch': hello['torch'],
                  'torch_threads': hello['threads'], 'processor': platform.processor() or None}
  records = []
  try:
    with tempfile.TemporaryDirectory() as workdir:
      for model in models:
        record = measure(model, official, height=args.height, width=args.width,
                         rounds=args.rounds, upsample_impl=args.upsample_impl, atol=args.atol,
                         workdir=workdir)
        records.append(record)
        emit({**record, **machine_info})
  finally:
    official.close()
  machine = (f"{args.width}x{args.height}, batch 1, float32, {cores}-core CPU "
             f"(jax/jaxlib {jax.__version__}/{jaxlib.__version__}, torch {hello['torch']}, "
             f"{hello['threads']} torch threads), {args.rounds} interleaved rounds, "
             f"upsample_impl={args.upsample_impl}")
  print(markdown(records, machine), flush=True)


if __name__ == '__main__':
  main()
