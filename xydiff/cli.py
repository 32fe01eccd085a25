"""What every command-line entry point shares: one-line errors for bad flags.

A user's mistake (a misspelt override, a wrong type, a missing file) ends the
program with `error: <one line naming the flag, field or file>` on stderr and
exit status 1, never a traceback.
"""

from __future__ import annotations

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


def parse_flags(argv):
  """absl's parser (for `app.run(..., flags_parser=parse_flags)`), with one-line errors."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(one_line(e))
  except OVERRIDE_ERRORS as e:
    fail_on_override(argv, e)


# ml_collections raises these for an override naming a field that does not exist.
OVERRIDE_ERRORS = (AttributeError, KeyError, TypeError, ValueError)


def fail_on_override(argv, error: BaseException) -> None:
  overrides = [a for a in argv[1:] if a.startswith('--config.')]
  fail(f'bad config override ({" ".join(overrides)}): {one_line(error)}')
