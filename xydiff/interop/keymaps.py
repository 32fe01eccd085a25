"""How each family's authors save their weights, and where every tensor goes in xydiff.

`FORMATS[family]` is an `OfficialFormat`:
- `read(path, max_bytes=None) -> {torch key: float32 array}`: the file (or
  folder) as the authors' code saves it, read without torch
  (interop.torch_pickle, whose cap on what each file may make is max_bytes);
- `key_map(section) -> {torch key: (param path tuple, layout fn)}`: every
  tensor's place for a model section (config.model); official.convert
  reports missing, extra and mis-shaped keys.

A family whose authors publish no weights has no entry.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable

import numpy as np

from xydiff.errors import CheckpointImportError, WeightsError
from xydiff.interop import torch_pickle
from xydiff.models import deepdeblur

# Layouts of PyTorch tensors, as functions to xydiff's: convolutions OIHW ->
# HWIO, transposed convolutions [in, out, kh, kw] -> HWOI (both (2, 3, 1, 0));
# anything else keeps its values and takes the parameter's shape (per-channel
# vectors stored as [1, C, 1, 1]).


def conv_layout(t: np.ndarray) -> np.ndarray:
  return np.transpose(t, (2, 3, 1, 0)) if t.ndim == 4 else t


def as_is(t: np.ndarray) -> np.ndarray:
  return t


def add_conv(table: dict, key: str, path: tuple, bias: bool = True) -> None:
  """Maps the PyTorch convolution `key` (.weight, .bias) to the layer at `path` of a key map."""
  table[f'{key}.weight'] = (path + ('kernel',), conv_layout)
  if bias:
    table[f'{key}.bias'] = (path + ('bias',), as_is)


def read_torch_state_dict(path: str, container_keys: tuple[str, ...] = (),
                          max_bytes: int | None = None) -> dict[str, np.ndarray]:
  """A `torch.save`d state dict as float32 numpy arrays, read without torch.

  Accepts a bare state dict or a dict holding it under one of
  `container_keys` (e.g. 'model', 'params', 'G'), in torch.save's zip or
  legacy format; strips the 'module.' prefix that nn.DataParallel adds.
  `max_bytes` is torch_pickle.load's cap on what one file may make.
  torch_pickle builds only tensors and containers, so a checkpoint cannot run
  code here.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f'checkpoint {path} does not exist')
  try:
    loaded = torch_pickle.load(path, max_bytes=max_bytes)
  except WeightsError as e:  # Its message names the file and says why.
    raise CheckpointImportError(str(e)) from None
  state_dict = loaded
  if isinstance(loaded, dict):
    for key in container_keys:
      if isinstance(loaded.get(key), dict):
        state_dict = loaded[key]
        break
  if not isinstance(state_dict, dict) or not state_dict or not all(
      isinstance(v, np.ndarray) for v in state_dict.values()):
    wanted = ' or '.join(f"{{'{k}': state_dict}}" for k in container_keys)
    raise CheckpointImportError(
        f'{path} holds no state dict: expected a state dict' + (f' or {wanted}' if wanted else ''))
  names = [k for k in state_dict if not isinstance(k, str)]
  if names:  # torch_pickle's keys are strings or small ints: printing one is safe.
    raise CheckpointImportError(
        f'{path} holds no state dict: {len(names)} of its {len(state_dict)} keys '
        f'{"is not a parameter name" if len(names) == 1 else "are not parameter names"} (the '
        f'first: {type(names[0]).__name__} {names[0]!r})')
  if all(k.startswith('module.') for k in state_dict):
    state_dict = {k[len('module.'):]: v for k, v in state_dict.items()}
  return {k: np.asarray(v, np.float32) for k, v in state_dict.items()}


def _state_dict_under(*container_keys: str) -> Callable[..., dict]:
  """A reader of one torch.save file holding the state dict under one of `container_keys`."""
  return functools.partial(read_torch_state_dict, container_keys=container_keys)


@dataclasses.dataclass(frozen=True)
class OfficialFormat:
  read: Callable[..., dict[str, np.ndarray]]
  key_map: Callable[..., dict[str, tuple[tuple, Callable]]]


# ------------------------------------------------------------------ XYDeblur

def xydeblur_keys(section) -> dict[str, tuple]:
  """Seowon-Ji/XYDeblur, models/XYDeblur.py: EBlock.layers = [BasicConv (stem or
  stride-2 down), num_res ResBlocks]; DBlock.layers = [num_res ResBlocks, then the
  ConvTranspose in Decoder1_1/1_2]; BasicConv.main = [conv, relu]; ResBlock.main =
  [BasicConv, BasicConv]. Decoder1_3 holds only ResBlocks and Decoder1_4 is the output conv.
  """
  num_res = section.num_res
  table = {}
  conv = functools.partial(add_conv, table)

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


# ------------------------------------------------------------------ DMPHN

# models.py numbers its layers as AutoEncoder does, which has three ResBlocks
# per stage; Encoder and Decoder keep two of them and skip the third number
# (4, 8, 12, 15, 19, 23). Per stage: (the entry conv's name and number, the
# ResBlocks' name and first number).
_DMPHN_ENCODER = (('stem', 1, 'res1', 2), ('down2', 5, 'res2', 6), ('down3', 9, 'res3', 10))
_DMPHN_DECODER = (('res1', 13, 'up1', 16), ('res2', 17, 'up2', 20), ('res3', 21, 'out', 24))
_DMPHN_SLOTS = 3  # ResBlock numbers per stage in that scheme.
_DMPHN_FILES = ('encoder', 'decoder')


def dmphn_keys(section) -> dict[str, tuple]:
  """{'<encoder|decoder>_lv<k>.<state-dict key>': (xydiff param path, layout)}.

  The authors save one state dict per network (torch.save(encoder_lv1.state_dict(), ...)),
  30 tensors each. Deeper sections (num_res 1 or 3) keep the same numbering scheme.
  """
  if section.num_res > _DMPHN_SLOTS:
    raise CheckpointImportError(
        f'config.model.num_res={section.num_res}: the authors\' layer numbering has room '
        f'for at most {_DMPHN_SLOTS} ResBlocks per stage')
  table = {}
  conv = functools.partial(add_conv, table)

  def res_stack(prefix, first, path):
    for i in range(section.num_res):
      conv(f'{prefix}.layer{first + i}.0', path + ('blocks', i, 'conv1'))
      conv(f'{prefix}.layer{first + i}.2', path + ('blocks', i, 'conv2'))

  for k in range(section.levels):
    encoder, decoder = f'encoder_lv{k + 1}', f'decoder_lv{k + 1}'
    enc_path, dec_path = ('levels', k, 'encoder'), ('levels', k, 'decoder')
    for entry, entry_layer, stack, first in _DMPHN_ENCODER:
      conv(f'{encoder}.layer{entry_layer}', enc_path + (entry,))
      res_stack(encoder, first, enc_path + (stack,))
    for stack, first, exit_, exit_layer in _DMPHN_DECODER:
      res_stack(decoder, first, dec_path + (stack,))
      conv(f'{decoder}.layer{exit_layer}', dec_path + (exit_,))
  return table


def read_dmphn(path: str, max_bytes: int | None = None) -> dict:
  """The authors' checkpoint folder (e.g. checkpoints/DMPHN_1_2_4/) as one flat dict.

  Every `{encoder,decoder}_lv<k>.pkl` there (plain state dicts, torch.save's
  legacy or zip format) contributes its tensors as '<file stem>.<key>'.
  """
  if not os.path.isdir(path):
    if os.path.exists(path):
      raise CheckpointImportError(
          f'{path} is a file: DMPHN weights are a folder of encoder_lv<k>.pkl and '
          'decoder_lv<k>.pkl files (e.g. checkpoints/DMPHN_1_2_4/)')
    raise FileNotFoundError(f'checkpoint folder {path} does not exist')
  names = sorted(f'{stem}_lv{k}' for stem in _DMPHN_FILES for k in range(1, 10)
                 if os.path.isfile(os.path.join(path, f'{stem}_lv{k}.pkl')))
  if not names:
    raise CheckpointImportError(
        f'{path} holds no encoder_lv<k>.pkl or decoder_lv<k>.pkl files (the authors\' layout)')
  state_dict = {}
  for name in names:
    for key, value in read_torch_state_dict(os.path.join(path, f'{name}.pkl'),
                                            max_bytes=max_bytes).items():
      state_dict[f'{name}.{key}'] = value
  return state_dict


# ------------------------------------------------------------------ DeepDeblur

def deepdeblur_keys(section) -> dict[str, tuple]:
  """SeungjunNah/DeepDeblur-PyTorch: MSResNet.body_models[s].body = [head conv, num_res
  ResBlocks, tail conv]; ResBlock.body = [conv, ReLU, conv] (indices 0 and 2);
  conv_end_models[s] (s >= 1; index 0 is None) .uppath = [conv, PixelShuffle].
  """
  num_res = section.num_res
  in_encoder = num_res - deepdeblur.decoder_blocks(num_res)
  table = {}
  conv = functools.partial(add_conv, table)
  for s in range(section.scales):
    body = f'body_models.{s}.body'
    conv(f'{body}.0', ('scales', s, 'encoder', 'head'))
    for i in range(num_res):
      block = (('scales', s, 'encoder', 'blocks', i) if i < in_encoder else
               ('scales', s, 'decoder', 'blocks', i - in_encoder))
      conv(f'{body}.{1 + i}.body.0', block + ('conv1',))
      conv(f'{body}.{1 + i}.body.2', block + ('conv2',))
    conv(f'{body}.{1 + num_res}', ('scales', s, 'decoder', 'tail'))
    if s > 0:
      conv(f'conv_end_models.{s}.uppath.0', ('upconvs', s - 1, 'conv'))
  return table


# ------------------------------------------------------------------ MIMO-UNet

def mimo_unet_keys(section) -> dict[str, tuple]:
  """chosj95/MIMO-UNet, models/MIMOUNet.py and layers.py: BasicConv.main = [conv
  (+ ReLU)]; ResBlock.main = [BasicConv, BasicConv]; EBlock/DBlock.layers = num_res
  ResBlocks; SCM.main = 4 BasicConvs, SCM.conv; FAM.merge; AFF.conv = [BasicConv 1x1,
  BasicConv 3x3]. Dropout2d holds no tensors.
  """
  table = {}

  def conv(prefix, path):  # BasicConv: the convolution is main.0.
    add_conv(table, f'{prefix}.main.0', path)

  def res_stack(prefix, path):
    for i in range(section.num_res):
      for j, name in enumerate(('conv1', 'conv2')):
        conv(f'{prefix}.layers.{i}.main.{j}', path + ('blocks', i, name))

  enc, dec = ('encoder',), ('decoder',)
  for i, name in enumerate(('stem', 'down_to_half', 'down_to_quarter')):
    conv(f'feat_extract.{i}', enc + (name,))
  conv('feat_extract.3', dec + ('up_to_half',))
  conv('feat_extract.4', dec + ('up_to_full',))
  conv('feat_extract.5', dec + ('out_full',))
  for i, scale in enumerate(('full', 'half', 'quarter')):
    res_stack(f'Encoder.{i}', enc + (f'res_{scale}',))
  for i, scale in enumerate(('quarter', 'half', 'full')):
    res_stack(f'Decoder.{i}', dec + (f'res_{scale}',))
  conv('Convs.0', dec + ('fuse_half',))
  conv('Convs.1', dec + ('fuse_full',))
  conv('ConvsOut.0', dec + ('out_quarter',))
  conv('ConvsOut.1', dec + ('out_half',))
  for i, scale in enumerate(('full', 'half')):
    conv(f'AFFs.{i}.conv.0', enc + (f'aff_{scale}', 'squeeze'))
    conv(f'AFFs.{i}.conv.1', enc + (f'aff_{scale}', 'mix'))
  # SCM1/FAM1 work at 1/4 scale, SCM2/FAM2 at 1/2.
  for n, scale in ((1, 'quarter'), (2, 'half')):
    conv(f'FAM{n}.merge', enc + (f'fam_{scale}', 'merge'))
    for i in range(4):
      conv(f'SCM{n}.main.{i}', enc + (f'scm_{scale}', 'convs', i))
    conv(f'SCM{n}.conv', enc + (f'scm_{scale}', 'merge'))
  return table


# ------------------------------------------------------------------ NAFNet

def nafnet_keys(section) -> dict[str, tuple]:
  """megvii-research/NAFNet, NAFNet_arch.py: intro, ending; encoders.<level>.<block>,
  middle_blks.<block>, decoders.<level>.<block> (nn.Sequential of NAFBlocks);
  downs.<level> (conv); ups.<level>.0 (the bias-free 1x1 conv before the pixel
  shuffle); in a block: norm1/norm2 (LayerNorm2d weight, bias), conv1-5, sca.1 (the
  1x1 conv after the pool), beta and gamma ([1, C, 1, 1]). NAFNetLocal has the same
  keys (its pools hold no tensors).
  """
  table = {}
  conv = functools.partial(add_conv, table)

  def block(prefix, path):
    for norm in ('norm1', 'norm2'):
      table[f'{prefix}.{norm}.weight'] = (path + (norm, 'scale'), as_is)
      table[f'{prefix}.{norm}.bias'] = (path + (norm, 'bias'), as_is)
    for name in ('conv1', 'conv2', 'conv3', 'conv4', 'conv5'):
      conv(f'{prefix}.{name}', path + (name,))
    conv(f'{prefix}.sca.1', path + ('sca',))
    for name in ('beta', 'gamma'):
      table[f'{prefix}.{name}'] = (path + (name,), as_is)

  conv('intro', ('encoder', 'intro'))
  for level, count in enumerate(section.enc_blocks):
    for j in range(count):
      block(f'encoders.{level}.{j}', ('encoder', 'encoders', level, j))
    conv(f'downs.{level}', ('encoder', 'downs', level))
  for j in range(section.middle_blocks):
    block(f'middle_blks.{j}', ('encoder', 'middle_blks', j))
  for level, count in enumerate(section.dec_blocks):
    conv(f'ups.{level}.0', ('decoder', 'ups', level), bias=False)
    for j in range(count):
      block(f'decoders.{level}.{j}', ('decoder', 'decoders', level, j))
  conv('ending', ('decoder', 'ending'))
  return table


FORMATS = {
    # torch.save({'model': state_dict, ...}), as XYDeblur's and MIMO-UNet's train.py write it.
    'xydeblur': OfficialFormat(_state_dict_under('model'), xydeblur_keys),
    'dmphn': OfficialFormat(read_dmphn, dmphn_keys),
    # model-<epoch>.pt: torch.save({'G': state_dict}) ({'G', 'D'} when trained adversarially).
    'deepdeblur': OfficialFormat(_state_dict_under('G'), deepdeblur_keys),
    'mimo_unet': OfficialFormat(_state_dict_under('model'), mimo_unet_keys),
    # BasicSR's save_network: {'params': state_dict}; 'params_ema' if only that is there.
    'nafnet': OfficialFormat(_state_dict_under('params', 'params_ema'), nafnet_keys),
}
