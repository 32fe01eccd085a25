"""MIMO-UNet / MIMO-UNet+ (Cho et al., ICCV 2021), the official recipe on GoPro.

From github.com/chosj95/MIMO-UNet (main.py defaults, train.py, data/):
multi-scale L1 + 0.1 x multi-scale FFT L1 (the family's loss); Adam (PyTorch's
default betas 0.9/0.999) at 1e-4, no weight decay, MultiStepLR halving at
epochs 500, 1000, ..., 2500 of 3000 (their list also holds 3000, after the last
epoch); batch 4 of random 256x256 crops with random horizontal flips (no
vertical flips or rotations); GoPro's 2103 training pairs, so ceil(2103 / 4) =
526 steps an epoch (their loader keeps the last batch of 3; here every batch
holds 4). MIMO-UNet+ trains the same way with 20 ResBlocks per block and
Dropout2d(0.1) on the skips. They test on GoPro every 100 epochs.

  python launch.py --config=mimo_unet_gopro --workdir=DIR --config.data.root=/path/to/GOPRO_Large
  python launch.py --config=mimo_unet_gopro:plus ...   # or :xy, :plus_xy (XYDeblur's decoder pair)
"""

from xydiff.configs import base

PAIRS = 2103
BATCH = 4
STEPS_PER_EPOCH = -(-PAIRS // BATCH)  # DataLoader(drop_last=False): 526.

PLUS = {'num_res': 20, 'dropout': 0.1}  # MIMO-UNet+: 16,107,651 parameters (6,807,171 plain).
XY = {'decoders': 2, 'share': 'rotate'}  # XYDeblur's decoder pair: 1.50x the GMACs.
VARIANTS = {'': {}, 'plus': PLUS, 'xy': XY, 'plus_xy': {**PLUS, **XY}}


def get_config(variant: str = ''):
  config = base.get_config('mimo_unet')
  config.model.update(base.variant(VARIANTS, variant, __name__))
  base.gopro_crops(config)
  t = config.train
  t.batch_size = BATCH
  t.num_steps = 3000 * STEPS_PER_EPOCH  # 1,578,000
  t.lr = 1e-4
  t.lr_schedule = 'step'
  t.lr_halve_steps = tuple(e * STEPS_PER_EPOCH for e in (500, 1000, 1500, 2000, 2500))
  # The authors' plain Adam (betas 0.9, 0.999), no weight decay, warm-up, clipping or
  # EMA: base.get_config's defaults.
  t.eval_every = 100 * STEPS_PER_EPOCH  # valid_freq = 100 epochs.
  return config
