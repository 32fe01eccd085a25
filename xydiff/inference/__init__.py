"""Inference: the `Restorer` and what it is made of."""

from xydiff.inference.restorer import Restorer

__all__ = ['Restorer']
