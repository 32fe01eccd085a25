"""NAFNet (Chen et al., ECCV 2022), its authors' recipe on GoPro.

From github.com/megvii-research/NAFNet, options/train/GoPro/NAFNet-width{32,64}.yml
and basicsr/models/image_restoration_model.py: PSNR loss (BasicSR PSNRLoss,
weight 1); AdamW at 1e-3 with betas (0.9, 0.9), cosine annealing
(TrueCosineAnnealingLR, T_max = total_iter) to 1e-7, no warm-up; gradients
clipped to global norm 0.01 (use_grad_clip defaults to on); random 256x256
crops with flips and rotations (BasicSR's hflip/vflip/transpose: all 8
orientations); the network is NAFNetLocal (TLC at train size 256) in
training and test alike.

  width 64 (variant '' or 'width64'): 8 GPUs x 8 = batch 64, 400,000 iterations,
    weight decay 1e-3. GoPro 33.71 dB / 0.9668 (README; the paper's abstract: 33.69 dB).
  width 32 ('width32'): 8 x 4 = batch 32, 200,000 iterations, weight decay 0.
    GoPro 32.87 dB / 0.9606 (README).

The default is width 64 because it is the model of the paper's GoPro result
and the default of config.model.nafnet. The authors count iterations, not
epochs: they train on 512x512 crops (stride 256) of GoPro's 2103 training
pairs, 8 per frame, drawing 256x256 crops from those; xydiff draws the
256x256 crops from the whole frames. 400,000 steps of 64 are about 12,200
passes over the 2103 frames (200,000 of 32: about 3,000). No EMA.

  python launch.py --config=nafnet_gopro --workdir=DIR --config.data.root=/path/to/GOPRO_Large
  python launch.py --config=nafnet_gopro:width32 ...
"""

from xydiff.configs import base

# {width: (global batch, iterations, AdamW weight decay)} from the two train configs.
RECIPES = {32: (32, 200_000, 0.0), 64: (64, 400_000, 1e-3)}
VARIANTS = {'': {'width': 64}, 'width64': {'width': 64}, 'width32': {'width': 32}}


def get_config(variant: str = ''):
  config = base.get_config('nafnet')
  config.model.update(base.variant(VARIANTS, variant, __name__))
  batch, steps, weight_decay = RECIPES[config.model.width]
  base.gopro_crops(config, rot90=True)
  config.train.batch_size = batch
  config.train.num_steps = steps
  config.train.lr = 1e-3
  config.train.lr_schedule = 'cosine'
  config.train.lr_min = 1e-7
  config.train.lr_halve_steps = ()
  config.train.optimizer = 'adamw'
  config.train.adam_betas = (0.9, 0.9)
  config.train.weight_decay = weight_decay
  config.train.warmup_steps = 0
  config.train.grad_clip = 0.01
  config.train.ema_rate = 0.0
  config.train.log_every = 200  # print_freq
  config.train.checkpoint_every = 5_000  # save_checkpoint_freq
  config.train.eval_every = 20_000  # val_freq
  return config
