"""benchmarks/accelerator.py --tiny on CPU, as the device machine would run it.

The accelerator run happens rarely, on a machine held for minutes, so it must
not rot in between: this runs every figure section of it at tiny sizes and
checks that each printed its lines, none with an error, with positive
figures. It runs the script the way benchmarks/accelerator.sh does on the
device image: the working tree on PYTHONPATH with no install (python -S skips
the editable install's path hooks, so xydiff.configs must be found by the
script itself), and TensorFlow, tfds and clu unimportable in the script's own
process, since the image has none of them. The sections run in two processes
at once, one per core. The checks section's functions are run and asserted by
tests/test_on_accelerator.py (at tiny size on CPU); here only the section's
wiring is, with stand-in checks.
"""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, 'benchmarks', 'accelerator.py')
GROUPS = ('device,inference,sampling,input_pipeline,memory', 'train_step,memory')
EXPECTED = {
    'device': {'info'},
    'inference': {'matmul_float32', 'xydeblur_gopro_restored_float32', 'gopro_predictor_bfloat16',
                  'torch_official_xydeblur_float32'},
    'sampling': {'bare_calls', 'T3'},
    'train_step': {'xydeblur_gopro_float32', 'dvsr_gopro_bfloat16', 'gopro_float32',
                   'torch_official_xydeblur_float32'},
    'input_pipeline': {'crops_per_s'},
    'memory': {'peak'},
}

# Modules the accelerator image lacks (grain and array_record come as wheels,
# benchmarks/fetch_accelerator_wheels.sh): importing one raises ImportError,
# while importlib.util.find_spec still finds it.
PRELUDE = '''
import importlib.abc, importlib.machinery, runpy, sys
ABSENT = {'tensorflow', 'tensorflow_datasets', 'clu'}

class Absent(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  def find_spec(self, name, path=None, target=None):
    if name.partition('.')[0] in ABSENT:
      return importlib.machinery.ModuleSpec(name, self)
    return None

  def create_module(self, spec):
    raise ImportError(f'{spec.name} is not on the accelerator image')

  def exec_module(self, module):
    pass

sys.meta_path.insert(0, Absent())
sys.argv = [sys.argv[1]] + sys.argv[2:]
runpy.run_path(sys.argv[0], run_name='__main__')
'''


def _run_tiny():
  site_packages = [p for p in sys.path if p.endswith(('site-packages', 'dist-packages'))]
  # One OpenMP thread: PyTorch's waiting threads spin, which on a shared
  # two-core machine costs seconds of CPU for timings that mean nothing here.
  env = {**os.environ, 'PYTHONPATH': os.pathsep.join([REPO, *site_packages]),
         'PYTHONUNBUFFERED': '1', 'OMP_NUM_THREADS': '1'}
  procs = []
  for group in GROUPS:
    procs.append(subprocess.Popen(
        [sys.executable, '-S', '-c', PRELUDE, SCRIPT, '--tiny', f'--sections={group}'],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  results = [p.communicate(timeout=300) for p in procs]
  return [(p.returncode, out, err) for p, (out, err) in zip(procs, results)]


@pytest.fixture(scope='module')
def records():
  runs = _run_tiny()
  records = []
  for returncode, out, err in runs:
    lines = [json.loads(line) for line in out.splitlines() if line.startswith('{')]
    assert lines and lines[-1]['section'] == 'summary', f'no summary line:\n{out}\n{err[-3000:]}'
    assert returncode == 0 or lines[-1]['errors'] or lines[-1]['failed_checks'], err[-3000:]
    records += lines
  return records


def test_every_case_ran_without_error(records):
  errors = [r for r in records if 'error' in r]
  assert not errors, json.dumps(errors, indent=1)
  skipped = [r for r in records if 'skipped' in r]
  assert not skipped, skipped
  seen = {}
  for r in records:
    seen.setdefault(r['section'], set()).add(r['case'])
  for section, cases in EXPECTED.items():
    assert cases <= seen.get(section, set()), (section, seen.get(section))


def test_runs_as_on_the_device_image(records):
  info = next(r for r in records if r['case'] == 'info')
  assert info['backend'] == 'cpu'
  assert info['configs_source'] != 'installed', info  # Found without the install.
  assert info['auto_upsample_impl'] == 'subpixel'
  summaries = [r for r in records if r['section'] == 'summary']
  assert all(not s['errors'] and not s['failed_checks'] for s in summaries), summaries


def test_figures_are_positive(records):
  by_case = {(r['section'], r['case']): r for r in records}
  for name in EXPECTED['train_step']:
    record = by_case[('train_step', name)]
    assert record['step_s'] > 0 and record['images_per_s'] > 0, record
  for name in EXPECTED['inference'] - {'matmul_float32'}:
    assert by_case[('inference', name)]['latency_s'] > 0
  for name in ('xydeblur_gopro_restored_float32', 'gopro_predictor_bfloat16'):
    record = by_case[('inference', name)]
    assert record['gmacs'] > 0 and record['peak_fraction'] > 0, record
  record = by_case[('sampling', 'T3')]
  assert record['per_step_s'] > 0 and 'loop_overhead' in record, record
  pipeline = by_case[('input_pipeline', 'crops_per_s')]
  assert pipeline['cases'] and all(c['crops_per_s'] > 0 for c in pipeline['cases'])


def test_checks_section_reports_every_check_and_counts_failures(monkeypatch, capsys):
  """What accelerator.py makes of benchmarks/checks.py's records, with stand-in checks."""
  monkeypatch.syspath_prepend(os.path.dirname(SCRIPT))
  import accelerator  # pylint: disable=import-outside-toplevel
  sizes_seen = []

  def passes(tiny):
    sizes_seen.append(tiny)
    return {'passed': True}

  def crashes(tiny):
    raise RuntimeError(f'tiny={tiny}')
  stand_ins = {'passes': passes, 'fails': lambda tiny: {'passed': False},
               'crashes': crashes, 'not_applicable': lambda tiny: {'passed': None, 'note': 'n/a'}}
  monkeypatch.setattr(accelerator.checks, 'CHECKS', stand_ins)
  run = accelerator.Runner(budget_s=60.0)
  accelerator.checks_section(run, accelerator.Sizes(tiny=True))
  printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [(r['section'], r['case']) for r in printed] == [('checks', name) for name in stand_ins]
  assert sizes_seen == [True]
  assert run.failed_checks == ['checks/fails'] and run.errors == ['checks/crashes']
  assert 'tiny=True' in printed[2]['error']
