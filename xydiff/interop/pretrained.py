"""Official pretrained weights by name: fetched once, verified, imported once as a run.

  from xydiff.interop import pretrained
  workdir = pretrained.pretrained_workdir('xydeblur_gopro')   # Restorer.from_pretrained's run
  step_dir = pretrained.fetch_weights('dmphn_1_2_4_gopro', 'runs/dmphn')

`WEIGHTS` names every known set of weights by its model's name
(xydiff.configs.NAMES, whose packaged config it fills): its files, each
where its authors publish it and pinned by the git blob SHA-1 GitHub lists
it under (a changed or tampered file is refused rather than silently
different weights), and their licence. A set may hold several files
(DMPHN's authors publish one per network of each level): they are
downloaded into one folder of the user's cache (download.py; XYDIFF_CACHE
overrides where), converted to xydiff parameters without torch
(official.py), and written as step 0 of a fresh run
(checkpoint.write_imported_run), which deblurring and evaluation use
without --config.

Nothing is left behind by a failure: a download that fails or does not match
its hash keeps nothing, and an import that fails removes only its own
temporary folder. A download that verified stays cached even if its import
fails (it is the right file; the next try needs no download). Two processes
importing the same weights at once are safe: one import wins, the other uses
it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

from xydiff import configs
from xydiff.errors import CheckpointImportError, WeightsError
from xydiff.interop import download, official
from xydiff.runs import checkpoint


@dataclasses.dataclass(frozen=True)
class WeightFile:
  """One file of a set of weights, as its authors publish it."""
  name: str  # Its name in the download folder: the authors' file name.
  url: str
  git_blob_sha1: str  # `git hash-object` of the file: the id GitHub lists it under.


@dataclasses.dataclass(frozen=True)
class Weights:
  files: tuple[WeightFile, ...]
  about: str
  licence: str


_XYDEBLUR_LICENCE = ("the authors' repository github.com/Seowon-Ji/XYDeblur carries no licence: "
                     'the weights remain theirs; ask them before redistributing or using them '
                     'beyond research')
_DMPHN_LICENCE = ("the authors' repository github.com/HongguangZhang/DMPHN-cvpr19-master carries "
                  'no licence: the weights remain theirs; ask them before redistributing or '
                  'using them beyond research')
_DMPHN_URL = ('https://raw.githubusercontent.com/HongguangZhang/DMPHN-cvpr19-master/master/'
              'checkpoints/')


def _dmphn_files(folder: str, blobs: dict[str, str]) -> tuple[WeightFile, ...]:
  """checkpoints/<folder>/<net>.pkl of the DMPHN repository (branch master), one per net."""
  return tuple(WeightFile(f'{net}.pkl', f'{_DMPHN_URL}{folder}/{net}.pkl', blob)
               for net, blob in blobs.items())


WEIGHTS = {
    'xydeblur_gopro': Weights(
        files=(WeightFile(
            'pretrained_model.pkl',
            'https://raw.githubusercontent.com/Seowon-Ji/XYDeblur/main/results/XYDeblur/'
            'pretrained_model.pkl',
            'b8f9e2d569cc169f788d23a7756e547249d6c7bb'),),
        about='XYDeblur (width 32, 6 residual blocks) trained on GoPro by its authors '
              '(Ji et al., CVPR 2022), github.com/Seowon-Ji/XYDeblur',
        licence=_XYDEBLUR_LICENCE),
    'dmphn_1_2_4_gopro': Weights(
        files=_dmphn_files('DMPHN_1_2_4', {
            'encoder_lv1': '41abd6cf7dc9710b0a7def886269de18ab450dad',
            'encoder_lv2': '7abfd748ef51b222ec430d25c0c0475bfed59a90',
            'encoder_lv3': '353b1b5ecd416b04451dfcecae696e0966b1d718',
            'decoder_lv1': '3c522bd0c1db6c670e45a08443c8df2501e36b7b',
            'decoder_lv2': '98304ca061d989f84a3b8127998d38e0af712008',
            'decoder_lv3': '7c0d69f6a3e604946890f0682cc02efa688fbb38'}),
        about='DMPHN(1-2-4) trained on GoPro by its authors (Zhang et al., CVPR 2019), '
              'github.com/HongguangZhang/DMPHN-cvpr19-master',
        licence=_DMPHN_LICENCE),
    'dmphn_1_2_4_8_gopro': Weights(
        files=_dmphn_files('DMPHN_1_2_4_8', {
            'encoder_lv1': '44e868e439aa6c9572ec1e4c51796049437d1af3',
            'encoder_lv2': '0b794978cbfbecfd0bd28bdafd39a7cabd93fd48',
            'encoder_lv3': '4f8e1b4e202e36ffd4097f16926db278394a053d',
            'encoder_lv4': '5e7ce5bff5b80fffd52dd68fdef8a39b44ba35e3',
            'decoder_lv1': 'f0d0bd93b5d61b3aee80e3a7cfaa3a6ac8a48893',
            'decoder_lv2': '9b199fa13f195dac06f7a1755e294df208daf620',
            'decoder_lv3': '9965808ab7d8ee734115ee85030acab7a2f541e7',
            'decoder_lv4': '08ee70cd002e2b686d83bae70b8399713a7c9f42'}),
        about='DMPHN(1-2-4-8) trained on GoPro by its authors (Zhang et al., CVPR 2019), '
              'github.com/HongguangZhang/DMPHN-cvpr19-master; the baseline of XYDeblur\'s '
              'Table 2',
        licence=_DMPHN_LICENCE),
}


def canonical(name: str) -> str:
  """The model name `name` stands for (an alias such as 'xydeblur' is 'xydeblur_gopro')."""
  return configs.ALIASES.get(name, name)


def weights_entry(name: str) -> Weights:
  """The downloadable weights of model `name`; WeightsError saying what to do otherwise."""
  name = canonical(name)
  if name in WEIGHTS:
    return WEIGHTS[name]
  if name in configs.NAMES:
    raise WeightsError(
        f'{name} has no weights xydiff can download (its authors publish them where no stable '
        f'URL reaches); download them yourself and run: xydiff import {name} FILE '
        f'--workdir=DIR (downloadable: {", ".join(sorted(WEIGHTS))})')
  raise WeightsError(f'unknown model {name!r}: downloadable weights are '
                     f'{", ".join(sorted(WEIGHTS))}; models: {", ".join(configs.NAMES)}')


def config_for(name: str):
  """The packaged config that the weights `name` fit."""
  weights_entry(name)
  return configs.get_config(canonical(name))


def _files(name: str, url: str | None, blob_sha1: str | None) -> tuple[WeightFile, ...]:
  """The registry's files of `name`, or those at a mirror `url` / of another pinned version."""
  files = weights_entry(name).files
  if blob_sha1 is not None:
    if len(files) > 1:
      raise WeightsError(f'--blob_sha1 pins one file, and {name} has {len(files)}: give only '
                         '--url, a folder holding them all')
    try:
      blob_sha1 = download.check_pin('git_blob_sha1', blob_sha1)
    except ValueError:
      raise WeightsError(f'--blob_sha1={blob_sha1}: not a git blob id (40 hex digits, as '
                         '`git hash-object FILE` prints it)') from None
    files = (dataclasses.replace(files[0], git_blob_sha1=blob_sha1),)
  if url:
    files = ((dataclasses.replace(files[0], url=url),) if len(files) == 1 else
             tuple(dataclasses.replace(f, url=f'{url.rstrip("/")}/{f.name}') for f in files))
  return files


def fetch_files(name: str, *, url: str | None = None, blob_sha1: str | None = None,
                cache: str | None = None) -> str:
  """Downloads the files of the weights `name` (once); returns what their importer reads:
  the file of a one-file set, the folder of a set of several.

  They go to `<cache>/weights/<name>-<id>/` (cache: xydiff.interop.download.cache_dir()),
  where <id> comes from the files' pins: another pinned version is another folder.
  """
  name = canonical(name)
  files = _files(name, url, blob_sha1)
  pins = hashlib.sha1('\n'.join(f.git_blob_sha1 for f in files).encode()).hexdigest()
  folder = os.path.join(cache or download.cache_dir(), 'weights', f'{name}-{pins[:12]}')
  for file in files:
    download.fetch(file.url, file.name, git_blob_sha1=file.git_blob_sha1, cache=folder)
  return os.path.join(folder, files[0].name) if len(files) == 1 else folder


def fetch_weights(name: str, workdir: str, *, url: str | None = None,
                  blob_sha1: str | None = None, config=None) -> str:
  """Downloads the weights `name` (once) and imports them into `workdir`; returns the step folder.

  Args:
    name: a key of WEIGHTS, or an alias of one.
    workdir: a fresh run folder (missing or empty) for the imported checkpoint.
    url: download from here instead of the registry's URL (a mirror); for a
      set of several files, the folder URL that holds them by name.
    blob_sha1: the git blob id a one-file set's file must have instead of
      the registry's.
    config: the config whose model the weights fill (default: the name's
      packaged config); its sizes must fit the files.

  Raises:
    WeightsError: unknown name, or a file cannot be downloaded or verified.
    CheckpointImportError: the files do not fit `config`'s model, or
      `workdir` already holds files.
  """
  weights_entry(name)
  checkpoint.check_fresh_workdir(workdir)  # Before the download, not after.
  path = fetch_files(name, url=url, blob_sha1=blob_sha1)
  config = config_for(name) if config is None else config
  params = official.official_params(path, config, name=canonical(name))  # The one conversion.
  return checkpoint.write_imported_run(workdir, config, params)


def pretrained_workdir(name: str, workdir: str | None = None) -> str:
  """A run folder holding the weights `name`, imported by the first call and reused after.

  `workdir` defaults to <cache>/runs/<name> (xydiff.interop.download.cache_dir()).
  Concurrent first calls both import, into temporary folders; one rename
  wins and every caller gets the winner's run.
  """
  weights_entry(name)
  workdir = workdir or os.path.join(download.cache_dir(), 'runs', canonical(name))
  if not checkpoint.holds_imported_run(workdir):
    try:
      fetch_weights(name, workdir)
    except CheckpointImportError:
      if not checkpoint.holds_imported_run(workdir):  # Not a concurrent import that won.
        raise
  return workdir
