"""A few minutes on a CPU: scikit-image's bundled photographs, blurred in memory.

  xydiff train --config=demo --workdir=/tmp/xydiff_demo
  xydiff train --config=demo:diffusion --workdir=/tmp/xydiff_demo_dvsr

The photographs ship with scikit-image (no download); each gets a random
camera-shake kernel (Boracchi & Foi trajectories). Two photographs are held out
with kernels never seen in training; the evaluation JSON and before/after PNGs
land in <workdir>/eval/.
"""

from xydiff.configs import base


def get_config(variant: str = ''):
  if variant not in ('', 'xydeblur', 'diffusion'):
    raise ValueError(f"demo: no variant {variant!r}; one of 'xydeblur', 'diffusion'")
  config = base.get_config('dvsr' if variant == 'diffusion' else 'xydeblur')
  config.data.name = 'synthetic'
  config.data.root = ''
  config.data.crop = 64
  config.data.synthetic.kernel_size = 15
  config.data.synthetic.kernel_length = (3.0, 13.0)
  config.data.synthetic.photo_crop = 256
  config.data.cache_pairs = 16
  config.train.batch_size = 8
  config.train.num_steps = 800
  config.train.lr = 5e-4
  config.train.lr_halve_steps = (500, 700)
  config.train.log_every = 50
  config.train.checkpoint_every = 200
  config.train.eval_every = 400
  config.eval.num_image_summaries = 2
  if variant != 'diffusion':
    config.model.width = 16
    config.model.num_res = 2
    return config
  config.model.predictor.update(dict(base=16, multipliers=(1, 2, 2), num_res=1, decoders=2))
  config.model.denoiser.update(dict(base=16, multipliers=(1, 2, 2), num_res=1))
  # The demo's long chain: 100 ancestral steps to beta 0.2 (what its docs and
  # experiments measured), not the full-size configs' 20-step solver.
  config.inference.presets.perceptual.update(dict(
      num_steps=100, beta_end=0.2, sampler='ancestral', spacing='linear_beta', range_steps=0))
  # Residuals of a good predictor are small: scaled by 10 they stand out of
  # the unit noise at more levels, which the short CPU run needs (docs,
  # "Configs", has the comparison with the default 2).
  config.model.diffusion.residual_scale = 10.0
  # The paper trains g only through the denoiser; in a few hundred CPU steps
  # the optional L1 on g(y) gets g past the blurry input much sooner.
  config.model.diffusion.predictor_loss_weight = 1.0
  return config
