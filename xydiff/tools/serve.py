"""Serves the deblurring page (xydiff/serve.py) on this machine.

  xydiff serve --workdir=runs/xydeblur [--workdir=runs/dvsr ...] [--pretrained=xydeblur_gopro]
               [--host=127.0.0.1] [--port=7860] [--share] [--max_megapixels=50]
               [--keep_minutes=60] [--auth_file=PATH]

Needs the `app` extra (pip install -e '.[app]'). Binds 127.0.0.1 unless
--host says otherwise, and warns at start when the page is reachable from
other machines (another --host, or --share); --auth_file (lines of
user:password) or --auth makes it ask for a login. Open http://HOST:PORT/.
SIGTERM and Ctrl-C stop it, and every file it made goes with it.
"""

from __future__ import annotations

import os

from xydiff import cli


def main() -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel
  workdirs = flags.DEFINE_multi_string('workdir', [], 'A run to serve (repeat for several: the '
                                       'page picks one).')
  pretrained = flags.DEFINE_multi_string(
      'pretrained', [], 'Official weights by name (e.g. xydeblur_gopro; fetched once) or a '
      '.safetensors file from xydiff export.')
  host = flags.DEFINE_string('host', '127.0.0.1', 'Address to bind; 0.0.0.0 opens the page to '
                             'the network (a warning is logged: give --auth_file).')
  port = flags.DEFINE_integer('port', 7860, 'Port to listen on.')
  share = flags.DEFINE_bool('share', False, "A public link through Gradio's share servers.")
  max_megapixels = flags.DEFINE_float('max_megapixels', 50.0, 'Photos and sharp targets larger '
                                      'than this are refused from their headers, with a '
                                      'message (0: no limit).')
  max_upload_mb = flags.DEFINE_integer('max_upload_mb', 500, 'Largest upload accepted, in MB.')
  keep_minutes = flags.DEFINE_float('keep_minutes', 60.0, 'Uploads and restored PNGs are '
                                    'deleted this long after they were made (all of them when '
                                    'the server stops).')
  auth = flags.DEFINE_multi_string('auth', [], 'USER:PASSWORD that may log in (repeatable); '
                                   'visible to other users of this machine in its process '
                                   'list: prefer --auth_file.')
  auth_file = flags.DEFINE_string('auth_file', None, 'A file of USER:PASSWORD lines that may '
                                  'log in (# comments allowed).')

  def run(argv):
    if len(argv) > 1:
      cli.fail(f'unexpected arguments: {" ".join(argv[1:])}')
    if not workdirs.value and not pretrained.value:
      cli.fail('give --workdir=DIR (a run) or --pretrained=NAME (or a .safetensors file)')
    os.environ.setdefault('GRADIO_ANALYTICS_ENABLED', 'False')  # Nothing leaves the machine.
    from xydiff import images, serve  # pylint: disable=import-outside-toplevel
    # Flags are checked before the models load (a minute for large ones).
    limit = images.PixelLimit(max_megapixels.value, serve.LIMIT_FLAG)
    serve.cache_schedule(keep_minutes.value)
    users = serve.read_auth(auth.value, auth_file.value)
    try:
      with serve.page_files() as outputs:  # Before Gradio is imported: it fixes folders then.
        try:
          import gradio  # pylint: disable=import-outside-toplevel,unused-import
        except ImportError:
          cli.fail("xydiff serve needs Gradio: pip install -e '.[app]'")
        served = serve.load_models(workdirs.value, pretrained.value, limit=limit)
        serve.serve(served, host=host.value, port=port.value, share=share.value, limit=limit,
                    max_upload_mb=max_upload_mb.value, keep_minutes=keep_minutes.value,
                    auth=users, outputs=outputs)
    except KeyboardInterrupt:  # SIGTERM or Ctrl-C before the server was up: a clean stop.
      pass

  cli.run_tool(run)


if __name__ == '__main__':
  main()
