"""Plain DvSR on GoPro (Whang et al., CVPR 2022): U-Net predictor and denoiser.

Predictor g: U-Net, base 64, multipliers (1, 2, 3, 4); denoiser f: base 32,
same multipliers; 3 residual blocks per level; one L1 epsilon-loss trains both.
The variant names another family of the zoo as g, with its defaults:

  xydiff train --config=dvsr_gopro --workdir=DIR --config.data.root=/path/to/GOPRO_Large
  xydiff train --config=dvsr_gopro:nafnet ...   # or :xydeblur, :mimo_unet, :dmphn, :deepdeblur
"""

from xydiff.configs import base


def get_config(predictor: str = ''):
  config = base.get_config('dvsr')
  config.model.predictor = base.predictor(predictor or 'unet')
  base.gopro_crops(config, crop=128)
  config.train.batch_size = 32
  config.train.num_steps = 1_000_000
  config.train.lr = 1e-4
  config.train.lr_halve_steps = ()
  config.train.warmup_steps = 10_000
  config.train.ema_rate = 0.9999
  config.train.checkpoint_every = 5_000
  config.train.eval_every = 50_000
  return config
