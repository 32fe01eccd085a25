"""XYDeblur (Ji et al., CVPR 2022): one encoder, two rot90 weight-sharing decoders.

Layer for layer the official PyTorch network (Seowon-Ji/XYDeblur,
models/XYDeblur.py): with the defaults it has exactly 4,918,627 parameters.
It is the XY transform (xy.py) of a plain three-scale U-Net: with
`decoders=2, share='rotate'` the vertical decoder is the horizontal one with
every kernel turned by `rot90(W, -1)`; see layers.py for why that equals the
official feature-rotation formulation. `decoders=1` is the paper's baseline
U-Net, `share='none'` its U-Net^2D.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from xydiff.models import spec as spec_lib, xy
from xydiff.models.layers import Conv, ConvTranspose, ResStack, pad_to_multiple


class Encoder(nnx.Module):
  """Three scales: full, 1/2 and 1/4 resolution (Encoder1..3 in the official code)."""

  def __init__(self, in_channels: int, width: int, num_res: int, *, dtype, rngs):
    self.stem = Conv(in_channels, width, 3, dtype=dtype, rngs=rngs)
    self.res1 = ResStack(width, num_res, dtype=dtype, rngs=rngs)
    self.down2 = Conv(width, 2 * width, 3, stride=2, dtype=dtype, rngs=rngs)
    self.res2 = ResStack(2 * width, num_res, dtype=dtype, rngs=rngs)
    self.down3 = Conv(2 * width, 4 * width, 3, stride=2, dtype=dtype, rngs=rngs)
    self.res3 = ResStack(4 * width, num_res, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    e1 = self.res1(jax.nn.relu(self.stem(x)))
    e2 = self.res2(jax.nn.relu(self.down2(e1)))
    z = self.res3(jax.nn.relu(self.down3(e2)))
    return z, e2, e1


class Decoder(nnx.Module):
  """Decoder1_1..1_4 and Convs1_1..1_2; XYDeblur calls it twice, the second time rotated."""

  def __init__(self, width: int, num_res: int, out_channels: int, *, dtype, upsample_impl,
               rngs):
    self.res1 = ResStack(4 * width, num_res, dtype=dtype, rngs=rngs)
    self.up1 = ConvTranspose(4 * width, 2 * width, dtype=dtype, impl=upsample_impl, rngs=rngs)
    self.fuse1 = Conv(4 * width, 2 * width, 1, dtype=dtype, rngs=rngs)
    self.res2 = ResStack(2 * width, num_res, dtype=dtype, rngs=rngs)
    self.up2 = ConvTranspose(2 * width, width, dtype=dtype, impl=upsample_impl, rngs=rngs)
    self.fuse2 = Conv(2 * width, width, 1, dtype=dtype, rngs=rngs)
    self.res3 = ResStack(width, num_res, dtype=dtype, rngs=rngs)
    self.out = Conv(width, out_channels, 3, dtype=dtype, rngs=rngs)

  def __call__(self, z, e2, e1, rotation: int = 0):
    d = jax.nn.relu(self.up1(self.res1(z, rotation), rotation))
    # Decoder feature first, skip second, as in the official concatenation.
    d = jax.nn.relu(self.fuse1(jnp.concatenate([d, e2], axis=-1)))
    d = jax.nn.relu(self.up2(self.res2(d, rotation), rotation))
    d = jax.nn.relu(self.fuse2(jnp.concatenate([d, e1], axis=-1)))
    return self.out(self.res3(d, rotation), rotation)


class XYDeblur(nnx.Module):
  """Restores `x` as x + the sum of the decoders' residuals; returns both.

  Inputs whose height or width is not a multiple of 4 are reflect-padded and
  the outputs cropped back, so any image of at least 3x3 pixels goes through.
  Returns {'restored', 'residuals': one [N, H, W, 3] array per decoder}.
  """

  size_multiple = 4

  def __init__(self, *, width: int = 32, num_res: int = 6, channels: int = 3,
               decoders: int = 2, share: str = 'rotate', dtype=jnp.float32,
               upsample_impl: str = 'auto', rngs: nnx.Rngs):
    self.encoder = Encoder(channels, width, num_res, dtype=dtype, rngs=rngs)
    self.decoder = xy.make_decoders(
        lambda r: Decoder(width, num_res, channels, dtype=dtype, upsample_impl=upsample_impl,
                          rngs=r), decoders, share, rngs)
    self.decoders = decoders

  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    padded, (h, w) = pad_to_multiple(x, self.size_multiple)
    z, e2, e1 = self.encoder(padded)
    residuals = tuple(r[:, :h, :w].astype(jnp.float32)
                      for r in xy.run_decoders(self.decoder, self.decoders, z, e2, e1))
    restored = x
    for r in residuals:  # x + r_hor + r_ver, added in the official order.
      restored = restored + r
    return {'restored': restored, 'residuals': residuals}


# ------------------------------------------------------------------ the family's spec

def _build(model_config, rngs):
  section = model_config.xydeblur
  return XYDeblur(width=section.width, num_res=section.num_res, decoders=section.decoders,
                  share=section.share, dtype=jnp.dtype(model_config.dtype),
                  upsample_impl=model_config.upsample_impl, rngs=rngs)


def _validate(model_config):
  section = model_config.xydeblur
  for field in ('width', 'num_res'):
    spec_lib.require_positive_int(section[field], f'model.xydeblur.{field}')
  xy.check_section(section, 'model.xydeblur')


def l1_loss(model, batch, key):
  """The official recipe: L1 on the restored image only."""
  del key
  restored = model(batch['blur'])['restored']
  l1 = jnp.mean(jnp.abs(restored - batch['sharp']))
  return l1, {'l1': l1}


def official_keys(model_config) -> dict[str, tuple]:
  """{official state-dict key: (path of the tensor in xydiff's params, layout)}.

  Official layout (models/XYDeblur.py): EBlock.layers = [BasicConv (stem or
  stride-2 down), num_res ResBlocks]; DBlock.layers = [num_res ResBlocks,
  then the ConvTranspose in Decoder1_1/1_2]; BasicConv.main = [conv, relu];
  ResBlock.main = [BasicConv, BasicConv]. Decoder1_3 holds only ResBlocks and
  Decoder1_4 is the output conv.
  """
  num_res = model_config.xydeblur.num_res
  table = {}

  conv = functools.partial(spec_lib.add_conv, table)

  def res_stack(module, first_layer, path):
    for i in range(num_res):
      for j, name in enumerate(('conv1', 'conv2')):
        conv(f'{module}.layers.{first_layer + i}.main.{j}.main.0', path + ('blocks', i, name))

  for n, (entry, stack) in enumerate((('stem', 'res1'), ('down2', 'res2'), ('down3', 'res3')), 1):
    conv(f'Encoder{n}.layers.0.main.0', ('encoder', entry))
    res_stack(f'Encoder{n}', 1, ('encoder', stack))
  for n in (1, 2):
    res_stack(f'Decoder1_{n}', 0, ('decoder', f'res{n}'))
    conv(f'Decoder1_{n}.layers.{num_res}.main.0', ('decoder', f'up{n}'))
    conv(f'Convs1_{n}.main.0', ('decoder', f'fuse{n}'))
  res_stack('Decoder1_3', 0, ('decoder', 'res3'))
  conv('Decoder1_4.main.0', ('decoder', 'out'))
  return table


def read_official(path: str, max_bytes: int | None = None) -> dict:
  """`torch.save({'model': state_dict, ...})` as the official train.py writes it."""
  return spec_lib.read_torch_state_dict(path, container_keys=('model',), max_bytes=max_bytes)


SPEC = spec_lib.ModelSpec(
    name='xydeblur',
    defaults=lambda: {'xydeblur': dict(width=32, num_res=6, decoders=2, share='rotate')},
    build=_build,
    size_multiple=lambda model_config: XYDeblur.size_multiple,
    validate=_validate,
    output_fields=lambda model_config: ('model.xydeblur',),
    make_loss=lambda config: l1_loss,
    variants={'xydeblur': spec_lib.Variant(
        'xydeblur', 'xydeblur_gopro', about='XYDeblur (Ji et al., CVPR 2022), 4,918,627 '
        'parameters: github.com/Seowon-Ji/XYDeblur')},
    official=spec_lib.OfficialWeights(read=read_official, key_map=official_keys),
    xy_section='xydeblur',
    width_field='width',
    depth_field='num_res',
)
