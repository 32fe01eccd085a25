"""The `xydiff` command: one grammar, `xydiff VERB [ARGUMENTS] [--flags]`.

  xydiff --help            the verbs, one line each
  xydiff VERB --help       a verb's arguments and flags, each with its default, and examples

click parses the verbs, positionals and typed options and writes the help, and hands the
`--config` and `--config.*` tokens to ml_collections' own config_flags on a private absl
FlagValues (common.py), so overrides keep ml_collections' types, checks and messages.

The verbs live in runs.py (train, eval, sweep), deblur.py, score.py,
serve.py, export.py, weights.py (import, fetch) and summary.py; each
imports its work only when it runs, so help is quick and deblur never loads
TensorFlow. `python launch.py --config=... --mode=...` (launch.py) is the
research entry point's shim onto the same verbs. Dashes and underscores are
one in flags and verbs; an unknown verb or flag is one line with the closest
names; a user's error is `error: ...` on stderr and exit status 1.
"""

from __future__ import annotations

import importlib
import os
import re
import sys

# TensorFlow (tfds, clu's summary writer) logs a lot at start-up; keep it quiet.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import click  # pylint: disable=wrong-import-position

from xydiff.cli import common  # pylint: disable=wrong-import-position
from xydiff.errors import USER_ERRORS  # pylint: disable=wrong-import-position

VERB_MODULES = ('runs', 'deblur', 'score', 'serve', 'export', 'weights', 'summary')

# Earlier commands' names, still understood (with a note).
RENAMED = {'import-weights': 'import', 'fetch-weights': 'fetch'}


class Xydiff(click.Group):
  """The verbs, listed in the order they were added; earlier names lead to the new ones."""

  chosen: str | None = None  # The verb being run, for messages (main).

  def list_commands(self, ctx):
    return list(self.commands)

  def format_commands(self, ctx, formatter) -> None:
    with formatter.section('Verbs'):
      formatter.write_dl([(name, command.short_help) for name, command in self.commands.items()])

  def get_command(self, ctx, cmd_name):
    if cmd_name in RENAMED:
      print(f'note: `xydiff {cmd_name}` is now `xydiff {RENAMED[cmd_name]}`', file=sys.stderr)
      cmd_name = RENAMED[cmd_name]
    return super().get_command(ctx, cmd_name)

  def resolve_command(self, ctx, args):
    name, command, rest = super().resolve_command(ctx, args)
    Xydiff.chosen = command.name if command is not None else None
    return name, command, rest

  def main(self, args=None, prog_name=None, **extra):  # pylint: disable=arguments-differ
    """Runs a verb; exits 0, the verb's status, or 1 with `error: <one line>` on stderr."""
    args = sys.argv[1:] if args is None else list(args)
    if not args:
      click.echo(self.get_help(click.Context(self, info_name=prog_name or 'xydiff',
                                            **self.context_settings)))
      sys.exit(0)
    extra['standalone_mode'] = False  # Errors are ours to word (below).
    try:
      status = super().main(args=args, prog_name=prog_name, **extra)
    except click.exceptions.NoSuchCommand as e:
      close = e.possibilities or []
      hint = f'; did you mean {" or ".join(close)}?' if close else ''
      common.fail(f'no verb {e.command_name!r}{hint} (xydiff --help lists the verbs: '
                  f'{", ".join(self.commands)})')
    except click.UsageError as e:
      common.fail(common.usage_message(e))
    except click.ClickException as e:
      common.fail(common.one_line(e.format_message()))
    except click.Abort:
      print('error: interrupted', file=sys.stderr)
      sys.exit(130)
    except USER_ERRORS as e:
      common.fail(for_verb(Xydiff.chosen, common.one_line(e)))
    sys.exit(status if isinstance(status, int) else 0)


def verbs() -> list[click.Command]:
  """Every verb, in the order `xydiff --help` lists them."""
  for module in VERB_MODULES:  # Each adds its verbs to common.VERBS.
    importlib.import_module(f'xydiff.cli.{module}')
  # By module, then as each module defines them, whichever module was imported first.
  def place(command):
    module = command.callback.__module__.rpartition('.')[2]
    return VERB_MODULES.index(module), common.VERBS.index(command)
  return sorted(common.VERBS, key=place)


def build() -> Xydiff:
  """The `xydiff` group with every verb."""

  @click.group('xydiff', cls=Xydiff, context_settings=common.CONTEXT,
               subcommand_metavar='VERB [ARGUMENTS] [FLAGS]',
               epilog='Run `xydiff VERB --help` for a verb\'s arguments, flags and examples.')
  @click.option('-q', '--quiet', is_flag=True, default=False, show_default='off',
                help='No progress bars or informational lines, for every verb.')
  @click.version_option(package_name='xydiff', prog_name='xydiff')  # The installed version.
  @click.pass_context
  def group(ctx, quiet):
    """XYDeblur, DvSR and more: train, evaluate and run single-image motion deblurring."""
    ctx.meta['xydiff.quiet'] = quiet

  for command in verbs():
    group.add_command(command)
  return group


# runs/checkpoint.py words its messages for every verb at once (how to pick another step,
# what to do with --config); each verb gets the part that names its own flags.
_PICK_STEP = re.compile(r', picked with --config\.eval\.checkpoint_step=N \(eval, sweep\) or '
                        r'--step=N \(deblur, export\)')
PICK_STEP = {'eval': ', picked with --config.eval.checkpoint_step=N',
             'sweep': ', picked with --config.eval.checkpoint_step=N',
             'deblur': ', picked with --step=N', 'export': ', picked with --step=N'}


def for_verb(verb: str | None, message: str) -> str:
  """`message` worded for `verb`, so that it names no flag the verb does not have."""
  message = _PICK_STEP.sub(PICK_STEP.get(verb, ''), message)
  if verb not in {command.name for command in verbs() if command.takes_config}:
    message = message.replace(' (omit --config to use the stored one)', '').replace(
        ' (--config=...) to use it', ' to xydiff deblur or eval to use it')
  return message


def main(argv: list[str] | None = None) -> None:
  """The console entry point: `xydiff VERB ...` (setup.cfg's console_scripts)."""
  build().main(args=argv, prog_name='xydiff')
