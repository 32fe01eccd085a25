"""MIMO-UNet / MIMO-UNet+, the official recipe on GoPro (Cho et al., ICCV 2021).

From github.com/chosj95/MIMO-UNet (main.py defaults, train.py, data/):
multi-scale L1 + 0.1 x multi-scale FFT L1 (the family's loss); Adam lr 1e-4,
no weight decay, MultiStepLR halving at epochs 500, 1000, ..., 2500 of 3000;
batch 4; random 256x256 crops with random horizontal flips; GoPro's 2103
training pairs, so ceil(2103 / 4) = 526 steps an epoch (their loader keeps the
last, short batch; here every batch has 4 pairs). MIMO-UNet+ trains the same
way with 20 ResBlocks per block and channel dropout 0.1 on the skips.

  python launch.py --config=xydiff/configs/mimo_unet_gopro.py[:plus] --workdir=DIR \
      --config.data.root=/path/to/GOPRO_Large
"""

from xydiff.configs import default
from xydiff.models import mimo_unet

STEPS_PER_EPOCH = 526  # ceil(2103 / 4)
# get_config's argument -> the model's config section: the registered variants.
VARIANTS = {'': {}, 'plus': mimo_unet.PLUS}


def get_config(variant=''):
  if variant not in VARIANTS:
    raise ValueError(f'mimo_unet_gopro: unknown variant {variant!r}: one of '
                     f'{", ".join(repr(v) for v in VARIANTS)} (MIMO-UNet, MIMO-UNet+)')
  config = default.get_config()
  config.model.name = 'mimo_unet'
  config.model.mimo_unet.update(VARIANTS[variant])
  config.data.name = 'folder'
  config.data.crop = 256
  config.data.flip = True
  config.data.rot90 = False
  t = config.train
  t.batch_size = 4
  t.num_steps = 3000 * STEPS_PER_EPOCH
  t.optimizer = 'adam'
  t.adam_betas = (0.9, 0.999)  # torch.optim.Adam's defaults.
  t.lr = 1e-4
  t.weight_decay = 0.0
  t.lr_schedule = 'step'
  # lr_steps = [500, ..., 3000]: the halving at 3000 comes after the last epoch.
  t.lr_halve_steps = tuple(epoch * STEPS_PER_EPOCH for epoch in (500, 1000, 1500, 2000, 2500))
  t.warmup_steps = 0
  t.grad_clip = 0.0
  t.ema_rate = 0.0
  t.eval_every = 100 * STEPS_PER_EPOCH  # valid_freq: every 100 epochs.
  return config
