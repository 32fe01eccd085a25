"""checkpoint.write_imported_run: an imported run appears whole, config first, and races safely.

The audit: an import wrote `checkpoints/0` before `config.json` (a crash
between them left a cached run that could not load), and of two concurrent
first imports into one workdir, the loser's cleanup deleted the winner's.
"""

import os

import jax
import numpy as np
import pytest

from conftest import tiny
from xydiff.runs import checkpoint
from xydiff import config as run_config
from xydiff.runs import state as state_lib
from xydiff.errors import CheckpointImportError


def _config(ema_rate=0.0):
  from xydiff.configs import demo
  config = tiny(demo.get_config())
  config.train.ema_rate = ema_rate
  return config


def _params(config, offset):
  _, state = state_lib.init_state(config)
  return jax.tree.map(lambda p: p + offset, state['params'])


def _restored(workdir, config):
  with checkpoint.Checkpointer(str(workdir), config, read_only=True) as ckpt:
    return ckpt.restore(state_lib.abstract_state(config)[1])


def test_an_import_appears_whole_with_its_config_written_first(tmp_path, monkeypatch):
  config = _config(ema_rate=0.9)
  params = _params(config, 0.5)
  workdir = tmp_path / 'runs' / 'imported'
  seen = []
  real_save = checkpoint.Checkpointer.save

  def save(self, step, state):
    staging = os.path.dirname(self.directory)
    seen.append((os.path.isfile(os.path.join(staging, run_config.CONFIG_FILE)),
                 os.path.exists(workdir)))
    real_save(self, step, state)

  monkeypatch.setattr(checkpoint.Checkpointer, 'save', save)
  step_dir = checkpoint.write_imported_run(str(workdir), config, params)
  assert seen == [(True, False)]  # config.json first; the workdir not there until complete.
  assert step_dir == str(workdir / 'checkpoints' / '0')
  assert sorted(os.listdir(workdir)) == ['checkpoints', 'config.json']
  assert os.listdir(workdir.parent) == ['imported']  # No staging folder left beside it.
  assert run_config.load(str(workdir)).to_dict() == config.to_dict()
  state = _restored(workdir, config)
  assert int(state['step']) == 0
  for name in ('params', 'ema_params'):  # Evaluation reads the EMA: it holds them too.
    for got, want in zip(jax.tree.leaves(state[name]), jax.tree.leaves(params)):
      np.testing.assert_array_equal(got, want)


def test_an_import_that_dies_while_writing_leaves_nothing(tmp_path, monkeypatch):
  config = _config()

  def dies(self, step, state):
    raise KeyboardInterrupt

  monkeypatch.setattr(checkpoint.Checkpointer, 'save', dies)
  with pytest.raises(KeyboardInterrupt):
    checkpoint.write_imported_run(str(tmp_path / 'run'), config, _params(config, 0.0))
  assert os.listdir(tmp_path) == []


def test_an_import_needs_a_fresh_workdir(tmp_path):
  config = _config()
  (tmp_path / 'empty').mkdir()  # An empty folder is fresh.
  checkpoint.write_imported_run(str(tmp_path / 'empty'), config, _params(config, 0.0))
  assert checkpoint.holds_imported_run(str(tmp_path / 'empty'))
  (tmp_path / 'notes').mkdir()
  (tmp_path / 'notes' / 'todo.txt').write_text('mine')
  for workdir in (tmp_path / 'notes', tmp_path / 'empty'):
    with pytest.raises(CheckpointImportError, match=f'^{workdir} already holds files; import '
                       'into a fresh --workdir$'):
      checkpoint.write_imported_run(str(workdir), config, _params(config, 0.0))
  assert os.listdir(tmp_path / 'notes') == ['todo.txt']
  assert sorted(os.listdir(tmp_path)) == ['empty', 'notes']


def test_the_loser_of_a_race_leaves_the_winners_run_alone(tmp_path, monkeypatch):
  """Both find the workdir missing; the other import lands just before this one renames."""
  config = _config()
  workdir = tmp_path / 'runs' / 'xydeblur_gopro'
  real_rename = os.rename
  raced = []

  def rename(src, dst, *args, **kwargs):
    if os.fspath(dst) == str(workdir) and not raced:
      raced.append(src)
      checkpoint.write_imported_run(str(workdir), config, _params(config, 1.0))  # The winner.
    return real_rename(src, dst, *args, **kwargs)

  monkeypatch.setattr(os, 'rename', rename)
  with pytest.raises(CheckpointImportError, match='already holds files'):
    checkpoint.write_imported_run(str(workdir), config, _params(config, 2.0))
  monkeypatch.undo()
  assert raced and not os.path.exists(raced[0])  # The loser removed only its own staging.
  assert os.listdir(workdir.parent) == ['xydeblur_gopro']
  assert checkpoint.holds_imported_run(str(workdir))
  winner = _params(config, 1.0)
  for got, want in zip(jax.tree.leaves(_restored(workdir, config)['params']),
                       jax.tree.leaves(winner)):
    np.testing.assert_array_equal(got, want)
