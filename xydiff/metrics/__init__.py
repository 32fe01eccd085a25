"""Image-quality metrics, computed the way deblurring papers compute them.

Inputs are float32 RGB in [0, 1], NHWC; every function returns one value per
image, shape [N]. Each family lives in its own module:

* `tables`: PSNR and SSIM (2-D and MATLAB 3-D) on the GoPro/HIDE table protocol;
* `niqe`: the no-reference NIQE of the MATLAB release;
* `realblur`: RealBlur's ECC alignment and masked PSNR/SSIM.

Every reported score carries a label (the `*_LABEL` constants) saying which
variant it is.
"""

from xydiff.metrics.niqe import NIQE_GRAY_LABEL, NIQE_LABEL, niqe
from xydiff.metrics.realblur import REALBLUR_LABEL, psnr_masked, ssim_masked
from xydiff.metrics.tables import (PSNR_UINT8_LABEL, SSIM_2D_LABEL, SSIM_3D_LABEL, psnr,
                                   psnr_uint8, ssim, ssim3d)
