"""The official XYDeblur network in PyTorch, for comparisons (needs torch).

Built from the official architecture as the XYDeblur paper and its official
code describe it (models/XYDeblur.py of Seowon-Ji/XYDeblur): same module names, so its state
dict has the official keys, and the same forward pass, with the second decoder
run on features rotated by `t.transpose(2, 3).flip(2)` and its residual rotated
back. tests/test_import_xydeblur.py checks xydiff against it and
benchmarks/train_step_torch.py times it on the same machine as xydiff.
"""

import torch
from torch import nn


class BasicConv(nn.Module):
  """conv (or 4x4 stride-2 transposed conv) + optional ReLU, held in `.main`."""

  def __init__(self, cin, cout, kernel_size, stride=1, relu=True, transpose=False):
    super().__init__()
    if transpose:
      conv = nn.ConvTranspose2d(cin, cout, kernel_size, stride=stride,
                                padding=kernel_size // 2 - 1)
    else:
      conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=kernel_size // 2)
    self.main = nn.Sequential(conv, nn.ReLU()) if relu else nn.Sequential(conv)

  def forward(self, x):
    return self.main(x)


class ResBlock(nn.Module):

  def __init__(self, channels):
    super().__init__()
    self.main = nn.Sequential(BasicConv(channels, channels, 3),
                              BasicConv(channels, channels, 3, relu=False))

  def forward(self, x):
    return x + self.main(x)


class Stage(nn.Module):
  """EBlock / DBlock: a `.layers` Sequential."""

  def __init__(self, layers):
    super().__init__()
    self.layers = nn.Sequential(*layers)

  def forward(self, x):
    return self.layers(x)


class OfficialXYDeblur(nn.Module):

  def __init__(self, width=32, num_res=6):
    super().__init__()
    w = width
    res = lambda c: [ResBlock(c) for _ in range(num_res)]
    self.Encoder1 = Stage([BasicConv(3, w, 3), *res(w)])
    self.Encoder2 = Stage([BasicConv(w, 2 * w, 3, stride=2), *res(2 * w)])
    self.Encoder3 = Stage([BasicConv(2 * w, 4 * w, 3, stride=2), *res(4 * w)])
    self.Convs1_1 = BasicConv(4 * w, 2 * w, 1)
    self.Convs1_2 = BasicConv(2 * w, w, 1)
    self.Decoder1_1 = Stage([*res(4 * w), BasicConv(4 * w, 2 * w, 4, stride=2, transpose=True)])
    self.Decoder1_2 = Stage([*res(2 * w), BasicConv(2 * w, w, 4, stride=2, transpose=True)])
    self.Decoder1_3 = Stage(res(w))
    self.Decoder1_4 = BasicConv(w, 3, 3, relu=False)

  def decode(self, z, e2, e1):
    d = self.Convs1_1(torch.cat([self.Decoder1_1(z), e2], dim=1))
    d = self.Convs1_2(torch.cat([self.Decoder1_2(d), e1], dim=1))
    return self.Decoder1_4(self.Decoder1_3(d))

  def forward(self, x):
    e1 = self.Encoder1(x)
    e2 = self.Encoder2(e1)
    z = self.Encoder3(e2)
    r1 = self.decode(z, e2, e1)
    rot = lambda t: t.transpose(2, 3).flip(2)
    r2 = self.decode(rot(z), rot(e2), rot(e1)).transpose(2, 3).flip(3)
    return [r1, r2, x + r1 + r2]
