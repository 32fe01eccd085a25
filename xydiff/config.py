"""A run remembers its config: stored with it, read back, compared field by field.

Training writes the resolved config to `<workdir>/config.json` (and into every
checkpoint). `--mode=eval`, `sweep` and `deblur` without `--config` use it
(launch.py passes this file as the config file, `get_config(workdir)`), so
`--config.deblur.tile=...` style overrides still work. Fields that decide
what the weights compute (`OUTPUT_FIELDS`) must match the stored ones;
everything else (sampling presets, tiles, evaluation data, seeds) may be
overridden at inference.
"""

from __future__ import annotations

import json
import os

import ml_collections

from xydiff import files

CONFIG_FILE = 'config.json'


def to_plain(config) -> dict:
  """The config as JSON values (tuples become lists), for storing and comparing."""
  if isinstance(config, ml_collections.ConfigDict):
    return json.loads(config.to_json())
  return json.loads(json.dumps(config))


def _tuples(value):
  """JSON lists back to the tuples config files use (ml_collections overrides tuples only)."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def from_plain(values: dict) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(_tuples(values))


def save(workdir: str, config) -> str:
  """Writes `<workdir>/config.json` atomically; returns its path."""
  path = os.path.join(workdir, CONFIG_FILE)
  files.write_atomic(path, json.dumps(to_plain(config), indent=1, sort_keys=True))
  return path


def _migrate(values: dict) -> dict:
  """Renamed fields of configs stored by earlier releases, in their new form.

  DvSR's U-Nets had `xy` (bool); the XY transform made it `decoders` (2 for xy).
  """
  model = values.get('model', {})
  for net in ('predictor', 'denoiser'):
    section = model.get(net)
    if isinstance(section, dict) and 'xy' in section:
      section = dict(section)
      section.setdefault('decoders', 2 if section.pop('xy') else 1)
      model[net] = section
  return values


def with_defaults(stored: dict) -> dict:
  """`stored` (a config as JSON values) with every field it lacks set to its default.

  A field added after a run was stored did not exist when it trained, so the
  run did what the field's default does (e.g. model.denoiser.film_scale=False,
  train.lr_decay_factor=0.5); renamed fields take their new names (_migrate).
  """
  from xydiff.configs import default  # pylint: disable=import-outside-toplevel

  def merge(defaults, values):
    if not isinstance(defaults, dict) or not isinstance(values, dict):
      return values
    return {**defaults, **{k: merge(defaults.get(k), v) for k, v in values.items()}}
  return merge(to_plain(default.get_config()), _migrate(stored))


def load(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f'{path} does not exist: --workdir {workdir} holds no trained, imported or fetched run; '
        'pass --config, or point --workdir at a run')
  try:
    with open(path) as f:
      return from_plain(with_defaults(json.load(f)))
  except (OSError, ValueError) as e:
    raise FileNotFoundError(f'cannot read {path}: {e}') from None


def get_config(workdir: str) -> ml_collections.ConfigDict:
  """ml_collections' entry point: `--config=<this file>:<workdir>` is that run's config."""
  return load(workdir)


def flatten(tree: dict, prefix: str = '') -> dict:
  """{'a': {'b': 1}} -> {'a.b': 1}."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def output_fields(config) -> dict:
  """{dotted field: value} of every field that changes what the weights compute.

  The model family and the fields its spec names (models/spec.py): its
  architecture and, for diffusion, the residual scale and the training noise
  schedule the denoiser's levels were learnt on. Left out: other families'
  fields, the activation dtype and the up-convolution implementation (same
  weights, same function), and everything about training, sampling presets,
  data and evaluation.
  """
  from xydiff import models  # pylint: disable=import-outside-toplevel
  plain = to_plain(config)
  fields = {'model.name': plain['model']['name']}
  for path in models.get(from_plain(plain['model'])).output_fields(from_plain(plain['model'])):
    value = plain
    for part in path.split('.'):
      value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, dict):
      fields.update(flatten(value, f'{path}.'))
    else:
      fields[path] = value
  return fields


def differing_output_fields(stored, given) -> list[str]:
  """The OUTPUT fields whose values differ between two configs (sorted)."""
  a, b = output_fields(stored), output_fields(given)
  return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
