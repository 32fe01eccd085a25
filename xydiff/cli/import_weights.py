"""Imports an authors' PyTorch checkpoint of any registered model as an xydiff run.

  python -m xydiff.cli.import_weights MODEL PATH --workdir=DIR [--config.model.<family>.<field>=...]
  xydiff import_weights MODEL PATH --workdir=DIR

MODEL is a registered model (xydeblur, dmphn_1_2_4, dmphn_1_2_4_8, deepdeblur,
mimo_unet, mimo_unet_plus, nafnet32, nafnet64, ...); PATH is the authors'
file, or for DMPHN the folder of its per-level files. The weights become
step 0 of a fresh run in DIR (xydiff.weights), which `--mode=deblur` and
`--mode=eval` use without --config. Overrides apply to the model's packaged
config (e.g. a reduced width); a file that does not fit is one error listing
every missing, unexpected or mis-shaped tensor, and nothing is written.
`--max_bytes` raises the cap on what reading one file may make (torch_pickle;
by default four times the file's size, at least 256 MiB).
"""

from __future__ import annotations

import sys

from xydiff.cli import common as cli


def main() -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  from xydiff import configs  # pylint: disable=import-outside-toplevel
  from xydiff.interop import official as weights  # pylint: disable=import-outside-toplevel

  names = configs.choices()
  # --config.* overrides apply to the named model's config, which must exist
  # before absl parses them: the name is picked out of argv here.
  named = next((a for a in sys.argv[1:] if a in names), 'xydeblur_gopro')
  try:  # ml_collections applies the overrides right here.
    config_flag = config_flags.DEFINE_config_dict(
        'config', weights.config_for(named), "The config whose model the weights fill (MODEL's "
        'packaged config); override e.g. --config.model.width for reduced variants.',
        lock_config=True)
  except cli.OVERRIDE_ERRORS as e:
    cli.fail_on_override(sys.argv, e)
  workdir_flag = flags.DEFINE_string('workdir', None, 'Fresh workdir for the imported run.')
  max_bytes_flag = flags.DEFINE_integer(
      'max_bytes', None, 'Cap on what reading one weight file may make, in bytes (default: '
      'four times its size, at least 256 MiB); raise it for a file refused as too large.',
      lower_bound=1)
  flags.mark_flags_as_required(['workdir'])

  def run(argv):
    if len(argv) != 3 or argv[1] not in names:
      cli.fail(f'give MODEL ({", ".join(names)}) and PATH: '
               'python -m xydiff.cli.import_weights MODEL PATH --workdir=DIR')
    step_dir = weights.import_official(argv[1], argv[2], workdir_flag.value, config_flag.value,
                                       max_bytes=max_bytes_flag.value)
    print(f'imported {argv[2]} as {step_dir}')

  cli.run_tool(run)


if __name__ == '__main__':
  main()
