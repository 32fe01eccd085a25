"""The model registry: one module per family under xydiff/models/, each exporting SPEC.

  from xydiff import models
  spec = models.get(config.model)            # the ModelSpec of config.model.name
  net = models.build_model(config.model)

Adding a family is its module (with `SPEC = spec.ModelSpec(...)`), one line in
FAMILIES and, for training, a packaged config. Its config fields come from
its SPEC.defaults into xydiff/configs/default.py, so they are described once.
"""

from __future__ import annotations

import functools
import importlib

from flax import nnx

from xydiff.models.spec import ModelSpec, Variant

# Module names under xydiff/models/; config.model.name is one of them.
FAMILIES = ('xydeblur', 'dvsr', 'deepdeblur', 'dmphn', 'mimo_unet', 'nafnet')


@functools.cache
def family(name: str) -> ModelSpec:
  if name not in FAMILIES:
    raise KeyError(f'unknown model family {name!r}: one of {FAMILIES}')
  return importlib.import_module(f'xydiff.models.{name}').SPEC


def get(model_config) -> ModelSpec:
  """The spec of config.model.name."""
  return family(model_config.name)


def build_model(model_config, *, seed: int = 0) -> nnx.Module:
  """A freshly initialised model for `config.model`."""
  return get(model_config).build(model_config, nnx.Rngs(seed))


def size_multiple(model_config) -> int:
  return get(model_config).size_multiple(model_config)


def is_diffusion(model_config) -> bool:
  return get(model_config).diffusion


def defaults() -> dict:
  """Every family's config fields with their defaults, keyed as under config.model."""
  merged = {}
  for name in FAMILIES:
    merged.update(family(name).defaults())
  return merged


def variants() -> dict[str, Variant]:
  """{variant name: Variant} over every family (import_weights' and the summary's names)."""
  return {name: v for f in FAMILIES for name, v in family(f).variants.items()}


def variant(name: str) -> Variant:
  table = variants()
  if name not in table:
    raise KeyError(f'unknown model {name!r}: one of {", ".join(sorted(table))}')
  return table[name]


def variant_section(family_name: str, name: str, default: str = '') -> dict:
  """Section overrides of `family_name`'s registered variant `name`, for its config files.

  `name` may leave out the family prefix ('1_2_4_8' for 'dmphn_1_2_4_8'); ''
  is `default` (a registered name) or, without one, the section's defaults.
  Raises ValueError listing the family's variants.
  """
  table = family(family_name).variants
  name = name or default
  if not name:
    return {}
  full = name if name in table else f'{family_name}_{name}'
  if full not in table:
    raise ValueError(f'{family_name}: no variant {name!r}; one of {", ".join(sorted(table))} '
                     f'(or without the "{family_name}_" prefix)')
  return dict(table[full].section)


def deterministic_families() -> tuple[str, ...]:
  """Families that can serve as DvSR's initial predictor g(y)."""
  return tuple(name for name in FAMILIES if not family(name).diffusion)
