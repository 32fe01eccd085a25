"""What a model costs: parameters, multiply-accumulates, XLA's FLOPs, training memory.

GMACs follow the convention of the field's tables, thop's counting rules (the
profiler XYDeblur's Table 2 and most deblurring papers report): for every
convolution, its output elements x (input channels per group x kernel taps,
+1 where it adds a bias); for every dense layer, output elements x input
features; for every ReLU, its output elements; nothing for other
activations, norms or additions. A transposed convolution is charged per
output element like any convolution, as thop charges it (4x what it
multiplies for a 4x4 stride-2 up-convolution). `convention='true'` counts
only real multiply-accumulates instead. Both are read off the model's jaxpr
at the given size: nothing runs and no weights are materialised.

Up-convolutions are traced with `upsample_impl='reference'`: the sub-pixel
form computes the same function with other MACs.
"""

from __future__ import annotations

import copy
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from xydiff import models

HD = (720, 1280)


def _abstract(model_config):
  """(graphdef, abstract params) of the model, built without materialising a weight."""
  return nnx.split(nnx.eval_shape(lambda: models.build_model(model_config)), nnx.Param)


def count_params(model_config) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(_abstract(model_config)[1])))


def _sub_jaxprs(params):
  for value in params.values():
    values = value if isinstance(value, (list, tuple)) else [value]
    for v in values:
      if isinstance(v, jax.extend.core.ClosedJaxpr):
        yield v.jaxpr
      elif isinstance(v, jax.extend.core.Jaxpr):
        yield v


CONVENTIONS = ('thop', 'true')


def _is_literal_zero(var) -> bool:
  return isinstance(var, jax.extend.core.Literal) and np.all(np.asarray(var.val) == 0)


def jaxpr_macs(jaxpr, convention: str = 'thop') -> int:
  """Multiply-accumulates of `jaxpr` (recursively), by `convention` (module docstring)."""
  if convention not in CONVENTIONS:
    raise ValueError(f'convention must be one of {CONVENTIONS}, got {convention!r}')
  thop = convention == 'thop'
  # Which equation made each variable: a bias add is an add of a broadcast vector.
  made_by = {v: eqn for eqn in jaxpr.eqns for v in eqn.outvars}
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    out_elements = math.prod(eqn.outvars[0].aval.shape) if eqn.outvars else 0
    if name == 'conv_general_dilated':
      rhs = eqn.invars[1].aval.shape
      dn = eqn.params['dimension_numbers']
      # rhs_spec: (out feature dim, in feature dim, spatial dims...).
      per_output = rhs[dn.rhs_spec[1]] * math.prod(rhs[d] for d in dn.rhs_spec[2:])
      # An input-dilated (transposed) convolution multiplies the inserted zeros too.
      dilation = 1 if thop else math.prod(eqn.params['lhs_dilation'])
      total += out_elements * per_output // dilation
    elif name == 'dot_general':
      (lhs_contract, _), _ = eqn.params['dimension_numbers']
      lhs = eqn.invars[0].aval.shape
      total += out_elements * math.prod(lhs[d] for d in lhs_contract)
    elif thop and name == 'add' and any(
        isinstance(v, jax.extend.core.Var) and v in made_by
        and made_by[v].primitive.name == 'broadcast_in_dim'
        and len(made_by[v].invars[0].aval.shape) == 1 for v in eqn.invars):
      total += out_elements  # A convolution's bias.
    elif thop and name == 'max' and any(_is_literal_zero(v) for v in eqn.invars):
      total += out_elements  # A ReLU.
    else:
      # Loops: a scan's body runs `length` times; other sub-programs once.
      repeat = eqn.params.get('length', 1) if name == 'scan' else 1
      for sub in _sub_jaxprs(eqn.params):
        total += repeat * jaxpr_macs(sub, convention)
  return total


def _forward(graphdef, model_config):
  """fn(params, x) -> the model's restored image (DvSR: g(y) plus one denoiser step)."""

  def fn(params, x):
    model = nnx.merge(graphdef, params)
    if models.is_diffusion(model_config):
      restored = model.predict(x)['restored']
      return restored + model.denoise(x, jnp.ones((x.shape[0],)), x)
    return model(x)['restored']
  return fn


def _counting_config(model_config):
  counted = copy.deepcopy(model_config)
  counted.upsample_impl = 'reference'
  counted.dtype = 'float32'
  return counted


def gmacs(model_config, size=HD, convention: str = 'thop') -> float:
  """GMACs of one forward pass on a size[0] x size[1] image (DvSR: g plus one f step)."""
  model_config = _counting_config(model_config)
  x = jax.ShapeDtypeStruct((1, *size, 3), jnp.float32)
  graphdef, params = _abstract(model_config)
  jaxpr = jax.make_jaxpr(_forward(graphdef, model_config))(params, x)
  return jaxpr_macs(jaxpr.jaxpr, convention) / 1e9


def xla_gflops(model_config, size=HD) -> float | None:
  """XLA's own FLOP count of the compiled forward pass (None where the backend gives none)."""
  x = jax.ShapeDtypeStruct((1, *size, 3), jnp.float32)
  model_config = _counting_config(model_config)
  graphdef, params = _abstract(model_config)
  lowered = jax.jit(_forward(graphdef, model_config)).lower(params, x)
  cost = lowered.compile().cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = (cost or {}).get('flops')
  return None if flops is None else float(flops) / 1e9


def train_step_memory_gb(config, crop: int = 256) -> float | None:
  """Compiled peak memory (arguments, outputs and temporaries) of one training step on
  config.train.batch_size crops of crop x crop, on the current backend."""
  from xydiff.runs import state as state_lib  # pylint: disable=import-outside-toplevel
  from xydiff.train import step as step_lib
  graphdef, state = state_lib.abstract_state(config)
  batch = {k: jax.ShapeDtypeStruct((config.train.batch_size, crop, crop, 3), jnp.float32)
           for k in ('blur', 'sharp')}
  train_config = copy.deepcopy(config)
  train_config.train.steps_per_call = 1
  step = step_lib.make_train_step(train_config, graphdef, donate=False)
  memory = step.lower(state, batch).compile().memory_analysis()
  if memory is None:
    return None
  total = (memory.argument_size_in_bytes + memory.output_size_in_bytes
           + memory.temp_size_in_bytes - memory.alias_size_in_bytes)
  return total / 2 ** 30


# The summary's variants of each model, as XYDeblur's Table 2 and Figures 3/5 use them:
# (decoders, share) of the family's XY section, or a registered sibling variant.
XY_VARIANTS = {'baseline': (1, 'rotate'), 'xy': (2, 'rotate'), 'unet2d': (2, 'none'),
               'decoders4': (4, 'rotate')}
SIZED_VARIANTS = ('channel', 'layer')  # Registered as '<model>_channel', '<model>_layer'.


def model_names() -> list[str]:
  """Registered models, without their registered XY/Channel/Layer siblings (the summary
  derives those rows itself)."""
  return sorted(name for name in models.variants()
                if not any(name.endswith(f'_{kind}') for kind in SIZED_VARIANTS + ('xy',)))


def variant_configs(model: str) -> dict:
  """{variant: config} for `model` (a registered name): baseline, xy, unet2d, decoders4,
  and channel/layer where registered."""
  from xydiff.interop import official as weights  # pylint: disable=import-outside-toplevel
  spec = models.family(models.variant(model).family)
  configs = {}
  if spec.xy_section is not None:
    for kind, (decoders, share) in XY_VARIANTS.items():
      config = weights.config_for(model)
      config.model[spec.xy_section].update(dict(decoders=decoders, share=share))
      configs[kind] = config
  for kind in SIZED_VARIANTS:
    if f'{model}_{kind}' in models.variants():
      configs[kind] = weights.config_for(f'{model}_{kind}')
  return configs
