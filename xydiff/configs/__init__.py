"""The packaged configs (installed as `xydiff.configs`), and one name per model.

Each module here has `get_config([variant])`; `base.py` holds the sections
every run shares and the others override it. `--config=MODULE[:variant]`
runs one (`--config=gopro`, `--config=demo:diffusion`).

`NAMES` gives every model of the zoo one name that works everywhere:
`--config=NAME`, `xydiff import NAME FILE`, `xydiff fetch NAME` and
`Restorer.from_pretrained(NAME)`. The shorter names of earlier commands
(`xydeblur`, `nafnet64`, ...) are `ALIASES` of them.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.resources


@dataclasses.dataclass(frozen=True)
class Named:
  """A named model: the packaged config (`module[:variant]`) it is, and what it is."""
  config: str
  about: str


NAMES = {
    'xydeblur_gopro': Named(
        'xydeblur_gopro', 'XYDeblur (Ji et al., CVPR 2022), 4,918,627 parameters; '
        'github.com/Seowon-Ji/XYDeblur'),
    'dvsr_gopro': Named(
        'dvsr_gopro', 'DvSR (Whang et al., CVPR 2022): U-Net g (base 64) + U-Net denoiser '
        '(base 32)'),
    'xydiff_gopro': Named(
        'gopro', 'xydiff: DvSR with an XY-decoupled predictor, bfloat16 activations'),
    'dmphn_1_2_4_gopro': Named(
        'dmphn_gopro:1_2_4', 'DMPHN(1-2-4) (Zhang et al., CVPR 2019), 5,424,393 parameters; '
        'github.com/HongguangZhang/DMPHN-cvpr19-master'),
    'dmphn_1_2_4_8_gopro': Named(
        'dmphn_gopro:1_2_4_8', "DMPHN(1-2-4-8), 7,232,524 parameters: XYDeblur's Table 2 "
        'baseline'),
    'deepdeblur_gopro': Named(
        'deepdeblur_gopro', 'DeepDeblur / MSCNN (Nah et al., CVPR 2017), 11,721,321 '
        'parameters; github.com/SeungjunNah/DeepDeblur-PyTorch'),
    'mimo_unet_gopro': Named(
        'mimo_unet_gopro', 'MIMO-UNet (Cho et al., ICCV 2021), 6,807,171 parameters; '
        'github.com/chosj95/MIMO-UNet (MIMO-UNet.pkl)'),
    'mimo_unet_plus_gopro': Named(
        'mimo_unet_gopro:plus', 'MIMO-UNet+ (Cho et al., ICCV 2021), 16,107,651 parameters; '
        'github.com/chosj95/MIMO-UNet (MIMO-UNetPlus.pkl)'),
    'nafnet32_gopro': Named(
        'nafnet_gopro:width32', 'NAFNet width 32 (Chen et al., ECCV 2022), 17,111,907 '
        'parameters; github.com/megvii-research/NAFNet'),
    'nafnet64_gopro': Named(
        'nafnet_gopro:width64', 'NAFNet width 64 (Chen et al., ECCV 2022), 67,888,835 '
        'parameters; github.com/megvii-research/NAFNet'),
}

# Earlier names (import_weights took the first column), and the XY/Table 2 variants.
ALIASES = {
    'xydeblur': 'xydeblur_gopro', 'dvsr': 'dvsr_gopro', 'xydiff': 'xydiff_gopro',
    'dmphn_1_2_4': 'dmphn_1_2_4_gopro', 'dmphn_1_2_4_8': 'dmphn_1_2_4_8_gopro',
    'deepdeblur': 'deepdeblur_gopro', 'mimo_unet': 'mimo_unet_gopro',
    'mimo_unet_plus': 'mimo_unet_plus_gopro', 'nafnet32': 'nafnet32_gopro',
    'nafnet64': 'nafnet64_gopro',
    'dmphn_1_2_4_8_xy': 'dmphn_gopro:1_2_4_8_xy',
    'dmphn_1_2_4_8_channel': 'dmphn_gopro:1_2_4_8_channel',
    'dmphn_1_2_4_8_layer': 'dmphn_gopro:1_2_4_8_layer',
    'deepdeblur_xy': 'deepdeblur_gopro:xy', 'deepdeblur_channel': 'deepdeblur_gopro:channel',
    'deepdeblur_layer': 'deepdeblur_gopro:layer', 'mimo_unet_xy': 'mimo_unet_gopro:xy',
    'mimo_unet_plus_xy': 'mimo_unet_gopro:plus_xy',
}


def modules() -> list[str]:
  """The packaged config modules, by name."""
  return sorted(p.name[:-3] for p in importlib.resources.files(__name__).iterdir()
                if p.name.endswith('.py') and not p.name.startswith('_'))


def resolve(name: str) -> str | None:
  """`module[:variant]` of a packaged config, model name or alias; None if it is none."""
  name = ALIASES.get(name, name)
  if name in NAMES:
    return NAMES[name].config
  if ':' in name:  # An alias may itself name a module and variant.
    module, _, variant = name.partition(':')
    return name if module in modules() and variant else None
  return name if name in modules() else None


def choices() -> list[str]:
  """Every name `resolve` takes, for messages and completions."""
  return sorted(set(NAMES) | set(ALIASES) | set(modules()))


def unknown(name: str, what: str = 'config') -> str:
  """A one-line message for a name that resolves to nothing, with the closest names."""
  close = difflib.get_close_matches(name.partition(':')[0], choices(), n=3)
  hint = f'; did you mean {" or ".join(close)}?' if close else ''
  return (f'{what} {name!r} is neither a packaged config ({", ".join(modules())}) nor a model '
          f'name ({", ".join(NAMES)}){hint}')


def get_config(name: str):
  """The ConfigDict of a packaged config, model name or alias. Raises ValueError if none."""
  resolved = resolve(name)
  if resolved is None:
    raise ValueError(unknown(name))
  module, _, variant = resolved.partition(':')
  config_module = importlib.import_module(f'{__name__}.{module}')
  return config_module.get_config(variant) if variant else config_module.get_config()
