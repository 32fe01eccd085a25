"""What the tests know about each model family, in one place: one `FamilyCase` per family.

tests/test_families.py runs one contract over every family in
xydiff.models.FAMILIES from these; conftest.tiny shrinks configs with their
`tiny` fields. A new family is its module, a line in FAMILIES and a case here.

Kept light (no JAX, no torch at import): conftest imports it.
"""

from __future__ import annotations

import dataclasses
from typing import Callable


@dataclasses.dataclass(frozen=True)
class FamilyCase:
  """One family, as the contract tests it.

  tiny: fields that shrink its section to seconds on a CPU (a nested dict
    updates a nested section; a nested model section, with a `name`, is
    shrunk by its own family's case).
  size_multiple: models.size_multiple of the tiny section.
  bad_fields: (dotted field under config.model, a value validate refuses),
    at least one for every field of the section.
  official_counts: {packaged config (xydiff.configs name or alias): its
    parameters at full size, as the authors count them}.
  decoder_params: the parameters one more independent decoder (share='none')
    adds to the first of official_counts: U-Net^2D's cost.
  key_map: whether keymaps.FORMATS reads the authors' checkpoints.
  torch_reference: section -> {key: shape} of the authors' PyTorch network
    for that section (tests/torch_refs; needs torch).
  network: the attribute of the built model holding the network the XY
    transform applies to ('' for the model itself).
  single_pass: every decoder decodes one encoder pass, so decoder 1 of the
    XY network is the one-decoder network's (not so where a level's output
    feeds the next level).
  """
  name: str
  tiny: dict
  size_multiple: int
  bad_fields: tuple[tuple[str, object], ...]
  official_counts: dict[str, int] = dataclasses.field(default_factory=dict)
  decoder_params: int | None = None
  key_map: bool = False
  torch_reference: Callable[..., dict] | None = None
  network: str = ''
  single_pass: bool = True


def _shapes(net) -> dict:
  return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def _on_meta(make):
  """Builds a torch network on the meta device: shapes without memory or initialisation."""
  import torch  # pylint: disable=import-outside-toplevel  # torch is optional for the suite.
  with torch.device('meta'):
    return make()


def _xydeblur_reference(section):
  from torch_refs.xydeblur import OfficialXYDeblur  # pylint: disable=import-outside-toplevel  # torch.
  return _shapes(_on_meta(lambda: OfficialXYDeblur(width=section.width, num_res=section.num_res)))


def _dmphn_reference(section):
  from torch_refs import dmphn  # pylint: disable=import-outside-toplevel  # torch.
  nets = _on_meta(lambda: dmphn.make_networks(section.levels, width=section.width,
                                              num_res=section.num_res))
  # One file per network: the key map prefixes each key with its file's stem.
  return {f'{name}.{k}': v for name, net in nets.items() for k, v in _shapes(net).items()}


def _deepdeblur_reference(section):
  from torch_refs import deepdeblur  # pylint: disable=import-outside-toplevel  # torch.
  return _shapes(_on_meta(lambda: deepdeblur.MSResNet(
      n_resblocks=section.num_res, n_feats=section.width, kernel_size=section.kernel_size,
      n_scales=section.scales)))


def _mimo_unet_reference(section):
  from torch_refs import mimo_unet  # pylint: disable=import-outside-toplevel  # torch.
  return _shapes(_on_meta(lambda: mimo_unet.MIMOUNet(
      num_res=section.num_res, base_channel=section.width, dropout=section.dropout > 0)))


def _nafnet_reference(section):
  from torch_refs import nafnet  # pylint: disable=import-outside-toplevel  # torch.
  # NAFNetLocal (TLC) holds the same tensors: its pools have none.
  return _shapes(_on_meta(lambda: nafnet.NAFNet(
      width=section.width, middle_blk_num=section.middle_blocks,
      enc_blk_nums=list(section.enc_blocks), dec_blk_nums=list(section.dec_blocks))))


_XY_BAD = (('decoders', 3), ('share', 'both'))
_UNET_TINY = dict(base=4, multipliers=(1, 2), num_res=1)

CASES = {case.name: case for case in (
    FamilyCase(
        'xydeblur', tiny=dict(width=4, num_res=1), size_multiple=4,
        bad_fields=(('width', 0), ('num_res', -1), *_XY_BAD, ('upsample_impl', 'fast')),
        official_counts={'xydeblur_gopro': 4_918_627}, key_map=True,
        torch_reference=_xydeblur_reference),
    FamilyCase(
        # No packaged config of its own: DvSR's predictor (dvsr_gopro counts it).
        'unet', tiny=_UNET_TINY, size_multiple=2,
        bad_fields=(('base', 0), ('multipliers', ()), ('num_res', 0), *_XY_BAD,
                    ('upsample_impl', 'fast'))),
    FamilyCase(
        # DvSR's authors publish no code: the counts are the README's.
        'dvsr', tiny=dict(denoiser=_UNET_TINY), size_multiple=2,
        bad_fields=(('predictor.name', 'dvsr'), ('predictor.base', 0), ('denoiser.base', 0),
                    ('denoiser.film_scale', 1), ('noise_embedding_scale', 0.0),
                    ('diffusion.num_steps', 0), ('diffusion.residual_scale', 0.0)),
        official_counts={'dvsr_gopro': 22_030_502, 'xydiff_gopro': 22_030_502},
        network='predictor'),
    FamilyCase(
        # Table 2 of XYDeblur: 11.72M (XY the same), Channel 28.94M, Layer 17.25M.
        'deepdeblur', tiny=dict(width=4, num_res=2), size_multiple=4,
        bad_fields=(('kernel_size', 4), ('num_res', 1), ('width', 0), ('scales', 0),
                    *_XY_BAD),
        official_counts={'deepdeblur_gopro': 11_721_321, 'deepdeblur_xy': 11_721_321,
                         'deepdeblur_channel': 29_147_100, 'deepdeblur_layer': 17_254_377},
        # 3 scales x (the last 9 ResBlocks and the output conv).
        decoder_params=3 * (9 * 2 * (64 * 64 * 25 + 64) + 64 * 3 * 25 + 3), key_map=True,
        torch_reference=_deepdeblur_reference, single_pass=False),
    FamilyCase(
        # DMPHN(1-2-4) and (1-2-4-8); Table 2's XY, Channel (18.63M) and Layer (10.33M) rows.
        'dmphn', tiny=dict(width=4, num_res=1), size_multiple=8,
        bad_fields=(('levels', 5), ('width', 0), ('num_res', 0), *_XY_BAD,
                    ('upsample_impl', 'fast')),
        official_counts={'dmphn_1_2_4_gopro': 5_424_393, 'dmphn_1_2_4_8_gopro': 7_232_524,
                         'dmphn_1_2_4_8_xy': 7_232_524, 'dmphn_1_2_4_8_channel': 19_082_764,
                         'dmphn_1_2_4_8_layer': 10_332_684},
        decoder_params=3 * 939_843,  # Each level's decoder_lv<k> (models.py, width 32).
        key_map=True, torch_reference=_dmphn_reference, single_pass=False),
    FamilyCase(
        'mimo_unet', tiny=dict(width=4, num_res=1), size_multiple=4,
        bad_fields=(('width', 1), ('num_res', 0), ('dropout', 1.0), *_XY_BAD,
                    ('upsample_impl', 'fast')),
        official_counts={'mimo_unet_gopro': 6_807_171, 'mimo_unet_plus_gopro': 16_107_651,
                         'mimo_unet_xy': 6_807_171, 'mimo_unet_plus_xy': 16_107_651},
        decoder_params=3_280_489,  # Decoder[0..2], ConvsOut, feat_extract[3..5], Convs.
        key_map=True, torch_reference=_mimo_unet_reference),
    FamilyCase(
        'nafnet', tiny=dict(width=4, enc_blocks=(1, 1), middle_blocks=1, dec_blocks=(1, 1)),
        size_multiple=4,
        bad_fields=(('width', 0), ('enc_blocks', ()), ('dec_blocks', (1, 1, 1)),
                    ('middle_blocks', -1), ('tlc_train_size', -1), *_XY_BAD,
                    ('layer_impl', 'fast')),
        official_counts={'nafnet32_gopro': 17_111_907, 'nafnet64_gopro': 67_888_835},
        decoder_params=1_322_307, key_map=True, torch_reference=_nafnet_reference),
)}
