"""What a model costs: parameters, multiply-accumulates and XLA's FLOPs.

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


_abstract = models.abstract


def count_params(section) -> int:
  """Parameters of the model a section (config.model) describes."""
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(_abstract(section)[1])))


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


def _forward(graphdef, section):
  """fn(params, x): every component of the model called once on x (DvSR: g plus one f step).

  Returns the sum of their outputs, so nothing is optimised away.
  """
  family = models.family(section.name)

  def fn(params, x):
    total = jnp.zeros_like(x)
    for component in family.components(nnx.merge(graphdef, params)):
      inputs = [x if kind == 'image' else jnp.ones((x.shape[0],)) for _, kind in
                component.inputs]
      total = total + component.fn(*inputs)
    return total
  return fn


def _counting_section(section):
  """`section` in float32 with every layer in its reference form (thop's view)."""
  counted = copy.deepcopy(section)
  counted.dtype = 'float32'

  def reference(node):
    for key, value in node.items():
      if key in ('upsample_impl', 'layer_impl'):
        node[key] = 'reference'
      elif hasattr(value, 'items'):
        reference(value)
  reference(counted)
  return counted


def gmacs(section, size=HD, convention: str = 'thop') -> float:
  """GMACs of one forward pass on a size[0] x size[1] image (DvSR: g plus one f step)."""
  section = _counting_section(section)
  x = jax.ShapeDtypeStruct((1, *size, 3), jnp.float32)
  graphdef, params = _abstract(section)
  jaxpr = jax.make_jaxpr(_forward(graphdef, section))(params, x)
  return jaxpr_macs(jaxpr.jaxpr, convention) / 1e9


def xla_gflops(section, size=HD) -> float | None:
  """XLA's own FLOP count of the compiled forward pass (None where the backend gives none)."""
  x = jax.ShapeDtypeStruct((1, *size, 3), jnp.float32)
  section = _counting_section(section)
  graphdef, params = _abstract(section)
  lowered = jax.jit(_forward(graphdef, section)).lower(params, x)
  cost = lowered.compile().cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = (cost or {}).get('flops')
  return None if flops is None else float(flops) / 1e9
