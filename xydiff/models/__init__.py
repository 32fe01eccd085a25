"""The model registry: one module per family under xydiff/models/, each exporting FAMILY.

  from xydiff import models
  family = models.family(config.model.name)   # its contract (family.py)
  net = models.build(config.model)

`config.model` is one family's section: `{name, dtype, **that family's
fields}` (`section_defaults(name)`). Adding a family is its module (the
network and `FAMILY = ...`, a contract.Family) and one line in FAMILIES.
"""

from __future__ import annotations

import functools
import importlib

import jax
import jax.numpy as jnp
from flax import nnx

from xydiff.errors import require
from xydiff.models.contract import DTYPES, Family

# Module names under xydiff/models/; config.model.name is one of them.
FAMILIES = ('xydeblur', 'unet', 'dvsr', 'deepdeblur', 'dmphn', 'mimo_unet', 'nafnet')


@functools.cache
def family(name: str) -> Family:
  if name not in FAMILIES:
    raise KeyError(f'unknown model family {name!r}: one of {FAMILIES}')
  return importlib.import_module(f'xydiff.models.{name}').FAMILY


def section_defaults(name: str) -> dict:
  """A family's whole config section with its defaults: {name, dtype, **fields}."""
  return {'name': name, 'dtype': 'float32', **family(name).defaults()}


def validate(section, prefix: str = 'model') -> None:
  """Checks a model section: its name, its dtype and the family's own fields."""
  require(section.get('name') in FAMILIES, f'{prefix}.name', f'must be one of {FAMILIES}',
          section.get('name'))
  require(section.get('dtype') in DTYPES, f'{prefix}.dtype', f'must be one of {DTYPES}',
          section.get('dtype'))
  family(section.name).validate(section, prefix)


def build(section, *, seed: int = 0) -> nnx.Module:
  """A freshly initialised network for a model section."""
  return family(section.name).build(section, dtype=jnp.dtype(section.dtype),
                                    rngs=nnx.Rngs(seed))


class _ShapeOnlyKeys:
  """Stands in for nnx.Rngs under eval_shape: one fixed key, no counter.

  nnx.Rngs advances a counter per key, and under eval_shape each advance
  builds a tracer error message: a full-size NAFNet traced 6x slower that way.
  Shapes do not depend on the key.
  """

  def params(self):
    return jax.random.key(0)

  __call__ = params


def abstract(section) -> tuple:
  """(graphdef, abstract params) of a model section: shapes and dtypes, no weight made."""
  model = nnx.eval_shape(lambda: family(section.name).build(
      section, dtype=jnp.dtype(section.dtype), rngs=_ShapeOnlyKeys()))
  return nnx.split(model, nnx.Param)


def size_multiple(section) -> int:
  return family(section.name).size_multiple(section)


def output_fields(section) -> dict:
  """{dotted field under config.model: value} of what changes what the weights compute."""
  return {'name': section.name, **family(section.name).output_fields(section)}
