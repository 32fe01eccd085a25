"""benchmarks/accelerator.py --tiny on CPU, as the device machine would run it.

The accelerator run happens rarely, on a machine held for minutes, so it must
not rot in between: this runs every section of it at tiny sizes and checks
that each printed its lines, none with an error, and that the device checks
passed. It runs the script the way benchmarks/accelerator.sh does on the
device image: the working tree on PYTHONPATH with no install (python -S skips
the editable install's path hooks, so xydiff.configs must be found by the
script itself), and TensorFlow, tfds, clu and grain unimportable in the
script's own process, since the image has none of them. The sections run in
two processes at once, one per core.
"""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, 'benchmarks', 'accelerator.py')
GROUPS = ('device,inference,sampling,memory', 'train_step,input_pipeline,memory')
EXPECTED = {
    'device': {'info', 'bf16_vs_f32', 'upsample_reference_vs_subpixel', 'donation',
               'sharded_vs_one_device'},
    'inference': {'xydeblur_gopro_restored_float32', 'gopro_predictor_bfloat16',
                  'torch_official_xydeblur_float32'},
    'sampling': {'bare_calls', 'T3', 'T5'},
    'train_step': {'xydeblur_gopro_float32', 'dvsr_gopro_bfloat16', 'gopro_float32',
                   'torch_official_xydeblur_float32'},
    'input_pipeline': {'crops_per_s'},
    'memory': {'peak'},
}

# Modules the accelerator image lacks: importing one raises ImportError, while
# importlib.util.find_spec still finds it, so the input-pipeline section (a
# subprocess, which may import them) still runs here.
PRELUDE = '''
import importlib.abc, importlib.machinery, runpy, sys
ABSENT = {'tensorflow', 'tensorflow_datasets', 'clu', 'grain', 'array_record'}

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
  env = {**os.environ, 'PYTHONPATH': os.pathsep.join([REPO, *site_packages]),
         'PYTHONUNBUFFERED': '1'}
  procs = []
  for group in GROUPS:
    # Two CPU devices where the device checks run, so that the sharded train
    # step is compared with the one-device step for real.
    flags = '--xla_force_host_platform_device_count=2' if 'device' in group else ''
    procs.append(subprocess.Popen(
        [sys.executable, '-S', '-c', PRELUDE, SCRIPT, '--tiny', f'--sections={group}'],
        cwd=REPO, env={**env, 'XLA_FLAGS': flags}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True))
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


def test_device_checks_passed(records):
  checks = [r for r in records if r['section'] == 'device' and r['case'] != 'info']
  assert len(checks) == len(EXPECTED['device']) - 1
  failed = [r for r in checks if r.get('passed') is not True]
  assert not failed, json.dumps(failed, indent=1)
  by_case = {r['case']: r for r in checks}
  # The donation check compares against an undonated step: both sides ran.
  assert by_case['donation']['deleted_after_donated_step'] == by_case['donation']['state_arrays']
  summaries = [r for r in records if r['section'] == 'summary']
  assert all(not s['errors'] and not s['failed_checks'] for s in summaries), summaries


def test_runs_as_on_the_device_image(records):
  info = next(r for r in records if r['case'] == 'info')
  assert info['backend'] == 'cpu'
  assert info['configs_source'] != 'installed', info  # Found without the install.
  assert info['auto_upsample_impl'] == 'subpixel'


def test_figures_are_positive(records):
  by_case = {(r['section'], r['case']): r for r in records}
  for name in EXPECTED['train_step']:
    assert by_case[('train_step', name)]['images_per_s'] > 0
  assert by_case[('inference', 'gopro_predictor_bfloat16')]['latency_s'] > 0
  for steps in ('T3', 'T5'):
    record = by_case[('sampling', steps)]
    assert record['per_step_s'] > 0 and 'loop_overhead' in record
  pipeline = by_case[('input_pipeline', 'crops_per_s')]
  assert pipeline['cases'] and all(c['crops_per_s'] > 0 for c in pipeline['cases'])
