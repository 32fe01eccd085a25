"""Writes a run's inference weights as one portable file (or graph).

  xydiff export --workdir=DIR --format=safetensors --out=model.safetensors [--step=N]
  xydiff export --workdir=DIR --format=onnx --out=model.onnx
  xydiff export --workdir=DIR --format=stablehlo --out=model.stablehlo

The weights are the ones evaluation and deblurring use (the EMA where
training kept one) of the workdir's latest checkpoint, or of --step. What
each format holds and how to load it: xydiff/export.py. `--format=onnx`
needs the `export` extra (pip install -e '.[export]').

--out is written whole or not at all (a temporary beside it, renamed), and
checked before the checkpoint is read: a folder, or a path inside any run's
workdir (--workdir's own or another's: below a folder holding a run's
config.json or checkpoints/), is refused in one line. An existing file there
is replaced (a previous export); a symbolic link is replaced itself, its
target left alone. A full disk is one line, with nothing written.
"""

from __future__ import annotations

from xydiff.cli import common as cli


def export_run(workdir: str, fmt: str, out: str, step: int | None = None,
               size: tuple[int, int] | None = None) -> list[str]:
  """Exports the run in `workdir` (its stored config) as `fmt`; returns the files written.

  `size` (height, width): a fixed-size graph (onnx, stablehlo), for families whose graph
  depends on the size; None: any size that is a multiple of the network's.
  """
  from xydiff.interop import export  # pylint: disable=import-outside-toplevel
  from xydiff import config as config_lib  # pylint: disable=import-outside-toplevel
  from xydiff.runs import checkpoint  # pylint: disable=import-outside-toplevel
  from xydiff.errors import ConfigError  # pylint: disable=import-outside-toplevel
  if fmt not in export.FORMATS:
    raise ConfigError(f'--format={fmt}: must be one of {", ".join(export.FORMATS)}')
  export.check_out_path(out)  # Before the checkpoint is read; the writers check again.
  config = config_lib.load(workdir)
  graphdef, params, step = checkpoint.load_params(config, workdir, step)
  if fmt == 'safetensors':
    export.write_safetensors(out, config, params, step, ema=config.train.ema_rate > 0)
    return [out]
  if fmt == 'onnx':
    return export.write_onnx(out, config, params, step, size)
  export.write_stablehlo(out, config, graphdef, params, size)
  return [out]


def main() -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel
  workdir = flags.DEFINE_string('workdir', None, 'The run to export.')
  fmt = flags.DEFINE_enum('format', 'safetensors', ['safetensors', 'onnx', 'stablehlo'],
                          'safetensors: weights + config in one file; onnx: graphs for '
                          'onnxruntime and friends; stablehlo: jax.export artefact.')
  out = flags.DEFINE_string('out', None, 'The file to write (DvSR ONNX: <stem>_predictor.onnx '
                            'and <stem>_denoiser.onnx beside it), outside every run\'s workdir. '
                            'An existing file is replaced (a symbolic link itself, not its '
                            'target); a folder is refused.')
  step = flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
  size = flags.DEFINE_string('size', None, 'onnx, stablehlo: HEIGHTxWIDTH of a fixed-size graph '
                             '(default: any height and width that are multiples of the '
                             "network's size multiple, where the family allows).")
  flags.mark_flags_as_required(['workdir', 'out'])

  def run(argv):
    if len(argv) > 1:
      cli.fail(f'unexpected arguments: {" ".join(argv[1:])}')
    fixed = None
    if size.value:
      height, _, width = size.value.lower().partition('x')
      if not (height.isdigit() and width.isdigit() and int(height) > 0 and int(width) > 0):
        cli.fail(f'--size={size.value}: give HEIGHTxWIDTH, e.g. --size=720x1280')
      fixed = (int(height), int(width))
    for path in export_run(workdir.value, fmt.value, out.value, step.value, fixed):
      print(f'wrote {path}')

  cli.run_tool(run)


if __name__ == '__main__':
  main()
