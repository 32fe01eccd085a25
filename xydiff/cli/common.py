"""What every command-line entry point shares: one-line errors for bad flags.

A user's mistake (a misspelt override, a wrong type, a missing file) ends the
program with `error: <one line naming the flag, field or file>` on stderr and
exit status 1, never a traceback.
"""

from __future__ import annotations

import os
import sys

from absl import flags


def fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(1)


def one_line(error: BaseException) -> str:
  text = str(error)
  if len(text) > 1 and text[0] == text[-1] and text[0] in '"\'':  # KeyError's repr quotes.
    text = text[1:-1]
  text = text.replace('\\n', ' ').replace('\\"', '"').replace("\\'", "'")
  return ' '.join(text.split())


def parse_flags(argv, *, workdir_config: bool = True):
  """absl's parser (for `app.run(..., flags_parser=parse_flags)`), with one-line errors.

  `--config` is resolved first (resolve_config_argv); tools whose config has a
  default of their own pass workdir_config=False.
  """
  argv = resolve_config_argv(argv, workdir_config=workdir_config)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(one_line(e))
  except OVERRIDE_ERRORS as e:
    fail_on_override(argv, e)


def run_tool(main) -> None:
  """`app.run(main)` for the `python -m xydiff.cli.*` commands.

  Orbax's INFO lines (a dozen per checkpoint) are dropped, flag errors and
  the user's errors (errors.USER_ERRORS) are one line, and `--config` keeps
  the tool's own default instead of a workdir's.
  """
  from absl import app, logging  # pylint: disable=import-outside-toplevel
  from xydiff.errors import USER_ERRORS  # pylint: disable=import-outside-toplevel

  def quiet(argv):
    logging.set_verbosity(logging.WARNING)
    try:
      main(argv)
    except USER_ERRORS as e:
      fail(one_line(e))

  app.run(quiet, flags_parser=lambda argv: parse_flags(argv, workdir_config=False))


# ml_collections raises these for an override naming a field that does not exist.
OVERRIDE_ERRORS = (AttributeError, KeyError, TypeError, ValueError)


def fail_on_override(argv, error: BaseException) -> None:
  overrides = [a for a in argv[1:] if a.startswith('--config.')]
  fail(f'bad config override ({" ".join(overrides)}): {one_line(error)}')


def _joined(argv: list[str]) -> list[str]:
  """argv with `--flag value` pairs of the flags read here joined as `--flag=value`."""
  out, i = [], 0
  while i < len(argv):
    if argv[i] in ('--config', '--mode', '--workdir') and i + 1 < len(argv):
      out.append(f'{argv[i]}={argv[i + 1]}')
      i += 2
    else:
      out.append(argv[i])
      i += 1
  return out


def _flag_value(argv, name: str) -> str | None:
  """The value of the last `--name=value` in argv, or None."""
  values = [a.split('=', 1)[1] for a in argv if a.startswith(f'--{name}=')]
  return values[-1] if values else None


def packaged_config(name: str) -> str | None:
  """`FILE[:variant]` of a packaged config, model name or alias (xydiff.configs), or None."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  from xydiff import configs  # pylint: disable=import-outside-toplevel
  resolved = configs.resolve(name)
  if resolved is None:
    return None
  module, _, variant = resolved.partition(':')
  origin = importlib.util.find_spec(f'xydiff.configs.{module}').origin
  return origin + (f':{variant}' if variant else '')


def resolve_config_argv(argv: list[str], *, workdir_config: bool = True):
  """Rewrites `--config` before absl parses it.

  - `--config=NAME[:variant]` naming no file is the packaged config NAME
    (`--config=gopro`, `--config=demo:diffusion`), so an installed xydiff
    needs no checkout;
  - a `--config` file that does not exist is one line, not a traceback;
  - without `--config`, a run's own workdir supplies it (run_config.py): eval,
    sweep and deblur use the stored config, overrides included, and training
    resumes with it; --mode=score uses the packaged defaults.
  """
  argv = _joined(argv)
  config = _flag_value(argv, 'config')
  if config is None:
    if not workdir_config:
      return argv
    mode = _flag_value(argv, 'mode') or 'train'
    if mode == 'score':
      argv.insert(1, f'--config={packaged_config("base")}')
      return argv
    workdir = _flag_value(argv, 'workdir')
    checkpoint = _flag_value(argv, 'checkpoint')
    if mode == 'deblur' and checkpoint:  # <workdir>/checkpoints/<step>
      workdir = os.path.dirname(os.path.dirname(os.path.abspath(checkpoint)))
    if workdir:
      from xydiff import config as run_config  # pylint: disable=import-outside-toplevel
      if not os.path.isfile(os.path.join(workdir, run_config.CONFIG_FILE)):
        fail(f'--config is missing and {workdir} holds no stored config '
             f'({run_config.CONFIG_FILE}); pass --config')
      argv.insert(1, f'--config={run_config.__file__}:{workdir}')
    return argv
  if os.path.isfile(config.partition(':')[0]):
    return argv
  packaged = packaged_config(config)
  if packaged is None:
    from xydiff import configs  # pylint: disable=import-outside-toplevel
    fail(f'--config={config}: no such file; {configs.unknown(config)}')
  return [f'--config={packaged}' if a == f'--config={config}' else a for a in argv]
