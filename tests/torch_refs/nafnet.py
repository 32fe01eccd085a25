"""NAFNet in PyTorch, transcribed from the authors' code for xydiff's tests.

Source: github.com/megvii-research/NAFNet
- basicsr/models/archs/NAFNet_arch.py (commit 35d0eb9b3752511ca258cd942734a3083b3ef74d):
  `SimpleGate`, `NAFBlock`, `NAFNet`, `NAFNetLocal`.
- basicsr/models/archs/arch_util.py (commit 01a4c86733cd3649f2caa0a2ab324f6d42c0a8f2):
  `LayerNorm2d` (its autograd Function's forward, as plain tensor operations).
- basicsr/models/archs/local_arch.py (commit 47b3a159855eff52a7aeaab4bbb6986ae0be4528):
  `AvgPool2d`, `replace_layers`, `Local_Base` (TLC).
- basicsr/models/base_model.py (same commit as arch_util.py): `save_network` writes
  `torch.save({'params': state_dict}, 'net_g_<iter>.pth')` (see `save_official`).

Module names are the authors', so state_dict() has their checkpoint keys.
"""

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm2d(nn.Module):

  def __init__(self, channels, eps=1e-6):
    super().__init__()
    self.register_parameter('weight', nn.Parameter(torch.ones(channels)))
    self.register_parameter('bias', nn.Parameter(torch.zeros(channels)))
    self.eps = eps

  def forward(self, x):
    _, c, _, _ = x.size()
    mu = x.mean(1, keepdim=True)
    var = (x - mu).pow(2).mean(1, keepdim=True)
    y = (x - mu) / (var + self.eps).sqrt()
    return self.weight.view(1, c, 1, 1) * y + self.bias.view(1, c, 1, 1)


class SimpleGate(nn.Module):

  def forward(self, x):
    x1, x2 = x.chunk(2, dim=1)
    return x1 * x2


class NAFBlock(nn.Module):

  def __init__(self, c, DW_Expand=2, FFN_Expand=2):  # pylint: disable=invalid-name
    super().__init__()
    dw_channel = c * DW_Expand
    self.conv1 = nn.Conv2d(c, dw_channel, kernel_size=1, padding=0, stride=1, groups=1, bias=True)
    self.conv2 = nn.Conv2d(dw_channel, dw_channel, kernel_size=3, padding=1, stride=1,
                           groups=dw_channel, bias=True)
    self.conv3 = nn.Conv2d(dw_channel // 2, c, kernel_size=1, padding=0, stride=1, groups=1,
                           bias=True)
    self.sca = nn.Sequential(
        nn.AdaptiveAvgPool2d(1),
        nn.Conv2d(dw_channel // 2, dw_channel // 2, kernel_size=1, padding=0, stride=1, groups=1,
                  bias=True),
    )
    self.sg = SimpleGate()
    ffn_channel = FFN_Expand * c
    self.conv4 = nn.Conv2d(c, ffn_channel, kernel_size=1, padding=0, stride=1, groups=1, bias=True)
    self.conv5 = nn.Conv2d(ffn_channel // 2, c, kernel_size=1, padding=0, stride=1, groups=1,
                           bias=True)
    self.norm1 = LayerNorm2d(c)
    self.norm2 = LayerNorm2d(c)
    self.dropout1 = nn.Identity()  # drop_out_rate 0 in every GoPro config.
    self.dropout2 = nn.Identity()
    self.beta = nn.Parameter(torch.zeros((1, c, 1, 1)), requires_grad=True)
    self.gamma = nn.Parameter(torch.zeros((1, c, 1, 1)), requires_grad=True)

  def forward(self, inp):
    x = self.norm1(inp)
    x = self.conv1(x)
    x = self.conv2(x)
    x = self.sg(x)
    x = x * self.sca(x)
    x = self.conv3(x)
    x = self.dropout1(x)
    y = inp + x * self.beta
    x = self.conv4(self.norm2(y))
    x = self.sg(x)
    x = self.conv5(x)
    x = self.dropout2(x)
    return y + x * self.gamma


class NAFNet(nn.Module):

  def __init__(self, img_channel=3, width=16, middle_blk_num=1, enc_blk_nums=(), dec_blk_nums=()):
    super().__init__()
    self.intro = nn.Conv2d(img_channel, width, kernel_size=3, padding=1, stride=1, groups=1,
                           bias=True)
    self.ending = nn.Conv2d(width, img_channel, kernel_size=3, padding=1, stride=1, groups=1,
                            bias=True)
    self.encoders = nn.ModuleList()
    self.decoders = nn.ModuleList()
    self.middle_blks = nn.ModuleList()
    self.ups = nn.ModuleList()
    self.downs = nn.ModuleList()
    chan = width
    for num in enc_blk_nums:
      self.encoders.append(nn.Sequential(*[NAFBlock(chan) for _ in range(num)]))
      self.downs.append(nn.Conv2d(chan, 2 * chan, 2, 2))
      chan = chan * 2
    self.middle_blks = nn.Sequential(*[NAFBlock(chan) for _ in range(middle_blk_num)])
    for num in dec_blk_nums:
      self.ups.append(nn.Sequential(nn.Conv2d(chan, chan * 2, 1, bias=False), nn.PixelShuffle(2)))
      chan = chan // 2
      self.decoders.append(nn.Sequential(*[NAFBlock(chan) for _ in range(num)]))
    self.padder_size = 2 ** len(self.encoders)

  def forward(self, inp):
    _, _, H, W = inp.shape  # pylint: disable=invalid-name
    inp = self.check_image_size(inp)
    x = self.intro(inp)
    encs = []
    for encoder, down in zip(self.encoders, self.downs):
      x = encoder(x)
      encs.append(x)
      x = down(x)
    x = self.middle_blks(x)
    for decoder, up, enc_skip in zip(self.decoders, self.ups, encs[::-1]):
      x = up(x)
      x = x + enc_skip
      x = decoder(x)
    x = self.ending(x)
    x = x + inp
    return x[:, :, :H, :W]

  def check_image_size(self, x):
    _, _, h, w = x.size()
    mod_pad_h = (self.padder_size - h % self.padder_size) % self.padder_size
    mod_pad_w = (self.padder_size - w % self.padder_size) % self.padder_size
    return F.pad(x, (0, mod_pad_w, 0, mod_pad_h))


class AvgPool2d(nn.Module):
  """local_arch.AvgPool2d; the kernel is fixed on its first call (Local_Base.convert's pass)."""

  def __init__(self, kernel_size=None, base_size=None, auto_pad=True, fast_imp=False,
               train_size=None):
    super().__init__()
    self.kernel_size = kernel_size
    self.base_size = base_size
    self.auto_pad = auto_pad
    self.fast_imp = fast_imp
    self.rs = [5, 4, 3, 2, 1]
    self.max_r1 = self.rs[0]
    self.max_r2 = self.rs[0]
    self.train_size = train_size

  def forward(self, x):
    if self.kernel_size is None and self.base_size:
      train_size = self.train_size
      if isinstance(self.base_size, int):
        self.base_size = (self.base_size, self.base_size)
      self.kernel_size = list(self.base_size)
      self.kernel_size[0] = x.shape[2] * self.base_size[0] // train_size[-2]
      self.kernel_size[1] = x.shape[3] * self.base_size[1] // train_size[-1]
      self.max_r1 = max(1, self.rs[0] * x.shape[2] // train_size[-2])
      self.max_r2 = max(1, self.rs[0] * x.shape[3] // train_size[-1])

    if self.kernel_size[0] >= x.size(-2) and self.kernel_size[1] >= x.size(-1):
      return F.adaptive_avg_pool2d(x, 1)

    if self.fast_imp:  # Not transcribed: NAFNetLocal's default and every config use False.
      raise NotImplementedError('fast_imp')
    _, _, h, w = x.shape
    s = x.cumsum(dim=-1).cumsum_(dim=-2)
    s = F.pad(s, (1, 0, 1, 0))
    k1, k2 = min(h, self.kernel_size[0]), min(w, self.kernel_size[1])
    s1, s2, s3, s4 = s[:, :, :-k1, :-k2], s[:, :, :-k1, k2:], s[:, :, k1:, :-k2], s[:, :, k1:, k2:]
    out = s4 + s1 - s2 - s3
    out = out / (k1 * k2)

    if self.auto_pad:
      _, _, h, w = x.shape
      _h, _w = out.shape[2:]
      pad2d = ((w - _w) // 2, (w - _w + 1) // 2, (h - _h) // 2, (h - _h + 1) // 2)
      out = F.pad(out, pad2d, mode='replicate')
    return out


def replace_layers(model, base_size, train_size, fast_imp, **kwargs):
  for n, m in model.named_children():
    if len(list(m.children())) > 0:
      replace_layers(m, base_size, train_size, fast_imp, **kwargs)
    if isinstance(m, nn.AdaptiveAvgPool2d):
      pool = AvgPool2d(base_size=base_size, fast_imp=fast_imp, train_size=train_size)
      assert m.output_size == 1
      setattr(model, n, pool)


class Local_Base():  # pylint: disable=invalid-name

  def convert(self, *args, train_size, **kwargs):
    replace_layers(self, *args, train_size=train_size, **kwargs)
    imgs = torch.rand(train_size)
    with torch.no_grad():
      self.forward(imgs)


class NAFNetLocal(Local_Base, NAFNet):

  def __init__(self, *args, train_size=(1, 3, 256, 256), fast_imp=False, **kwargs):
    Local_Base.__init__(self)
    NAFNet.__init__(self, *args, **kwargs)
    _, _, H, W = train_size  # pylint: disable=invalid-name
    base_size = (int(H * 1.5), int(W * 1.5))
    self.eval()
    with torch.no_grad():
      self.convert(base_size=base_size, train_size=train_size, fast_imp=fast_imp)


def randomize(net, seed=0):
  """Random values for every tensor, beta/gamma and the norms included.

  A fresh NAFNet has beta = gamma = 0, which makes every block the identity;
  tests need blocks that compute something.
  """
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in net.named_parameters():
      if name.endswith(('beta', 'gamma')) or '.norm' in name:
        centre = 1.0 if name.endswith('.weight') else 0.0  # LayerNorm scales around 1.
        p.copy_(centre + 0.5 * torch.randn(p.shape, generator=generator))
  return net


def save_official(path, net):
  """As BasicSR's save_network: {'params': state_dict} with 'module.' stripped."""
  torch.save({'params': {k: v.cpu() for k, v in net.state_dict().items()}}, str(path))
