"""DeepDeblur (Nah et al., CVPR 2017), its authors' PyTorch recipe on GoPro.

From github.com/SeungjunNah/DeepDeblur-PyTorch (src/option.py defaults and
the README's GoPro command, `--milestones 500 750 900 --endEpoch 1000`):
multi-scale L1 on the 0..255 scale, Adam (betas 0.9/0.999, eps 1e-8, no weight
decay) at 1e-4 halved after epochs 500, 750 and 900 of 1000; batch 16 (over
all GPUs) of random 256x256 crops, the last incomplete batch dropped, so an
epoch of GoPro's 2103 pairs is 131 steps.

Their augmentation flips horizontally and vertically and transposes (all 8
orientations: data.flip and data.rot90 here); it also shuffles the colour
channels, scales the saturation by U(0.5, 1.5) and adds Gaussian noise to the
blurry input, which xydiff's data pipeline does not do. Their default GoPro
frames are blur_gamma/ (--blur_key); this config reads blur/ like the other
baselines (data.name='gopro' with data.tfds_config='blur_gamma' reads theirs).

  python launch.py --config=deepdeblur_gopro --workdir=DIR --config.data.root=/path/to/GOPRO_Large
  python launch.py --config=deepdeblur_gopro:xy ...   # or :channel, :layer (XYDeblur's Table 2)
"""

from xydiff.configs import base

PAIRS = 2103
BATCH = 16
STEPS_PER_EPOCH = PAIRS // BATCH  # DataLoader(drop_last=True): 131.

# XYDeblur's Table 2 rows of MSCNN: the XY decoder pair, and the wider ("Channel") and
# deeper ("Layer") baselines of about its compute (101 features: 29,147,100 parameters,
# 11.76 TMACs at 1280x720, the table 28.94M / 11.67; 28 ResBlocks a scale: 17,254,377
# parameters, 6960.32 GMACs, the table to the digit).
VARIANTS = {'': {}, 'xy': {'decoders': 2}, 'channel': {'width': 101}, 'layer': {'num_res': 28}}


def get_config(variant: str = ''):
  config = base.get_config('deepdeblur')
  config.model.update(base.variant(VARIANTS, variant, __name__))
  base.gopro_crops(config, rot90=True)
  config.train.batch_size = BATCH
  config.train.num_steps = 1000 * STEPS_PER_EPOCH  # 131,000
  config.train.lr = 1e-4
  config.train.lr_schedule = 'step'
  config.train.lr_halve_steps = tuple(e * STEPS_PER_EPOCH for e in (500, 750, 900))
  # The authors' plain Adam (betas 0.9, 0.999), no weight decay, warm-up, clipping or
  # EMA: base.get_config's defaults.
  # The authors save every 10 epochs and test on GoPro every 10; testing the
  # 1111 full frames that often costs more than training here, so every 100.
  config.train.checkpoint_every = 10 * STEPS_PER_EPOCH
  config.train.eval_every = 100 * STEPS_PER_EPOCH
  return config
