"""MIMO-UNet / MIMO-UNet+ in PyTorch, transcribed from the official code.

Source: github.com/chosj95/MIMO-UNet at commit
8c85e566018905e0a0c1774c5bd4b86253d49da9, models/MIMOUNet.py (MIMOUNet,
MIMOUNetPlus, EBlock, DBlock, AFF, SCM, FAM), models/layers.py (BasicConv,
ResBlock) and train.py (the loss). Module names and order are the official
ones, so `state_dict()` has the official keys. Two changes for tests: the base
channel count (32 officially) is an argument, so tiny networks can be
checked; and `torch.rfft(x, 2, normalized=False, onesided=False)`, removed
from PyTorch, is written as its equal `torch.view_as_real(torch.fft.fft2(x))`.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicConv(nn.Module):

  def __init__(self, in_channel, out_channel, kernel_size, stride, bias=True, relu=True,
               transpose=False):
    super().__init__()
    padding = kernel_size // 2
    layers = []
    if transpose:
      padding = kernel_size // 2 - 1
      layers.append(nn.ConvTranspose2d(in_channel, out_channel, kernel_size, padding=padding,
                                       stride=stride, bias=bias))
    else:
      layers.append(nn.Conv2d(in_channel, out_channel, kernel_size, padding=padding,
                              stride=stride, bias=bias))
    if relu:
      layers.append(nn.ReLU(inplace=True))
    self.main = nn.Sequential(*layers)

  def forward(self, x):
    return self.main(x)


class ResBlock(nn.Module):

  def __init__(self, in_channel, out_channel):
    super().__init__()
    self.main = nn.Sequential(
        BasicConv(in_channel, out_channel, kernel_size=3, stride=1, relu=True),
        BasicConv(out_channel, out_channel, kernel_size=3, stride=1, relu=False))

  def forward(self, x):
    return self.main(x) + x


class EBlock(nn.Module):

  def __init__(self, out_channel, num_res=8):
    super().__init__()
    self.layers = nn.Sequential(*[ResBlock(out_channel, out_channel) for _ in range(num_res)])

  def forward(self, x):
    return self.layers(x)


DBlock = EBlock  # Identical in the official code (a `channel` argument instead).


class AFF(nn.Module):

  def __init__(self, in_channel, out_channel):
    super().__init__()
    self.conv = nn.Sequential(
        BasicConv(in_channel, out_channel, kernel_size=1, stride=1, relu=True),
        BasicConv(out_channel, out_channel, kernel_size=3, stride=1, relu=False))

  def forward(self, x1, x2, x4):
    return self.conv(torch.cat([x1, x2, x4], dim=1))


class SCM(nn.Module):

  def __init__(self, out_plane):
    super().__init__()
    self.main = nn.Sequential(
        BasicConv(3, out_plane // 4, kernel_size=3, stride=1, relu=True),
        BasicConv(out_plane // 4, out_plane // 2, kernel_size=1, stride=1, relu=True),
        BasicConv(out_plane // 2, out_plane // 2, kernel_size=3, stride=1, relu=True),
        BasicConv(out_plane // 2, out_plane - 3, kernel_size=1, stride=1, relu=True))
    self.conv = BasicConv(out_plane, out_plane, kernel_size=1, stride=1, relu=False)

  def forward(self, x):
    x = torch.cat([x, self.main(x)], dim=1)
    return self.conv(x)


class FAM(nn.Module):

  def __init__(self, channel):
    super().__init__()
    self.merge = BasicConv(channel, channel, kernel_size=3, stride=1, relu=False)

  def forward(self, x1, x2):
    return x1 + self.merge(x1 * x2)


class MIMOUNet(nn.Module):
  """MIMOUNet (dropout=False) or MIMOUNetPlus (dropout=True, num_res=20 officially)."""

  def __init__(self, num_res=8, base_channel=32, dropout=False):
    super().__init__()
    c = base_channel
    self.Encoder = nn.ModuleList([EBlock(c, num_res), EBlock(c * 2, num_res),
                                  EBlock(c * 4, num_res)])
    self.feat_extract = nn.ModuleList([
        BasicConv(3, c, kernel_size=3, relu=True, stride=1),
        BasicConv(c, c * 2, kernel_size=3, relu=True, stride=2),
        BasicConv(c * 2, c * 4, kernel_size=3, relu=True, stride=2),
        BasicConv(c * 4, c * 2, kernel_size=4, relu=True, stride=2, transpose=True),
        BasicConv(c * 2, c, kernel_size=4, relu=True, stride=2, transpose=True),
        BasicConv(c, 3, kernel_size=3, relu=False, stride=1)])
    self.Decoder = nn.ModuleList([DBlock(c * 4, num_res), DBlock(c * 2, num_res),
                                  DBlock(c, num_res)])
    self.Convs = nn.ModuleList([
        BasicConv(c * 4, c * 2, kernel_size=1, relu=True, stride=1),
        BasicConv(c * 2, c, kernel_size=1, relu=True, stride=1)])
    self.ConvsOut = nn.ModuleList([
        BasicConv(c * 4, 3, kernel_size=3, relu=False, stride=1),
        BasicConv(c * 2, 3, kernel_size=3, relu=False, stride=1)])
    self.AFFs = nn.ModuleList([AFF(c * 7, c * 1), AFF(c * 7, c * 2)])
    self.FAM1 = FAM(c * 4)
    self.SCM1 = SCM(c * 4)
    self.FAM2 = FAM(c * 2)
    self.SCM2 = SCM(c * 2)
    self.dropout = dropout
    if dropout:
      self.drop1 = nn.Dropout2d(0.1)
      self.drop2 = nn.Dropout2d(0.1)

  def encode(self, x):
    """The official forward up to the AFFs (and dropout): (z, res2, res1)."""
    x_2 = F.interpolate(x, scale_factor=0.5)
    x_4 = F.interpolate(x_2, scale_factor=0.5)
    z2 = self.SCM2(x_2)
    z4 = self.SCM1(x_4)
    x_ = self.feat_extract[0](x)
    res1 = self.Encoder[0](x_)
    z = self.feat_extract[1](res1)
    z = self.FAM2(z, z2)
    res2 = self.Encoder[1](z)
    z = self.feat_extract[2](res2)
    z = self.FAM1(z, z4)
    z = self.Encoder[2](z)
    z12 = F.interpolate(res1, scale_factor=0.5)
    z21 = F.interpolate(res2, scale_factor=2)
    z42 = F.interpolate(z, scale_factor=2)
    z41 = F.interpolate(z42, scale_factor=2)
    res2 = self.AFFs[1](z12, res2, z42)
    res1 = self.AFFs[0](res1, z21, z41)
    if self.dropout:
      res2 = self.drop2(res2)
      res1 = self.drop1(res1)
    return z, res2, res1

  def decode(self, z, res2, res1):
    """The official forward after the AFFs: the three residuals, coarse to fine."""
    z = self.Decoder[0](z)
    r4 = self.ConvsOut[0](z)
    z = self.feat_extract[3](z)
    z = torch.cat([z, res2], dim=1)
    z = self.Convs[0](z)
    z = self.Decoder[1](z)
    r2 = self.ConvsOut[1](z)
    z = self.feat_extract[4](z)
    z = torch.cat([z, res1], dim=1)
    z = self.Convs[1](z)
    z = self.Decoder[2](z)
    r1 = self.feat_extract[5](z)
    return r4, r2, r1

  def forward(self, x):
    x_2 = F.interpolate(x, scale_factor=0.5)
    x_4 = F.interpolate(x_2, scale_factor=0.5)
    r4, r2, r1 = self.decode(*self.encode(x))
    return [r4 + x_4, r2 + x_2, r1 + x]


def official_loss(pred_img, label_img):
  """train.py: multi-scale content L1 + 0.1 x multi-scale FFT L1; returns (loss, content, fft)."""
  criterion = nn.L1Loss()
  label_img2 = F.interpolate(label_img, scale_factor=0.5, mode='bilinear')
  label_img4 = F.interpolate(label_img, scale_factor=0.25, mode='bilinear')
  labels = (label_img4, label_img2, label_img)
  content = sum(criterion(p, t) for p, t in zip(pred_img, labels))
  rfft = lambda t: torch.view_as_real(torch.fft.fft2(t))  # rfft(t, 2, onesided=False)
  fft = sum(criterion(rfft(p), rfft(t)) for p, t in zip(pred_img, labels))
  return content + 0.1 * fft, content, fft
