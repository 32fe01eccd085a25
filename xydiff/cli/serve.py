"""`xydiff serve`: the deblurring page (xydiff/cli/page.py) on this machine.

Needs the `app` extra (pip install -e '.[app]'). Binds 127.0.0.1 unless
--host says otherwise, and warns at start when the page is reachable from
other machines (another --host, or --share); --auth-file (lines of
user:password) or --auth makes it ask for a login. Open http://HOST:PORT/.
SIGTERM and Ctrl-C stop it, and every file it made goes with it.
"""

from __future__ import annotations

import os

import click

from xydiff.cli import common


@common.verb(
    'serve', 'Serve the deblurring web page on this machine.',
    examples=('xydiff serve --model=xydeblur_gopro',
              'xydiff serve --workdir=runs/xydeblur --workdir=runs/dvsr --port=8080',
              'xydiff serve --model=model.safetensors --host=0.0.0.0 --auth-file=users.txt',
              'xydiff serve --workdir=runs/dvsr --max-megapixels=20 --keep-minutes=10'))
@click.option('--workdir', 'workdirs', metavar='DIR', multiple=True, show_default='none',
              help='A run to serve; repeat for several (the page picks one).')
@click.option('--model', 'models', metavar='NAME|FILE', multiple=True, show_default='none',
              help='A model by name (e.g. xydeblur_gopro; downloaded and imported once) or a '
              '.safetensors file from xydiff export; repeatable.')
@click.option('--host', metavar='ADDRESS', default='127.0.0.1',
              help='Address to bind; 0.0.0.0 opens the page to the network (a warning is '
              'logged: give --auth-file).')
@click.option('--port', metavar='PORT', type=click.IntRange(1, 65535), default=7860,
              help='Port to listen on.')
@click.option('--share', is_flag=True, show_default='off',
              help="A public link through Gradio's share servers.")
@click.option('--max-megapixels', metavar='MP', type=float, default=50.0,
              help='Photos and sharp targets larger than this are refused from their headers, '
              'with a message (0: no limit).')
@click.option('--max-upload-mb', metavar='MB', type=click.IntRange(min=1), default=500,
              help='Largest upload accepted, in MB.')
@click.option('--keep-minutes', metavar='MINUTES', type=float, default=60.0,
              help='Uploads and deblurred PNGs are deleted this long after they were made '
              '(all of them when the server stops).')
@click.option('--auth', 'auth', metavar='USER:PASSWORD', multiple=True, show_default='none',
              help='A login the page accepts; repeatable. Other users of this machine see it '
              'in the process list: prefer --auth-file.')
@click.option('--auth-file', metavar='FILE', show_default='none',
              help='A file of USER:PASSWORD lines the page accepts as logins (# comments and '
              'blank lines skipped).')
@common.quiet_option
@click.pass_context
def serve(ctx, workdirs, models, host, port, share, max_megapixels, max_upload_mb,
          keep_minutes, auth, auth_file, quiet):
  """Serves a page where photos dropped in a browser are deblurred with the runs and models
  given, with the diffusion models' settings; runs until interrupted (Ctrl-C or SIGTERM),
  then removes every file it made.
  """
  common.start(ctx, quiet=quiet, logs=False)
  if not workdirs and not models:
    common.fail('give --workdir=DIR (a run) or --model=NAME|FILE, at least one')
  os.environ.setdefault('GRADIO_ANALYTICS_ENABLED', 'False')  # Nothing leaves the machine.
  # Imported here: the page brings JAX and the models, and `xydiff serve --help` stays quick.
  from absl import logging  # pylint: disable=import-outside-toplevel
  from xydiff import images  # pylint: disable=import-outside-toplevel
  from xydiff.cli import page  # pylint: disable=import-outside-toplevel
  # Every flag is checked before the models load (a minute for large ones).
  limit = images.PixelLimit(max_megapixels, page.LIMIT_FLAG)
  page.cache_schedule(keep_minutes)
  users = page.read_auth(auth, auth_file)
  warning = page.exposure(host, share, users)
  if warning:
    logging.warning('%s', warning)
  try:
    with page.page_files() as outputs:  # Before Gradio is imported: it fixes folders then.
      try:
        import gradio  # pylint: disable=import-outside-toplevel,unused-import
      except ImportError:
        common.fail("xydiff serve needs Gradio: pip install -e '.[app]'")
      served = page.load_models(workdirs, models, limit=limit)
      page.serve(served, host=host, port=port, share=share, limit=limit,
                 max_upload_mb=max_upload_mb, keep_minutes=keep_minutes, auth=users,
                 outputs=outputs, warn=False)
  except KeyboardInterrupt:  # SIGTERM or Ctrl-C, before the server was up or after: a clean stop.
    pass
