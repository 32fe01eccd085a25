"""Serves the deblurring page (xydiff/serve.py) on this machine.

  xydiff serve --workdir=runs/xydeblur [--workdir=runs/dvsr ...] [--pretrained=xydeblur_gopro]
               [--host=127.0.0.1] [--port=7860] [--share] [--max_megapixels=50]

Needs the `app` extra (pip install -e '.[app]'). Binds 127.0.0.1 unless
--host says otherwise; no public link unless --share. Open http://HOST:PORT/.
"""

from __future__ import annotations

import os

from xydiff.cli import common as cli


def main() -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel
  workdirs = flags.DEFINE_multi_string('workdir', [], 'A run to serve (repeat for several: the '
                                       'page picks one).')
  pretrained = flags.DEFINE_multi_string(
      'pretrained', [], 'Official weights by name (e.g. xydeblur_gopro; fetched once) or a '
      '.safetensors file from xydiff export.')
  host = flags.DEFINE_string('host', '127.0.0.1', 'Address to bind; 0.0.0.0 opens the page to '
                             'the network.')
  port = flags.DEFINE_integer('port', 7860, 'Port to listen on.')
  share = flags.DEFINE_bool('share', False, "A public link through Gradio's share servers.")
  max_megapixels = flags.DEFINE_float('max_megapixels', 50.0, 'Photos larger than this are '
                                      'refused with a message (0: no limit).')
  max_upload_mb = flags.DEFINE_integer('max_upload_mb', 500, 'Largest upload accepted, in MB.')

  def run(argv):
    if len(argv) > 1:
      cli.fail(f'unexpected arguments: {" ".join(argv[1:])}')
    if not workdirs.value and not pretrained.value:
      cli.fail('give --workdir=DIR (a run) or --pretrained=NAME (or a .safetensors file)')
    os.environ.setdefault('GRADIO_ANALYTICS_ENABLED', 'False')  # Nothing leaves the machine.
    try:
      import gradio  # pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
      cli.fail("xydiff serve needs Gradio: pip install -e '.[app]'")
    from xydiff.cli import page as serve  # pylint: disable=import-outside-toplevel
    served = serve.load_models(workdirs.value, pretrained.value)
    serve.serve(served, host=host.value, port=port.value, share=share.value,
                max_pixels=int(max_megapixels.value * 1e6), max_upload_mb=max_upload_mb.value)

  cli.run_tool(run)


if __name__ == '__main__':
  main()
