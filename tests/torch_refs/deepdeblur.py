"""DeepDeblur's multi-scale network and test-time pipeline in PyTorch, as its authors wrote them.

Transcribed from github.com/SeungjunNah/DeepDeblur-PyTorch at 26047f7:
src/model/MSResNet.py (MSResNet, conv_end), src/model/ResNet.py (ResNet),
src/model/common.py (default_conv, ResBlock), src/data/common.py
(generate_pyramid, pad), src/data/dataset.py and src/train.py (how an image
is padded, made a pyramid, run and cropped). The constructor takes the
`args` fields it reads as keywords. Module names are the authors', so
state_dict() has their checkpoints' keys.
"""

import numpy as np
import torch
from skimage.transform import pyramid_gaussian
from torch import nn


def default_conv(in_channels, out_channels, kernel_size, bias=True):
  return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)


class ResBlock(nn.Module):

  def __init__(self, n_feats, kernel_size):
    super().__init__()
    self.body = nn.Sequential(default_conv(n_feats, n_feats, kernel_size), nn.ReLU(True),
                              default_conv(n_feats, n_feats, kernel_size))

  def forward(self, x):
    res = self.body(x)
    res += x
    return res


class ResNet(nn.Module):

  def __init__(self, in_channels, out_channels, n_feats, kernel_size, n_resblocks):
    super().__init__()
    modules = [default_conv(in_channels, n_feats, kernel_size)]
    modules += [ResBlock(n_feats, kernel_size) for _ in range(n_resblocks)]
    modules.append(default_conv(n_feats, out_channels, kernel_size))
    self.body = nn.Sequential(*modules)

  def forward(self, x):
    return self.body(x)


class conv_end(nn.Module):  # pylint: disable=invalid-name  (the authors' name and key prefix)

  def __init__(self, in_channels=3, out_channels=3, kernel_size=5, ratio=2):
    super().__init__()
    self.uppath = nn.Sequential(default_conv(in_channels, out_channels, kernel_size),
                                nn.PixelShuffle(ratio))

  def forward(self, x):
    return self.uppath(x)


class MSResNet(nn.Module):

  def __init__(self, n_resblocks=19, n_feats=64, kernel_size=5, n_scales=3, rgb_range=255):
    super().__init__()
    self.mean = rgb_range / 2
    self.n_scales = n_scales
    self.body_models = nn.ModuleList([ResNet(3, 3, n_feats, kernel_size, n_resblocks)])
    for _ in range(1, n_scales):
      self.body_models.insert(0, ResNet(6, 3, n_feats, kernel_size, n_resblocks))
    self.conv_end_models = nn.ModuleList([None])
    for _ in range(1, n_scales):
      # The authors pass only the channels: conv_end's own kernel_size default, 5.
      self.conv_end_models += [conv_end(3, 12)]

  def forward(self, input_pyramid):
    scales = range(self.n_scales - 1, -1, -1)  # 0: fine, n_scales - 1: coarse
    for s in scales:
      input_pyramid[s] = input_pyramid[s] - self.mean
    output_pyramid = [None] * self.n_scales
    input_s = input_pyramid[-1]
    for s in scales:
      output_pyramid[s] = self.body_models[s](input_s)
      if s > 0:
        up_feat = self.conv_end_models[s](output_pyramid[s])
        input_s = torch.cat((input_pyramid[s - 1], up_feat), 1)
    for s in scales:
      output_pyramid[s] = output_pyramid[s] + self.mean
    return output_pyramid


def generate_pyramid(img, n_scales):
  """data/common.py: the authors call pyramid_gaussian(img, n_scales-1, multichannel=True);
  scikit-image >= 0.19 spells multichannel=True as channel_axis=-1."""
  if img.dtype != np.float32:
    img = img.astype(np.float32)
  return list(pyramid_gaussian(img, n_scales - 1, channel_axis=-1))


def pad_edge(img, divisor):
  """data/common.py pad() of a numpy image: edge replication at the bottom and right."""
  h, w, _ = img.shape
  pad_width = ((0, -h % divisor), (0, -w % divisor), (0, 0))
  return np.pad(img, pad_width, mode='edge'), pad_width


def restore(net, img, n_scales=3):
  """One HxWx3 image of 0..255 values through the authors' demo path.

  dataset.py pads the blurry image (demo mode; test-mode GoPro frames are
  multiples of 4 and go through unpadded, which this equals) and builds its
  pyramid; train.py runs the network and crops the padding off the finest
  output. Returns the output pyramid as HxWx3 numpy arrays (0..255, before
  the saver's clamp and rounding), the finest cropped.
  """
  padded, _ = pad_edge(img, 2 ** (n_scales - 1))
  pyramid = [torch.from_numpy(np.ascontiguousarray(level.transpose(2, 0, 1)))[None]
             for level in generate_pyramid(padded, n_scales)]
  with torch.no_grad():
    outputs = net(pyramid)
  outputs = [o[0].permute(1, 2, 0).numpy() for o in outputs]
  h, w = img.shape[0], img.shape[1]
  outputs[0] = outputs[0][:h, :w]
  return outputs


def multiscale_l1(outputs, targets):
  """loss/__init__.py with --loss 1*L1: nn.L1Loss on each (output, target) pair, summed."""
  l1 = nn.L1Loss()
  return sum(l1(o, t) for o, t in zip(outputs, targets))
