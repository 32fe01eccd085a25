"""Shared fixtures: tiny configs and the real GoPro sample frames."""

import os
import pathlib
import subprocess
import sys

import pytest

from family_cases import CASES

REPO = pathlib.Path(__file__).resolve().parents[1]

# The suite's downloads and JAX's persistent compilation cache go to a folder
# of its own, never the user's cache (subprocesses inherit it). Each pytest-xdist
# worker makes its own too, rather than inherit the controller's: two tests that
# serve different weights under one pretrained name must not meet in one cache.
if os.environ.get('XYDIFF_CACHE', '') in ('', os.environ.get('XYDIFF_SUITE_CACHE')):
  import tempfile
  os.environ['XYDIFF_CACHE'] = os.environ['XYDIFF_SUITE_CACHE'] = tempfile.mkdtemp(
      prefix='xydiff-test-cache-')
GOPRO_SAMPLE = REPO / 'tests' / 'data' / 'gopro_sample'  # Real GoPro frames, CC BY 4.0.


# Each family's fields at seconds-on-a-CPU size live in its case (family_cases.py, with
# everything else the tests know about it); full sizes are checked by parameter count.
TINY_FIELDS = {name: case.tiny for name, case in CASES.items()}
TINY_DENOISER = CASES['dvsr'].tiny['denoiser']


def tiny_section(section):
  """Shrinks one model section (config.model, or DvSR's predictor) in place; returns it.

  A family without a case gets widths 4 and depth 1 where its rules allow.
  """
  if section.name not in CASES:
    _shrink(section)
    return section
  _update(section, CASES[section.name].tiny)
  for value in section.values():  # A nested model section (DvSR's predictor): its own case.
    if hasattr(value, 'items') and 'name' in value:
      tiny_section(value)
  return section


def _update(section, fields):
  for field, value in fields.items():
    if isinstance(value, dict):
      _update(section[field], value)
    else:
      section[field] = value


def _shrink(section):
  from xydiff import models
  from xydiff.errors import ConfigError
  defaults = models.family(section.name).defaults()
  small = {}
  for field, value in defaults.items():
    if isinstance(value, int) and not isinstance(value, bool):
      if any(w in field for w in ('width', 'base', 'channels', 'features')):
        small[field] = min(value, 4)
      elif field.startswith('num_') or 'blocks' in field:
        small[field] = 1
    elif isinstance(value, tuple) and 'blocks' in field:
      small[field] = tuple(1 for _ in value)
  section.update(small)
  try:
    models.family(section.name).validate(section, 'model')
  except ConfigError:  # Too small for the family's rules: its defaults, slower.
    section.update({k: defaults[k] for k in small})


def tiny(config, *, steps=4):
  """Shrinks any config to seconds on a CPU, keeping its model family."""
  tiny_section(config.model)
  config.model.dtype = 'float32'
  if 'presets' in config.inference:  # DvSR's sampling presets.
    config.inference.presets.perceptual.num_steps = 3
    if 'perceptual_ancestral' in config.inference.presets:
      config.inference.presets.perceptual_ancestral.num_steps = 3
    config.inference.presets.sa.update(dict(num_steps=2, num_samples=2))
  config.data.crop = 32
  config.data.synthetic.update(dict(photo_crop=64, kernel_size=7, kernel_length=(3.0, 7.0)))
  config.train.update(dict(batch_size=2, num_steps=steps, log_every=1, checkpoint_every=2,
                           eval_every=steps, warmup_steps=0, lr_halve_steps=()))
  config.eval.num_image_summaries = 1
  return config


@pytest.fixture
def demo_config():
  from xydiff.configs import demo
  return tiny(demo.get_config())


def assert_same_state(a, b, atol=0.0):
  """Same step and every leaf equal: bitwise (atol 0) or to `atol`."""
  import jax
  import numpy as np
  assert int(a['step']) == int(b['step'])
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    if atol:
      np.testing.assert_allclose(x, y, atol=atol)
    else:
      np.testing.assert_array_equal(x, y)


def run_launch(*args, timeout=600, env=None):
  """Runs launch.py in a fresh process, as a user would."""
  full_env = dict(os.environ, **(env or {}))
  return subprocess.run([sys.executable, str(REPO / 'launch.py'), *args], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout, env=full_env)


def run_xydiff(*args, timeout=600, env=None, cwd=REPO):
  """Runs the `xydiff` command (setup.cfg's console script, xydiff.cli:main) in a fresh
  process, as a user would."""
  full_env = dict(os.environ, **(env or {}))
  return subprocess.run([sys.executable, '-c', 'from xydiff.cli import main; main()', *args],
                        cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)
