"""What a model costs: parameters, GMACs at 1280x720, XLA FLOPs, training-step memory.

  python -m xydiff.cli.summary --config=gopro [--config.model.predictor.decoders=4]
  xydiff summary --all          # one JSON line per registered model x variant

For one config it prints one JSON object: `params`; `gmacs_720p`, the
multiply-accumulates of convolutions and dense layers on one 1280x720 image,
the convention of the field's tables (xydiff.complexity; diffusion models:
g plus one denoiser step); `xla_gflops_720p`, XLA's own FLOP count of the
compiled forward pass; and `train_step_memory_gb`, the compiled peak memory
of one training step at 256x256 with the config's batch, on this backend.
`--all` prints `model`, `variant` (baseline, xy, unet2d, decoders4, channel,
layer), `params` and `gmacs_720p` for every registered model; nothing is
compiled or run.
"""

from __future__ import annotations

import json
import sys

from xydiff.cli import common as cli


# The summary's variants of each model, as XYDeblur's Table 2 and Figures 3/5 use them:
# (decoders, share) of the family's XY section, and the packaged config's own
# Table 2 variants ('<variant>_channel', '<variant>_layer') where it has them.
XY_VARIANTS = {'baseline': (1, 'rotate'), 'xy': (2, 'rotate'), 'unet2d': (2, 'none'),
               'decoders4': (4, 'rotate')}
SIZED_VARIANTS = ('channel', 'layer')


def variant_configs(name: str) -> dict:
  """{variant: config} of the named model `name` (xydiff.configs.NAMES)."""
  import importlib  # pylint: disable=import-outside-toplevel
  from xydiff import configs, models  # pylint: disable=import-outside-toplevel
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


def main() -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  from xydiff import config as config_lib  # pylint: disable=import-outside-toplevel
  from xydiff import configs  # pylint: disable=import-outside-toplevel
  from xydiff.models import complexity  # pylint: disable=import-outside-toplevel
  from xydiff.train import step as step_lib  # pylint: disable=import-outside-toplevel

  try:
    config_flag = config_flags.DEFINE_config_file(
        'config', cli.packaged_config('base'), 'Config to summarise (file or packaged '
        'name).', lock_config=True)
  except cli.OVERRIDE_ERRORS as e:
    cli.fail_on_override(sys.argv, e)
  all_flag = flags.DEFINE_bool('all', False, 'Every registered model x variant, one JSON line '
                               'each (params, GMACs).')

  def run(argv):
    if len(argv) != 1:
      cli.fail(f'unexpected arguments: {" ".join(argv[1:])}')
    if all_flag.value:
      for model in configs.NAMES:
        for kind, config in variant_configs(model).items():
          print(json.dumps({'model': model, 'variant': kind,
                            'params': complexity.count_params(config.model),
                            'gmacs_720p': round(complexity.gmacs(config.model), 2)}), flush=True)
      return
    config = config_flag.value
    config_lib.check(config)
    print(json.dumps({
        'model': config.model.name, 'params': complexity.count_params(config.model),
        'gmacs_720p': round(complexity.gmacs(config.model), 2),
        'xla_gflops_720p': complexity.xla_gflops(config.model),
        'train_step_memory_gb': step_lib.compiled_memory_gb(config),
        'batch_size': config.train.batch_size}))

  cli.run_tool(run)


if __name__ == '__main__':
  main()
