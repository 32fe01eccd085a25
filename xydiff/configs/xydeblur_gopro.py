"""XYDeblur, the official recipe on GoPro (Ji et al., CVPR 2022).

L1 on the restored image, Adam 1e-4 halved at epochs 500/1000/1500/2000/2500
of 3000, batch 4, random 256x256 crops with horizontal flips, 2103 pairs.

  python launch.py --config=xydiff/configs/xydeblur_gopro.py --workdir=DIR \
      --config.data.root=/path/to/GOPRO_Large
"""

from xydiff.configs import base


def get_config():
  config = base.get_config('xydeblur')
  base.gopro_crops(config)
  config.train.batch_size = 4
  return config
