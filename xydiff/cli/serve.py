"""`xydiff serve`: the deblurring page (xydiff/cli/page.py) on this machine.

Needs the `app` extra (pip install -e '.[app]'). Binds 127.0.0.1 unless
--host says otherwise; no public link unless --share. Open http://HOST:PORT/.
"""

from __future__ import annotations

import os

import click

from xydiff.cli import common


@common.verb(
    'serve', 'Serve the deblurring web page on this machine.',
    examples=('xydiff serve --model=xydeblur_gopro',
              'xydiff serve --workdir=runs/xydeblur --workdir=runs/dvsr --port=8080',
              'xydiff serve --model=model.safetensors --host=0.0.0.0 --max-megapixels=20'))
@click.option('--workdir', 'workdirs', metavar='DIR', multiple=True, show_default='none',
              help='A run to serve; repeat for several (the page picks one).')
@click.option('--model', 'models', metavar='NAME|FILE', multiple=True, show_default='none',
              help='A model by name (e.g. xydeblur_gopro; downloaded and imported once) or a '
              '.safetensors file from xydiff export; repeatable.')
@click.option('--host', metavar='ADDRESS', default='127.0.0.1',
              help='Address to bind; 0.0.0.0 opens the page to the network.')
@click.option('--port', metavar='PORT', type=click.IntRange(1, 65535), default=7860,
              help='Port to listen on.')
@click.option('--share', is_flag=True, show_default='off',
              help="A public link through Gradio's share servers.")
@click.option('--max-megapixels', metavar='MP', type=click.FloatRange(min=0), default=50.0,
              help='Photos larger than this are refused with a message (0: no limit).')
@click.option('--max-upload-mb', metavar='MB', type=click.IntRange(min=1), default=500,
              help='Largest upload accepted, in MB.')
@common.quiet_option
@click.pass_context
def serve(ctx, workdirs, models, host, port, share, max_megapixels, max_upload_mb, quiet):
  """Serves a page where photos dropped in a browser are deblurred with the runs and models
  given, with the diffusion models' settings; runs until interrupted.
  """
  common.start(ctx, quiet=quiet, logs=False)
  if not workdirs and not models:
    common.fail('give --workdir=DIR (a run) or --model=NAME|FILE, at least one')
  os.environ.setdefault('GRADIO_ANALYTICS_ENABLED', 'False')  # Nothing leaves the machine.
  try:
    import gradio  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    common.fail("xydiff serve needs Gradio: pip install -e '.[app]'")
  from xydiff.cli import page  # pylint: disable=import-outside-toplevel
  served = page.load_models(workdirs, models)
  page.serve(served, host=host, port=port, share=share,
             max_pixels=int(max_megapixels * 1e6), max_upload_mb=max_upload_mb)
