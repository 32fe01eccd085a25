"""The model contract: what a model family is, stated once by its own module.

Each family module under xydiff/models/ defines its network (an nnx.Module)
and `FAMILY`, an instance of a `Family` subclass. Everything outside
xydiff/models/ asks the family instead of branching on a name or a kind:

- its config section (`config.model` is `{name, dtype, **defaults()}`):
  `defaults`, `validate`, and `output_fields`, the fields that change what
  the weights compute;
- its network: `build`, `size_multiple`, `xy_section` (where the XY
  transform's `decoders` and `share` live);
- training: `loss`;
- inference: `restore(model, blur, key, settings)`, the one function that
  turns a batch of blurry images into restored ones, for the `Restorer`,
  evaluation and export alike. `settings` (hashable, fixed when compiled)
  comes from `settings(config, ...)`; `outputs(config)` names the settings
  evaluation reports; `components` are the pure pieces a foreign runtime
  runs (ONNX); `tile_safe` / `for_tiles` say how tiles see the network;
- the fields it adds to other sections (`settings_defaults`, checked by
  `validate_settings`): DvSR's sampling presets in `config.inference`.

The defaults below are a deterministic family's: `model(blur)['restored']`,
one output, no settings. DvSR overrides the inference part.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from xydiff.errors import ConfigError, require
from xydiff.models import xy
from xydiff.models.layers import UPSAMPLE_IMPLS

# Fields every model section may hold that choose how, not what, it computes:
# the same weights give the same function whatever their values.
IMPLEMENTATION_FIELDS = ('dtype', 'upsample_impl', 'layer_impl')
DTYPES = ('float32', 'bfloat16', 'float16')


@dataclasses.dataclass(frozen=True)
class Component:
  """A pure piece of a model for a foreign runtime: `fn(*inputs) -> one array`.

  `inputs` names each input and its kind: 'image' (NHWC float32 in [0, 1]
  or a residual of that shape) or 'level' (one noise level per batch item).
  """
  name: str
  fn: Callable
  inputs: tuple[tuple[str, str], ...]
  output: str


def l1_loss(model, batch, key):
  """L1 on the restored image only (XYDeblur's recipe, and the U-Net deblurrer's)."""
  del key
  restored = model(batch['blur'])['restored']
  l1 = jnp.mean(jnp.abs(restored - batch['sharp']))
  return l1, {'l1': l1}


def flatten(tree, prefix: str = '') -> dict:
  """{'a': {'b': 1}} -> {'a.b': 1}, for ConfigDicts and dicts alike."""
  flat = {}
  for key, value in tree.items():
    if hasattr(value, 'items'):
      flat.update(flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


class Family:
  """A model family; subclasses set `name` and `module` and override what differs."""

  name: str = ''
  module: type = nnx.Module  # The network class `build` makes.

  # ------------------------------------------------------------ the config section

  def defaults(self) -> dict:
    """The section's own fields with their defaults (without `name` and `dtype`)."""
    raise NotImplementedError

  def validate(self, section, prefix: str) -> None:
    """Raises ConfigError naming `<prefix>.<field>` for a value the family cannot use."""
    raise NotImplementedError

  def output_fields(self, section) -> dict:
    """{dotted field: value} of every field whose value changes what the weights compute."""
    return {k: v for k, v in flatten(section).items()
            if k.split('.')[-1] not in IMPLEMENTATION_FIELDS}

  # ------------------------------------------------------------ the network

  def build(self, section, *, dtype, rngs: nnx.Rngs) -> nnx.Module:
    raise NotImplementedError

  def size_multiple(self, section) -> int:
    """The factor the network pads H and W up to (its own downsampling)."""
    raise NotImplementedError

  def xy_section(self, section):
    """The (sub)section holding the XY transform's `decoders` and `share` (xy.py), or None."""
    return section if 'decoders' in section else None

  # ------------------------------------------------------------ training

  def loss(self, section) -> Callable:
    """loss_fn(model, batch, key) -> (loss, {name: metric}): the paper's training loss."""
    del section
    return l1_loss

  # ------------------------------------------------------------ inference

  def settings(self, config, *, preset: str | None = None, steps: int | None = None,
               samples: int | None = None, sampler: str | None = None):
    """The hashable settings `restore` runs with, from config.inference and overrides.

    A deterministic family has none: asking for sampling is a ConfigError.
    """
    asked = {k: v for k, v in dict(preset=preset, steps=steps, samples=samples,
                                   sampler=sampler).items() if v is not None}
    if asked:
      raise ConfigError(f'{", ".join(f"{k}={v!r}" for k, v in asked.items())}: '
                        f'{config.model.name} restores in one pass; preset, steps, samples and '
                        'sampler apply to diffusion models')
    return None

  def restore(self, model, blur: jax.Array, key: jax.Array, settings) -> dict:
    """{'image'} (and for samplers 'std', 'samples' [N, B, ...]) of an NHWC batch."""
    del key, settings
    return {'image': model(blur)['restored']}

  def outputs(self, config) -> dict:
    """{name: settings} of what evaluation scores, the primary output last."""
    del config
    return {'restored': None}

  def describe(self, settings) -> str:
    """How `settings` restore, in a few words (logs, the page)."""
    del settings
    return 'restored in one pass'

  def components(self, model) -> list[Component]:
    return [Component('restored', lambda blur: model(blur)['restored'], (('blur', 'image'),),
                      'restored')]

  def tile_safe(self, section) -> bool:
    """Whether tiles compute what the whole image would, away from their edges."""
    del section
    return True

  def for_tiles(self, section):
    """A section of the same weights that tiles as the whole image would, or None."""
    del section
    return None

  # ------------------------------------------------------------ fields of other sections

  def settings_defaults(self) -> dict:
    """{section name: {field: default}} this family adds to config sections besides model."""
    return {}

  def settings_entry_defaults(self) -> dict:
    """{dotted table: {field: default}} for tables of named entries among those fields
    (DvSR's inference.presets): an entry stored without a field took its default."""
    return {}

  def validate_settings(self, config) -> None:
    """Checks the fields `settings_defaults` added (the config holds them)."""
    del config


def check_positive_int(value, field: str) -> None:
  require(isinstance(value, int) and not isinstance(value, bool) and value > 0, field,
          'must be a positive integer', value)


def check_positive_ints(section, prefix: str, *fields: str) -> None:
  """check_positive_int for each of `fields` of `section`, named `<prefix>.<field>`."""
  for field in fields:
    check_positive_int(section[field], f'{prefix}.{field}')


def check_count(value, field: str, minimum: int = 0) -> None:
  require(isinstance(value, int) and not isinstance(value, bool) and value >= minimum, field,
          f'must be an integer >= {minimum}', value)


def check_decoders(section, prefix: str) -> None:
  """The decoders' fields: the XY transform's (xy.py) and how up-convolutions run."""
  xy.check_section(section, prefix)
  check_upsample_impl(section, prefix)


def check_upsample_impl(section, prefix: str) -> None:
  require(section.upsample_impl in UPSAMPLE_IMPLS, f'{prefix}.upsample_impl',
          f'must be one of {UPSAMPLE_IMPLS}', section.upsample_impl)
