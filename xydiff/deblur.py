"""The deblur path in one import, without TensorFlow: what `xydiff deblur` runs.

  from xydiff import deblur
  deblur.run(None, 'runs/xydeblur', 'photos/', 'restored/')   # the verb's work
  deblur.Restorer.from_workdir('runs/xydeblur').restore(image)  # arrays and paths

The work lives in xydiff.inference (photos: files in, PNGs out; restorer: the
model); this module names it as users of the command line know it.
"""

from xydiff.inference.photos import compilation_cache, list_inputs, plan_outputs, run
from xydiff.inference.restorer import Restorer

__all__ = ['Restorer', 'compilation_cache', 'list_inputs', 'plan_outputs', 'run']
