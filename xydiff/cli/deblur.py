"""`xydiff deblur`: restores your photos (the work: xydiff/inference/photos.py).

The model is a run (--workdir, at --step), a model of the zoo by name
(--model=xydeblur_gopro: downloaded and imported once into the user's cache,
as Restorer.from_pretrained does), or a `.safetensors` file that `xydiff
export` wrote (--model=FILE). Its config is the one stored with it;
`--config` (runs only) and `--config.FIELD=VALUE` may change inference
fields, never what the weights compute.
"""

from __future__ import annotations

import sys

import click

from xydiff.cli import common


@common.verb(
    'deblur', 'Restore your photos with a run, a model name or an exported file.',
    config=True, config_default="the model's own: stored in --workdir, or --model's",
    examples=(
        'xydiff deblur photo.jpg -o restored/ --model=xydeblur_gopro',
        'xydiff deblur photos/ more.jpg -o restored/ --workdir=runs/dvsr --preset=sa --samples=4',
        "xydiff deblur 'shots/*.png' -o . --workdir=runs/x --step=5000 --suffix=_x --overwrite",
        'xydiff deblur big.jpg -o out/ --model=model.safetensors --tile=512 --ensemble=8'))
@click.argument('inputs', nargs=-1, required=True, metavar='INPUT...',
                help='Image files (PNG, JPEG, TIFF), folders (their images, not recursive) or '
                'quoted globs.')
@click.option('-o', '--output', metavar='DIR', required=True,
              help='Folder for the restored PNGs, <stem><suffix>.png; made if missing.')
@click.option('--workdir', metavar='DIR', show_default='none',
              help='A trained, imported or fetched run to restore with (this or --model).')
@click.option('--model', metavar='NAME|FILE', show_default='none',
              help='A model by name (e.g. xydeblur_gopro, dmphn_1_2_4_gopro; downloaded and '
              'imported once into your cache), or a .safetensors file from xydiff export (this '
              'or --workdir).')
@click.option('--step', metavar='N', type=click.IntRange(min=0), show_default='the latest',
              help="The checkpoint of --workdir to restore with.")
@click.option('--preset', metavar='NAME', show_default='config.inference.preset',
              help="Diffusion models: the sampling preset ('sa': few steps, samples averaged; "
              "'perceptual': many steps; 'predictor': g(y) alone).")
@click.option('--steps', metavar='N', type=click.IntRange(min=1), show_default="the preset's",
              help='Diffusion models: sampling steps.')
@click.option('--samples', metavar='N', type=click.IntRange(min=1), show_default="the preset's",
              help='Diffusion models: samples averaged; their spread is written as '
              '<stem><suffix>_std.png.')
@click.option('--sampler', metavar='NAME', show_default="the preset's",
              help='Diffusion models: the sampler.')
@click.option('--seed', metavar='N', type=click.IntRange(min=0), show_default='config.seed',
              help='The noise seed; input n draws from it folded with n.')
@click.option('--tile', metavar='PIXELS', type=click.IntRange(min=0),
              show_default='config.inference.tile',
              help='Images larger than this on either side are restored in overlapping tiles; '
              '0 never tiles.')
@click.option('--ensemble', type=click.Choice(['1', '8']), show_default='config.inference.ensemble',
              help='8 averages the x8 self-ensemble (flips x rot90: 8x the time); 1 is off.')
@click.option('--suffix', default='_deblurred', metavar='TEXT',
              help="What follows each input's stem in its output's name; may be empty.")
@click.option('--overwrite', is_flag=True, show_default='off',
              help='Replace outputs that exist already (never an input).')
@click.option('--skip-existing', is_flag=True, show_default='off',
              help='Leave out the inputs whose outputs exist already, and say how many.')
@common.quiet_option
@click.pass_context
def deblur(ctx, inputs, output, workdir, model, step, preset, steps, samples, sampler, seed,
           tile, ensemble, suffix, overwrite, skip_existing, quiet):
  """Restores each input into the output folder as <stem>_deblurred.png, at the bit depth and
  with the channels it came in (grey stays grey, alpha is kept). Outputs that exist already
  are refused, listed, unless --overwrite or --skip-existing. Diffusion models also write a
  std map of their samples. A file that cannot be read or written is reported and the others
  go on; the exit status is then 1.
  """
  quiet = common.start(ctx, quiet=quiet)
  if overwrite and skip_existing:
    common.fail('--overwrite and --skip-existing exclude each other: give one')
  if bool(workdir) == bool(model):
    common.fail('give the model: --workdir=DIR (a run) or --model=NAME|FILE, one of them')
  if step is not None and not workdir:
    common.fail('--step picks a checkpoint of --workdir; --model has one')
  restorer = _restorer(ctx, workdir, model, step)
  from xydiff.errors import ConfigError  # Lazy: help and flag errors without loading JAX.
  from xydiff.inference import photos  # Lazy: help and flag errors without loading JAX.
  if tile is not None:
    try:
      restorer.tiling(tile)
    except ConfigError as e:  # Worded for config.inference.tile; this is the flag.
      common.fail(f'--tile={tile}: {common.one_line(e).split(": ", 1)[-1]}')
  report = photos.restore_files(
      restorer, list(inputs), output, suffix=suffix,
      existing='overwrite' if overwrite else 'skip' if skip_existing else 'refuse',
      preset=preset, steps=steps, samples=samples, sampler=sampler, seed=seed, tile=tile,
      ensemble=None if ensemble is None else int(ensemble))
  if not quiet:
    done = f'deblur: restored {len(report.written)} image{"s" * (len(report.written) != 1)} ' \
        f'into {output}'
    if report.skipped:
      done += (f'; skipped {report.skipped} input{"s" * (report.skipped > 1)} whose '
               f'output{"s exist" if report.skipped > 1 else " exists"}')
    if report.failed:
      done += f'; {report.failed} failed'
    print(done, file=sys.stderr)
  return report.status


def _restorer(ctx, workdir: str | None, model: str | None, step: int | None):
  """The Restorer of --workdir (at --step) or --model, with the config and its overrides."""
  from xydiff.inference import photos  # Lazy: help and flag errors without loading JAX.
  from xydiff.inference import restorer as inference  # Lazy: help and flag errors without loading JAX.
  tokens = common.config_tokens(ctx)
  given = common.config_given(ctx)
  if workdir:
    photos.check_workdir(workdir)
    config = common.load_config(ctx, common.stored_config(workdir, 'a run that stores none'))
    return inference.Restorer.from_workdir(workdir, step=step, config=config,
                                           config_from_user=given)
  if model.endswith('.safetensors'):
    from xydiff import config as config_lib  # Lazy: help and flag errors without loading JAX.
    from xydiff.interop import export  # Lazy: help and flag errors without loading JAX.
    if given:
      common.fail(f'--config: {model} carries its own config; change its inference fields '
                  'with --config.FIELD=VALUE')
    stored, graphdef, params, file_step = export.read_safetensors(model)
    config = common.load_config(ctx, lambda: stored)
    changed = config_lib.differing_output_fields(stored, config)
    if changed:
      common.fail(f'--model={model}: its weights were made for the stored '
                  f'{", ".join(changed)}; override only other fields')
    return inference.Restorer(config, graphdef, params, file_step, source=model)
  from xydiff import configs  # Lazy: help and flag errors without loading JAX.
  if configs.resolve(model) is None:
    common.fail(f'--model={model}: {configs.unknown(model, "model")}')
  if not tokens:
    return inference.Restorer.from_pretrained(model)
  from xydiff.interop import pretrained  # Lazy: help and flag errors without loading JAX.
  run = pretrained.pretrained_workdir(model)
  config = common.load_config(ctx, common.stored_config(run))
  return inference.Restorer.from_workdir(run, config=config, config_from_user=given)
