"""DMPHN (Zhang et al., CVPR 2019), its authors' PyTorch recipe on GoPro.

From github.com/HongguangZhang/DMPHN-cvpr19-master, DMPHN_1_2_4.py and
DMPHN_1_2_4_8.py (argparse defaults): MSE on the level-1 output; one Adam
(lr 1e-4, betas 0.9/0.999, no weight decay) per network, which is one Adam
over all of them; StepLR(step_size=1000 epochs, gamma=0.1); batch 2 of random
256x256 crops with no flips or rotations (datasets.GoProDataset, crop=True
only); 2400 epochs for DMPHN(1-2-4), 4000 for DMPHN(1-2-4-8). The DataLoader
keeps the last incomplete batch, so an epoch of GoPro's 2103 pairs is 1052 steps.

The default ('') is DMPHN(1-2-4), the model the authors call DMPHN_1_2_4 and
the first checkpoint they publish; '1_2_4_8' is XYDeblur's Table 2 baseline,
and '1_2_4_8_xy', '1_2_4_8_channel', '1_2_4_8_layer' its other DMPHN rows
(trained, like that baseline, with the 1-2-4-8 recipe).


  python launch.py --config=dmphn_gopro --workdir=DIR --config.data.root=/path/to/GOPRO_Large
  python launch.py --config=dmphn_gopro:1_2_4_8 ...   # or :1_2_4_8_xy, _channel, _layer
"""

from xydiff.configs import base

PAIRS = 2103
BATCH = 2
STEPS_PER_EPOCH = -(-PAIRS // BATCH)  # DataLoader(drop_last=False): 1052.
EPOCHS = {3: 2400, 4: 4000}  # By number of levels: DMPHN_1_2_4.py, DMPHN_1_2_4_8.py.
TEST_EVERY_EPOCHS = {3: 200, 4: 100}  # How often the authors' scripts test on GoPro.
DECAY_EVERY_EPOCHS = 1000  # StepLR(step_size=1000, gamma=0.1).

# DMPHN(1-2-4) (5,424,393 parameters), DMPHN(1-2-4-8) (7,232,524), and XYDeblur's
# Table 2 rows of the latter: XY (each level's decoder run twice, turned), Channel
# (width 52: 19,082,764 parameters, 2895.77 GMACs; the table 18.63M / 3060.28, which no
# whole width gives both of) and Layer (3 ResBlocks a stage: the table to the digit).
VARIANTS = {
    '': {'levels': 3}, '1_2_4': {'levels': 3}, '1_2_4_8': {'levels': 4},
    '1_2_4_8_xy': {'levels': 4, 'decoders': 2},
    '1_2_4_8_channel': {'levels': 4, 'width': 52},
    '1_2_4_8_layer': {'levels': 4, 'num_res': 3},
}


def get_config(variant: str = ''):
  config = base.get_config('dmphn')
  config.model.update(base.variant(VARIANTS, variant, __name__))
  levels = config.model.levels
  epochs = EPOCHS.get(levels, EPOCHS[4])

  base.gopro_crops(config, flip=False)
  config.train.batch_size = BATCH
  config.train.num_steps = epochs * STEPS_PER_EPOCH  # 2,524,800 (1-2-4); 4,208,000 (1-2-4-8).
  config.train.lr = 1e-4
  config.train.lr_schedule = 'step'
  config.train.lr_halve_steps = tuple(
      e * STEPS_PER_EPOCH for e in range(DECAY_EVERY_EPOCHS, epochs, DECAY_EVERY_EPOCHS))
  config.train.lr_decay_factor = 0.1
  # The authors' plain Adam (betas 0.9, 0.999), no weight decay, warm-up, clipping or
  # EMA: base.get_config's defaults.
  # The authors overwrite their checkpoint every epoch; every 10 here.
  config.train.checkpoint_every = 10 * STEPS_PER_EPOCH
  config.train.eval_every = TEST_EVERY_EPOCHS.get(levels, TEST_EVERY_EPOCHS[4]) * STEPS_PER_EPOCH
  return config
