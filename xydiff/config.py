"""A run remembers its config: stored with it, read back (migrated), compared field by field.

Training writes the resolved config to `<workdir>/config.json` (and into every
checkpoint). Deblurring, evaluation, the sweep and export without `--config`
use it. Fields that decide what the weights compute (`output_fields`: the
model section as its family says) must match the stored ones; everything
else (inference settings, tiles, evaluation data, seeds) may be overridden.

Configs stored by earlier layouts are migrated on read (`migrate`): layout 1
held every family's section under `config.model`, DvSR's schedule and
presets in `config.diffusion` and the inference settings in
`config.deblur`; layout 2 (`config.version = 2`) holds one family's section
and `config.inference`. Fields a stored config lacks (it predates them)
take their defaults, which is what the code that wrote it did.
"""

from __future__ import annotations

import copy
import json
import os

import ml_collections

from xydiff import files, models
from xydiff.configs import base
from xydiff.errors import ConfigError, require

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


# ------------------------------------------------------------------ migration

def _layout1_model(model: dict, diffusion: dict) -> dict:
  """Layout 1's config.model (every family's section) as layout 2's: one family's section."""
  name = model.get('name', 'xydeblur')
  common = {'dtype': model.get('dtype', 'float32')}
  impl = model.get('upsample_impl', 'auto')

  def section_of(family_name, fields):
    section = {'name': family_name, **fields}
    if 'upsample_impl' in models.family(family_name).defaults():
      section['upsample_impl'] = impl
    return section

  if name != 'dvsr':
    return {**common, **section_of(name, dict(model.get(name, {})))}
  predictor = dict(model.get('predictor', {}))
  if 'xy' in predictor:  # Before the XY transform: a bool, now `decoders`.
    predictor.setdefault('decoders', 2 if predictor.pop('xy') else 1)
  arch = predictor.pop('arch', 'unet')
  predictor = section_of(arch, predictor if arch == 'unet' else dict(model.get(arch, {})))
  denoiser = dict(model.get('denoiser', {}))
  if 'xy' in denoiser:
    denoiser.setdefault('decoders', 2 if denoiser.pop('xy') else 1)
  denoiser['upsample_impl'] = impl
  out = {**common, 'name': 'dvsr', 'predictor': predictor, 'denoiser': denoiser,
         'diffusion': {k: v for k, v in diffusion.items() if k != 'presets'}}
  if 'noise_embedding_scale' in model:
    out['noise_embedding_scale'] = model['noise_embedding_scale']
  return out


def _from_layout1(values: dict) -> dict:
  values = copy.deepcopy(values)
  diffusion = values.pop('diffusion', {})
  sweep = values.pop('sweep', {})
  deblur = values.pop('deblur', {})
  model = _layout1_model(values.pop('model', {}), diffusion)
  out = {**values, 'version': 2, 'model': model}
  inference = {k: v for k, v in deblur.items() if k not in ('preset', 'num_samples')}
  evaluation = dict(values.get('eval', {}))
  # Layout 1 kept these fields for every model; layout 2 has them where the family adds them.
  if 'inference' in models.family(model['name']).settings_defaults():
    inference.update({k: deblur[k] for k in ('preset', 'num_samples') if k in deblur})
    if 'presets' in diffusion:
      inference['presets'] = diffusion['presets']
    if sweep:
      evaluation['sweep'] = sweep
  else:
    evaluation.pop('presets', None)
  out['inference'] = inference
  out['eval'] = evaluation
  return out


def migrate(values: dict) -> dict:
  """A stored config (JSON values) of any layout as layout 2's, without defaults filled in."""
  if not isinstance(values, dict):
    raise ConfigError(f'a stored config must be a JSON object, not {type(values).__name__}')
  if values.get('version', 1) == 1:
    values = _from_layout1(values)
  return values


def with_defaults(stored: dict) -> dict:
  """`stored` migrated, with every field it lacks set to its default for its model.

  A field added after a run was stored did not exist when it trained, so the
  run did what the field's default does (e.g. model.denoiser.film_scale=False).
  """
  values = migrate(stored)
  name = values.get('model', {}).get('name')
  if name not in models.FAMILIES:
    raise ConfigError(f'config.model.name={name!r}: must be one of {models.FAMILIES}')
  defaults = to_plain(base.get_config(name))
  for key, value in values['model'].items():
    # A nested section of another family (DvSR's predictor) takes that family's defaults.
    if isinstance(value, dict) and value.get('name') in models.FAMILIES and \
        value['name'] != defaults['model'].get(key, {}).get('name'):
      defaults['model'][key] = to_plain({'name': value['name'],
                                         **models.family(value['name']).defaults()})

  def merge(default, value):
    if not isinstance(default, dict) or not isinstance(value, dict):
      return value
    return {**default, **{k: merge(default.get(k), v) for k, v in value.items()}}
  merged = merge(defaults, values)
  # A stored entry of a table (a sampling preset) keeps the meaning it had when stored:
  # fields it lacks take the entry's neutral defaults, not those of today's entry of the
  # same name; entries added since are there too.
  for table, entry_defaults in models.family(name).settings_entry_defaults().items():
    section_name, field = table.split('.')
    stored_entries = values.get(section_name, {}).get(field)
    if isinstance(stored_entries, dict):
      merged[section_name][field] = {
          **defaults[section_name][field],
          **{key: merge(entry_defaults, entry) for key, entry in stored_entries.items()}}
  return merged


def load(workdir: str) -> ml_collections.ConfigDict:
  """The config stored in `workdir`, migrated and with defaults; FileNotFoundError if none."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f'{path} does not exist: {workdir} holds no trained, imported or fetched run')
  try:
    with open(path) as f:
      return from_plain(with_defaults(json.load(f)))
  except (OSError, ValueError) as e:
    raise FileNotFoundError(f'cannot read {path}: {e}') from None


def get_config(workdir: str) -> ml_collections.ConfigDict:
  """ml_collections' entry point: `--config=<this file>:<workdir>` is that run's config."""
  return load(workdir)


# ------------------------------------------------------------------ checks

def check(config) -> None:
  """Checks what every use of a config reads: its layout, seed and model section, and the
  fields the model's family adds to other sections. The other sections are checked by
  their owners where they are used (data, train, eval, inference)."""
  require(config.get('version') == base.VERSION, 'version',
          f'must be {base.VERSION} (configs of earlier layouts are migrated when read from a '
          'run; build new ones with xydiff.configs)', config.get('version'))
  require(isinstance(config.seed, int) and not isinstance(config.seed, bool) and
          config.seed >= 0, 'seed', 'must be an integer >= 0', config.seed)
  models.validate(config.model)
  models.family(config.model.name).validate_settings(config)


# ------------------------------------------------------------------ what changes outputs

def output_fields(config) -> dict:
  """{dotted field: value} of every field that changes what the weights compute.

  The model section as its family says (models.output_fields): its
  architecture, and for DvSR the residual scale and the training schedule
  the denoiser's levels were learnt on. Left out: the activation dtype and
  the up-convolution implementation (same weights, same function), and
  everything about training, inference, data and evaluation.
  """
  model = from_plain(to_plain(config)['model'])
  return {f'model.{k}': v for k, v in models.output_fields(model).items()}


def differing_output_fields(stored, given) -> list[str]:
  """The output fields whose values differ between two configs (sorted)."""
  a, b = output_fields(stored), output_fields(given)
  return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
