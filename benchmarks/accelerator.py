"""The prepared accelerator run: the device checks and every speed figure, as JSON lines.

  bash benchmarks/accelerator.sh                      # on the device machine (installs .whl/)
  python benchmarks/accelerator.py --tiny             # the same code on CPU, tiny sizes, seconds

A composition of the other benchmarks' `measure` functions and of
benchmarks/checks.py, at the sizes that matter on a GPU. Written for a
machine that holds a GPU only briefly and has no network and no TensorFlow,
clu or tfds: it imports nothing that needs them, finds the configs without an
install, and every case is wrapped, so one failure prints an `error` line and
the others still run. Each line is one JSON object with a `section` and a
`case`:

  device        backend, device kind and count, where xydiff.configs came from.
  checks        benchmarks/checks.py, each with `passed`: bf16 against float32,
                the two up-convolution forms, donation, sharded against one
                device (tests/test_on_accelerator.py asserts the same functions).
  inference     a float32 matmul's GFLOP/s, then 1280x720 latency of XYDeblur
                and of the xydiff predictor, float32 and bfloat16
                (benchmarks/inference.py), and of the official PyTorch XYDeblur
                (benchmarks/train_step_torch.py).
  sampling      the gopro config's bare predictor and denoiser calls and its
                time per sampling step at 720p for two T (benchmarks/sampling.py).
  train_step    every config below in float32 and bfloat16 at its own batch and
                crop (benchmarks/train_step.py), and the official PyTorch
                XYDeblur (L1, Adam) on the same device and batch.
  input_pipeline  crops/s of the training pipeline (benchmarks/input_pipeline.py),
                from image folders, and from tfds ArrayRecord records where tfds
                is installed.
  memory        peak device memory: JAX's memory_stats() per device and
                torch.cuda.max_memory_allocated.
  summary       errors, failed checks, wall time; the exit status is 1 if any
                case failed.

--tiny shrinks every network, batch and image so that the whole run takes
seconds on CPU (tests/test_accelerator.py runs it so); --budget_s stops
starting new cases once spent, so a slow compile cannot push the run past
the machine's limit (the skipped cases say so).
"""

import argparse
import importlib
import importlib.util
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # The other benchmarks.

# pylint: disable=wrong-import-position
import checks
import inference
import input_pipeline
import sampling
import train_step
import train_step_torch
from common import compile_cheaply, emit, load_config

CONFIGS = ('xydeblur_gopro', 'dvsr_gopro', 'gopro')
DTYPES = ('float32', 'bfloat16')
SECTIONS = ('device', 'checks', 'inference', 'sampling', 'train_step', 'input_pipeline', 'memory')


class Sizes:
  """Every size the run uses: the real ones, or --tiny's."""

  def __init__(self, tiny: bool):
    self.tiny = tiny
    self.height, self.width = (64, 96) if tiny else (720, 1280)
    # gopro's two presets' T; --tiny compiles one sampler, enough to run the code.
    self.sampling_steps = (3,) if tiny else (10, 500)
    self.repeats = 1 if tiny else 3
    self.matmul_side = 256 if tiny else 4096

  def pairs(self, names):
    """(name, dtype) cases: each name in each dtype; --tiny alternates the dtypes instead,
    which still compiles every name and every dtype once, in half the compiles."""
    if self.tiny:
      return [(name, DTYPES[i % len(DTYPES)]) for i, name in enumerate(names)]
    return [(name, dtype) for name in names for dtype in DTYPES]

  def config(self, name: str, dtype: str | None = None):
    """The packaged config `name` at its own batch and crop (--tiny's), one plain step per call."""
    config = load_config(name, dtype=dtype, tiny=self.tiny)
    config.train.steps_per_call = 1
    config.train.microbatches = 1
    return config


class Runner:
  """Runs cases: one JSON line each, errors caught, no new case once the budget is spent."""

  def __init__(self, budget_s: float):
    self.start = time.monotonic()
    self.deadline = self.start + budget_s
    self.errors = []
    self.failed_checks = []

  def case(self, section: str, name: str, fn):
    head = {'section': section, 'case': name}
    if time.monotonic() > self.deadline:
      emit({**head, 'skipped': 'the --budget_s is spent'})
      return None
    start, cpu = time.monotonic(), time.process_time()
    try:
      record = fn()
    except Exception as e:  # pylint: disable=broad-except
      self.errors.append(f'{section}/{name}')
      emit({**head, 'error': f'{type(e).__name__}: {e}'[:2000],
            'traceback': traceback.format_exc(limit=-4)[-3000:]})
      return None
    if record.get('passed') is False:
      self.failed_checks.append(f'{section}/{name}')
    # Wall and CPU seconds of the whole case, compiling included: what it
    # costs of the run's budget.
    emit({**head, **record, 'case_s': round(time.monotonic() - start, 2),
          'case_cpu_s': round(time.process_time() - cpu, 2)})
    return record


def device_section(run: Runner, configs_source: str):
  def info():
    import jax
    from xydiff.models import layers
    device = jax.devices()[0]
    return {'backend': jax.default_backend(), 'device_kind': device.device_kind,
            'device_count': jax.device_count(), 'local_device_count': jax.local_device_count(),
            'process_count': jax.process_count(), 'jax': jax.__version__,
            'auto_upsample_impl': layers.resolve_upsample_impl('auto'),
            'configs_source': configs_source, 'python': sys.version.split()[0]}
  run.case('device', 'info', info)


def checks_section(run: Runner, sizes: Sizes):
  for name, check in checks.CHECKS.items():
    run.case('checks', name, lambda check=check: check(sizes.tiny))


def inference_section(run: Runner, sizes: Sizes) -> dict:
  """Returns the records of the networks' cases, keyed (config name, dtype)."""
  matmul = run.case('inference', 'matmul_float32', lambda: {
      'side': sizes.matmul_side, 'gflops_per_s': inference.matmul_gflops_per_s(sizes.matmul_side)})
  outputs = {'xydeblur_gopro': 'restored', 'gopro': 'predictor'}
  records = {}
  for name, dtype in sizes.pairs(tuple(outputs)):
    records[name, dtype] = run.case(
        'inference', f'{name}_{outputs[name]}_{dtype}', lambda name=name, dtype=dtype: {
            'config': name, **inference.measure(
                sizes.config(name, dtype), outputs[name], height=sizes.height,
                width=sizes.width, repeats=sizes.repeats,
                matmul_gflops=matmul['gflops_per_s'] if matmul else None)})
  run.case('inference', 'torch_official_xydeblur_float32', lambda: train_step_torch.measure(
      'inference', height=sizes.height, width=sizes.width, steps=sizes.repeats, tiny=sizes.tiny))
  return records


def sampling_section(run: Runner, sizes: Sizes, inference_records: dict):
  config = sizes.config('gopro')
  # The inference section timed this predictor already where it ran at gopro's own dtype.
  predictor = inference_records.get(('gopro', config.model.dtype))
  calls = run.case('sampling', 'bare_calls', lambda: {'config': 'gopro', **sampling.measure_calls(
      config, height=sizes.height, width=sizes.width, repeats=sizes.repeats,
      predictor_call_s=predictor['latency_s'] if predictor else None)})
  for num_steps in sizes.sampling_steps:
    run.case('sampling', f'T{num_steps}', lambda num_steps=num_steps: {
        'config': 'gopro', **sampling.measure(config, height=sizes.height, width=sizes.width,
                                              num_steps=num_steps, calls=calls)})


def train_step_section(run: Runner, sizes: Sizes):
  for name, dtype in sizes.pairs(CONFIGS):
    run.case('train_step', f'{name}_{dtype}', lambda name=name, dtype=dtype: {
        'config': name, **train_step.measure(sizes.config(name, dtype), steps=sizes.repeats)})
  reference = sizes.config('xydeblur_gopro')  # The official network's batch and crop.
  run.case('train_step', 'torch_official_xydeblur_float32', lambda: train_step_torch.measure(
      'train', batch_size=reference.train.batch_size, crop=reference.data.crop,
      steps=sizes.repeats, tiny=sizes.tiny))


def input_pipeline_section(run: Runner, sizes: Sizes):
  def case():
    if importlib.util.find_spec('grain') is None:
      return {'skipped': 'grain not installed: the training input pipeline needs it'}
    # Preparing ArrayRecord records needs tfds; --tiny reads folders only.
    tfds = not sizes.tiny and importlib.util.find_spec('tensorflow_datasets') is not None
    result = input_pipeline.measure(sources=input_pipeline.SOURCES if tfds else ('folder',),
                                    **(input_pipeline.QUICK if sizes.tiny else {}))
    return {'cases': result['throughput']}
  run.case('input_pipeline', 'crops_per_s', case)


def memory_section(run: Runner):
  def case():
    import jax
    devices = []
    for d in jax.local_devices():
      stats = d.memory_stats() or {}
      devices.append({'device': str(d), 'peak_bytes_in_use': stats.get('peak_bytes_in_use'),
                      'bytes_limit': stats.get('bytes_limit')})
    record = {'jax': devices, 'jax_reports_memory': any(s['peak_bytes_in_use'] is not None
                                                        for s in devices)}
    if 'torch' in sys.modules:
      import torch
      record['torch_cuda_max_memory_allocated'] = (
          torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None)
    return record
  run.case('memory', 'peak', case)


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--tiny', action='store_true', help='tiny sizes: the whole run on CPU')
  parser.add_argument('--budget_s', type=float, default=420.0,
                      help='no case starts after this many seconds (memory and summary always run)')
  parser.add_argument('--sections', default=','.join(SECTIONS),
                      help=f'comma-separated subset of {",".join(SECTIONS)}')
  args = parser.parse_args()
  sections = args.sections.split(',')
  unknown = set(sections) - set(SECTIONS)
  if unknown:
    parser.error(f'--sections: unknown {sorted(unknown)}; known: {SECTIONS}')

  # Let JAX grow its GPU memory instead of taking most of it at start: PyTorch
  # runs on the same GPU, and the peaks reported are then what was used.
  os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  if args.tiny:
    compile_cheaply()
  run = Runner(args.budget_s)
  sizes = Sizes(args.tiny)
  try:
    module = importlib.import_module('xydiff.configs')
    configs_source = 'installed' if 'site-packages' in module.__file__ else 'working tree'
  except Exception as e:  # pylint: disable=broad-except
    configs_source = f'not importable: {type(e).__name__}: {e}'
    run.errors.append('import_configs')
    emit({'section': 'device', 'case': 'import_configs', 'error': configs_source})
  if 'device' in sections:
    device_section(run, configs_source)
  if 'checks' in sections:
    checks_section(run, sizes)
  inference_records = inference_section(run, sizes) if 'inference' in sections else {}
  if 'sampling' in sections:
    sampling_section(run, sizes, inference_records)
  if 'train_step' in sections:
    train_step_section(run, sizes)
  if 'input_pipeline' in sections:
    input_pipeline_section(run, sizes)
  run.deadline = float('inf')  # The memory line always comes.
  if 'memory' in sections:
    memory_section(run)
  emit({'section': 'summary', 'case': 'summary', 'tiny': args.tiny, 'errors': run.errors,
        'failed_checks': run.failed_checks,
        'wall_s': round(time.monotonic() - run.start, 1)})
  sys.exit(1 if run.errors or run.failed_checks else 0)


if __name__ == '__main__':
  main()
