"""MACs counted from the jaxpr, by thop's rules (Table 2's) and as true MACs."""

import json

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from conftest import run_xydiff
from xydiff.models import complexity
from xydiff.interop import official
from xydiff.models import layers


def _macs(layer, shape, convention):
  graphdef, params = nnx.split(layer, nnx.Param)
  fn = lambda p, x: nnx.merge(graphdef, p)(x)
  jaxpr = jax.make_jaxpr(fn)(params, jax.ShapeDtypeStruct(shape, jnp.float32))
  return complexity.jaxpr_macs(jaxpr.jaxpr, convention)


def test_a_convolution_counts_its_taps_and_thop_its_bias():
  conv = layers.Conv(4, 6, 3, rngs=nnx.Rngs(0))
  out = 1 * 10 * 12 * 6
  assert _macs(conv, (1, 10, 12, 4), 'true') == out * 4 * 9
  assert _macs(conv, (1, 10, 12, 4), 'thop') == out * (4 * 9 + 1)


def test_thop_charges_a_transposed_convolution_per_output_element():
  up = layers.ConvTranspose(4, 6, impl='reference', rngs=nnx.Rngs(0))
  out = 1 * 20 * 24 * 6
  assert _macs(up, (1, 10, 12, 4), 'thop') == out * (4 * 16 + 1)
  assert _macs(up, (1, 10, 12, 4), 'true') == out * 4 * 16 // 4  # Only the real products.


def test_relu_counts_by_thop_only():
  relu = lambda x: jax.nn.relu(x)
  jaxpr = jax.make_jaxpr(relu)(jax.ShapeDtypeStruct((2, 5, 7, 3), jnp.float32))
  assert complexity.jaxpr_macs(jaxpr.jaxpr, 'thop') == 2 * 5 * 7 * 3
  assert complexity.jaxpr_macs(jaxpr.jaxpr, 'true') == 0


def test_dmphn_1_2_4_8_costs_what_xydeblurs_table_2_says():
  config = official.config_for('dmphn_1_2_4_8_gopro')
  assert complexity.count_params(config.model) == 7_232_524
  assert complexity.gmacs(config.model) == pytest.approx(1100.18, abs=0.01)


def test_the_summary_command_prints_one_json_line(tmp_path):
  result = run_xydiff('summary', '--config=demo', '--config.model.width=4',
                      '--config.model.num_res=1', '--config.train.batch_size=1')
  assert result.returncode == 0, result.stderr[-2000:]
  row = json.loads(result.stdout.strip().splitlines()[-1])
  from xydiff.configs import demo
  config = demo.get_config()
  config.model.update(dict(width=4, num_res=1))
  assert row['params'] == complexity.count_params(config.model)  # The overrides applied.
  assert row['gmacs_720p'] == pytest.approx(complexity.gmacs(config.model), abs=0.01)
  assert set(row) == {'model', 'params', 'gmacs_720p', 'xla_gflops_720p', 'train_step_memory_gb',
                      'batch_size'}
  assert row['gmacs_720p'] > 0 and row['train_step_memory_gb'] > 0
