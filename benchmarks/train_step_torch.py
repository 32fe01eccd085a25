"""The official XYDeblur (PyTorch) train step on this machine, for comparison.

  python benchmarks/train_step_torch.py --batch_size=4 --crop=256 --steps=3

Same workload as `benchmarks/train_step.py --config=xydiff/configs/xydeblur_gopro.py`:
the official network (xydiff/tools/torch_xydeblur.py), L1 on the restored
image, Adam. Prints one JSON object with the same keys (compile_s is the
first, warm-up step). Needs torch: pip install -e '.[torch]'.
"""

import argparse
import time

from common import emit


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--batch_size', type=int, default=4)
  parser.add_argument('--crop', type=int, default=256)
  parser.add_argument('--steps', type=int, default=3)
  parser.add_argument('--mode', choices=('train', 'inference'), default='train')
  parser.add_argument('--height', type=int, default=720, help='inference only')
  parser.add_argument('--width', type=int, default=1280, help='inference only')
  args = parser.parse_args()

  import torch
  from xydiff.tools.torch_xydeblur import OfficialXYDeblur

  torch.manual_seed(0)
  net = OfficialXYDeblur()
  if args.mode == 'inference':
    net.eval()
    x = torch.rand(1, 3, args.height, args.width)

    def step():
      with torch.no_grad():
        net(x)
  else:
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    blur = torch.rand(args.batch_size, 3, args.crop, args.crop)
    sharp = torch.rand(args.batch_size, 3, args.crop, args.crop)

    def step():
      optimizer.zero_grad()
      loss = torch.mean(torch.abs(net(blur)[2] - sharp))
      loss.backward()
      optimizer.step()

  start = time.perf_counter()
  step()
  first_s = time.perf_counter() - start
  best = float('inf')
  for _ in range(args.steps):
    start = time.perf_counter()
    step()
    best = min(best, time.perf_counter() - start)
  record = {'config': 'official XYDeblur (PyTorch)', 'backend': f'torch {torch.__version__} cpu',
            'threads': torch.get_num_threads()}
  if args.mode == 'inference':
    record.update({'case': 'inference', 'height': args.height, 'width': args.width,
                   'warmup_s': round(first_s, 2), 'latency_s': round(best, 4)})
  else:
    record.update({'batch_size': args.batch_size, 'crop': args.crop, 'compile_s': round(first_s, 2),
                   'step_s': round(best, 4), 'images_per_s': round(args.batch_size / best, 3)})
  emit(record)


if __name__ == '__main__':
  main()
