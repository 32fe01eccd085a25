"""The `xydiff` command line (issue #25): one grammar with real help, one-line errors naming
only the verb's own flags, outputs named one way, and progress on long work.

Most tests run the click group in this process (click.testing.CliRunner); a few run the
console entry and launch.py as a user would, in a subprocess.
"""

import functools
import hashlib
import http.server
import io
import json
import os
import re
import threading

import click
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import REPO, run_launch, run_xydiff, tiny
from xydiff import cli, images, progress
from xydiff.cli import common, launch
from xydiff.errors import DataError
from xydiff.inference import photos, tiles

VERBS = ('train', 'eval', 'sweep', 'deblur', 'score', 'serve', 'export', 'import', 'fetch',
         'summary')


def xydiff(*args):
  """`xydiff ARGS` in this process: the result's exit_code, stdout and stderr."""
  return CliRunner().invoke(cli.build(), [str(a) for a in args])


def error_line(result) -> str:
  """The one line a failed command printed; asserts that it is one `error:` line."""
  assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr)
  lines = [line for line in result.stderr.splitlines() if not line.startswith('note: ')]
  assert len(lines) == 1 and lines[0].startswith('error: '), result.stderr
  return lines[0]


def verb_flags(verb: str) -> set[str]:
  """Every flag `xydiff VERB` takes, by its long names (and --config, --config.*)."""
  command = cli.build().commands[verb]
  names = {name for param in command.params for name in param.opts + param.secondary_opts
           if name.startswith('--')}
  return names | {'--help'} | ({'--config'} if command.takes_config else set())


def flags_named(message: str) -> set[str]:
  """The flags a message names (`--config.x.y` counts as --config)."""
  return {'--config' if name.startswith('--config.') else name.replace('_', '-')
          for name in re.findall(r'--[a-z][\w.-]*[a-z0-9]', message)}


class FakeTerminal(io.StringIO):
  """A stream that says it is a terminal, so progress shows on it."""

  def isatty(self):
    return True


@pytest.fixture
def terminal():
  """Progress shown, on a stream the test reads; off again afterwards."""
  stream = FakeTerminal()
  progress.show(True, stream=stream)
  yield stream
  progress.show(False)


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
  """An imported tiny XYDeblur run and two photos: {'workdir', 'inputs'}."""
  from xydiff.configs import demo
  from xydiff.runs import checkpoint
  from xydiff.runs import state as state_lib
  root = tmp_path_factory.mktemp('cli')
  config = tiny(demo.get_config())
  _, state = state_lib.init_state(config)
  checkpoint.write_imported_run(str(root / 'run'), config, state['params'])
  (root / 'in').mkdir()
  rng = np.random.default_rng(0)
  for name in ('a', 'b'):
    images.write_png(str(root / 'in' / f'{name}.png'), images.to_uint8(rng.random((24, 32, 3))))
  return {'workdir': root / 'run', 'inputs': root / 'in'}


# ------------------------------------------------------------------ help

def test_help_lists_the_ten_verbs_one_line_each():
  result = xydiff('--help')
  assert result.exit_code == 0, result.stderr
  section = result.stdout.split('Verbs:\n', 1)[1].split('\n\n', 1)[0].splitlines()
  assert [line.split()[0] for line in section] == list(VERBS)
  assert all(len(line.split()) > 3 for line in section)  # A description on the verb's line.
  assert xydiff().stdout == result.stdout  # `xydiff` alone prints the same help.


@pytest.mark.parametrize('verb', VERBS)
def test_every_verb_has_help_with_flags_defaults_positionals_and_examples(verb):
  result = xydiff(verb, '--help')
  assert result.exit_code == 0, result.stderr
  text = result.stdout
  command = cli.build().commands[verb]
  options = text.split('Options:\n', 1)[1].split('\n\n', 1)[0]
  rows = re.split(r'\n(?=  -)', options)  # One row per flag, its help wrapped below it.
  for row in rows:
    if row.strip().startswith('-h, --help'):
      continue
    words = ' '.join(row.split())
    assert '[default:' in words or '[required]' in words, words
    assert len(words.rsplit(' [', 1)[0].split()) >= 6, words  # The flag, and a sentence.
  for param in command.params:
    if param.name != 'help' and param.opts[0].startswith('-'):
      assert any(opt in options for opt in param.opts), param.opts
  arguments = [p for p in command.params if p.param_type_name == 'argument']
  if arguments:
    listed = text.split('Positional arguments:\n', 1)[1].split('\n\n', 1)[0]
    for argument in arguments:
      assert argument.make_metavar(click.Context(command)) in listed
      assert argument.help and argument.help.split()[0] in listed
  if command.takes_config:
    assert '--config NAME|FILE[:VARIANT]' in options and '--config.FIELD=VALUE' in options
  examples = text.split('Examples:\n', 1)[1].splitlines()
  assert examples and all(line.strip().startswith(f'xydiff {verb}') for line in examples
                          if line.strip())


# ------------------------------------------------------------------ errors

def test_an_unknown_verb_is_one_line_with_the_closest_names():
  line = error_line(xydiff('serv', '--workdir=x'))
  assert "no verb 'serv'; did you mean serve?" in line


def test_an_unknown_flag_is_one_line_with_the_closest_names(tiny_run):
  line = error_line(xydiff('deblur', tiny_run['inputs'], '-o', 'out', '--workdir=w',
                           '--sufix=_x'))
  assert 'no such flag --sufix; did you mean --suffix?' in line
  assert '(xydiff deblur --help' in line


def test_a_misspelt_override_is_one_line_naming_it():
  line = error_line(xydiff('summary', '--config=demo', '--config.train.batch_sise=8'))
  assert line == ("error: --config.train.batch_sise=8: the config has no field 'batch_sise'; "
                  "did you mean 'batch_size'?")
  line = error_line(xydiff('summary', '--config=demo', '--config.model.width=3.5'))
  assert line.startswith('error: --config.model.width=3.5: ')


def test_config_tokens_go_to_ml_collections_and_the_rest_to_click():
  assert common.split_config_tokens(
      ['a.png', '--config', 'demo', '--config.seed=3', '-o', 'out', '--noconfig.eval.lpips']) == \
      (['--config=demo', '--config.seed=3', '--noconfig.eval.lpips'], ['a.png', '-o', 'out'])
  assert common.split_config_tokens(['--config.eval.lpips', '--quiet']) == \
      (['--config.eval.lpips'], ['--quiet'])
  line = error_line(xydiff('summary', '--config=demo', '--config.train.batch_size', '8'))
  assert line == ('error: --config.train.batch_size 8: give an override as '
                  '--config.train.batch_size=8 (with =)')


def test_a_misspelt_config_name_suggests_the_close_names():
  line = error_line(xydiff('summary', '--config=dmeo'))
  assert line.startswith("error: --config=dmeo: no such file") and 'did you mean demo?' in line
  assert "no variant 'nope'" in error_line(xydiff('summary', '--config=demo:nope'))


def test_dashes_and_underscores_are_one(tiny_run, tmp_path):
  result = xydiff('import_weights', 'xydeblur_gopro', tmp_path / 'missing.pkl',
                  f'--workdir={tmp_path / "run"}', '--max_bytes=1000')
  assert 'note: `xydiff import-weights` is now `xydiff import`' in result.stderr
  assert 'missing.pkl' in error_line(result)  # The import ran, and found no file.
  assert '--max-bytes' in error_line(xydiff('import', 'xydeblur_gopro', 'x.pkl',
                                            '--workdir=w', '--max_bytes=0'))
  out = tmp_path / 'out'
  first = xydiff('deblur', tiny_run['inputs'] / 'a.png', '-o', out, '--work_dir=x')
  assert 'no such flag --work-dir; did you mean --workdir?' in error_line(first)
  assert xydiff('deblur', tiny_run['inputs'], '-o', out, '--workdir', tiny_run['workdir'],
                '--skip_existing').exit_code == 0
  assert sorted(os.listdir(out)) == ['a_deblurred.png', 'b_deblurred.png']


# The errors of each verb, and what each must say: they name no flag the verb lacks.
ERRORS = [
    ('deblur', ['x.png', '-o', 'o'], 'give the model: --workdir=DIR'),
    ('deblur', ['x.png', '-o', 'o', '--workdir=w', '--model=m'], 'one of them'),
    ('deblur', ['x.png', '-o', 'o', '--model=m.safetensors', '--step=3'], '--step picks'),
    ('deblur', ['x.png', '-o', 'o', '--workdir=w', '--overwrite', '--skip-existing'],
     'exclude each other'),
    ('deblur', ['x.png', '-o', 'o', '--model=xydeblru_gopro'], 'did you mean xydeblur_gopro'),
    ('deblur', ['x.png', '-o', 'o', '--workdir={missing}'], 'no checkpoint in'),
    ('serve', [], 'give --workdir=DIR (a run) or --model=NAME|FILE'),
    ('export', ['--workdir=w'], "Missing option '-o' / '--out'"),
    ('export', ['--workdir={missing}', '--out=m.safetensors', '--size=7'], '--size=7'),
    ('eval', ['--workdir={missing}'], 'holds no stored config'),
    ('train', ['--config=demo', '--workdir={missing}', '--num-processes=2'], 'go together'),
    ('train', ['--workdir={missing}'], 'holds no stored config'),
    ('score', ['{missing}', '{missing}'], 'is not a folder'),
    ('import', ['xydeblr', 'x.pkl', '--workdir=w'], 'did you mean'),
    ('fetch', ['nafnet64_gopro', '--workdir={missing}'], 'xydiff import nafnet64_gopro'),
    ('summary', ['--all', '--config=demo'], 'leave out --config'),
]


@pytest.mark.parametrize('verb, args, says', ERRORS)
def test_errors_are_one_line_and_name_only_the_verbs_own_flags(verb, args, says, tmp_path):
  args = [a.format(missing=tmp_path / 'missing') for a in args]
  line = error_line(xydiff(verb, *args))
  assert says in line
  assert flags_named(line) <= verb_flags(verb), (line, verb_flags(verb))


@pytest.mark.parametrize('verb', VERBS)
def test_a_checkpoint_message_names_only_the_verbs_way_to_pick_a_step(verb):
  from xydiff.runs import checkpoint
  ckpt = checkpoint.Checkpointer.__new__(checkpoint.Checkpointer)  # Only its messages are used.
  ckpt.directory = '/runs/x/checkpoints'
  ckpt.all_steps = lambda: [5, 10]
  error = ckpt._read_error(10, OSError('boom'))  # pylint: disable=protected-access
  message = cli.for_verb(verb, common.one_line(error))
  assert 'other steps: [5]' in message
  assert flags_named(message) <= verb_flags(verb), message
  if verb in ('deblur', 'export'):
    assert 'picked with --step=N' in message
  for text in ('give the config it was trained with (--config=...) to use it',
               'use the config it was trained with (omit --config to use the stored one)'):
    assert flags_named(cli.for_verb(verb, text)) <= verb_flags(verb)


# ------------------------------------------------------------------ deblur

def test_deblur_names_outputs_one_way_and_never_overwrites_unasked(tiny_run, tmp_path):
  workdir, inputs, out = tiny_run['workdir'], tiny_run['inputs'], tmp_path / 'out'
  result = xydiff('deblur', inputs, '-o', out, f'--workdir={workdir}')
  assert result.exit_code == 0, result.stderr
  assert sorted(os.listdir(out)) == ['a_deblurred.png', 'b_deblurred.png']
  assert 'restored 2 images' in result.stderr
  written = {name: (out / name).stat().st_mtime_ns for name in os.listdir(out)}

  line = error_line(xydiff('deblur', inputs, '-o', out, f'--workdir={workdir}'))
  assert '2 outputs exist already' in line and str(out / 'a_deblurred.png') in line
  assert str(out / 'b_deblurred.png') in line and '--overwrite' in line
  assert {name: (out / name).stat().st_mtime_ns for name in os.listdir(out)} == written

  os.remove(out / 'b_deblurred.png')
  skipped = xydiff('deblur', inputs, '-o', out, f'--workdir={workdir}', '--skip-existing')
  assert skipped.exit_code == 0 and 'skipped 1 input whose output exists' in skipped.stderr
  assert (out / 'a_deblurred.png').stat().st_mtime_ns == written['a_deblurred.png']
  assert (out / 'b_deblurred.png').exists()

  again = xydiff('deblur', inputs / 'a.png', '-o', out, f'--workdir={workdir}', '--overwrite')
  assert again.exit_code == 0 and (out / 'a_deblurred.png').stat().st_mtime_ns != \
      written['a_deblurred.png']

  plain = xydiff('deblur', inputs / 'a.png', '-o', out, f'--workdir={workdir}', '--suffix=')
  assert plain.exit_code == 0 and (out / 'a.png').exists()
  assert xydiff('deblur', inputs / 'a.png', '-o', out, f'--workdir={workdir}',
                '--suffix=.x', '--step=0').exit_code == 0
  assert (out / 'a.x.png').exists()
  line = error_line(xydiff('deblur', inputs, '-o', inputs, f'--workdir={workdir}',
                           '--suffix='))
  assert 'would overwrite the input' in line
  assert 'no checkpoint for step 3' in error_line(
      xydiff('deblur', inputs, '-o', tmp_path / 'o3', f'--workdir={workdir}', '--step=3'))


def test_a_file_deblur_cannot_restore_is_reported_and_the_others_go_on(tiny_run, tmp_path):
  inputs = tmp_path / 'in'
  inputs.mkdir()
  for name in ('a.png', 'b.png'):
    (inputs / name).write_bytes((tiny_run['inputs'] / name).read_bytes())
  (inputs / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n broken')
  result = xydiff('deblur', inputs, '-o', tmp_path / 'out', f'--workdir={tiny_run["workdir"]}')
  assert result.exit_code == 1 and 'restored 2 images' in result.stderr and '1 failed' in \
      result.stderr
  [line] = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
  assert 'broken.png' in line
  assert sorted(os.listdir(tmp_path / 'out')) == ['a_deblurred.png', 'b_deblurred.png']
  result = xydiff('deblur', inputs / 'a.png', '-o', tmp_path / 'small',
                  f'--workdir={tiny_run["workdir"]}', '--config.inference.max_megapixels=0.0005')
  assert result.exit_code == 1 and not os.listdir(tmp_path / 'small')
  assert 'a.png is 32x24' in result.stderr
  assert '(--config.inference.max_megapixels)' in result.stderr


def test_deblur_takes_an_exported_file_and_the_restorers_settings(tiny_run, tmp_path):
  exported = tmp_path / 'model.safetensors'
  result = xydiff('export', f'--workdir={tiny_run["workdir"]}', f'--out={exported}')
  assert result.exit_code == 0 and f'wrote {exported}' in result.stdout, result.stderr
  out = tmp_path / 'out'
  result = xydiff('deblur', tiny_run['inputs'] / 'a.png', '-o', out, f'--model={exported}',
                  '--tile=16', '--ensemble=8', '--seed=3', '--config.inference.tile_overlap=4')
  assert result.exit_code == 0, result.stderr
  assert os.listdir(out) == ['a_deblurred.png']
  line = error_line(xydiff('deblur', tiny_run['inputs'] / 'a.png', '-o', out,
                           f'--model={exported}', '--config.model.width=8'))
  assert 'model.width' in line
  assert 'preset' in error_line(xydiff('deblur', tiny_run['inputs'], '-o', tmp_path / 'p',
                                       f'--model={exported}', '--preset=sa'))
  assert error_line(xydiff('deblur', tiny_run['inputs'], '-o', tmp_path / 'p',
                           f'--model={exported}', '--tile=2')).startswith('error: --tile=2: ')


def test_outputs_refuse_collisions_and_overwriting_inputs_however_reached(tmp_path):
  folder = tmp_path / 'in'
  folder.mkdir()
  for name in ('a.png', 'a.jpg', 'c.png', 'c_deblurred.png'):
    (folder / name).write_bytes(b'')
  with pytest.raises(DataError, match=r'share a name.*a\.jpg, .*a\.png'):
    photos.plan_outputs(photos.list_inputs(str(folder)), str(tmp_path / 'out'))
  (tmp_path / 'link').symlink_to(folder, target_is_directory=True)
  with pytest.raises(DataError, match='would overwrite the input .*c.png'):
    photos.plan_outputs([str(folder / 'c.png')], str(tmp_path / 'link'), suffix='')
  os.link(folder / 'c_deblurred.png', tmp_path / 'hard.png')
  with pytest.raises(DataError, match='would overwrite the input .*hard.png with the result of'):
    photos.plan_outputs([str(tmp_path / 'hard.png'), str(folder / 'c.png')], str(folder))
  # Std maps: <stem><suffix>_std.png, and they too may not collide or overwrite.
  plan = photos.plan_outputs([str(folder / 'c.png')], str(tmp_path / 'out'), std_maps=True)
  assert photos.std_name(plan.todo[0][2]).endswith('c_deblurred_std.png')
  (folder / 'c_std.png').write_bytes(b'')
  with pytest.raises(DataError, match=r'c\.png \(its std map\), .*c_std\.png'):
    photos.plan_outputs([str(folder / 'c.png'), str(folder / 'c_std.png')],
                        str(tmp_path / 'o2'), suffix='', std_maps=True)
  (tmp_path / 'o3').mkdir()
  (tmp_path / 'o3' / 'c_deblurred_std.png').write_bytes(b'')
  with pytest.raises(DataError, match='1 output exists already: .*c_deblurred_std.png'):
    photos.plan_outputs([str(folder / 'c.png')], str(tmp_path / 'o3'), std_maps=True)
  with pytest.raises(DataError, match='path separator'):
    photos.plan_outputs([str(folder / 'c.png')], str(tmp_path / 'o3'), suffix='/x')


# ------------------------------------------------------------------ launch.py and the console

def test_launch_modes_become_verbs():
  assert launch.verb_args(['--config=demo', '--workdir=w', '--config.train.batch_size=2']) == \
      ['train', '--config=demo', '--workdir=w', '--config.train.batch_size=2']
  assert launch.verb_args(['--workdir', 'w', '--mode', 'eval']) == ['eval', '--workdir', 'w']
  assert launch.verb_args(['--workdir=w', '--mode=deblur', '--input=in', '--output=out',
                           '--checkpoint=/r/checkpoints/7']) == \
      ['deblur', 'in', '-o', 'out', '--workdir=/r', '--step=7']
  assert launch.verb_args(['--mode=score', '--input=r', '--target=s', '--workdir=w',
                           '--config.eval.align=ecc', '--config.eval.lpips=False']) == \
      ['score', 'r', 's', '-o', 'w', '--align=ecc', '--no-lpips']


def test_launch_py_runs_a_mode_as_its_verb(tiny_run, tmp_path):
  result = run_launch(f'--workdir={tiny_run["workdir"]}', '--mode=deblur',
                      f'--input={tiny_run["inputs"] / "a.png"}', f'--output={tmp_path / "out"}',
                      '-q', timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert os.listdir(tmp_path / 'out') == ['a_deblurred.png']
  result = run_launch('--mode=score', f'--input={tmp_path}', timeout=120)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
      'error: --mode=score needs --input (restored images) and --target (sharp images)')


def test_the_console_command_prints_help_and_one_line_errors(tmp_path):
  result = run_xydiff('--help', timeout=120)
  assert result.returncode == 0 and all(f'  {verb} ' in result.stdout for verb in VERBS)
  result = run_xydiff('score', tmp_path, tmp_path, '--no_lpips', '--config=demo', timeout=120)
  assert result.returncode == 1 and result.stderr.count('\n') == 1, result.stderr
  assert result.stderr.startswith('error: xydiff score: no such flag --config')


# ------------------------------------------------------------------ progress

def test_progress_shows_only_when_turned_on_and_on_a_terminal(terminal):
  with progress.task('work', total=3) as bar:
    assert progress.current() is bar
    bar.update()
    bar.substep(1, 2, 'tile')
    progress.substep(2, 2, 'tile')
  assert progress.current() is None
  shown = terminal.getvalue()
  assert 'work' in shown and '1/3' in shown and 'tile' in shown and '1/2' in shown
  with progress.stage('export: converting'):
    pass
  assert 'export: converting (00:00)' in terminal.getvalue()
  for stream, on in ((io.StringIO(), True), (FakeTerminal(), False)):
    progress.show(on, stream=stream)
    with progress.task('work', total=3) as bar:
      bar.update()
      assert progress.current() is None  # Nothing shows: nothing to report to.
    with progress.stage('silent'):
      pass
    assert stream.getvalue() == ''


def test_a_tiled_image_reports_each_tile_through_the_ensemble():
  import jax
  image = np.random.default_rng(0).random((40, 56, 3)).astype(np.float32)
  identity = lambda params, blur, key: {'image': blur}
  key = jax.random.key(0)
  calls = []
  out = tiles.restore_image(identity, None, image, key, align=4, tile=24, overlap=8,
                            on_tile=lambda done, total: calls.append((done, total)))
  np.testing.assert_allclose(out['image'], image, atol=1e-6)
  count = calls[-1][1]
  assert count > 1 and calls == [(n, count) for n in range(1, count + 1)]
  calls.clear()
  tiles.restore_image(identity, None, image, key, align=4, tile=24, overlap=8, ensemble=8,
                      on_tile=lambda done, total: calls.append((done, total)))
  total = calls[-1][1]
  assert calls == [(n, total) for n in range(1, total + 1)] and total % 8 == 0
  calls.clear()
  tiles.restore_image(identity, None, image, key, align=4, tile=0,
                      on_tile=lambda done, total: calls.append((done, total)))
  assert calls == []  # A whole image has no tiles to count.


def test_deblur_shows_images_and_tiles(tiny_run, tmp_path, terminal):
  from xydiff import config as config_lib
  from xydiff.inference import restorer as inference
  config = config_lib.load(str(tiny_run['workdir']))
  config.inference.tile_overlap = 4
  restorer = inference.Restorer.from_workdir(str(tiny_run['workdir']), config=config)
  report = photos.restore_files(restorer, [str(tiny_run['inputs'])], str(tmp_path / 'out'),
                                tile=16)
  assert report.status == 0 and len(report.written) == 2
  shown = terminal.getvalue()
  assert 'deblur' in shown and '2/2' in shown and 'b.png' in shown
  assert re.search(r'tile.*\d+/\d+', shown)


def test_summary_all_shows_each_model_as_it_goes(monkeypatch):
  from xydiff import configs
  from xydiff.cli import summary
  from xydiff.configs import demo
  terminal = FakeTerminal()
  names = ('xydeblur_gopro', 'dmphn_1_2_4_gopro')
  monkeypatch.setattr(configs, 'NAMES', {k: configs.NAMES[k] for k in names})
  # Tiny models in place of each name's variants: the counting is test_complexity's.
  monkeypatch.setattr(summary, 'variant_configs',
                      lambda name: {'baseline': tiny(demo.get_config())})
  monkeypatch.setattr(progress, 'enabled', lambda: True)
  monkeypatch.setattr(progress, 'stream', lambda: terminal)
  from absl import logging
  monkeypatch.setattr(logging.get_absl_handler().python_handler, 'stream',
                      logging.get_absl_handler().python_handler.stream)
  result = xydiff('summary', '--all')
  assert result.exit_code == 0, result.stderr
  rows = [json.loads(line) for line in result.stdout.splitlines()]
  assert [row['model'] for row in rows] == list(names)
  shown = terminal.getvalue()
  assert 'summary' in shown and all(name in shown for name in names) and '2/2' in shown


def test_export_shows_its_stages(tiny_run, tmp_path, monkeypatch):
  terminal = FakeTerminal()
  monkeypatch.setattr(progress, 'enabled', lambda: True)
  monkeypatch.setattr(progress, 'stream', lambda: terminal)
  from absl import logging
  monkeypatch.setattr(logging.get_absl_handler().python_handler, 'stream',
                      logging.get_absl_handler().python_handler.stream)
  result = xydiff('export', f'--workdir={tiny_run["workdir"]}', f'--out={tmp_path / "m.st"}')
  assert result.exit_code == 0, result.stderr
  shown = terminal.getvalue()
  assert 'export: reading the latest step of' in shown and 'export: writing' in shown


def test_a_download_shows_its_bytes(tmp_path, terminal):
  from xydiff.interop import download
  served = tmp_path / 'served'
  served.mkdir()
  payload = os.urandom(3 << 20)
  (served / 'weights.bin').write_bytes(payload)

  class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # pylint: disable=arguments-differ
      pass

  handler = functools.partial(Quiet, directory=str(served))
  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  try:
    path = download.fetch(f'http://127.0.0.1:{server.server_port}/weights.bin', 'weights.bin',
                          sha256=hashlib.sha256(payload).hexdigest(), cache=str(tmp_path / 'c'))
  finally:
    server.shutdown()
  assert open(path, 'rb').read() == payload
  shown = terminal.getvalue()
  assert 'weights.bin' in shown and '3.00M/3.00M' in shown and 'B/s' in shown
