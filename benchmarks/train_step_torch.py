"""The official XYDeblur (PyTorch) train step or inference on this machine, for comparison.

  python benchmarks/train_step_torch.py --batch_size=4 --crop=256 --steps=3
  python benchmarks/train_step_torch.py --mode=inference --height=720 --width=1280

Same workload as `benchmarks/train_step.py --config=xydiff/configs/xydeblur_gopro.py`
(and `benchmarks/inference.py --config=xydeblur_gopro`): the official network
(tests/torch_refs/xydeblur.py), L1 on the restored image, Adam. Runs on the GPU
where torch sees one (cuDNN autotuning on), else on the CPU. Prints one JSON
object: first_call_s (the warm-up step), step_s or latency_s (best of
--steps). Needs torch: pip install -e '.[torch]'.
"""

import argparse
import time

from common import TINY_SECTIONS, emit

NETWORK = 'official XYDeblur (PyTorch)'


def measure(mode: str = 'train', *, batch_size: int = 4, crop: int = 256, height: int = 720,
            width: int = 1280, steps: int = 3, tiny: bool = False) -> dict:
  """Best-of-`steps` seconds of one Adam step on `batch_size` crops ('train'), or of
  restoring one height x width image ('inference'); `tiny` shrinks the network."""
  import torch
  from torch_refs.xydeblur import OfficialXYDeblur

  device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
  torch.backends.cudnn.benchmark = device.type == 'cuda'
  torch.manual_seed(0)
  net = OfficialXYDeblur(**(TINY_SECTIONS['xydeblur'] if tiny else {})).to(device)

  def sync():
    if device.type == 'cuda':
      torch.cuda.synchronize()

  if mode == 'inference':
    net.eval()
    x = torch.rand(1, 3, height, width, device=device)

    def step():
      with torch.no_grad():
        net(x)
      sync()
  elif mode == 'train':
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    blur = torch.rand(batch_size, 3, crop, crop, device=device)
    sharp = torch.rand(batch_size, 3, crop, crop, device=device)

    def step():
      optimizer.zero_grad()
      loss = torch.mean(torch.abs(net(blur)[2] - sharp))
      loss.backward()
      optimizer.step()
      sync()
  else:
    raise ValueError(f'mode must be train or inference, got {mode!r}')

  start = time.perf_counter()
  step()
  first_s = time.perf_counter() - start
  best = float('inf')
  for _ in range(steps):
    start = time.perf_counter()
    step()
    best = min(best, time.perf_counter() - start)
  record = {'network': NETWORK, 'mode': mode, 'torch': torch.__version__, 'device': str(device),
            'threads': torch.get_num_threads(), 'cudnn_benchmark': torch.backends.cudnn.benchmark,
            'dtype': 'float32', 'first_call_s': round(first_s, 3)}
  if mode == 'inference':
    return {**record, 'size': [height, width], 'latency_s': round(best, 5)}
  return {**record, 'batch_size': batch_size, 'crop': crop, 'step_s': round(best, 5),
          'images_per_s': round(batch_size / best, 3)}


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--batch_size', type=int, default=4)
  parser.add_argument('--crop', type=int, default=256)
  parser.add_argument('--steps', type=int, default=3)
  parser.add_argument('--mode', choices=('train', 'inference'), default='train')
  parser.add_argument('--height', type=int, default=720, help='inference only')
  parser.add_argument('--width', type=int, default=1280, help='inference only')
  args = parser.parse_args()
  emit(measure(args.mode, batch_size=args.batch_size, crop=args.crop, height=args.height,
               width=args.width, steps=args.steps))


if __name__ == '__main__':
  main()
