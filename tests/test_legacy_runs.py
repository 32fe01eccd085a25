"""Runs, imports and safetensors files written by config layout 1 still load and restore the same.

tests/data/legacy/ holds them as the release before the one-section config
wrote them, with the images its Restorer returned (README there).
"""

import json
import shutil

import jax
import numpy as np
import pytest

from conftest import REPO
from xydiff import config as config_lib
from xydiff.inference import Restorer

LEGACY = REPO / 'tests' / 'data' / 'legacy'
INPUT = np.load(LEGACY / 'input.npy')


def _same(out, expected_path):
  expected = np.load(expected_path)
  assert sorted(out) == sorted(expected.files)
  for name in expected.files:
    np.testing.assert_allclose(out[name], expected[name], atol=1e-6, err_msg=name)


@pytest.mark.parametrize('run', ['xydeblur_run', 'dvsr_run', 'dvsr_nafnet_import',
                                 'dmphn_import'])
def test_a_layout_1_run_restores_what_it_restored(run, tmp_path):
  workdir = tmp_path / run
  shutil.copytree(LEGACY / run, workdir)  # Loading must not need to write.
  restorer = Restorer.from_workdir(str(workdir))
  _same(restorer.restore(INPUT, key=jax.random.key(3)), LEGACY / f'{run}_expected.npz')


@pytest.mark.parametrize('name', ['xydeblur_run', 'dvsr_nafnet_import'])
def test_a_layout_1_safetensors_file_restores_what_it_restored(name):
  restorer = Restorer.from_pretrained(str(LEGACY / f'{name}.safetensors'))
  _same(restorer.restore(INPUT, key=jax.random.key(3)),
        LEGACY / f'{name}.safetensors_expected.npz')


def test_layout_1_migrates_to_one_section_per_run():
  stored = json.loads((LEGACY / 'dvsr_nafnet_import' / 'config.json').read_text())
  assert 'nafnet' in stored['model'] and 'deblur' in stored  # Layout 1: every section.
  config = config_lib.load(str(LEGACY / 'dvsr_nafnet_import'))
  assert config.version == 2
  # DvSR's predictor is the NAFNet section it read, nested under its name.
  assert config.model.predictor.name == 'nafnet'
  assert config.model.predictor.width == stored['model']['nafnet']['width']
  assert 'arch' not in config.model.predictor and 'nafnet' not in config.model
  # The schedule moved under the model; the presets are inference settings.
  assert config.model.diffusion.residual_scale == stored['diffusion']['residual_scale']
  assert config.inference.presets.sa.num_steps == stored['diffusion']['presets']['sa']['num_steps']
  assert 'deblur' not in config and 'diffusion' not in config and 'sweep' not in config
  config_lib.check(config)


def test_a_deterministic_run_keeps_no_diffusion_fields():
  config = config_lib.load(str(LEGACY / 'xydeblur_run'))
  assert set(config.model) == {'name', 'dtype', 'width', 'num_res', 'decoders', 'share',
                               'upsample_impl'}
  assert 'presets' not in config.eval and 'preset' not in config.inference
  assert config.model.width == 4 and config.train.ema_rate == 0.9
