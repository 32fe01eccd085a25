"""XY decoupling as one transform of a decoder, for every encoder/decoder family.

XYDeblur's idea (Ji et al., CVPR 2022) applied to any U-Net: the decoder runs
`decoders` times on the same encoder features and the outputs are summed.

- share='rotate' (XYDeblur): one set of weights; run i turns every kernel by
  i quarter turns (layers.rotate_kernel), so 2 decoders are the horizontal and
  vertical pair at exactly the baseline's parameter count, and 4 add the two
  opposite directions.
- share='none' (the paper's U-Net^2D, Figure 3): the same shapes with
  independent weights and no rotation.
- decoders=1 is the untransformed network: one decoder, stored where the
  family stores its decoder, so its parameters keep their names.

A family's decoder takes its features positionally and a keyword `rotation`
(quarter turns) that it passes to every layer; layers.Conv/ConvTranspose turn
their kernels, and anything else goes through layers.rotated_call.
"""

from __future__ import annotations

from typing import Callable

import jax
from flax import nnx

from xydiff.errors import require

SHARES = ('rotate', 'none')
DECODER_COUNTS = (1, 2, 4)


def make_decoders(make_decoder: Callable[[nnx.Rngs], nnx.Module], decoders: int, share: str,
                  rngs: nnx.Rngs) -> nnx.Module:
  """The decoder module(s) of a transformed network: one module, or an nnx.List of
  `decoders` independent ones (share='none')."""
  if decoders not in DECODER_COUNTS:
    raise ValueError(f'decoders must be one of {DECODER_COUNTS}, got {decoders!r}')
  if share not in SHARES:
    raise ValueError(f'share must be one of {SHARES}, got {share!r}')
  if share == 'none' and decoders > 1:
    return nnx.List([make_decoder(rngs) for _ in range(decoders)])
  return make_decoder(rngs)


def run_decoders(decoder: nnx.Module, decoders: int, *features, **kwargs) -> list[jax.Array]:
  """Each decoder's output, in order (decoder i turned by i quarter turns when shared)."""
  if isinstance(decoder, nnx.List):
    return [d(*features, rotation=0, **kwargs) for d in decoder]
  return [decoder(*features, rotation=i, **kwargs) for i in range(decoders)]


def check_section(section, prefix: str) -> None:
  """Validates the `decoders` and `share` fields of a family's config section."""
  require(section.decoders in DECODER_COUNTS, f'{prefix}.decoders',
          f'must be one of {DECODER_COUNTS} (1: plain, 2: XY, 4: four rotations)',
          section.decoders)
  require(section.share in SHARES, f'{prefix}.share',
          f"must be one of {SHARES} ('none': independent decoders, U-Net^2D)", section.share)
