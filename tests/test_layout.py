"""The package's shape: imports point down, no cycles, and inference runs without TensorFlow."""

import ast
import os
import pathlib
import subprocess
import sys
import textwrap

from conftest import REPO

PACKAGE = REPO / 'xydiff'


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(REPO).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _modules() -> dict[str, pathlib.Path]:
  return {_module_name(p): p for p in PACKAGE.rglob('*.py')}


def _imports(path: pathlib.Path, modules) -> set[str]:
  """xydiff modules `path` imports, at module level or inside functions."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      submodules = {f'{node.module}.{a.name}' for a in node.names
                    if f'{node.module}.{a.name}' in modules}
      found |= submodules
      if len(submodules) < len(node.names):  # Names defined by the package itself.
        found.add(node.module)
  return {m for m in found if m in modules}


def _graph():
  modules = _modules()
  return {name: _imports(path, modules) for name, path in modules.items()}


def test_no_import_cycle_in_the_package():
  graph = _graph()
  state, stack = {}, []

  def visit(node):
    state[node] = 'open'
    stack.append(node)
    for dep in sorted(graph[node]):
      if dep == node or dep == 'xydiff':
        continue
      if state.get(dep) == 'open':
        cycle = stack[stack.index(dep):] + [dep]
        raise AssertionError('import cycle: ' + ' -> '.join(cycle))
      if dep not in state:
        visit(dep)
    stack.pop()
    state[node] = 'done'

  for node in sorted(graph):
    if node not in state:
      visit(node)


# The rooms of the package, lowest first: a module may import its own room and
# the rooms below it, never one above.
ROOMS = (
    ('xydiff.errors', 'xydiff.files', 'xydiff.progress'),
    ('xydiff.images',),
    ('xydiff.metrics', 'xydiff.data', 'xydiff.diffusion'),
    ('xydiff.models',),
    ('xydiff.configs',),
    ('xydiff.config',),
    ('xydiff.runs',),
    ('xydiff.interop',),
    ('xydiff.inference', 'xydiff.deblur'),
    ('xydiff.evaluation',),
    ('xydiff.train',),
    ('xydiff.cli',),
)


def _room(module: str) -> int:
  for level, rooms in enumerate(ROOMS):
    if any(module == room or module.startswith(room + '.') for room in rooms):
      return level
  raise AssertionError(f'{module} is in no room of ROOMS')


def test_imports_point_down_from_room_to_room():
  """Each room imports only its own and lower rooms (the package root sits above them all)."""
  upward = [f'{name} -> {dep}' for name, deps in _graph().items() if name != 'xydiff'
            for dep in deps if dep != 'xydiff' and _room(dep) > _room(name)]
  assert not upward, upward


def test_at_most_seven_modules_at_the_top():
  # Six of plumbing and the API, and `deblur`: the deblur path under the name users import.
  top = sorted(p.stem for p in PACKAGE.glob('*.py'))
  assert len(top) <= 7, top


def test_no_module_imports_the_package_root():
  modules = _modules()
  offenders = []
  for name, path in modules.items():
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import) and any(a.name == 'xydiff' for a in node.names):
        offenders.append(f'{name}: import xydiff')
      if isinstance(node, ast.ImportFrom) and node.module == 'xydiff' and node.level == 0:
        offenders += [f'{name}: from xydiff import {a.name}' for a in node.names
                      if f'xydiff.{a.name}' not in modules]
  assert not offenders, offenders


def test_deblur_and_sweep_never_import_train():
  graph = _graph()

  def reaches(start):
    seen, todo = set(), [start]
    while todo:
      for dep in graph[todo.pop()]:
        if dep not in seen:
          seen.add(dep)
          todo.append(dep)
    return seen

  for tool in ('xydiff.inference.photos', 'xydiff.evaluation.sweep', 'xydiff.inference.restorer',
               'xydiff.evaluation.evaluator'):
    assert 'xydiff.train.loop' not in reaches(tool), tool


def test_a_checkpoint_deblurs_and_a_train_step_runs_without_tensorflow(tmp_path, demo_config):
  """GPU images often ship JAX without TensorFlow: inference and the train step never need it."""
  from xydiff import images
  from xydiff.runs import checkpoint
  from xydiff import config as run_config
  from xydiff.runs import state as state_lib
  graphdef, state = state_lib.init_state(demo_config)
  with checkpoint.Checkpointer(str(tmp_path / 'run'), demo_config) as ckpt:
    ckpt.save(0, state)
  run_config.save(str(tmp_path / 'run'), demo_config)
  photo = (tmp_path / 'photo.png')
  images.write_png(str(photo), (images.to_uint8(
      __import__('numpy').random.default_rng(0).random((40, 48, 3)))))
  script = textwrap.dedent(f'''
      import sys
      for name in ('tensorflow', 'tensorflow_datasets', 'clu'):
        sys.modules[name] = None  # Any import of them now raises ImportError.
      import jax, numpy as np
      from xydiff import deblur
      from xydiff.runs import state as state_lib
      from xydiff.train import step as step_lib
      from xydiff.configs import demo
      sys.path.insert(0, {str(REPO / 'tests')!r})
      from conftest import tiny
      status = deblur.run(None, {str(tmp_path / 'run')!r}, {str(photo)!r}, {str(tmp_path / 'out')!r})
      assert status == 0, status
      config = tiny(demo.get_config())
      graphdef, state = state_lib.init_state(config)
      rng = np.random.default_rng(0)
      batch = {{'blur': rng.random((2, 32, 32, 3), np.float32),
                'sharp': rng.random((2, 32, 32, 3), np.float32)}}
      new_state, metrics = step_lib.make_train_step(config, graphdef)(state, batch)
      assert int(new_state['step']) == 1 and np.isfinite(float(metrics['loss']))
      assert not any(m.split('.')[0] in ('tensorflow', 'tensorflow_datasets', 'clu')
                     for m, v in sys.modules.items() if v is not None)
      print('OK')
  ''')
  result = subprocess.run([sys.executable, '-c', script], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env=dict(os.environ))
  assert result.returncode == 0 and 'OK' in result.stdout, result.stderr[-3000:]
  assert (tmp_path / 'out' / 'photo_deblurred.png').exists()


def test_the_package_root_exports_the_api_lazily():
  """`xydiff.Restorer` is the API; importing a numpy-only module does not start JAX."""
  script = ('import sys, xydiff.data.synthetic\n'
            'assert "jax" not in sys.modules, "jax imported"\n'
            'import xydiff\n'
            'assert "Restorer" in dir(xydiff) and "jax" not in sys.modules\n'
            'from xydiff.inference.restorer import Restorer\n'
            'assert xydiff.Restorer is Restorer\n'
            'print("OK")\n')
  result = subprocess.run([sys.executable, '-c', script], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0 and 'OK' in result.stdout, result.stderr[-3000:]
