"""Downloads official pretrained weights by name and imports them as an xydiff run.

  python -m xydiff.tools.fetch_weights xydeblur_gopro --workdir=DIR
  python launch.py --workdir=DIR --mode=deblur --input=photos/ --output=restored/

`WEIGHTS` names every known file: where its authors publish it, the git blob
id that pins it (GitHub shows it for every committed file, so a changed or
tampered file is refused rather than silently different weights), the
packaged config it fits, and its licence. The file is downloaded once into
the cache (xydiff.download; XYDIFF_CACHE overrides where), then imported by
xydiff.tools.import_xydeblur as step 0 of a fresh run in DIR. `--url`
points at a mirror and `--blob_sha1` pins another version; overrides such as
`--config.model.xydeblur.width=8` apply to the config for reduced variants.

Nothing is left behind by a failure: a download that fails or does not match
its hash keeps nothing in the cache, and a failed import removes the workdir
it created. A download that verified stays cached even if its import fails
(it is the right file; the next try needs no download).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import shutil
import sys


@dataclasses.dataclass(frozen=True)
class Weights:
  url: str
  git_blob_sha1: str  # `git hash-object` of the file: the id GitHub lists it under.
  config: str  # The packaged config (xydiff.configs.<config>) the weights fit.
  about: str
  licence: str


WEIGHTS = {
    'xydeblur_gopro': Weights(
        url='https://raw.githubusercontent.com/Seowon-Ji/XYDeblur/main/results/XYDeblur/'
            'pretrained_model.pkl',
        git_blob_sha1='b8f9e2d569cc169f788d23a7756e547249d6c7bb',
        config='xydeblur_gopro',
        about='XYDeblur (width 32, 6 residual blocks) trained on GoPro by its authors '
              '(Ji et al., CVPR 2022), github.com/Seowon-Ji/XYDeblur',
        licence='the authors\' repository github.com/Seowon-Ji/XYDeblur carries no licence: '
                'the weights remain theirs; ask them before redistributing or using them '
                'beyond research'),
}


def _weights(name: str) -> Weights:
  from xydiff.errors import WeightsError  # pylint: disable=import-outside-toplevel
  if name not in WEIGHTS:
    raise WeightsError(f'unknown weights {name!r}: known names are {", ".join(sorted(WEIGHTS))}')
  return WEIGHTS[name]


def _config_for(name: str):
  """The packaged config that the weights `name` fit."""
  return importlib.import_module(f'xydiff.configs.{_weights(name).config}').get_config()


def fetch_weights(name: str, workdir: str, *, url: str | None = None,
                  blob_sha1: str | None = None, config=None) -> str:
  """Downloads the weights `name` (once) and imports them into `workdir`; returns the step folder.

  Args:
    name: a key of WEIGHTS.
    workdir: a fresh run folder for the imported checkpoint.
    url: download from here instead of the registry's URL (a mirror).
    blob_sha1: the git blob id the file must have instead of the registry's.
    config: the config whose model the weights fill (default: the registry's);
      its width and num_res must fit the file.

  Raises:
    WeightsError: unknown name, or the file cannot be downloaded or verified.
    CheckpointImportError: the file does not fit `config`'s model.
  """
  from xydiff import download  # pylint: disable=import-outside-toplevel
  from xydiff.tools import import_xydeblur  # pylint: disable=import-outside-toplevel
  entry = _weights(name)
  blob_sha1 = (blob_sha1 or entry.git_blob_sha1).lower()
  # The hash in the name: a pinned other version is a different cache entry.
  path = download.fetch(url or entry.url, f'{name}-{blob_sha1[:12]}.pkl', git_blob_sha1=blob_sha1)
  if config is None:
    config = _config_for(name)
  made_workdir = not os.path.exists(workdir)
  try:
    return import_xydeblur.import_checkpoint(path, workdir, config)
  except BaseException:
    if made_workdir and os.path.isdir(workdir):  # Only what this call made is removed.
      shutil.rmtree(workdir)
    raise


def pretrained_workdir(name: str, workdir: str | None = None) -> str:
  """A run folder holding the weights `name`, imported by the first call and reused after.

  `workdir` defaults to <cache>/runs/<name> (xydiff.download.cache_dir()).
  """
  from xydiff import download  # pylint: disable=import-outside-toplevel
  _weights(name)
  workdir = workdir or os.path.join(download.cache_dir(), 'runs', name)
  # The step folder import_checkpoint writes; checkpoints appear only once complete.
  if not os.path.isdir(os.path.join(workdir, 'checkpoints', '0')):
    fetch_weights(name, workdir)
  return workdir


def _cli() -> None:
  """Parses the flags (absl + ml_collections, as import_xydeblur) and fetches.

  The flags are defined here, not at import time, so importing this module
  (tests, notebooks) leaves absl's global flag registry alone.
  """
  from absl import flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  from xydiff import cli  # pylint: disable=import-outside-toplevel
  from xydiff.errors import USER_ERRORS  # pylint: disable=import-outside-toplevel

  # --config.* overrides apply to the named weights' config, which must exist
  # before absl parses them: the name is picked out of argv here (an unknown
  # one is reported by main).
  named = next((a for a in sys.argv[1:] if a in WEIGHTS), next(iter(WEIGHTS)))
  try:  # ml_collections applies the overrides right here.
    config_flag = config_flags.DEFINE_config_dict(
        'config', _config_for(named), 'The config whose model the weights fill (the packaged '
        'one for NAME); override e.g. --config.model.xydeblur.width for reduced variants.',
        lock_config=True)
  except cli.OVERRIDE_ERRORS as e:
    cli.fail_on_override(sys.argv, e)
  workdir_flag = flags.DEFINE_string('workdir', None, 'Fresh workdir for the imported run.')
  url_flag = flags.DEFINE_string('url', None, 'Download from this URL instead (a mirror).')
  blob_flag = flags.DEFINE_string(
      'blob_sha1', None, 'The git blob id (git hash-object) the file must have, instead of '
      "the registry's.")
  flags.mark_flags_as_required(['workdir'])

  def main(argv):
    if len(argv) != 2:
      cli.fail(f'give exactly one name ({", ".join(sorted(WEIGHTS))}): '
               'python -m xydiff.tools.fetch_weights NAME --workdir=DIR')
    name = argv[1]
    try:
      entry = _weights(name)
      print(f'{name}: {entry.about}\nlicence: {entry.licence}')
      step_dir = fetch_weights(name, workdir_flag.value, url=url_flag.value,
                               blob_sha1=blob_flag.value, config=config_flag.value)
    except USER_ERRORS as e:
      cli.fail(cli.one_line(e))
    print(f'imported {name} as {step_dir}')

  cli.run_tool(main)


if __name__ == '__main__':
  _cli()
