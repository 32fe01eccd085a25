"""DMPHN in PyTorch, transcribed from the authors' code for xydiff's tests.

Source: github.com/HongguangZhang/DMPHN-cvpr19-master
- models.py (commit a974aaad3a371e4aca2c9564d36f4cd7dff927e2): `Encoder`, `Decoder`.
- DMPHN_1_2_4_test.py and DMPHN_1_2_4_8_test.py (commit
  64af480d958e550625ea24678066dba09d1b4d3e): how the levels are wired at test time.
- DMPHN_1_2_4.py (commit 18ad7269e75b7730757ad80257ee3d9417ba4d8f): how checkpoints
  are saved, `torch.save(encoder_lv1.state_dict(), '<dir>/encoder_lv1.pkl')`.

The authors' networks have width 32 and two ResBlocks per stage; `width` and
`num_res` exist only so tests can run tiny copies. Layer names follow the
authors' numbering (AutoEncoder's, with three ResBlock slots per stage), so
at num_res=2 the state-dict keys are exactly theirs.
"""

import torch
from torch import nn

_SLOTS = 3


def _res(c):
  return nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1))


class Encoder(nn.Module):
  """models.Encoder: layer1, layer2-3, layer5 (stride 2), layer6-7, layer9 (stride 2), layer10-11."""

  def __init__(self, width=32, num_res=2):
    super().__init__()
    assert num_res <= _SLOTS
    self.num_res = num_res
    w = width
    self.layer1 = nn.Conv2d(3, w, 3, padding=1)
    self.layer5 = nn.Conv2d(w, 2 * w, 3, stride=2, padding=1)
    self.layer9 = nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1)
    for first, c in ((2, w), (6, 2 * w), (10, 4 * w)):
      for i in range(num_res):
        setattr(self, f'layer{first + i}', _res(c))

  def _stage(self, x, first):
    for i in range(self.num_res):
      x = getattr(self, f'layer{first + i}')(x) + x
    return x

  def forward(self, x):
    x = self._stage(self.layer1(x), 2)
    x = self._stage(self.layer5(x), 6)
    return self._stage(self.layer9(x), 10)


class Decoder(nn.Module):
  """models.Decoder: layer13-14, layer16 (up), layer17-18, layer20 (up), layer21-22, layer24."""

  def __init__(self, width=32, num_res=2):
    super().__init__()
    assert num_res <= _SLOTS
    self.num_res = num_res
    w = width
    for first, c in ((13, 4 * w), (17, 2 * w), (21, w)):
      for i in range(num_res):
        setattr(self, f'layer{first + i}', _res(c))
    self.layer16 = nn.ConvTranspose2d(4 * w, 2 * w, kernel_size=4, stride=2, padding=1)
    self.layer20 = nn.ConvTranspose2d(2 * w, w, kernel_size=4, stride=2, padding=1)
    self.layer24 = nn.Conv2d(w, 3, 3, padding=1)

  def _stage(self, x, first):
    for i in range(self.num_res):
      x = getattr(self, f'layer{first + i}')(x) + x
    return x

  def forward(self, x):
    x = self.layer16(self._stage(x, 13))
    x = self.layer20(self._stage(x, 17))
    return self.layer24(self._stage(x, 21))


def make_networks(levels, width=32, num_res=2):
  """{'encoder_lv1': Encoder, ..., 'decoder_lv<levels>': Decoder} in eval mode."""
  nets = {}
  for k in range(1, levels + 1):
    nets[f'encoder_lv{k}'] = Encoder(width, num_res).eval()
    nets[f'decoder_lv{k}'] = Decoder(width, num_res).eval()
  return nets


def save_checkpoints(nets, folder, legacy=False):
  """As the authors' training scripts do: one plain state dict per network."""
  for name, net in nets.items():
    torch.save(net.state_dict(), str(folder / f'{name}.pkl'),
               _use_new_zipfile_serialization=not legacy)


@torch.no_grad()
def restore_1_2_4(nets, image):
  """DMPHN_1_2_4_test.py on an NCHW image in [0, 1]; returns deblur_image + 0.5 (unclamped)."""
  encoder_lv1, encoder_lv2, encoder_lv3 = (nets[f'encoder_lv{k}'] for k in (1, 2, 3))
  decoder_lv1, decoder_lv2, decoder_lv3 = (nets[f'decoder_lv{k}'] for k in (1, 2, 3))
  images_lv1 = image - 0.5
  H = images_lv1.size(2)
  W = images_lv1.size(3)
  images_lv2_1 = images_lv1[:, :, 0:int(H / 2), :]
  images_lv2_2 = images_lv1[:, :, int(H / 2):H, :]
  images_lv3_1 = images_lv2_1[:, :, :, 0:int(W / 2)]
  images_lv3_2 = images_lv2_1[:, :, :, int(W / 2):W]
  images_lv3_3 = images_lv2_2[:, :, :, 0:int(W / 2)]
  images_lv3_4 = images_lv2_2[:, :, :, int(W / 2):W]

  feature_lv3_1 = encoder_lv3(images_lv3_1)
  feature_lv3_2 = encoder_lv3(images_lv3_2)
  feature_lv3_3 = encoder_lv3(images_lv3_3)
  feature_lv3_4 = encoder_lv3(images_lv3_4)
  feature_lv3_top = torch.cat((feature_lv3_1, feature_lv3_2), 3)
  feature_lv3_bot = torch.cat((feature_lv3_3, feature_lv3_4), 3)
  feature_lv3 = torch.cat((feature_lv3_top, feature_lv3_bot), 2)
  residual_lv3_top = decoder_lv3(feature_lv3_top)
  residual_lv3_bot = decoder_lv3(feature_lv3_bot)

  feature_lv2_1 = encoder_lv2(images_lv2_1 + residual_lv3_top)
  feature_lv2_2 = encoder_lv2(images_lv2_2 + residual_lv3_bot)
  feature_lv2 = torch.cat((feature_lv2_1, feature_lv2_2), 2) + feature_lv3
  residual_lv2 = decoder_lv2(feature_lv2)

  feature_lv1 = encoder_lv1(images_lv1 + residual_lv2) + feature_lv2
  deblur_image = decoder_lv1(feature_lv1)
  return deblur_image + 0.5


@torch.no_grad()
def restore_1_2_4_8(nets, image):
  """DMPHN_1_2_4_8_test.py on an NCHW image in [0, 1]; returns deblur_image + 0.5."""
  encoder_lv1, encoder_lv2, encoder_lv3, encoder_lv4 = (nets[f'encoder_lv{k}'] for k in range(1, 5))
  decoder_lv1, decoder_lv2, decoder_lv3, decoder_lv4 = (nets[f'decoder_lv{k}'] for k in range(1, 5))
  images_lv1 = image - 0.5
  H = images_lv1.size(2)
  W = images_lv1.size(3)
  images_lv2_1 = images_lv1[:, :, 0:int(H / 2), :]
  images_lv2_2 = images_lv1[:, :, int(H / 2):H, :]
  images_lv3_1 = images_lv2_1[:, :, :, 0:int(W / 2)]
  images_lv3_2 = images_lv2_1[:, :, :, int(W / 2):W]
  images_lv3_3 = images_lv2_2[:, :, :, 0:int(W / 2)]
  images_lv3_4 = images_lv2_2[:, :, :, int(W / 2):W]
  images_lv4_1 = images_lv3_1[:, :, 0:int(H / 4), :]
  images_lv4_2 = images_lv3_1[:, :, int(H / 4):int(H / 2), :]
  images_lv4_3 = images_lv3_2[:, :, 0:int(H / 4), :]
  images_lv4_4 = images_lv3_2[:, :, int(H / 4):int(H / 2), :]
  images_lv4_5 = images_lv3_3[:, :, 0:int(H / 4), :]
  images_lv4_6 = images_lv3_3[:, :, int(H / 4):int(H / 2), :]
  images_lv4_7 = images_lv3_4[:, :, 0:int(H / 4), :]
  images_lv4_8 = images_lv3_4[:, :, int(H / 4):int(H / 2), :]

  feature_lv4_1 = encoder_lv4(images_lv4_1)
  feature_lv4_2 = encoder_lv4(images_lv4_2)
  feature_lv4_3 = encoder_lv4(images_lv4_3)
  feature_lv4_4 = encoder_lv4(images_lv4_4)
  feature_lv4_5 = encoder_lv4(images_lv4_5)
  feature_lv4_6 = encoder_lv4(images_lv4_6)
  feature_lv4_7 = encoder_lv4(images_lv4_7)
  feature_lv4_8 = encoder_lv4(images_lv4_8)
  feature_lv4_top_left = torch.cat((feature_lv4_1, feature_lv4_2), 2)
  feature_lv4_top_right = torch.cat((feature_lv4_3, feature_lv4_4), 2)
  feature_lv4_bot_left = torch.cat((feature_lv4_5, feature_lv4_6), 2)
  feature_lv4_bot_right = torch.cat((feature_lv4_7, feature_lv4_8), 2)
  feature_lv4_top = torch.cat((feature_lv4_top_left, feature_lv4_top_right), 3)
  feature_lv4_bot = torch.cat((feature_lv4_bot_left, feature_lv4_bot_right), 3)
  residual_lv4_top_left = decoder_lv4(feature_lv4_top_left)
  residual_lv4_top_right = decoder_lv4(feature_lv4_top_right)
  residual_lv4_bot_left = decoder_lv4(feature_lv4_bot_left)
  residual_lv4_bot_right = decoder_lv4(feature_lv4_bot_right)

  feature_lv3_1 = encoder_lv3(images_lv3_1 + residual_lv4_top_left)
  feature_lv3_2 = encoder_lv3(images_lv3_2 + residual_lv4_top_right)
  feature_lv3_3 = encoder_lv3(images_lv3_3 + residual_lv4_bot_left)
  feature_lv3_4 = encoder_lv3(images_lv3_4 + residual_lv4_bot_right)
  feature_lv3_top = torch.cat((feature_lv3_1, feature_lv3_2), 3) + feature_lv4_top
  feature_lv3_bot = torch.cat((feature_lv3_3, feature_lv3_4), 3) + feature_lv4_bot
  residual_lv3_top = decoder_lv3(feature_lv3_top)
  residual_lv3_bot = decoder_lv3(feature_lv3_bot)

  feature_lv2_1 = encoder_lv2(images_lv2_1 + residual_lv3_top)
  feature_lv2_2 = encoder_lv2(images_lv2_2 + residual_lv3_bot)
  feature_lv2 = torch.cat((feature_lv2_1, feature_lv2_2), 2) + torch.cat(
      (feature_lv3_top, feature_lv3_bot), 2)
  residual_lv2 = decoder_lv2(feature_lv2)

  feature_lv1 = encoder_lv1(images_lv1 + residual_lv2) + feature_lv2
  deblur_image = decoder_lv1(feature_lv1)
  return deblur_image + 0.5
