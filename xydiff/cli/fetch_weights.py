"""Downloads official pretrained weights by name and imports them as an xydiff run.

  python -m xydiff.cli.fetch_weights xydeblur_gopro --workdir=DIR
  xydiff fetch_weights dmphn_1_2_4_gopro --workdir=DIR
  python launch.py --workdir=DIR --mode=deblur --input=photos/ --output=restored/

The registry and the work are xydiff.pretrained's; this is its command line.
`--url` points at a mirror (for a set of several files, the folder holding
them), `--blob_sha1` pins another version of a one-file set, and overrides
such as `--config.model.xydeblur.width=8` apply to the config for reduced
variants. Every failure is one line; nothing is left behind.
"""

from __future__ import annotations

import sys

from xydiff.cli import common as cli
from xydiff.interop import pretrained


def main() -> None:
  """Parses the flags (absl + ml_collections) and fetches.

  The flags are defined here, not at import time, so importing this module
  (tests, notebooks) leaves absl's global flag registry alone.
  """
  from absl import flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  from xydiff.errors import USER_ERRORS  # pylint: disable=import-outside-toplevel

  names = sorted(pretrained.WEIGHTS)
  # --config.* overrides apply to the named weights' config, which must exist
  # before absl parses them: the name is picked out of argv here (an unknown
  # one is reported by run).
  named = next((a for a in sys.argv[1:] if a in pretrained.WEIGHTS), 'xydeblur_gopro')
  try:  # ml_collections applies the overrides right here.
    config_flag = config_flags.DEFINE_config_dict(
        'config', pretrained.config_for(named), 'The config whose model the weights fill (the '
        'packaged one for NAME); override e.g. --config.model.xydeblur.width for reduced '
        'variants.', lock_config=True)
  except cli.OVERRIDE_ERRORS as e:
    cli.fail_on_override(sys.argv, e)
  workdir_flag = flags.DEFINE_string('workdir', None, 'Fresh workdir for the imported run.')
  url_flag = flags.DEFINE_string(
      'url', None, 'Download from this URL instead (a mirror; for weights of several files, '
      'the folder that holds them).')
  blob_flag = flags.DEFINE_string(
      'blob_sha1', None, 'The git blob id (git hash-object) the file must have, instead of '
      "the registry's (weights of one file).")
  flags.mark_flags_as_required(['workdir'])

  def run(argv):
    if len(argv) != 2:
      cli.fail(f'give exactly one name ({", ".join(names)}): '
               'python -m xydiff.cli.fetch_weights NAME --workdir=DIR')
    name = argv[1]
    try:
      entry = pretrained.weights_entry(name)
      print(f'{name}: {entry.about}\nlicence: {entry.licence}')
      step_dir = pretrained.fetch_weights(name, workdir_flag.value, url=url_flag.value,
                                          blob_sha1=blob_flag.value, config=config_flag.value)
    except USER_ERRORS as e:
      cli.fail(cli.one_line(e))
    print(f'imported {name} as {step_dir}')

  cli.run_tool(run)


if __name__ == '__main__':
  main()
