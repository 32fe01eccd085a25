"""`xydiff import` and `xydiff fetch`: a model's published weights become a run.

`import` reads the authors' PyTorch checkpoint you downloaded
(xydiff/interop/official.py: without torch, every missing, unexpected or
mis-shaped tensor listed in one error, nothing written); `fetch` downloads
the official weights of a name first, pinned by hash (xydiff/interop/
pretrained.py). Either writes step 0 of a fresh run in --workdir, which
deblur, eval and serve then use without --config. The config is NAME's
packaged one; --config and --config.FIELD=VALUE change it for reduced
variants (e.g. --config.model.width=8).
"""

from __future__ import annotations

import click

from xydiff.cli import common


def _check_name(name: str) -> None:
  from xydiff import configs  # Lazy: help and flag errors without loading JAX.
  if configs.resolve(name) is None:
    common.fail(f'NAME: {configs.unknown(name, "model")}')


@common.verb(
    'import', "Import the authors' PyTorch weights of a model as a run.",
    config=True, config_default="NAME's packaged config",
    examples=('xydiff import xydeblur_gopro XYDeblur.pkl --workdir=runs/xydeblur',
              'xydiff import dmphn_1_2_4_gopro checkpoints/DMPHN_1_2_4/ --workdir=runs/dmphn',
              'xydiff import nafnet64_gopro NAFNet-GoPro-width64.pth --workdir=runs/nafnet '
              '--max-bytes=2000000000'))
@click.argument('name', metavar='NAME',
                help='The model, by name or alias (xydiff.configs.NAMES, e.g. xydeblur_gopro, '
                'mimo_unet_gopro, nafnet64).')
@click.argument('file', metavar='FILE',
                help="The authors' checkpoint file (DMPHN: the folder of its per-level files).")
@common.workdir_option('A fresh (missing or empty) folder for the imported run.')
@click.option('--max-bytes', metavar='BYTES', type=click.IntRange(min=1),
              show_default="four times the file's size, at least 256 MiB",
              help='Cap on what reading one weight file may make, in bytes; raise it for a file '
              'refused as too large.')
@common.quiet_option
@click.pass_context
def import_(ctx, name, file, workdir, max_bytes, quiet):
  """Converts the authors' checkpoint of model NAME into step 0 of a fresh run in --workdir;
  a file that does not fit is one error listing every tensor at fault, and nothing is written.
  """
  common.start(ctx, quiet=quiet, logs=False)
  _check_name(name)
  from xydiff.interop import official  # Lazy: help and flag errors without loading JAX.
  config = common.load_config(ctx, lambda: official.config_for(name))
  step_dir = official.import_official(name, file, workdir, config, max_bytes=max_bytes)
  print(f'imported {file} as {step_dir}')


@common.verb(
    'fetch', "Download a model's official weights and import them as a run.",
    config=True, config_default="NAME's packaged config",
    examples=('xydiff fetch xydeblur_gopro --workdir=runs/official',
              'xydiff fetch dmphn_1_2_4_gopro --workdir=runs/dmphn --url=https://mirror/DMPHN/'))
@click.argument('name', metavar='NAME',
                help='The model whose official weights to download, e.g. xydeblur_gopro, '
                'dmphn_1_2_4_gopro; a model without downloadable weights says where to get them.')
@common.workdir_option('A fresh (missing or empty) folder for the imported run.')
@click.option('--url', metavar='URL', show_default="the registry's",
              help='Download from this URL instead (a mirror; for weights of several files, the '
              'folder that holds them).')
@click.option('--blob-sha1', metavar='SHA1', show_default="the registry's",
              help='The git blob id (git hash-object) the file must have instead (weights of '
              'one file).')
@common.quiet_option
@click.pass_context
def fetch(ctx, name, workdir, url, blob_sha1, quiet):
  """Downloads NAME's official weights once into your cache (verified by hash; the bytes show
  on a terminal), then imports them into a fresh run in --workdir. Nothing is left behind by
  a failure.
  """
  common.start(ctx, quiet=quiet, logs=False)
  _check_name(name)
  from xydiff.interop import pretrained  # Lazy: help and flag errors without loading JAX.
  entry = pretrained.weights_entry(name)
  config = common.load_config(ctx, lambda: pretrained.config_for(name))
  print(f'{pretrained.canonical(name)}: {entry.about}\nlicence: {entry.licence}')
  step_dir = pretrained.fetch_weights(name, workdir, url=url, blob_sha1=blob_sha1, config=config)
  print(f'imported {name} as {step_dir}')
