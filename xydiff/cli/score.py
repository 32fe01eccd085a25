"""`xydiff score`: a folder of restored images against the sharp ones, no model needed.

The work is xydiff/evaluation/folders.py: files paired by stem, scored as
evaluation scores a model's outputs, score.json and score.csv written.
"""

from __future__ import annotations

import json
import os
import sys

import click

from xydiff.cli import common


@common.verb(
    'score', 'Score a folder of restored images against sharp ones (no model).',
    examples=('xydiff score restored/ GOPRO/test/sharp/ -o scores/',
              'xydiff score theirs/ RealBlur-J/test/gt/ --align=ecc --inception-weights=fetch'))
@click.argument('restored_dir', metavar='RESTORED_DIR',
                help="The restored images (PNG, JPEG), paired with SHARP_DIR's by file stem.")
@click.argument('sharp_dir', metavar='SHARP_DIR', help='The sharp (ground-truth) images.')
@click.option('-o', '--output', metavar='DIR', show_default='RESTORED_DIR',
              help='Folder for score.json and score.csv (replaced if there).')
@click.option('--align', type=click.Choice(['none', 'ecc']), default='none',
              help="ecc: RealBlur's protocol, each image aligned to its sharp one (ECC "
              'homography) before PSNR and SSIM.')
@click.option('--lpips/--no-lpips', default=True, show_default='on',
              help='LPIPS (AlexNet) of every image.')
@click.option('--inception-weights', metavar='FILE|fetch', default='', show_default='off',
              help="FID and KID of the folder on pytorch-fid's Inception: 'fetch' downloads its "
              'weights once, or give the local pt_inception-2015-12-05-6726825d.pth.')
@common.quiet_option
@click.pass_context
def score(ctx, restored_dir, sharp_dir, output, align, lpips, inception_weights, quiet):
  """Scores every restored image against the sharp image of the same stem (a.png against
  a.jpg) with the table protocol: PSNR and SSIM on 8-bit levels, LPIPS; prints the means as
  one JSON line. An unpaired file or a size mismatch is an error naming it.
  """
  quiet = common.start(ctx, quiet=quiet)
  if inception_weights not in ('', 'fetch') and not os.path.isfile(inception_weights):
    common.fail(f"--inception-weights={inception_weights}: no such file (or give 'fetch')")
  from xydiff.configs import base  # Lazy: help and flag errors without loading JAX.
  from xydiff.evaluation import folders  # Lazy: help and flag errors without loading JAX.
  config = base.get_config()
  config.eval.update(dict(align=align, lpips=lpips, inception_weights=inception_weights))
  out = output or restored_dir
  summary = folders.run(config, out, restored_dir, sharp_dir)
  print(json.dumps({'num_images': summary['num_images'], **summary['outputs'][folders.OUTPUT]}))
  if not quiet:
    print(f'score: wrote {os.path.join(out, "score.json")} and score.csv', file=sys.stderr)
