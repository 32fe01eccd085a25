"""The device checks of benchmarks/checks.py as tests: full size on an accelerator, tiny on CPU.

Each check runs at two sizes. `full` (the packaged configs' widths, 128²
images) is what only a GPU or TPU settles: it runs in this process where
JAX's default backend is not the CPU (`python -m pytest
tests/test_on_accelerator.py` on such a machine; `bash benchmarks/accelerator.sh`
prints the same records among its figures, without pytest), and is skipped
on CPU. `tiny` runs everywhere, on the CPU, so the checks cannot rot between
accelerator runs: in two child processes at once (one per core), each with
two CPU devices (a process's device count is fixed when JAX starts, and the
sharded check needs two), compiling at XLA's cheapest level as
`benchmarks/accelerator.py --tiny` does.
"""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / 'benchmarks'))  # The checks' one home.
import checks  # pylint: disable=wrong-import-position

SIZES = ('tiny', 'full')
FULL_SIZE_ON_CPU = ("full size is the accelerator's case (its kernels, its bfloat16 "
                    'arithmetic, its devices); on CPU the tiny case checks the same code in '
                    'seconds, where full size would take minutes')


def _tiny_on_cpu() -> tuple[dict, str]:
  """({check name: record} of every check at tiny size, the children's stderr)."""
  env = {**os.environ, 'JAX_NUM_CPU_DEVICES': '2', 'JAX_PLATFORMS': 'cpu'}
  # Halves in CHECKS order: the network checks, then the train-step checks
  # (which share one initial state and one compiled step).
  names = list(checks.CHECKS)
  halves = names[:len(names) // 2], names[len(names) // 2:]
  children = [subprocess.Popen(
      [sys.executable, str(REPO / 'benchmarks' / 'checks.py'), '--tiny',
       f'--checks={",".join(half)}'], cwd=REPO, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for half in halves]
  outputs = [child.communicate(timeout=600) for child in children]
  records = {}
  for stdout, _ in outputs:
    for line in stdout.splitlines():
      if line.startswith('{'):
        record = json.loads(line)
        records[record.pop('check')] = record
  return records, '\n'.join(stderr[-3000:] for _, stderr in outputs)


@pytest.fixture(scope='module')
def check_record():
  """fn(name, size) -> the check's record, each computed once per module."""
  cache, cpu_stderr = {}, []

  def record(name: str, size: str) -> dict:
    if size == 'full' and (name, size) not in cache:
      import jax  # pylint: disable=import-outside-toplevel
      if jax.default_backend() == 'cpu':
        pytest.skip(FULL_SIZE_ON_CPU)
      cache[name, size] = checks.CHECKS[name](False)
    elif size == 'tiny' and not cpu_stderr:
      records, stderr = _tiny_on_cpu()
      cache.update({(n, 'tiny'): r for n, r in records.items()})
      cpu_stderr.append(stderr)
    assert (name, size) in cache, f'{name} printed no record:\n{cpu_stderr[0]}'
    return cache[name, size]
  return record


@pytest.mark.parametrize('size', SIZES)
@pytest.mark.parametrize('name', list(checks.CHECKS))
def test_device_check_passes(check_record, name, size):
  record = check_record(name, size)
  # Only the machine can leave nothing to compare (one GPU: no second device
  # to shard over); the tiny children always have two CPU devices.
  if record['passed'] is None and size == 'full':
    pytest.skip(record['note'])
  assert record['passed'] is True, json.dumps(record, indent=1)
