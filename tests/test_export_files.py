"""What export writes and what it reads: never a run's files, never through a link, and
a stored config or tensor xydiff cannot use is one line naming the file."""

import errno
import json
import os

import numpy as np
import pytest

from conftest import run_xydiff, tiny
from test_ensemble import random_state, save_run
from xydiff.inference import restorer as inference
from xydiff.interop import export
from xydiff.runs import checkpoint, state as state_lib
from xydiff.configs import demo
from xydiff.errors import (USER_ERRORS, ConfigError, ExportWriteError, LinkedFileError,
                           WeightsError)
from xydiff.cli import export as export_tool

SECRET = b'a file that must never be written'


def _contents(path):
  """(metadata, {name: tensor}) of a safetensors file, read by safetensors alone."""
  from safetensors import safe_open
  with safe_open(str(path), framework='np') as f:
    return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
  """Random tiny XYDeblur weights and their safetensors file (no workdir, no checkpoint)."""
  config = tiny(demo.get_config())
  graphdef, state = random_state(config)
  good = str(tmp_path_factory.mktemp('weights') / 'good.safetensors')
  export.write_safetensors(good, config, state['params'], 7, ema=False)
  metadata, tensors = _contents(good)
  return {'config': config, 'graphdef': graphdef, 'params': state['params'], 'good': good,
          'metadata': metadata, 'tensors': tensors}


@pytest.fixture(scope='module')
def run(tmp_path_factory, weights):
  """A workdir of the same weights, and what `xydiff export --format=safetensors` makes of it."""
  workdir = save_run(tmp_path_factory.mktemp('export_files') / 'run', weights['config'],
                     state_lib.state_from_params(weights['config'], weights['params']))
  good = str(tmp_path_factory.mktemp('export_files') / 'good.safetensors')
  export_tool.export_run(workdir, 'safetensors', good)
  metadata, tensors = _contents(good)
  return {'workdir': workdir, 'metadata': metadata, 'tensors': tensors}


def _tree(folder) -> dict[str, bytes]:
  """{relative path: contents} of every file below `folder`, to see that nothing changed."""
  found = {}
  for parent, _, names in os.walk(folder):
    for name in names:
      path = os.path.join(parent, name)
      with open(path, 'rb') as f:
        found[os.path.relpath(path, folder)] = f.read()
  return found


def _is_the_export(path, run) -> bool:
  """Whether `path` holds the run's export (safetensors orders its header as it likes)."""
  metadata, tensors = _contents(path)
  return metadata == run['metadata'] and set(tensors) == set(run['tensors']) and all(
      np.array_equal(tensors[k], run['tensors'][k]) for k in tensors)


def _one_line(error: BaseException) -> str:
  text = str(error)
  assert isinstance(error, USER_ERRORS) and '\n' not in text, text
  return text


# ------------------------------------------------------------------ where --out may be

def test_out_inside_any_run_is_refused_before_anything_is_read_or_written(run, weights,
                                                                           tmp_path):
  other = tmp_path / 'other_run'  # Another run: its config.json alone marks it.
  other.mkdir()
  (other / 'config.json').write_text(json.dumps({'model': {'name': 'xydeblur'}, 'seed': 0}))
  orbax_only = tmp_path / 'steps_only'  # A run known by its checkpoint folders alone.
  (orbax_only / 'checkpoints' / '2').mkdir(parents=True)
  workdir = run['workdir']
  before = {d: _tree(d) for d in (workdir, other, orbax_only)}
  cases = [
      (os.path.join(workdir, 'config.json'), workdir, 'config.json'),
      (os.path.join(workdir, 'checkpoints', 'model.safetensors'), workdir, 'config.json'),
      (os.path.join(workdir, 'exports', 'new', 'model.safetensors'), workdir, 'config.json'),
      (str(other / 'config.json'), other, 'config.json'),
      (str(orbax_only / 'sub' / 'model.onnx'), orbax_only, 'checkpoints/'),
  ]
  for out, folder, marker in cases:
    for fmt in export.FORMATS:
      with pytest.raises(ConfigError) as e:
        export_tool.export_run(workdir, fmt, out)
      assert _one_line(e.value).startswith(f'--out={out}: inside the run folder '
                                           f'{os.path.realpath(folder)} (it holds {marker})')
  # Checked first: a workdir that is none is not even looked at.
  with pytest.raises(ConfigError, match='^--out=.*inside the run folder'):
    export_tool.export_run(str(tmp_path / 'no_run_here'), 'onnx', cases[0][0])
  # A link to a run is the run.
  (tmp_path / 'link_to_run').symlink_to(workdir)
  with pytest.raises(ConfigError, match='inside the run folder'):
    export.write_safetensors(str(tmp_path / 'link_to_run' / 'm.safetensors'), weights['config'],
                             weights['params'], 0, ema=False)
  assert {d: _tree(d) for d in before} == before
  assert not os.path.exists(os.path.join(workdir, 'exports'))
  assert export.CHECKPOINTS == checkpoint.CHECKPOINTS  # The name run_folder looks for.


def test_other_programs_config_json_and_checkpoints_do_not_make_a_run(run, tmp_path):
  project = tmp_path / 'project'  # Not a run: a config.json and checkpoints/ of its own.
  (project / 'checkpoints').mkdir(parents=True)
  (project / 'checkpoints' / 'epoch=3.ckpt').write_bytes(b'lightning')
  (project / 'config.json').write_text('{"learning_rate": 0.1}')
  assert export.run_folder(str(project)) is None
  out = project / 'config.json'  # The user's own file: replaced, as any existing file.
  assert export_tool.export_run(run['workdir'], 'safetensors', str(out)) == [str(out)]
  assert _is_the_export(out, run)


def test_out_that_is_a_folder_is_refused(run, tmp_path):
  folder = tmp_path / 'exports'
  folder.mkdir()
  (tmp_path / 'link_to_folder').symlink_to(folder)
  for out in (str(folder), f'{tmp_path / "new"}{os.sep}', str(tmp_path / 'link_to_folder')):
    with pytest.raises(ConfigError) as e:
      export_tool.export_run(run['workdir'], 'stablehlo', out)
    assert _one_line(e.value).startswith(f'--out={out}: is a folder')
  blocked = tmp_path / 'a_file'  # A file where a folder above --out would have to be.
  blocked.write_bytes(SECRET)
  with pytest.raises(ConfigError, match='a file is in its way'):
    export_tool.export_run(run['workdir'], 'safetensors', str(blocked / 'model.safetensors'))
  assert os.listdir(folder) == [] and not (tmp_path / 'new').exists()
  assert blocked.read_bytes() == SECRET


def test_an_existing_file_is_replaced_and_a_link_is_replaced_not_followed(run, tmp_path):
  out = tmp_path / 'model.safetensors'
  out.write_bytes(b'an older export')
  export_tool.export_run(run['workdir'], 'safetensors', str(out))
  assert _is_the_export(out, run)
  target = tmp_path / 'target'
  target.write_bytes(SECRET)
  os.remove(out)
  out.symlink_to(target)
  export_tool.export_run(run['workdir'], 'safetensors', str(out))
  assert not out.is_symlink() and _is_the_export(out, run)
  assert target.read_bytes() == SECRET
  assert sorted(os.listdir(tmp_path)) == ['model.safetensors', 'target']  # No temporary left.


def test_a_link_at_the_temporary_name_is_refused_and_its_target_untouched(weights, tmp_path):
  """The audit's case: `export --format=stablehlo` wrote through a planted temporary."""
  out = tmp_path / 'model.stablehlo'
  target = tmp_path / 'target'
  target.write_bytes(SECRET)
  (tmp_path / f'model.stablehlo.tmp-{os.getpid()}').symlink_to(target)
  (tmp_path / '.model.stablehlo.tmp').symlink_to(target)  # The old fixed name: unused now.
  with pytest.raises(LinkedFileError) as e:
    export.write_stablehlo(str(out), weights['config'], weights['graphdef'],
                          weights['params'])
  assert 'symbolic link' in _one_line(e.value)
  assert target.read_bytes() == SECRET and not out.exists()
  assert sorted(os.listdir(tmp_path)) == sorted(
      ['target', f'model.stablehlo.tmp-{os.getpid()}', '.model.stablehlo.tmp'])


def _full_disk_after(monkeypatch, good_writes: int):
  """os.write that writes `good_writes` calls' bytes, then half of one, then fails: ENOSPC."""
  real_write, calls = os.write, []

  def write(fd, data):
    calls.append(fd)
    if len(calls) <= good_writes:
      return real_write(fd, data)
    real_write(fd, bytes(data[:len(data) // 2]))
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(os, 'write', write)
  return calls


def test_a_full_disk_is_one_line_and_leaves_the_old_files_and_no_temporary(run, tmp_path,
                                                                           monkeypatch):
  out = tmp_path / 'model.safetensors'
  out.write_bytes(b'the previous export')
  calls = _full_disk_after(monkeypatch, good_writes=0)
  with pytest.raises(ExportWriteError) as e:
    export_tool.export_run(run['workdir'], 'safetensors', str(out))
  assert calls  # The failure came from the write itself.
  assert _one_line(e.value) == (f'cannot write {out}: No space left on device (ENOSPC); nothing '
                                'written, what was there before is unchanged')
  assert out.read_bytes() == b'the previous export' and os.listdir(tmp_path) == [out.name]
  # DvSR's two ONNX graphs belong together: the second failing leaves both old ones.
  pair = {str(tmp_path / 'm_predictor.onnx'): b'new predictor',
          str(tmp_path / 'm_denoiser.onnx'): b'new denoiser'}
  for path in pair:
    open(path, 'wb').write(b'old')
  monkeypatch.undo()
  calls = _full_disk_after(monkeypatch, good_writes=1)
  with pytest.raises(ExportWriteError, match='No space left on device'):
    export.write_outputs(pair)
  assert len(calls) == 2
  monkeypatch.undo()
  assert _tree(tmp_path) == {'model.safetensors': b'the previous export',
                             'm_predictor.onnx': b'old', 'm_denoiser.onnx': b'old'}
  export.write_outputs(pair)  # And with room, both.
  assert all(open(p, 'rb').read() == data for p, data in pair.items())


def test_the_command_refuses_the_runs_config_in_one_line(run):
  """The audit's case: --out=WORKDIR/config.json replaced the run's config."""
  config = os.path.join(run['workdir'], 'config.json')
  before = open(config, 'rb').read()
  result = run_xydiff('export', f'--workdir={run["workdir"]}', '--format=safetensors',
                      f'--out={config}')
  assert result.returncode == 1, result.stderr[-2000:]
  assert result.stderr.strip().splitlines() == [
      f'error: --out={config}: inside the run folder {os.path.realpath(run["workdir"])} (it '
      'holds config.json); write exports outside every workdir, so that no run loses a file']
  assert open(config, 'rb').read() == before


# ------------------------------------------------------------------ what a file must hold

def _write(path, tensors, metadata):
  from safetensors.numpy import save_file
  save_file(tensors, str(path), metadata=metadata)
  return str(path)


def _with_config(weights, change):
  """The good file's metadata with its stored config changed by `change(values)`."""
  values = json.loads(weights['metadata']['config'])
  change(values)
  return {**weights['metadata'], 'config': json.dumps(values)}


BAD_CONFIGS = {
    'not json': (lambda weights: {**weights['metadata'], 'config': '{"model": '},
                 r"its stored config \(metadata 'config'\) is not JSON: "),
    'a list': (lambda weights: {**weights['metadata'], 'config': '[1, 2]'},
               r"its stored config \(metadata 'config'\) is a JSON list, not an object"),
    'model 5': (lambda weights: _with_config(weights, lambda c: c.update(model=5)),
                'its stored config has model: 5, not a section'),
    'a section where a value is': (
        lambda weights: _with_config(weights, lambda c: c['model'].update(dtype={'a': 1})),
        'its stored config has model.dtype: a section, not a value'),
    'unknown family': (
        lambda weights: _with_config(weights, lambda c: c['model'].update(name='nosuchnet')),
        r"its stored config is not usable: .*model\.name.*nosuchnet"),
    'seed text': (lambda weights: _with_config(weights, lambda c: c.update(seed='seven')),
                  r"its stored config is not usable: .*seed.*seven"),
    'seed fraction': (lambda weights: _with_config(weights, lambda c: c.update(seed=1.5)),
                      r"its stored config is not usable: .*seed.*1\.5"),
    'step text': (lambda weights: {**weights['metadata'], 'step': 'last'},
                  r"its stored step \(metadata 'step'\) is 'last', not an integer >= 0"),
    'step fraction': (lambda weights: {**weights['metadata'], 'step': '2.5'},
                      r"its stored step \(metadata 'step'\) is '2\.5'"),
    'step negative': (lambda weights: {**weights['metadata'], 'step': '-1'},
                      r"its stored step \(metadata 'step'\) is '-1'"),
}


@pytest.mark.parametrize('case', BAD_CONFIGS)
def test_a_stored_config_or_step_xydiff_cannot_use_is_one_line_naming_the_file(
    weights, tmp_path, case):
  metadata, message = BAD_CONFIGS[case]
  path = _write(tmp_path / 'bad.safetensors', weights['tensors'], metadata(weights))
  with pytest.raises(WeightsError, match=f'^{path}: {message}') as e:
    inference.Restorer.from_pretrained(path)
  _one_line(e.value)
  assert os.listdir(tmp_path) == ['bad.safetensors']


def test_a_config_missing_fields_added_since_loads_with_their_defaults(weights, tmp_path):
  """As a workdir's config.json does (run_config.with_defaults)."""
  metadata = _with_config(weights, lambda c: (c['inference'].pop('ensemble'), c['train'].pop('lr')))
  path = _write(tmp_path / 'older.safetensors', weights['tensors'], metadata)
  config, _, params, step = export.read_safetensors(path)
  assert config.inference.ensemble == 1 and step == int(weights['metadata']['step'])
  np.testing.assert_array_equal(np.asarray(params['encoder']['stem']['kernel']),
                                weights['tensors']['encoder.stem.kernel'])


@pytest.mark.parametrize('dtype,stored', [(np.int32, 'I32'), (np.float64, 'F64'),
                                          (np.float16, 'F16'), (np.uint8, 'U8')])
def test_tensors_that_are_not_float32_are_refused_naming_them(weights, tmp_path, dtype, stored):
  tensors = dict(weights['tensors'])
  tensors['encoder.stem.kernel'] = tensors['encoder.stem.kernel'].astype(dtype)
  tensors['decoder.out.bias'] = tensors['decoder.out.bias'].astype(dtype)
  path = _write(tmp_path / 'typed.safetensors', tensors, weights['metadata'])
  with pytest.raises(WeightsError) as e:
    inference.Restorer.from_pretrained(path)
  assert _one_line(e.value) == (
      f'{path}: tensor decoder.out.bias is {stored}, encoder.stem.kernel is {stored}; xydiff '
      'weights are float32 (F32), as xydiff export writes them')


def test_bfloat16_tensors_are_refused_from_the_header(weights, tmp_path):
  """Written by hand: NumPy cannot write BF16 (without ml_dtypes it cannot read it either)."""
  header = json.dumps({'__metadata__': weights['metadata'],
                       'encoder.stem.kernel': {'dtype': 'BF16', 'shape': [2],
                                               'data_offsets': [0, 4]}}).encode()
  path = tmp_path / 'bf16.safetensors'
  path.write_bytes(len(header).to_bytes(8, 'little') + header + b'\x80\x3f\x00\x40')
  with pytest.raises(WeightsError) as e:
    export.read_safetensors(str(path))
  assert 'tensor encoder.stem.kernel is BF16; xydiff weights are float32' in _one_line(e.value)


@pytest.mark.parametrize('value', [np.nan, np.inf, -np.inf])
def test_tensors_holding_nan_or_infinity_are_refused_naming_them(weights, tmp_path, value):
  tensors = dict(weights['tensors'])
  kernel = tensors['encoder.stem.kernel'].copy()
  kernel[1, 2, 0, 3] = value
  tensors['encoder.stem.kernel'] = kernel
  path = _write(tmp_path / 'nan.safetensors', tensors, weights['metadata'])
  with pytest.raises(WeightsError) as e:
    inference.Restorer.from_pretrained(path)
  assert _one_line(e.value) == (f'{path}: tensor encoder.stem.kernel holds NaN or infinite '
                                'values; these are no usable weights')


def test_export_writes_float32_tensors(weights):
  assert {t.dtype for t in weights['tensors'].values()} == {np.dtype(np.float32)}
  assert export.read_safetensors(weights['good'])[3] == int(weights['metadata']['step'])
