"""`python launch.py --config=... --workdir=... [--mode=...]`: the research entry point, a
shim that rewrites its flags as the `xydiff` verb of the mode and runs that verb.

  python launch.py --config=demo --workdir=DIR
      = xydiff train --config=demo --workdir=DIR
  python launch.py --workdir=DIR --mode=eval             (sweep alike)
      = xydiff eval --workdir=DIR
  python launch.py --workdir=DIR --mode=deblur --input=IN --output=OUT \
      [--checkpoint=DIR/checkpoints/N]
      = xydiff deblur IN -o OUT --workdir=DIR [--step=N]
  python launch.py --mode=score --input=R --target=S --workdir=DIR [--config.eval.align=ecc]
      = xydiff score R S -o DIR [--align=ecc]

Every other flag (--config.*, the multi-process flags) goes to the verb as
it is; the verb's help (`xydiff VERB --help`) lists them.
"""

from __future__ import annotations

import os
import sys

MODES = ('train', 'eval', 'sweep', 'deblur', 'score')
_OWN = ('mode', 'input', 'output', 'target', 'checkpoint')
# --mode=score read these fields of the config; `xydiff score` has flags for them.
_SCORE_FIELDS = {'--config.eval.align': '--align',
                 '--config.eval.inception_weights': '--inception-weights'}


def _fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(1)


def _split(args: list[str]) -> tuple[dict[str, str], list[str]]:
  """({shim flag: value}, the other arguments), `--flag value` read as `--flag=value`."""
  own, rest, i = {}, [], 0
  while i < len(args):
    name, eq, value = args[i].partition('=')
    key = name[2:].replace('-', '_') if name.startswith('--') else ''
    if key in _OWN:
      if not eq:
        if i + 1 >= len(args):
          _fail(f'--{key} needs a value')
        value, i = args[i + 1], i + 1
      own[key] = value
    else:
      rest.append(args[i])
    i += 1
  return own, rest


def _take_workdir(rest: list[str]) -> tuple[str | None, list[str]]:
  """(the --workdir value, the arguments without it)."""
  workdir, out, i = None, [], 0
  while i < len(rest):
    if rest[i] == '--workdir' and i + 1 < len(rest):
      workdir, i = rest[i + 1], i + 2
      continue
    if rest[i].startswith('--workdir='):
      workdir = rest[i].split('=', 1)[1]
    else:
      out.append(rest[i])
    i += 1
  return workdir, out


def verb_args(args: list[str]) -> list[str]:
  """The `xydiff` arguments the launcher's `args` stand for."""
  own, rest = _split(args)
  mode = own.get('mode', 'train')
  if mode not in MODES:
    _fail(f'--mode={mode}: must be one of {", ".join(MODES)}')
  for key in ('input', 'output', 'target', 'checkpoint'):
    uses = {'input': ('deblur', 'score'), 'output': ('deblur',), 'target': ('score',),
            'checkpoint': ('deblur',)}[key]
    if key in own and mode not in uses:
      _fail(f'--{key} applies to --mode={" and --mode=".join(uses)} only')
  if mode == 'deblur':
    if 'input' not in own or 'output' not in own:
      _fail('--mode=deblur needs --input (a file, folder or glob) and --output (a folder)')
    if 'checkpoint' in own:  # <workdir>/checkpoints/<step>
      path = os.path.abspath(own['checkpoint'])
      step, parent = os.path.basename(path), os.path.dirname(path)
      if not step.isdigit() or os.path.basename(parent) != 'checkpoints':
        _fail(f'--checkpoint={own["checkpoint"]} is not a checkpoint folder '
              '<workdir>/checkpoints/<step>')
      _, rest = _take_workdir(rest)
      rest += [f'--workdir={os.path.dirname(parent)}', f'--step={int(step)}']
    return ['deblur', own['input'], '-o', own['output'], *rest]
  if mode == 'score':
    if 'input' not in own or 'target' not in own:
      _fail('--mode=score needs --input (restored images) and --target (sharp images)')
    workdir, rest = _take_workdir(rest)
    flags = []
    for arg in rest:
      field, _, value = arg.partition('=')
      if field in _SCORE_FIELDS:
        flags.append(f'{_SCORE_FIELDS[field]}={value}')
      elif field == '--config.eval.lpips':
        flags.append('--lpips' if value in ('True', 'true', '1') else '--no-lpips')
      else:
        flags.append(arg)
    return ['score', own['input'], own['target'], *(['-o', workdir] if workdir else []),
            *flags]
  return [mode, *rest]


def main() -> None:
  from xydiff import cli  # Lazy: help and flag errors without loading JAX.
  cli.main(verb_args(sys.argv[1:]))
