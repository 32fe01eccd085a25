"""`xydiff summary`: what a model costs: parameters, GMACs at 1280x720, XLA FLOPs, memory.

For one config it prints one JSON object: `params`; `gmacs_720p`, the
multiply-accumulates of convolutions and dense layers on one 1280x720 image,
the convention of the field's tables (xydiff.models.complexity; diffusion
models: g plus one denoiser step); `xla_gflops_720p`, XLA's own FLOP count of
the compiled forward pass; and `train_step_memory_gb`, the compiled peak
memory of one training step at 256x256 with the config's batch, on this
backend. `--all` prints `model`, `variant` (baseline, xy, unet2d, decoders4,
channel, layer), `params` and `gmacs_720p` for every named model, one JSON
line each as it goes (a bar over the models on stderr); nothing is compiled.
"""

from __future__ import annotations

import importlib
import json

import click

from xydiff import progress
from xydiff.cli import common

# The summary's variants of each model, as XYDeblur's Table 2 and Figures 3/5 use them:
# (decoders, share) of the family's XY section, and the packaged config's own
# Table 2 variants ('<variant>_channel', '<variant>_layer') where it has them.
XY_VARIANTS = {'baseline': (1, 'rotate'), 'xy': (2, 'rotate'), 'unet2d': (2, 'none'),
               'decoders4': (4, 'rotate')}
SIZED_VARIANTS = ('channel', 'layer')


def variant_configs(name: str) -> dict:
  """{variant: config} of the named model `name` (xydiff.configs.NAMES)."""
  from xydiff import configs, models  # Lazy: help and flag errors without loading JAX.
  module, _, variant = configs.resolve(name).partition(':')
  family = models.family(configs.get_config(name).model.name)
  out = {}
  for kind, (decoders, share) in XY_VARIANTS.items():
    config = configs.get_config(name)
    section = family.xy_section(config.model)
    if section is None:
      break
    section.update(dict(decoders=decoders, share=share))
    out[kind] = config
  sized = getattr(importlib.import_module(f'xydiff.configs.{module}'), 'VARIANTS', {})
  for kind in SIZED_VARIANTS:
    key = f'{variant}_{kind}' if variant else kind
    if key in sized:
      out[kind] = configs.get_config(f'{module}:{key}')
  return out


@common.verb(
    'summary', 'Print what a model costs: parameters, GMACs, FLOPs, memory.',
    config=True, config_default='base (XYDeblur)',
    examples=('xydiff summary --config=gopro',
              'xydiff summary --config=dvsr_gopro --config.model.predictor.decoders=4',
              'xydiff summary --all > costs.jsonl'))
@click.option('--all', 'every', is_flag=True, show_default='off',
              help='Every named model x its variants, one JSON line each (params, GMACs); '
              'nothing is compiled.')
@common.quiet_option
@click.pass_context
def summary(ctx, every, quiet):
  """Prints one JSON object of the config's model: parameters, GMACs on a 1280x720 image,
  XLA's FLOP count of the compiled forward pass and the peak memory of one training step.
  """
  common.start(ctx, quiet=quiet, logs=False)
  from xydiff.models import complexity  # Lazy: help and flag errors without loading JAX.
  if every:
    if common.config_tokens(ctx):
      common.fail('--all summarises every named model: leave out --config')
    from xydiff import configs  # Lazy: help and flag errors without loading JAX.
    with progress.task('summary', total=len(configs.NAMES), unit='model') as bar:
      for model in configs.NAMES:
        bar.describe(model)
        for kind, config in variant_configs(model).items():
          print(json.dumps({'model': model, 'variant': kind,
                            'params': complexity.count_params(config.model),
                            'gmacs_720p': round(complexity.gmacs(config.model), 2)}), flush=True)
        bar.update()
    return
  from xydiff import config as config_lib, configs  # Lazy: help and flag errors without loading JAX.
  from xydiff.train import step as step_lib  # Lazy: help and flag errors without loading JAX.
  config = common.load_config(ctx, lambda: configs.get_config('base'))
  config_lib.check(config)
  with progress.stage('summary: counting parameters and GMACs'):
    params, gmacs = complexity.count_params(config.model), complexity.gmacs(config.model)
  with progress.stage('summary: compiling the forward pass at 1280x720 (XLA FLOPs)'):
    flops = complexity.xla_gflops(config.model)
  with progress.stage('summary: compiling one training step (its memory)'):
    memory = step_lib.compiled_memory_gb(config)
  print(json.dumps({
      'model': config.model.name, 'params': params, 'gmacs_720p': round(gmacs, 2),
      'xla_gflops_720p': flops, 'train_step_memory_gb': memory,
      'batch_size': config.train.batch_size}))
