"""xydiff on GoPro: DvSR's predict-and-refine diffusion with an XY-decoupled predictor.

The predictor's decoder runs twice, the second time with its kernels turned
90 degrees (XYDeblur's decoupling, no extra parameters). Set
`--config.model.denoiser.decoders=2` for an XY denoiser too. bfloat16
activations for accelerators; parameters and optimizer state stay float32.
The variant names another family as the XY predictor (`gopro:nafnet`).

  xydiff train --config=gopro --workdir=DIR --config.data.root=/path/to/GOPRO_Large
"""

from xydiff.configs import dvsr_gopro


def get_config(predictor: str = ''):
  config = dvsr_gopro.get_config(predictor)
  config.model.predictor.decoders = 2
  config.model.dtype = 'bfloat16'
  return config
