"""`xydiff export`: a run's inference weights as one portable file (or graph).

The weights are the ones evaluation and deblurring use (the EMA where
training kept one) of the workdir's latest checkpoint, or of --step. What
each format holds and how to load it: xydiff/interop/export.py.
`--format=onnx` needs the `export` extra (pip install -e '.[export]').

--out is written whole or not at all (a temporary beside it, renamed), and
checked before the checkpoint is read: a folder, or a path inside any run's
workdir (--workdir's own or another's: below a folder holding a run's
config.json or checkpoints/), is refused in one line. An existing file there
is replaced (a previous export); a symbolic link is replaced itself, its
target left alone. A full disk is one line, with nothing written. Each
stage (reading, tracing and converting, writing) shows a line on a terminal.
"""

from __future__ import annotations

import click

from xydiff import progress
from xydiff.cli import common


def export_run(workdir: str, fmt: str, out: str, step: int | None = None,
               size: tuple[int, int] | None = None) -> list[str]:
  """Exports the run in `workdir` (its stored config) as `fmt`; returns the files written.

  `size` (height, width): a fixed-size graph (onnx, stablehlo), for families whose graph
  depends on the size; None: any size that is a multiple of the network's.
  """
  from xydiff import config as config_lib  # Lazy: help and flag errors without loading JAX.
  from xydiff.errors import ConfigError  # Lazy: help and flag errors without loading JAX.
  from xydiff.interop import export  # Lazy: help and flag errors without loading JAX.
  from xydiff.runs import checkpoint  # Lazy: help and flag errors without loading JAX.
  if fmt not in export.FORMATS:
    raise ConfigError(f'--format={fmt}: must be one of {", ".join(export.FORMATS)}')
  export.check_out_path(out)  # Before the checkpoint is read; the writers check again.
  config = config_lib.load(workdir)
  which = 'the latest step' if step is None else f'step {step}'
  with progress.stage(f'export: reading {which} of {workdir}'):
    graphdef, params, step = checkpoint.load_params(config, workdir, step)
  if fmt == 'safetensors':
    export.write_safetensors(out, config, params, step, ema=config.train.ema_rate > 0)
    return [out]
  if fmt == 'onnx':
    return export.write_onnx(out, config, params, step, size)
  export.write_stablehlo(out, config, graphdef, params, size)
  return [out]


def parse_size(text: str | None) -> tuple[int, int] | None:
  """`HEIGHTxWIDTH` as (height, width); None for None."""
  if text is None:
    return None
  height, _, width = text.lower().partition('x')
  if not (height.isdigit() and width.isdigit() and int(height) > 0 and int(width) > 0):
    common.fail(f'--size={text}: give HEIGHTxWIDTH, e.g. --size=720x1280')
  return int(height), int(width)


@common.verb(
    'export', "Write a run's weights as safetensors, ONNX or StableHLO.",
    examples=('xydiff export --workdir=runs/x --out=model.safetensors',
              'xydiff export --workdir=runs/dvsr --format=onnx --out=dvsr.onnx   '
              '# dvsr_predictor.onnx, dvsr_denoiser.onnx',
              'xydiff export --workdir=runs/nafnet --format=stablehlo --out=n.stablehlo '
              '--size=720x1280'))
@common.workdir_option('The run to export.')
@click.option('-o', '--out', metavar='FILE', required=True,
              help="The file to write, outside every run's workdir (DvSR's ONNX: "
              '<stem>_predictor.onnx and <stem>_denoiser.onnx beside it); an existing file is '
              'replaced, a folder refused.')
@click.option('--format', 'fmt', type=click.Choice(['safetensors', 'onnx', 'stablehlo']),
              default='safetensors',
              help='safetensors: weights and config in one file (xydiff deblur --model=FILE '
              'reads it); onnx: graphs for onnxruntime and friends; stablehlo: a jax.export '
              'artefact.')
@click.option('--step', metavar='N', type=click.IntRange(min=0), show_default='the latest',
              help='The checkpoint to export.')
@click.option('--size', metavar='HEIGHTxWIDTH', show_default='any multiple of the network\'s',
              help='onnx, stablehlo: a graph of this fixed image size (families whose graph '
              'depends on the size need one).')
@common.quiet_option
@click.pass_context
def export(ctx, workdir, out, fmt, step, size, quiet):
  """Writes the weights deblurring uses (the EMA where training kept one) of a run's
  checkpoint, with its config, as one portable file; prints each file written.
  """
  common.start(ctx, quiet=quiet, logs=False)
  fixed = parse_size(size)
  for path in export_run(workdir, fmt, out, step, fixed):
    print(f'wrote {path}')
