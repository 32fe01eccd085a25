"""Every shipped config loads, passes the start-up checks and builds its model."""

import jax
import pytest
from flax import nnx

from conftest import GOPRO_SAMPLE
from xydiff import config as config_lib, data, models
from xydiff.evaluation import evaluator
from xydiff.inference import restorer
from xydiff.train import loop
from xydiff.errors import ConfigError


def _load(name, arg=None):
  import importlib
  module = importlib.import_module(f'xydiff.configs.{name}')
  return module.get_config(arg) if arg is not None else module.get_config()


def _validate(config, device_count=1):
  """Every start-up check, each section by its owner, as training runs them."""
  config_lib.check(config)
  data.validate(config.data, models.size_multiple(config.model))
  loop.validate(config.train, device_count)
  evaluator.validate(config.eval)
  restorer.validate(config.inference)


def _num_params(config):
  model = nnx.eval_shape(lambda: models.build(config.model))
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize('name, arg', [('xydeblur_gopro', None), ('dvsr_gopro', None),
                                       ('gopro', None), ('demo', ''), ('demo', 'diffusion')])
def test_config_validates(name, arg):
  config = _load(name, arg)
  if config.data.name == 'folder':
    config.data.root = str(GOPRO_SAMPLE)
  _validate(config)


def test_paper_models_have_the_papers_sizes():
  assert _num_params(_load('xydeblur_gopro')) == 4_918_627
  dvsr, xydiff = _load('dvsr_gopro'), _load('gopro')
  # This U-Net's sizes (the papers' own counts are not pinned down: METHOD.md
  # quotes ~26M/7M or 33M/28M): g 17,393,027 + f 4,637,475.
  assert _num_params(dvsr) == 17_393_027 + 4_637_475
  # The XY predictor shares its decoder weights: exactly DvSR's parameter count.
  assert _num_params(dvsr) == _num_params(xydiff)
  assert xydiff.model.predictor.decoders == 2 and dvsr.model.predictor.decoders == 1
  assert xydiff.model.dtype == 'bfloat16'


@pytest.mark.parametrize('field, value, message', [
    ('model.name', 'resnet', 'config.model.name'),
    ('model.dtype', 'int8', 'config.model.dtype'),
    ('data.crop', 30, 'config.data.crop=30: must be a multiple of 4'),
    ('train.ema_rate', 1.0, 'config.train.ema_rate'),
    ('data.synthetic.kernel', 'z', 'config.data.synthetic.kernel'),
    ('model.upsample_impl', 'fft', 'config.model.upsample_impl'),
    ('train.microbatches', 3, 'config.train.microbatches=3: must divide the per-device batch'),
])
def test_bad_values_are_named(field, value, message):
  config = _load('demo')
  section, _, key = field.rpartition('.')
  node = config
  for part in section.split('.'):
    node = node[part]
  with node.ignore_type():
    node[key] = value
  with pytest.raises(ConfigError, match=message.replace('.', r'\.')):
    _validate(config)


def test_batch_must_divide_over_devices():
  config = _load('demo')
  config.train.batch_size = 6
  with pytest.raises(ConfigError, match='divisible by the 4 devices'):
    _validate(config, device_count=4)


def test_unknown_eval_preset_is_named():
  config = _load('demo', 'diffusion')
  config.eval.presets = ('sa', 'fast')
  with pytest.raises(ConfigError, match="'fast' is not in config.inference.presets"):
    _validate(config)


def test_config_flag_takes_a_packaged_name_or_the_workdirs_config(tmp_path):
  from xydiff import cli
  from xydiff.cli import common
  from xydiff import config as run_config
  from xydiff.configs import demo
  verbs = cli.build().commands
  ctx = verbs['eval'].make_context('eval', ['--config', 'demo:diffusion', '--workdir=w'])
  assert common.load_config(ctx).model.name == 'dvsr'
  assert common.config_given(ctx)
  run_config.save(str(tmp_path), demo.get_config())
  for verb in ('eval', 'train'):  # Training without --config resumes with the stored one.
    ctx = verbs[verb].make_context(verb, [f'--workdir={tmp_path}'])
    config = common.load_config(ctx, common.stored_config(str(tmp_path)))
    assert not common.config_given(ctx)
    assert run_config.to_plain(config) == run_config.to_plain(run_config.load(str(tmp_path)))
  assert run_config.get_config(str(tmp_path)).model.width == 16


@pytest.mark.parametrize('args, message', [
    (['train', '--config=xydiff/configs/nope.py'],
     "--config=xydiff/configs/nope.py: no such file; config 'xydiff/configs/nope.py' is neither "
     'a packaged config'),
    (['eval'], 'holds no stored config'),
])
def test_a_missing_config_is_one_line(tmp_path, args, message):
  from conftest import run_xydiff
  result = run_xydiff(*args, f'--workdir={tmp_path}', timeout=120)
  assert result.returncode == 1 and 'Traceback' not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and message in last


def test_a_run_stored_before_new_fields_loads_with_their_defaults(tmp_path):
  """Fields a stored config lacks take their defaults."""
  import json
  from xydiff import config as run_config
  from xydiff.configs import demo
  stored = run_config.to_plain(demo.get_config('diffusion'))
  del stored['train']['lr_decay_factor'], stored['inference']['ensemble']
  del stored['model']['denoiser']['film_scale']
  (tmp_path / 'config.json').write_text(json.dumps(stored))
  config = run_config.load(str(tmp_path))
  assert config.train.lr_decay_factor == 0.5 and config.inference.ensemble == 1
  assert config.model.denoiser.film_scale is False


def test_a_layout_1_run_stored_before_new_fields_loads_with_their_defaults(tmp_path):
  """A layout-1 config lacking later fields takes their defaults; DvSR's old `xy` is
  `decoders`."""
  import json
  from conftest import REPO
  from xydiff import config as run_config
  stored = json.loads((REPO / 'tests/data/legacy/dvsr_run/config.json').read_text())
  del stored['train']['lr_decay_factor'], stored['deblur']['ensemble']
  stored['model']['predictor'].pop('decoders')
  stored['model']['predictor']['xy'] = True
  (tmp_path / 'config.json').write_text(json.dumps(stored))
  config = run_config.load(str(tmp_path))
  assert config.train.lr_decay_factor == 0.5 and config.inference.ensemble == 1
  assert config.model.predictor.decoders == 2 and 'xy' not in config.model.predictor
