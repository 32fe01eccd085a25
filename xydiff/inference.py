"""Inference: a run's weights, restore functions, samplers, tiles, and the `Restorer` API.

Everything that turns weights into restored images lives here, for the
evaluator, the sweep, `--mode=deblur` and users' own code alike:

  import xydiff
  restorer = xydiff.Restorer.from_workdir('runs/xydeblur')   # or .from_pretrained('xydeblur_gopro')
  out = restorer.restore(photo)          # HxWx3 uint8/uint16/float in [0, 1]
  out['image']                           # float32 HxWx3 in [0, 1]; + 'samples', 'std' for diffusion

Weights are restored replicated over the device mesh, as training holds them,
so inference runs the same way on one host or many. Evaluation always uses
the EMA weights when training keeps them (state.eval_params).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from xydiff import checkpoint, config_check, diffusion, images, models, run_config
from xydiff import state as state_lib
from xydiff.errors import ConfigError, ImageValueError, NonFiniteOutputError


# ------------------------------------------------------------------ weights

def load_for_inference(config, workdir: str, step: int | None = None, *,
                       config_from_user: bool = False):
  """(graphdef, eval params, step) of a workdir's checkpoint (latest when step is None).

  `config_from_user`: the user gave `config` (not the workdir's stored one),
  so a checkpoint that stores no config of its own may be read with it.
  """
  graphdef, target = state_lib.abstract_state(config, state_lib.replicated(state_lib.make_mesh()))
  with checkpoint.Checkpointer(workdir, config, read_only=True,
                               config_from_user=config_from_user) as ckpt:
    state = ckpt.restore(target, step)
  return graphdef, state_lib.eval_params(state), int(state['step'])


def config_for_workdir(workdir: str, given=None):
  """The config to run a stored run with: `given`, else the one stored in `workdir`.

  `given` may differ from the stored config in inference fields only: the
  checkpoint compares the fields that change outputs when it is restored
  (checkpoint.Checkpointer.restore) and refuses the others by name.
  """
  return given if given is not None else run_config.load(workdir)


# ------------------------------------------------------------------ restore functions

def preset_schedule(preset) -> diffusion.Schedule:
  return diffusion.linear_schedule(preset.num_steps, preset.beta_start, preset.beta_end)


def make_restore_fns(config, graphdef):
  """{output name: jitted fn(params, blur [1,H,W,3], key) -> dict with 'image' and extras}."""
  if not models.is_diffusion(config.model):
    @jax.jit
    def restore(params, blur, key):
      del key
      return {'image': nnx.merge(graphdef, params)(blur)['restored']}
    return {'restored': restore}

  @jax.jit
  def predictor(params, blur, key):
    del key
    return {'image': nnx.merge(graphdef, params).predict(blur)['restored']}

  fns = {'predictor': predictor}
  for name in config.eval.presets:
    preset = config.diffusion.presets[name]
    fns[name] = make_sampler(graphdef, preset_schedule(preset), preset.num_samples,
                             config.diffusion.residual_scale)
  return fns


def make_sampler(graphdef, schedule, num_samples, residual_scale):
  """jitted fn(params, blur, key) -> {image: mean of the N samples, std, samples [N, ...]}."""
  @jax.jit
  def run(params, blur, key):
    model = nnx.merge(graphdef, params)
    out = diffusion.sample(lambda y: model.predict(y)['restored'], model.denoise, blur,
                           diffusion.sample_keys(key, num_samples), schedule=schedule,
                           residual_scale=residual_scale)
    return {'image': out['mean'], 'std': out['std'], 'samples': out['samples']}
  return run


# ------------------------------------------------------------------ tiles and size buckets

def tile_starts(length: int, tile: int, overlap: int, align: int) -> list[int]:
  """Offsets of tiles of `tile` pixels covering [0, length); neighbours share >= `overlap`.

  `length`, `tile` and `overlap` are multiples of `align`, the network's
  downsampling factor. Strided networks are translation-equivariant only under
  shifts by that factor, so a tile starting on a multiple of it computes, away
  from its own edges, exactly what the whole image would. The tiles are spread
  evenly: no overlap is much wider than the others.
  """
  if tile >= length:
    return [0]
  stride = tile - overlap
  count = 1 + math.ceil((length - tile) / stride)
  return [(i * (length - tile) // (count - 1)) // align * align for i in range(count)]


def blend_window(size: int, before: int, after: int) -> np.ndarray:
  """1-D blending weights of one tile that shares `before`/`after` pixels with its neighbours.

  Raised-cosine ramps over each shared stretch: the neighbour's ramp is the
  complement (sin^2 + cos^2 = 1), so two tiles blend into a partition of
  unity, and each tile's weight fades to almost nothing at its own edge, where
  its output is least reliable. The half-pixel offset keeps every weight
  positive, so every pixel has a defined blend.
  """
  weights = np.ones(size, np.float32)
  for shared, side in ((before, 1), (after, -1)):
    shared = min(shared, size)
    if shared:
      ramp = np.sin(0.5 * np.pi * (np.arange(shared) + 0.5) / shared) ** 2
      if side > 0:
        weights[:shared] = np.minimum(weights[:shared], ramp)
      else:
        weights[size - shared:] = np.minimum(weights[size - shared:], ramp[::-1])
  return weights


def _windows(starts: list[int], size: int) -> list[np.ndarray]:
  shared = [prev + size - start for prev, start in zip(starts, starts[1:])]
  return [blend_window(size, shared[i - 1] if i > 0 else 0, shared[i] if i < len(shared) else 0)
          for i in range(len(starts))]


def bucketed(length: int, align: int, bucket: int) -> int:
  """`length` padded up to the next multiple of `bucket` (itself a multiple of `align`).

  Opt-in (config.deblur.size_bucket > 0): each distinct input shape compiles
  the network once, and rounding sizes up to buckets lets a folder of photos
  of nearby sizes share a few compiled shapes, but the extra border changes
  outputs near the bottom and right edges. Bucket 0 keeps the network's own
  multiple `align`: a size that is one already is not padded at all.
  """
  step = math.lcm(align, bucket) if bucket > 0 else align
  return -(-length // step) * step


_OUTPUTS = ('image', 'std', 'samples')


def restore_image(fn, params, image: np.ndarray, key: jax.Array, *, align: int,
                  tile: int = 0, overlap: int = 0, bucket: int = 0,
                  ensemble: int = 1) -> dict[str, np.ndarray]:
  """Runs `fn` (from make_restore_fns / make_sampler) on one HxWx3 float image.

  The image is reflect-padded to a multiple of `align` exactly as the networks
  pad internally, so a single pass equals calling the model on the image; with
  `bucket` > 0 further, to a multiple of `bucket`, so that nearby sizes reuse
  one compiled shape (the extra reflected border changes outputs only within
  the network's receptive field of the bottom and right edges). When the
  padded image is larger than `tile` (> 0) on either side it is cut into
  aligned tiles that share at least `overlap` pixels, each restored on its own
  and blended with `blend_window`. Returns float32 arrays cropped back to HxW:
  'image', and 'std' and 'samples' ([N, H, W, 3]) when `fn` samples a
  diffusion model. Raises ValueError ('too small') for an image below the
  network's minimum size. `ensemble` 8 wraps all of this in the x8
  self-ensemble (`ensembled`), with the same `key` for every transform.
  """
  if ensemble != 1:
    return ensembled(lambda view: restore_image(fn, params, view, key, align=align, tile=tile,
                                                overlap=overlap, bucket=bucket), image, ensemble)
  image = np.asarray(image, np.float32)
  h, w = image.shape[:2]
  ph, pw = (-h) % align, (-w) % align
  if (ph or pw) and (ph >= h or pw >= w):
    raise ValueError(f'image of {w}x{h} pixels is too small: the network needs at least '
                     f'{align // 2 + 1}x{align // 2 + 1}')
  # numpy's reflect, which jnp.pad (layers.pad_to_multiple) copies: an eager jax op would
  # compile, and keep for good, an executable for every image shape.
  padded = np.pad(image, ((0, ph), (0, pw), (0, 0)), mode='reflect')[None]
  height, width = padded.shape[1:3]
  if bucket > 0:
    extra_h, extra_w = bucketed(height, align, bucket) - height, bucketed(width, align, bucket) - width
    if tile > 0:  # Tiles already have one shape: bucket only what stays whole.
      extra_h, extra_w = (extra_h if height < tile else 0), (extra_w if width < tile else 0)
    padded = np.pad(padded, ((0, 0), (0, extra_h), (0, extra_w), (0, 0)), mode='symmetric')
    height, width = padded.shape[1:3]
  tile_h = min(tile, height) if tile > 0 else height
  tile_w = min(tile, width) if tile > 0 else width
  if (tile_h, tile_w) == (height, width):
    out = fn(params, jnp.asarray(padded), key)
    # Cropped on the host: a jax slice would compile per shape too.
    result = {name: np.ascontiguousarray(np.asarray(out[name])[0, :h, :w])
              for name in ('image', 'std') if name in out}
    if 'samples' in out:
      result['samples'] = np.ascontiguousarray(np.asarray(out['samples'])[:, 0, :h, :w])
    return result

  ys, xs = tile_starts(height, tile_h, overlap, align), tile_starts(width, tile_w, overlap, align)
  wys, wxs = _windows(ys, tile_h), _windows(xs, tile_w)
  total = np.zeros((height, width, 1), np.float32)
  sums = {}
  for i, (y0, wy) in enumerate(zip(ys, wys)):
    for j, (x0, wx) in enumerate(zip(xs, wxs)):
      crop = padded[:, y0:y0 + tile_h, x0:x0 + tile_w]
      out = fn(params, jnp.asarray(crop), jax.random.fold_in(key, i * len(xs) + j))
      weight = (wy[:, None] * wx[None, :])[..., None]
      total[y0:y0 + tile_h, x0:x0 + tile_w] += weight
      for name in _OUTPUTS:
        if name in out:
          value = np.asarray(out[name])[:, 0] if name == 'samples' else np.asarray(out[name])[0]
          acc = sums.setdefault(name, np.zeros(value.shape[:-3] + (height, width, 3), np.float32))
          acc[..., y0:y0 + tile_h, x0:x0 + tile_w, :] += weight * value
  return {name: (acc / total)[..., :h, :w, :] for name, acc in sums.items()}


# ------------------------------------------------------------------ test-time ensemble

def dihedral(image, index: int):
  """The `index`-th (0..7) of the 8 flips x rot90 of an image whose H, W are axes -3, -2.

  0 is the identity; 1-3 rotate by 90, 180, 270 degrees; 4-7 mirror W first.
  """
  view = np.flip(image, axis=-2) if index >= 4 else image
  return np.rot90(view, index % 4, axes=(-3, -2))


def undo_dihedral(image, index: int):
  """The inverse of `dihedral(., index)`: undo the rotation, then the mirror."""
  view = np.rot90(image, -(index % 4), axes=(-3, -2))
  return np.flip(view, axis=-2) if index >= 4 else view


def ensembled(restore, image, ensemble: int) -> dict:
  """The x8 geometric self-ensemble (KAIR, MAXIM) of `restore` on `image`; 1: `restore` alone.

  `restore` maps an image (H, W on axes -3, -2) to a dict of outputs with H, W
  on the same axes ('image', and for diffusion 'std' and 'samples'). Each of
  the 8 flips x rot90 of the image is restored and turned back, and the 8
  outputs are averaged: 8x the compute. A sampler draws with the key that
  `restore` closes over, the same for every transform; sample i is the mean
  of the 8 turned-back samples i, and 'std' stays the std over the returned
  samples.
  """
  config_check.check_ensemble(ensemble, 'ensemble')
  if ensemble == 1:
    return restore(image)
  image = np.asarray(image)
  total = None
  for index in range(ensemble):
    out = {name: undo_dihedral(np.asarray(value), index)
           for name, value in restore(np.ascontiguousarray(dihedral(image, index))).items()}
    total = out if total is None else {name: total[name] + out[name] for name in total}
  mean = {name: np.ascontiguousarray(value / ensemble) for name, value in total.items()}
  if 'samples' in mean and 'std' in mean:
    mean['std'] = mean['samples'].std(axis=0)
  return mean


# ------------------------------------------------------------------ the API

def check_deblur_settings(config) -> tuple[int, int, int, int | None]:
  """(tile, overlap, bucket, num_samples) from config.deblur, checked; num_samples None if
  the model is deterministic."""
  db = config.deblur
  # Stored configs of runs older than the ensemble have no field: 1, as they ran.
  config_check.check_ensemble(db.get('ensemble', 1), 'config.deblur.ensemble')
  for field, minimum in (('tile', 0), ('tile_overlap', 0), ('size_bucket', 0)):
    value = db[field]
    if not (isinstance(value, int) and value >= minimum):
      raise ConfigError(f'config.deblur.{field}={value!r}: must be an integer >= {minimum}'
                        + (' (0: never tile)' if field == 'tile' else '')
                        + (' (0: no buckets)' if field == 'size_bucket' else ''))
  if not models.is_diffusion(config.model):
    return db.tile, db.tile_overlap, db.size_bucket, None
  if db.preset not in config.diffusion.presets:
    raise ConfigError(f'config.deblur.preset={db.preset!r}: must be one of '
                      f'{tuple(config.diffusion.presets)}')
  if not (isinstance(db.num_samples, int) and db.num_samples >= 0):
    raise ConfigError(f'config.deblur.num_samples={db.num_samples!r}: must be an integer >= 0 '
                      "(0: the preset's)")
  num_samples = db.num_samples or config.diffusion.presets[db.preset].num_samples
  return db.tile, db.tile_overlap, db.size_bucket, num_samples


def aligned_tiling(tile: int, overlap: int, align: int) -> tuple[int, int]:
  """config.deblur.tile rounded down and tile_overlap up to multiples of `align`."""
  if tile == 0:
    return 0, 0
  tile_a, overlap_a = tile // align * align, -(-overlap // align) * align
  if tile_a - overlap_a < align:
    raise ConfigError(
        f'config.deblur.tile={tile} with tile_overlap={overlap}: this model works on multiples '
        f'of {align} pixels, so the tile ({tile_a}) must exceed the overlap ({overlap_a}) by at '
        f'least {align}')
  return tile_a, overlap_a


class Restorer:
  """A model ready to restore images: weights, config and the compiled function.

  Build one with `from_workdir` (a trained, imported or fetched run) or
  `from_pretrained` (official weights by name, downloaded once into the user's
  cache). `restore(image)` returns {'image'} for XYDeblur and {'image' (the
  mean of the samples), 'samples' [N, H, W, 3], 'std'} for diffusion models,
  sampled with `config.deblur.preset` and `config.deblur.num_samples`; large
  images go in tiles (`config.deblur.tile`); `config.deblur.ensemble` 8 averages
  the x8 self-ensemble around all of it.

  'image' and 'samples' are the network's float32 output, not clipped: within
  [0, 1] almost everywhere, but a network that sharpens overshoots at strong
  edges (real photos: about -0.4 to 1.5). They are the values the evaluator
  scores and `xydiff export`'s functions compute, to the last bit;
  images.to_uint8 / to_uint16 / write_image clip them to [0, 1] when saving,
  and np.clip(out['image'], 0, 1) does for display.

  An image larger than `config.deblur.max_megapixels` (`pixel_limit`, default
  50 MP, 0: none) is refused by its shape before any work. Each image shape
  compiles the network once; when a Restorer meets one shape more than
  `max_compiled_shapes`, JAX's caches are cleared (jax.clear_caches: every
  compiled shape, this process's other jitted functions' too), and shapes
  compile again as they come (with `deblur.compilation_cache()` on, from disk).
  """

  # JAX keeps an executable and the traces of every inner function for each input shape,
  # for good (about 7 MB a shape even for a tiny model): a folder of photos of many sizes
  # would otherwise keep them all.
  MAX_COMPILED_SHAPES = 8

  def __init__(self, config, graphdef, params, step: int):
    config_check.validate_model(config)
    self.config = config
    self.step = step
    self.params = params
    tile, overlap, self.bucket, self.num_samples = check_deblur_settings(config)
    self.ensemble = config.deblur.get('ensemble', 1)
    # Stored configs of runs older than the field have none: the default, as a new run has.
    self.pixel_limit = images.PixelLimit(
        config.deblur.get('max_megapixels', images.DEFAULT_MAX_MEGAPIXELS),
        'config.deblur.max_megapixels')
    self.max_compiled_shapes = self.MAX_COMPILED_SHAPES
    self._compiled_shapes = {}  # id(jitted fn) -> the input shapes it has compiled.
    self.align = models.size_multiple(config.model)
    self.tile, self.overlap = aligned_tiling(tile, overlap, self.align)
    self._fn = self._restore_fn(graphdef)
    self.description = 'restored' if self.num_samples is None else (
        f"preset '{config.deblur.preset}', mean of {self.num_samples} samples")
    self._tiled_fn = self._fn
    spec = models.get(config.model)
    if self.tile and not spec.tile_safe(config.model):
      # Image-wide statistics (NAFNet's channel attention, DMPHN's patch seams)
      # would see each tile alone: tiled images run the family's tile-safe form
      # of the same weights (NAFNet: TLC's local statistics) where it has one.
      tiled_model = spec.for_tiles(config.model) if spec.for_tiles is not None else None
      if tiled_model is None:
        logging.warning('%s computes image-wide statistics: images larger than '
                        'config.deblur.tile=%d are restored in tiles that differ from the whole '
                        'image; set config.deblur.tile=0 to restore them whole',
                        config.model.name, self.tile)
      else:
        tiled_graphdef, _ = nnx.split(
            nnx.eval_shape(lambda: models.build_model(tiled_model)), nnx.Param)
        self._tiled_fn = self._restore_fn(tiled_graphdef)
    if self.ensemble > 1:
      self.description += f', x{self.ensemble} self-ensemble'

  def _restore_fn(self, graphdef):
    if self.num_samples is None:
      return make_restore_fns(self.config, graphdef)['restored']
    preset = self.config.diffusion.presets[self.config.deblur.preset]
    return make_sampler(graphdef, preset_schedule(preset), self.num_samples,
                        self.config.diffusion.residual_scale)

  def tiles(self, height: int, width: int) -> bool:
    """Whether an image of this size is restored in tiles."""
    aligned = lambda n: -(-n // self.align) * self.align
    return self.tile > 0 and (aligned(height) > self.tile or aligned(width) > self.tile)

  @classmethod
  def from_workdir(cls, workdir: str, *, step: int | None = None, config=None,
                   config_from_user: bool | None = None) -> 'Restorer':
    """The run in `workdir` at `step` (latest when None), with its stored config or `config`
    (which may differ from it in inference fields only). `config_from_user` (default:
    whether `config` is given) lets a checkpoint that stores no config be read with it."""
    given = config is not None if config_from_user is None else config_from_user
    config = config_for_workdir(workdir, config)
    config_check.validate_model(config)  # A bad field is named before any checkpoint is read.
    graphdef, params, step = load_for_inference(config, workdir, step, config_from_user=given)
    return cls(config, graphdef, params, step)

  @classmethod
  def from_pretrained(cls, name: str, *, workdir: str | None = None) -> 'Restorer':
    """Official weights by name (xydiff.pretrained.WEIGHTS), fetched and imported once
    into `workdir` (default: a folder of the user's cache); or a `.safetensors` file
    that `xydiff export` wrote (weights and config in one file)."""
    if name.endswith('.safetensors'):
      from xydiff import export  # pylint: disable=import-outside-toplevel
      return cls(*export.read_safetensors(name))
    from xydiff import pretrained  # pylint: disable=import-outside-toplevel
    return cls.from_workdir(pretrained.pretrained_workdir(name, workdir))

  def restore(self, image, *, key: jax.Array | None = None) -> dict[str, np.ndarray]:
    """Restores one HxWx3 image (uint8, uint16, or float in [0, 1]); see the class docstring.

    Diffusion samples draw their noise from `key` (default: jax.random.key(config.seed)).
    Raises ImageValueError, in one line, before any work for: another shape or
    dtype, a NaN or infinite value, floats outside [0, 1] (0-255 levels, say),
    an empty image or one below the network's minimum size, and (its subclass
    ImageTooLargeError) more pixels than `pixel_limit`. An output holding NaN or
    infinity raises NonFiniteOutputError rather than being returned.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
      raise ImageValueError(f'restore takes one HxWx3 RGB image, got shape {image.shape}')
    height, width = image.shape[:2]
    self.pixel_limit.check('the image', width, height)
    # restore_image reflect-pads to a multiple of `align`, which needs more than half of it.
    minimum = self.align // 2 + 1
    if height < minimum or width < minimum:
      raise ImageValueError(f'image of {width}x{height} pixels is too small: '
                            f'{self.config.model.name} needs at least {minimum}x{minimum}')
    image = images.to_unit_float(image)  # uint8, uint16 or finite float in [0, 1]; else one line.
    key = jax.random.key(self.config.seed) if key is None else key
    fn = self._tiled_fn if self.tiles(height, width) else self._fn
    out = restore_image(self._bounded(fn), self.params, image, key, align=self.align,
                        tile=self.tile, overlap=self.overlap, bucket=self.bucket,
                        ensemble=self.ensemble)
    for name, value in out.items():
      finite = np.isfinite(value)
      if not finite.all():
        bad = value.size - int(finite.sum())
        raise NonFiniteOutputError(
            f"the restored {name} holds {bad} NaN or infinite value{'s' * (bad > 1)} (of "
            f'{value.size}): the {self.config.model.name} weights of step {self.step} give '
            f'non-finite outputs (damaged or diverged weights, or model.dtype='
            f'{self.config.model.dtype} too narrow)')
    return out

  def _bounded(self, fn):
    """`fn`, clearing every compiled shape when it meets one beyond max_compiled_shapes.

    JAX cannot drop one shape, and `fn.clear_cache()` keeps the traces of the
    functions it calls (a third of the memory, measured): jax.clear_caches.
    """
    seen = self._compiled_shapes.setdefault(id(fn), set())

    def call(params, blur, key):
      shape = tuple(blur.shape)
      if shape not in seen and len(seen) >= self.max_compiled_shapes:
        self.clear_compiled()
      seen.add(shape)
      return fn(params, blur, key)
    return call

  def clear_compiled(self) -> None:
    """Frees every compiled shape (jax.clear_caches: the process's other jitted functions'
    too); a later restore compiles again."""
    jax.clear_caches()
    for seen in self._compiled_shapes.values():
      seen.clear()
