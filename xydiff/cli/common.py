"""What every verb shares: one-line errors, the config and its overrides, logging, help.

A user's mistake (a misspelt override, a wrong type, a missing file) ends the
program with `error: <one line naming the flag, field or file>` on stderr and
exit status 1, never a traceback.

`--config` and `--config.FIELD=VALUE` are taken out of a verb's arguments
before click sees them (`Verb.parse_args`) and handed to ml_collections'
`config_flags` on a private absl `FlagValues`, never absl's global registry:
overrides keep ml_collections' types, checks and messages, and the verbs'
own flags stay click's.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import re
import sys

import click

from xydiff import progress

# ml_collections raises these for an override naming a field that does not exist.
OVERRIDE_ERRORS = (AttributeError, KeyError, TypeError, ValueError)

_CONFIG_TOKENS = 'xydiff.config_tokens'


def fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(1)


def one_line(error: BaseException) -> str:
  text = str(error)
  if len(text) > 1 and text[0] == text[-1] and text[0] in '"\'':  # KeyError's repr quotes.
    text = text[1:-1]
  text = text.replace('\\n', ' ').replace('\\"', '"').replace("\\'", "'")
  return ' '.join(text.split())


# ------------------------------------------------------------------ the config

def split_config_tokens(args: list[str]) -> tuple[list[str], list[str]]:
  """(the `--config`/`--config.*` tokens, the rest), `--config NAME` joined as `--config=NAME`."""
  config, rest, i = [], [], 0
  while i < len(args):
    arg = args[i]
    if arg == '--':
      rest += args[i:]
      break
    if arg == '--config' and i + 1 < len(args):
      config.append(f'--config={args[i + 1]}')
      i += 2
      continue
    if arg.startswith(('--config.', '--noconfig.')) and '=' not in arg and \
        i + 1 < len(args) and not args[i + 1].startswith('-'):
      # absl would read the next word as the value of a field that is not a bool: click
      # would take it for a positional. Which it is, only the config knows: ask for '='.
      fail(f'{arg} {args[i + 1]}: give an override as {arg}={args[i + 1]} (with =)')
    if arg.startswith(('--config=', '--config.', '--noconfig.')):
      config.append(arg)
    else:
      rest.append(arg)
    i += 1
  return config, rest


def config_tokens(ctx: click.Context) -> list[str]:
  return ctx.meta.get(_CONFIG_TOKENS, [])


def config_given(ctx: click.Context) -> bool:
  """Whether the user named a config (`--config=...`), not only overrides."""
  return any(t.startswith('--config=') for t in config_tokens(ctx))


def packaged_config(name: str) -> str | None:
  """`FILE[:variant]` of a packaged config, model name or alias (xydiff.configs), or None."""
  from xydiff import configs  # Lazy: help and flag errors without loading JAX.
  resolved = configs.resolve(name)
  if resolved is None:
    return None
  module, _, variant = resolved.partition(':')
  origin = importlib.util.find_spec(f'xydiff.configs.{module}').origin
  return origin + (f':{variant}' if variant else '')


def load_config(ctx: click.Context, default=None, *, missing: str = ''):
  """The verb's config: `--config` (a file or a packaged name) or `default()`, overridden.

  `default` (a function, or None) gives the config when `--config` is left
  out: a run's stored one, a model's packaged one; `missing` says what to
  pass when there is neither. Every failure is one line naming the flag.
  """
  tokens = config_tokens(ctx)
  named = [t.split('=', 1)[1] for t in tokens if t.startswith('--config=')]
  overrides = [t for t in tokens if not t.startswith('--config=')]
  if not named:
    if default is None:
      fail(f'--config is missing{missing}')
    return _overridden(default(), overrides)
  name = named[-1]
  if os.path.isfile(name.partition(':')[0]):
    return _from_file(name, overrides)
  from xydiff import configs  # Lazy: help and flag errors without loading JAX.
  if configs.resolve(name) is None:
    fail(f'--config={name}: no such file; {configs.unknown(name)}')
  try:
    base = configs.get_config(name)
  except ValueError as e:  # A variant the module does not have.
    fail(f'--config={name}: {one_line(e)}')
  return _overridden(base, overrides)


def _overridden(config, overrides: list[str]):
  """`config` with `overrides` applied by ml_collections (locked, as config_flags locks)."""
  from absl import flags  # Lazy: help and flag errors without loading JAX.
  from ml_collections import config_flags  # Lazy: help and flag errors without loading JAX.
  config = copy.deepcopy(config)  # config_flags overrides in place; the default stays as it was.
  argv = ['xydiff', *overrides]
  values = flags.FlagValues()
  try:
    holder = config_flags.DEFINE_config_dict('config', config, flag_values=values,
                                             lock_config=True, sys_argv=argv)
    values(argv)
  except (flags.Error, *OVERRIDE_ERRORS) as e:
    fail(override_message(overrides, e))
  return holder.value


def _from_file(name: str, overrides: list[str]):
  """The config file `name` (`FILE[:variant]`, ml_collections' own loader), overridden."""
  from absl import flags  # Lazy: help and flag errors without loading JAX.
  from ml_collections import config_flags  # Lazy: help and flag errors without loading JAX.
  argv = ['xydiff', f'--config={name}', *overrides]
  values = flags.FlagValues()
  try:
    holder = config_flags.DEFINE_config_file('config', None, flag_values=values,
                                             lock_config=True, sys_argv=argv)
    values(argv)
  except (flags.Error, *OVERRIDE_ERRORS) as e:
    text = str(e)
    if 'Error whilst parsing config file' in text or 'earlier failure to load' in text:
      last = [line for line in text.splitlines() if line.strip()][-1]  # The file's own error.
      fail(f'--config={name}: {one_line(last.strip())}')
    fail(override_message(overrides, e))
  return holder.value


def override_message(overrides: list[str], error: BaseException) -> str:
  """One line naming the override at fault and what ml_collections said about it."""
  text = one_line(error)
  if text.startswith('flag --'):  # absl names the flag itself: `flag --config.x=v: why`.
    return text[len('flag '):]
  unknown = re.match(r"'?([\w-]+)'?\s*(.*)", text)
  field = unknown.group(1) if unknown else ''
  culprits = [o for o in overrides if field in o.split('=', 1)[0].split('.')[1:]]
  if field and culprits and isinstance(error, (AttributeError, KeyError)):
    hint = unknown.group(2)
    close = re.search(r'Did you mean "([^"]+)"', hint)
    return (f'{", ".join(culprits)}: the config has no field {field!r}'
            + (f'; did you mean {close.group(1)!r}?' if close else ''))
  return f'bad config override ({" ".join(overrides) or "none"}): {text}'


def stored_config(workdir: str, what: str = 'a run'):
  """A function giving the config stored in `workdir`, failing in one line if there is none."""
  def read():
    from xydiff import config as config_lib  # Lazy: help and flag errors without loading JAX.
    if not os.path.isfile(os.path.join(workdir, config_lib.CONFIG_FILE)):
      fail(f'--config is missing and {workdir} holds no stored config '
           f'({config_lib.CONFIG_FILE}); pass --config=NAME or FILE for {what}')
    try:
      return config_lib.load(workdir)
    except FileNotFoundError as e:
      fail(one_line(e))
  return read


# ------------------------------------------------------------------ logging and progress

class _QuietLibraries:
  """Drops INFO chatter of orbax and friends (a dozen lines per checkpoint)."""

  _NOISY = ('/orbax/', '/jax/_src/')

  def filter(self, record) -> bool:
    from absl import logging  # Lazy: help and flag errors without loading JAX.
    return record.levelno >= logging.converter.STANDARD_WARNING or not any(
        part in record.pathname for part in self._NOISY)


def start(ctx: click.Context, *, quiet: bool = False, logs: bool = True) -> bool:
  """Sets up a verb's output: progress bars (unless --quiet, on a terminal) and absl's log.

  `logs`: INFO lines (the research verbs' record); tools log warnings only.
  Returns whether the run is quiet (the verb's --quiet or xydiff's).
  """
  from absl import flags, logging  # Lazy: help and flag errors without loading JAX.
  quiet = quiet or bool(ctx.find_root().meta.get('xydiff.quiet'))
  progress.show(not quiet)
  if not flags.FLAGS.is_parsed():  # absl's own flags at their defaults; no warning line.
    flags.FLAGS.mark_as_parsed()
  logging.use_absl_handler()
  logging.set_verbosity(logging.INFO if logs and not quiet else logging.WARNING)
  handler = logging.get_absl_handler()
  for h in (handler, handler.python_handler):  # ABSLHandler delegates to its python_handler.
    if not any(isinstance(f, _QuietLibraries) for f in h.filters):
      h.addFilter(_QuietLibraries())
  if progress.enabled():  # Log lines print above the bars instead of through them.
    from tqdm.contrib import DummyTqdmFile  # Lazy: help and flag errors without loading JAX.
    handler.python_handler.stream = DummyTqdmFile(progress.stream())
  return quiet


# ------------------------------------------------------------------ click: verbs and help

class Verb(click.Command):
  """A verb of `xydiff`: click's command with config tokens, examples and full help.

  `config` verbs take `--config` and `--config.FIELD=VALUE` (`config_default`
  says what --config is when left out); `examples` end the help.
  """

  def __init__(self, *args, config: bool = False, config_default: str = '',
               examples: tuple[str, ...] = (), **kwargs):
    kwargs.setdefault('context_settings', {}).update(CONTEXT)
    super().__init__(*args, **kwargs)
    self.takes_config = config
    self.config_default = config_default
    self.examples = examples

  def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
    if self.takes_config:
      ctx.meta[_CONFIG_TOKENS], args = split_config_tokens(args)
    return super().parse_args(ctx, args)

  def collect_usage_pieces(self, ctx):
    pieces = super().collect_usage_pieces(ctx)
    return pieces + (['[--config.FIELD=VALUE ...]'] if self.takes_config else [])

  def format_options(self, ctx, formatter) -> None:
    rows = []
    for param in self.get_params(ctx):
      row = param.get_help_record(ctx)
      if row is not None and not isinstance(param, click.Argument):
        rows.append(row)
    if self.takes_config:
      rows[:0] = [
          ('--config NAME|FILE[:VARIANT]',
           'The config: a packaged config or model name (xydiff.configs, e.g. gopro, demo:'
           f'diffusion, xydeblur_gopro) or a config file. [default: {self.config_default}]'),
          ('--config.FIELD=VALUE',
           'Overrides one field of the config, e.g. --config.train.batch_size=8; repeat for '
           'more. [default: none]')]
    with formatter.section('Options'):
      formatter.write_dl(rows)

  def format_epilog(self, ctx, formatter) -> None:
    if self.examples:
      with formatter.section('Examples'):
        for example in self.examples:  # As typed: not rewrapped.
          formatter.write(f'{"":>{formatter.current_indent}}{example}\n')
    super().format_epilog(ctx, formatter)


def verb(name: str, short_help: str, **kwargs):
  """@verb(...): a function as an `xydiff` verb (class Verb), added to VERBS in order."""
  def register(fn):
    command = click.command(name, cls=Verb, short_help=short_help, **kwargs)(fn)
    VERBS.append(command)
    return command
  return register


# Every verb, in the order `xydiff --help` lists them (filled by the modules that define them).
VERBS: list[click.Command] = []

# Dashes and underscores are one: `--max_bytes` is `--max-bytes` (click normalizes the
# names it matches). Help is wide enough for the sentences; defaults show.
CONTEXT = dict(token_normalize_func=lambda name: name.replace('_', '-'),
               help_option_names=['-h', '--help'], max_content_width=100, show_default=True)


def quiet_option(fn):
  return click.option('-q', '--quiet', is_flag=True, default=False, show_default='off',
                      help='No progress bars or informational lines; errors and warnings '
                      'still print. Bars show only on a terminal anyway.')(fn)


def workdir_option(help_text: str, *, required: bool = True, **kwargs):
  return click.option('--workdir', metavar='DIR', required=required, help=help_text,
                      **kwargs)


def multiprocess_options(fn):
  """--coordinator-address, --num-processes, --process-id: one process of several."""
  for option in reversed((
      click.option('--coordinator-address', metavar='HOST:PORT', show_default='none',
                   help='Multi-process runs: host:port of process 0. On TPU pods and under '
                   'SLURM leave it out: the platform supplies it.'),
      click.option('--num-processes', type=click.IntRange(min=1), metavar='N',
                   show_default='none', help='Multi-process runs: how many processes take part.'),
      click.option('--process-id', type=click.IntRange(min=0), metavar='N', show_default='none',
                   help='Multi-process runs: this process, from 0.'))):
    fn = option(fn)
  return fn


def initialize_processes(coordinator_address, num_processes, process_id) -> None:
  """Joins a multi-process run (xydiff.runs.distributed), a bad combination in one line."""
  from xydiff.runs import distributed  # Lazy: help and flag errors without loading JAX.
  try:
    distributed.initialize(coordinator_address, num_processes, process_id)
  except ValueError as e:
    fail(one_line(e))


def usage_message(error: click.UsageError) -> str:
  """A click usage error as one line that says where help is."""
  where = error.ctx.command_path if error.ctx is not None else 'xydiff'
  if isinstance(error, click.NoSuchOption):
    close = error.possibilities or []  # click's own close matches (difflib).
    hint = f'; did you mean {" or ".join(close)}?' if close else ''
    return f'{where}: no such flag {error.option_name}{hint} ({where} --help lists them)'
  return f'{where}: {one_line(error.format_message())} ({where} --help)'
