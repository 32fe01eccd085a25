"""xydiff: XYDeblur and DvSR deblurring, and both at once, in JAX/Flax.

The public API is `Restorer` (xydiff.inference.restorer): restore arrays with a
trained, imported or fetched model. It is imported on first use, so that
`import xydiff.data.synthetic` (numpy and scipy only) does not pull in JAX.
"""

__version__ = '0.1.0'
__all__ = ['Restorer', '__version__']


def __getattr__(name):
  if name == 'Restorer':
    from xydiff.inference.restorer import Restorer  # pylint: disable=import-outside-toplevel
    return Restorer
  raise AttributeError(f'module xydiff has no attribute {name!r}')


def __dir__():
  return sorted(set(globals()) | set(__all__))
