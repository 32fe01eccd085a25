"""The verbs of a run in a workdir: train, eval and sweep (the research entry points).

Each takes `--config` (a packaged config, model name or file) with
`--config.FIELD=VALUE` overrides; left out, the config stored in --workdir is
used (training then resumes with it). Multi-process runs add
--coordinator-address, --num-processes and --process-id, or leave them to
the platform (TPU pods, SLURM).
"""

from __future__ import annotations

import click

from xydiff.cli import common

_WORKDIR_CONFIG = "the config stored in --workdir"


def _run_options(workdir_help: str):
  def decorate(fn):
    fn = common.quiet_option(fn)
    fn = common.multiprocess_options(fn)
    return common.workdir_option(workdir_help)(fn)
  return decorate


def _config(ctx, workdir: str, what: str = 'a run trained elsewhere'):
  """The config given, or the one stored in `workdir`; and whether the user gave one."""
  config = common.load_config(ctx, common.stored_config(workdir, what))
  return config, common.config_given(ctx)


@common.verb(
    'train', 'Train a model in --workdir (resuming it), evaluating as it goes.',
    config=True, config_default=f'{_WORKDIR_CONFIG} (resuming); required for a new run',
    examples=('xydiff train --config=demo --workdir=runs/demo',
              'xydiff train --config=gopro --workdir=runs/xydiff --config.train.batch_size=8',
              'xydiff train --workdir=runs/xydiff          # resume with its stored config'))
@_run_options('Where checkpoints, logs and evaluations go; a run there is resumed.')
@click.pass_context
def train(ctx, workdir, coordinator_address, num_processes, process_id, quiet):
  """Trains the config's model in --workdir, resuming from its latest checkpoint, and
  evaluates it every config.train.eval_every steps (eval/ in the workdir).

  A terminal shows a bar with steps/s and the time left; the log has the same
  every config.train.log_every steps.
  """
  common.start(ctx, quiet=quiet)
  config, _ = _config(ctx, workdir, 'a new run')
  common.initialize_processes(coordinator_address, num_processes, process_id)
  from xydiff.train import loop  # Lazy: help and flag errors without loading JAX.
  loop.train_and_evaluate(config, workdir)


@common.verb(
    'eval', "Score a run's checkpoint on its config's evaluation split.",
    config=True, config_default=_WORKDIR_CONFIG,
    examples=('xydiff eval --workdir=runs/official',
              'xydiff eval --workdir=runs/official --config.data.name=hide '
              '--config.data.root=data/HIDE',
              'xydiff eval --workdir=runs/x --config.eval.checkpoint_step=5000'))
@_run_options('The run to evaluate; results go to eval_<dataset>_<split>/ in it.')
@click.pass_context
def evaluate(ctx, workdir, coordinator_address, num_processes, process_id, quiet):
  """Scores the latest checkpoint of --workdir (or config.eval.checkpoint_step) on the
  config's evaluation split: PSNR, SSIM, LPIPS per image and on average, in JSON and CSV.
  """
  common.start(ctx, quiet=quiet)
  config, given = _config(ctx, workdir)
  common.initialize_processes(coordinator_address, num_processes, process_id)
  from xydiff.evaluation import evaluator  # Lazy: help and flag errors without loading JAX.
  evaluator.evaluate_checkpoint(config, workdir, config_from_user=given)


@common.verb(
    'sweep', "Sweep a diffusion run's sampling schedules (perception-distortion).",
    config=True, config_default=_WORKDIR_CONFIG,
    examples=('xydiff sweep --workdir=runs/dvsr',
              "xydiff sweep --workdir=runs/dvsr --config.eval.sweep.num_samples='(1,4)'",
              'xydiff sweep --workdir=runs/dvsr --samplers=ancestral,ddim,dpmpp_2m'))
@_run_options('The diffusion run to sweep; results go to sweep/ in it.')
@click.option('--samplers', default=None, metavar='NAMES',
              show_default='config.eval.sweep.samplers',
              help='Comma-separated samplers, each run on every schedule of the grid '
                   '(ancestral, ddim, dpmpp_2m, dpmpp_2m_sde); with two or more, '
                   'sweep/step_N_samplers.png plots LPIPS against PSNR per sampler.')
@click.pass_context
def sweep(ctx, workdir, samplers, coordinator_address, num_processes, process_id, quiet):
  """Runs config.eval.sweep's grid of samplers x sampling schedules x sample counts on the
  evaluation split and writes the perception-distortion table and plots; an interrupted
  sweep resumes.
  """
  common.start(ctx, quiet=quiet)
  config, given = _config(ctx, workdir)
  if samplers is not None and 'sweep' in config.eval:
    config.eval.sweep.samplers = tuple(name.strip() for name in samplers.split(',') if name.strip())
  common.initialize_processes(coordinator_address, num_processes, process_id)
  from xydiff.evaluation import sweep as sweep_lib  # Lazy: help and flag errors without loading JAX.
  sweep_lib.run_sweep(config, workdir, config_from_user=given)
