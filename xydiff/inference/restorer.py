"""The `Restorer`: a model's weights and config, ready to restore images.

  import xydiff
  restorer = xydiff.Restorer.from_pretrained('xydeblur_gopro')   # or .from_workdir('runs/x')
  out = restorer.restore('photo.jpg')    # a path, an HxW(x3) image or an NxHxWx3 batch
  out['image']                           # float32, the input's layout; + 'samples', 'std'

Every restore runs the model family's one `restore` function
(models/contract.py) through `restore_fn`, compiled once per setting; the
evaluator and export call the same. Weights are restored replicated over the
device mesh, as training holds them, so inference runs the same way on one
host or many.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging
from flax import nnx

from xydiff import config as config_lib
from xydiff import images, models
from xydiff.errors import ConfigError, ImageValueError, NonFiniteOutputError
from xydiff.inference import ensemble as ensemble_lib, tiles
from xydiff.runs import checkpoint


def restore_fn(config, graphdef, settings):
  """jitted fn(params, blur [B, H, W, 3], key) -> {'image', ...}: the family's restore.

  The one place a model's restore (for DvSR: its sampler) is assembled.
  """
  family = models.family(config.model.name)

  @jax.jit
  def run(params, blur, key):
    return family.restore(nnx.merge(graphdef, params), blur, key, settings)
  return run


def validate(inference) -> None:
  """Checks config.inference's shared fields (a family's own: its validate_settings)."""
  ensemble_lib.check_ensemble(inference.ensemble, 'config.inference.ensemble')
  limit = inference.get('max_megapixels', images.DEFAULT_MAX_MEGAPIXELS)
  if isinstance(limit, bool) or not (isinstance(limit, (int, float)) and limit >= 0):
    raise ConfigError(f'config.inference.max_megapixels={limit!r}: must be a number >= 0 '
                      '(0: no limit)')
  for field, note in (('tile', ' (0: never tile)'), ('tile_overlap', ''),
                      ('size_bucket', ' (0: no buckets)')):
    value = inference[field]
    if isinstance(value, bool) or not (isinstance(value, int) and value >= 0):
      raise ConfigError(f'config.inference.{field}={value!r}: must be an integer >= 0{note}')


class Restorer:
  """A model ready to restore images: weights, config and its compiled functions.

  Build one with `from_workdir` (a trained, imported or fetched run) or
  `from_pretrained` (a model of the zoo by name, fetched and imported once,
  or a `.safetensors` file from `xydiff export`). `restore` returns
  {'image'}; diffusion models add 'samples' and 'std'. Settings come from
  the run's `config.inference`, and each call may change them (see
  `restore`). Large images go in tiles, `ensemble=8` averages the x8
  self-ensemble around all of it.
  """

  # JAX keeps an executable and the traces of every inner function for each input
  # shape, for good (about 7 MB a shape even for a tiny model): a folder of photos of
  # many sizes would otherwise keep them all. Counted over every setting's function.
  MAX_COMPILED_SHAPES = 8

  def __init__(self, config, graphdef, params, step: int, *, source: str = ''):
    config_lib.check(config)
    validate(config.inference)
    self.config = config
    self.step = step
    self.params = params
    self.source = source
    self.family = models.family(config.model.name)
    self.align = models.size_multiple(config.model)
    self.graphdef = graphdef
    self._tiled_graphdef = self._tile_safe_graphdef()
    self._compiled = {}  # (settings, tiled) -> the jitted restore.
    self._shapes = set()  # (settings, tiled, input shape) compiled since the last clear.
    # Stored configs of runs older than the field have none: the default, as a new run has.
    self.pixel_limit = images.PixelLimit(
        config.inference.get('max_megapixels', images.DEFAULT_MAX_MEGAPIXELS),
        'config.inference.max_megapixels')

  def _tile_safe_graphdef(self):
    """The graph tiles run: the model's own, or its family's tile-safe form of the weights."""
    section = self.config.model
    if self.family.tile_safe(section):
      return self.graphdef
    tiled = self.family.for_tiles(section)
    if tiled is None:
      logging.warning('%s computes image-wide statistics: images larger than the tile size '
                      'are restored in tiles that differ from the whole image; set '
                      'config.inference.tile=0 to restore them whole', section.name)
      return self.graphdef
    return nnx.split(nnx.eval_shape(lambda: models.build(tiled)), nnx.Param)[0]

  def __repr__(self) -> str:
    return (f'Restorer({self.config.model.name}, step {self.step}'
            + (f', from {self.source}' if self.source else '')
            + f', {self.family.describe(self.settings())})')

  # ------------------------------------------------------------ building one

  @classmethod
  def from_workdir(cls, workdir: str, *, step: int | None = None, config=None,
                   config_from_user: bool | None = None) -> 'Restorer':
    """The run in `workdir` at `step` (latest when None), with its stored config or `config`
    (which may differ from it in inference fields only). `config_from_user` (default:
    whether `config` is given) lets a checkpoint that stores no config be read with it."""
    given = config is not None if config_from_user is None else config_from_user
    config = config if config is not None else config_lib.load(workdir)
    config_lib.check(config)  # A bad field is named before any checkpoint is read.
    graphdef, params, step = checkpoint.load_params(config, workdir, step,
                                                    config_from_user=given)
    return cls(config, graphdef, params, step, source=workdir)

  @classmethod
  def from_pretrained(cls, name: str, *, workdir: str | None = None) -> 'Restorer':
    """A model of the zoo by name (xydiff.configs.NAMES; downloaded and imported once
    into `workdir`, by default a folder of the user's cache), or a `.safetensors`
    file that `xydiff export` wrote (weights and config in one file)."""
    from xydiff.interop import export, pretrained  # pylint: disable=import-outside-toplevel  # safetensors and the download code are optional.
    if name.endswith('.safetensors'):
      config, graphdef, params, step = export.read_safetensors(name)
      return cls(config, graphdef, params, step, source=name)
    return cls.from_workdir(pretrained.pretrained_workdir(name, workdir))

  # ------------------------------------------------------------ settings and functions

  def settings(self, *, preset=None, steps=None, samples=None, sampler=None):
    """The family's restore settings for config.inference with these overrides."""
    return self.family.settings(self.config, preset=preset, steps=steps, samples=samples,
                                sampler=sampler)

  def function(self, settings, *, tiled: bool = False):
    """The restore of `settings` (tiled: the tile-safe graph), clearing every compiled
    shape when it meets one beyond MAX_COMPILED_SHAPES.

    JAX cannot drop one shape, and `fn.clear_cache()` keeps the traces of the
    functions it calls (a third of the memory, measured): jax.clear_caches.
    """
    key = (settings, tiled)
    if key not in self._compiled:
      self._compiled[key] = restore_fn(
          self.config, self._tiled_graphdef if tiled else self.graphdef, settings)
    fn = self._compiled[key]

    def call(params, blur, rng):
      shape = key + (tuple(blur.shape),)
      if shape not in self._shapes and len(self._shapes) >= self.MAX_COMPILED_SHAPES:
        self.clear_compiled()
      self._shapes.add(shape)
      return fn(params, blur, rng)
    return call

  def clear_compiled(self) -> None:
    """Frees every compiled shape (jax.clear_caches: the process's other jitted functions'
    too); a later restore compiles again."""
    jax.clear_caches()
    self._shapes.clear()

  def samples(self, **overrides) -> bool:
    """Whether restoring with these settings draws samples (and so returns 'std')."""
    probe = jax.ShapeDtypeStruct((1, self.align, self.align, 3), np.float32)
    fn = self.function(self.settings(**overrides))
    return 'samples' in jax.eval_shape(fn, self.params, probe, jax.random.key(0))

  def tiling(self, tile: int | None = None) -> tuple[int, int]:
    """(tile, overlap) aligned to the network's size multiple; tile 0: never tile."""
    inference = self.config.inference
    tile = inference.tile if tile is None else tile
    if isinstance(tile, bool) or not (isinstance(tile, int) and tile >= 0):
      raise ConfigError(f'tile={tile!r}: must be an integer >= 0 (0: never tile)')
    return tiles.aligned_tiling(tile, inference.tile_overlap, self.align)

  def tiles(self, height: int, width: int, tile: int | None = None) -> bool:
    """Whether an image of this size is restored in tiles."""
    size, _ = self.tiling(tile)
    aligned = lambda n: -(-n // self.align) * self.align
    return size > 0 and (aligned(height) > size or aligned(width) > size)

  # ------------------------------------------------------------ restoring

  def restore(self, image, *, preset: str | None = None, steps: int | None = None,
              samples: int | None = None, sampler: str | None = None,
              seed: int | None = None, key: jax.Array | None = None, tile: int | None = None,
              ensemble: int | None = None, on_tile=None) -> dict[str, np.ndarray]:
    """Restores one image, a batch, or an image file.

    Args:
      image: a path (PNG, JPEG; 8 or 16 bit; turned upright by its EXIF
        orientation), an HxW grey or HxWx3 RGB array, or an NxHxWx3 batch;
        uint8, uint16 or float in [0, 1].
      preset: diffusion models: a name of config.inference.presets ('sa':
        few steps, samples averaged, the highest PSNR; 'perceptual': the most
        realistic, 20 DPM-Solver++ SDE steps; 'perceptual_ancestral': the
        paper's 500-step chain), or 'predictor' for g(y) alone.
      steps: diffusion models: sampling steps instead of the preset's.
      samples: diffusion models: samples averaged instead of the preset's.
      sampler: diffusion models: the sampler instead of the preset's, one of
        diffusion.samplers.SAMPLERS ('ancestral', 'ddim', 'dpmpp_2m',
        'dpmpp_2m_sde').
      seed: the noise seed (default config.seed); image n of a batch draws
        from fold_in(key(seed), n).
      key: a JAX key to draw from instead of `seed`'s.
      tile: restore images larger than this in tiles (default
        config.inference.tile; 0 never tiles).
      ensemble: 8 averages the x8 self-ensemble (default config.inference.ensemble).
      on_tile: progress of a tiled image: called as on_tile(done, total) after
        each tile (tiles.restore_image).

    Returns:
      {'image': float32, the input's layout (HxW for grey, NxHxWx3 for a
      batch)}; diffusion models add 'samples' ([S, ...] per image) and 'std'.
      Values are the network's, not clipped: within [0, 1] almost
      everywhere, but a network that sharpens overshoots at strong edges
      (real photos: about -0.4 to 1.5). They are what the evaluator scores
      and `xydiff export`'s functions compute; images.write_image clips when
      saving, and np.clip(out['image'], 0, 1) does for display.

    Raises:
      ImageValueError (one line, before any work) for an array that is not
      an image xydiff can restore: another dtype or shape, NaN or infinite
      values, floats outside [0, 1], an empty image or one below the
      network's minimum size, and (its subclass ImageTooLargeError) more
      pixels than config.inference.max_megapixels. ImageReadError for a file
      that cannot be read (ImageTooLargeError, from its header before
      decoding, for one over the limit). NonFiniteOutputError for
      an output holding NaN or infinity. ConfigError for a setting the model
      does not have.
    """
    if isinstance(image, (str, os.PathLike)):
      # The limit read from the file's header: an oversized file is refused undecoded.
      image = images.read_image(os.fspath(image), limit=self.pixel_limit)
    array = np.asarray(image)
    if array.ndim == 4:
      if array.shape[-1] not in (1, 3):
        raise ImageValueError(f'restore takes an HxW or HxWx3 image or an NxHxWx3 batch, got '
                              f'shape {array.shape}')
      if not len(array):  # Nothing to return an 'image' of.
        raise ImageValueError(f'restore got an empty batch of shape {array.shape}: give at '
                              'least one image')
      base = self._key(seed, key)  # Image n draws from fold_in(key, n), whatever the batch.
      outs = [self.restore(one, preset=preset, steps=steps, samples=samples, sampler=sampler,
                           key=jax.random.fold_in(base, n), tile=tile, ensemble=ensemble,
                           on_tile=on_tile)
              for n, one in enumerate(array)]
      return {name: np.stack([o[name] for o in outs]) for name in outs[0]}
    grey = array.ndim == 2 or (array.ndim == 3 and array.shape[-1] == 1)
    if grey:
      array = np.repeat(array.reshape(array.shape[:2])[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] != 3:
      raise ImageValueError(f'restore takes an HxW or HxWx3 image or an NxHxWx3 batch, got '
                            f'shape {tuple(np.shape(image))}')
    height, width = array.shape[:2]
    self.pixel_limit.check('the image', width, height)
    # restore_image reflect-pads to a multiple of `align`, which needs more than half of it.
    minimum = self.align // 2 + 1
    if height < minimum or width < minimum:
      raise ImageValueError(f'image of {width}x{height} pixels is too small: '
                            f'{self.config.model.name} needs at least {minimum}x{minimum}')
    rgb = images.to_unit_float(array)  # uint8, uint16 or finite float in [0, 1]; else one line.
    settings = self.settings(preset=preset, steps=steps, samples=samples, sampler=sampler)
    size, overlap = self.tiling(tile)
    tiled = self.tiles(*rgb.shape[:2], tile)
    ensemble = self.config.inference.ensemble if ensemble is None else ensemble
    out = tiles.restore_image(self.function(settings, tiled=tiled), self.params, rgb,
                              self._key(seed, key), align=self.align, tile=size,
                              overlap=overlap, bucket=self.config.inference.size_bucket,
                              ensemble=ensemble, on_tile=on_tile)
    for name, value in out.items():
      finite = np.isfinite(value)
      if not finite.all():
        bad = value.size - int(finite.sum())
        raise NonFiniteOutputError(
            f"the restored {name} holds {bad} NaN or infinite value{'s' * (bad > 1)} (of "
            f'{value.size}): the {self.config.model.name} weights of step {self.step} give '
            f'non-finite outputs (damaged or diverged weights, or model.dtype='
            f'{self.config.model.dtype} too narrow)')
    if grey:  # Saved grey, like the input: the mean of the three restored channels.
      out = {name: value.mean(axis=-1) for name, value in out.items()}
    return out

  def _key(self, seed, key):
    if key is not None:
      return key
    return jax.random.key(self.config.seed if seed is None else seed)
