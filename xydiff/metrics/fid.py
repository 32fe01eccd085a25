"""FID and KID on pytorch-fid's Inception features, in JAX.

The network is pytorch-fid's "FID Inception" (`pytorch_fid.inception.
InceptionV3` with `use_fid_inception=True`): the TensorFlow FID graph
(inception-2015-12-05) ported to PyTorch, whose weights are the release asset
`pt_inception-2015-12-05-6726825d.pth` (xydiff.interop.inception reads it).
Features are its
2048-d final average pool ("pool3"). It differs from torchvision's
InceptionV3 in its weights and in three patched blocks: the 3x3 average pools
of the A, C and first E blocks leave the zero padding out of the mean, and
the last E block max-pools instead. No package ships the weights, so they
come from a file the user names (`config.eval.inception_weights`) or are
fetched from the release and checked against their full sha256
(interop/inception.py); this module is the network and the statistics.

Protocol (`FID_LABEL`, `KID_LABEL`): whole images, as pytorch-fid scores a
folder of PNGs:

* each image is clipped and rounded to uint8 levels first (`quantized=True`),
  because pytorch-fid reads the 8-bit PNGs a method saves (`ToTensor`, i.e.
  k / 255), and the table metrics here score the same saved images;
* the whole frame is resized to 299x299 with PyTorch's bilinear
  `F.interpolate(..., align_corners=False)`, without antialiasing even when
  shrinking, and without keeping the aspect ratio (a 1280x720 GoPro frame is
  squeezed), exactly as pytorch-fid's `resize_input=True` does;
* then scaled from [0, 1] to [-1, 1] (`normalize_input=True`).

FID is the Frechet distance of Gaussians fitted to the two feature sets
(means, unbiased covariances), the value of pytorch-fid's
`calculate_frechet_distance` (there via scipy's `sqrtm`, here via symmetric
eigen-decompositions; see `frechet_distance`). KID is the unbiased
MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3, averaged over
random subsets of rows (torch-fidelity's `kid_features_to_metric`, clean-fid's
`kernel_distance`); it is returned unscaled, while tables often print it
x10^3 or x10^2, so a reported KID must say its scale.

DvSR (Whang et al., CVPR 2022) reports FID and KID on the GoPro test set,
but the paper states no protocol
for them: whole frames or patches, which Inception port, the resizing, KID's
scale and subset size are unknown. Numbers from this module are comparable
with pytorch-fid run on whole saved frames, and with the paper's only if it
did the same.

Features accumulate image by image (`FeatureStats`): FID needs only the
running sum and sum of outer products (float64), but KID draws random
subsets of rows, so it needs every feature row kept (2048 float32 per image).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from xydiff.images import quantize

FID_LABEL = ('fid (pytorch-fid Inception pool3, whole image, uint8, '
             'bilinear 299x299 no antialias)')
KID_LABEL = ('kid (unbiased MMD^2, kernel (x.y/d+1)^3, 100 subsets of min(1000, N), unscaled; '
             'pytorch-fid Inception pool3, whole image, uint8, bilinear 299x299 no antialias)')

FEATURE_DIM = 2048
INPUT_SIZE = 299
_BN_EPS = 1e-3  # torchvision's BasicConv2d: BatchNorm2d(eps=0.001).
# Convolutions must not drop to bf16/tf32 on accelerators.
PRECISION = jax.lax.Precision.HIGHEST
# KID precomputes the full kernel matrices (float64) up to this many rows per
# set; beyond it every subset computes its own.
_KID_FULL_GRAM_MAX_ROWS = 4096

# --- The network's layout ---------------------------------------------------
#
# Every conv is torchvision's BasicConv2d (conv without bias, BatchNorm, ReLU),
# named as in the state dict. Each spec: (in, out, (kh, kw), stride, (ph, pw)).


def _inception_a(cin, pool):
  return {'branch1x1': (cin, 64, (1, 1), 1, (0, 0)),
          'branch5x5_1': (cin, 48, (1, 1), 1, (0, 0)),
          'branch5x5_2': (48, 64, (5, 5), 1, (2, 2)),
          'branch3x3dbl_1': (cin, 64, (1, 1), 1, (0, 0)),
          'branch3x3dbl_2': (64, 96, (3, 3), 1, (1, 1)),
          'branch3x3dbl_3': (96, 96, (3, 3), 1, (1, 1)),
          'branch_pool': (cin, pool, (1, 1), 1, (0, 0))}


def _inception_b(cin):
  return {'branch3x3': (cin, 384, (3, 3), 2, (0, 0)),
          'branch3x3dbl_1': (cin, 64, (1, 1), 1, (0, 0)),
          'branch3x3dbl_2': (64, 96, (3, 3), 1, (1, 1)),
          'branch3x3dbl_3': (96, 96, (3, 3), 2, (0, 0))}


def _inception_c(cin, c7):
  return {'branch1x1': (cin, 192, (1, 1), 1, (0, 0)),
          'branch7x7_1': (cin, c7, (1, 1), 1, (0, 0)),
          'branch7x7_2': (c7, c7, (1, 7), 1, (0, 3)),
          'branch7x7_3': (c7, 192, (7, 1), 1, (3, 0)),
          'branch7x7dbl_1': (cin, c7, (1, 1), 1, (0, 0)),
          'branch7x7dbl_2': (c7, c7, (7, 1), 1, (3, 0)),
          'branch7x7dbl_3': (c7, c7, (1, 7), 1, (0, 3)),
          'branch7x7dbl_4': (c7, c7, (7, 1), 1, (3, 0)),
          'branch7x7dbl_5': (c7, 192, (1, 7), 1, (0, 3)),
          'branch_pool': (cin, 192, (1, 1), 1, (0, 0))}


def _inception_d(cin):
  return {'branch3x3_1': (cin, 192, (1, 1), 1, (0, 0)),
          'branch3x3_2': (192, 320, (3, 3), 2, (0, 0)),
          'branch7x7x3_1': (cin, 192, (1, 1), 1, (0, 0)),
          'branch7x7x3_2': (192, 192, (1, 7), 1, (0, 3)),
          'branch7x7x3_3': (192, 192, (7, 1), 1, (3, 0)),
          'branch7x7x3_4': (192, 192, (3, 3), 2, (0, 0))}


def _inception_e(cin):
  return {'branch1x1': (cin, 320, (1, 1), 1, (0, 0)),
          'branch3x3_1': (cin, 384, (1, 1), 1, (0, 0)),
          'branch3x3_2a': (384, 384, (1, 3), 1, (0, 1)),
          'branch3x3_2b': (384, 384, (3, 1), 1, (1, 0)),
          'branch3x3dbl_1': (cin, 448, (1, 1), 1, (0, 0)),
          'branch3x3dbl_2': (448, 384, (3, 3), 1, (1, 1)),
          'branch3x3dbl_3a': (384, 384, (1, 3), 1, (0, 1)),
          'branch3x3dbl_3b': (384, 384, (3, 1), 1, (1, 0)),
          'branch_pool': (cin, 192, (1, 1), 1, (0, 0))}


_STEM = {'Conv2d_1a_3x3': (3, 32, (3, 3), 2, (0, 0)),
         'Conv2d_2a_3x3': (32, 32, (3, 3), 1, (0, 0)),
         'Conv2d_2b_3x3': (32, 64, (3, 3), 1, (1, 1)),
         'Conv2d_3b_1x1': (64, 80, (1, 1), 1, (0, 0)),
         'Conv2d_4a_3x3': (80, 192, (3, 3), 1, (0, 0))}
_MIXED = (('Mixed_5b', 'A', _inception_a(192, 32)),
          ('Mixed_5c', 'A', _inception_a(256, 64)),
          ('Mixed_5d', 'A', _inception_a(288, 64)),
          ('Mixed_6a', 'B', _inception_b(288)),
          ('Mixed_6b', 'C', _inception_c(768, 128)),
          ('Mixed_6c', 'C', _inception_c(768, 160)),
          ('Mixed_6d', 'C', _inception_c(768, 160)),
          ('Mixed_6e', 'C', _inception_c(768, 192)),
          ('Mixed_7a', 'D', _inception_d(768)),
          ('Mixed_7b', 'E_1', _inception_e(1280)),
          ('Mixed_7c', 'E_2', _inception_e(2048)))


def _conv_specs() -> dict[str, tuple]:
  """Every BasicConv2d of the network up to pool3, by state-dict prefix."""
  specs = dict(_STEM)
  for block, _, convs in _MIXED:
    specs.update({f'{block}.{name}': spec for name, spec in convs.items()})
  return specs


CONV_SPECS = _conv_specs()

# --- The network ------------------------------------------------------------


def _interp_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """PyTorch's bilinear source indices and weights along one axis.

  `F.interpolate(mode='bilinear', align_corners=False)` with a target size:
  source = (dst + 0.5) * n_in / n_out - 0.5, clamped at 0; the right
  neighbour is clamped to the last pixel. No antialiasing filter.
  """
  scale = np.float32(n_in) / np.float32(n_out)  # PyTorch computes it in float32.
  # scale * (dst + 0.5) - 0.5 rounded once, as PyTorch's compiled kernel does it
  # (a fused multiply-add): the float64 product is exact. Rounding twice moves
  # the source by an ulp, and the output by many float32 ulps.
  dst = np.arange(n_out, dtype=np.float64) + 0.5
  src = np.maximum((np.float64(scale) * dst - 0.5).astype(np.float32), np.float32(0.0))
  i0 = np.minimum(np.floor(src).astype(np.int32), n_in - 1)
  i1 = np.minimum(i0 + 1, n_in - 1)
  w1 = np.clip(src - i0, 0.0, 1.0).astype(np.float32)
  return i0, i1, (np.float32(1.0) - w1).astype(np.float32), w1


def resize_bilinear(images: jax.Array, size: int = INPUT_SIZE) -> jax.Array:
  """NHWC images -> [N, size, size, C] as PyTorch's bilinear interpolate.

  `align_corners=False`, no antialiasing (pytorch-fid's `resize_input`).
  Columns are blended first, then rows: PyTorch's own order of operations.
  """
  _, h, w, _ = images.shape
  i0, i1, w0, w1 = _interp_taps(w, size)
  x = (w0[:, None] * jnp.take(images, i0, axis=2)
       + w1[:, None] * jnp.take(images, i1, axis=2))
  i0, i1, w0, w1 = _interp_taps(h, size)
  return (w0[:, None, None] * jnp.take(x, i0, axis=1)
          + w1[:, None, None] * jnp.take(x, i1, axis=1))


def _conv(params, name, x):
  _, _, _, stride, (ph, pw) = CONV_SPECS[name]
  y = jax.lax.conv_general_dilated(
      x, params[name]['kernel'], (stride, stride), ((ph, ph), (pw, pw)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=PRECISION)
  return jax.nn.relu(y + params[name]['bias'])


def _max_pool(x, stride, padding):
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, stride, stride, 1),
                               ((0, 0), (padding, padding), (padding, padding), (0, 0)))


def _avg_pool_valid_only(x):
  """3x3 stride-1 average pool, padding 1, the padding left out of the mean.

  pytorch-fid's patch (`count_include_pad=False`), as TensorFlow's pool does.
  """
  pads = ((0, 0), (1, 1), (1, 1), (0, 0))
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pads)
  ones = np.ones((1,) + x.shape[1:3] + (1,), np.float32)
  count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pads)
  return total / count


def _mixed(params, block, kind, x):
  """One Inception block; `kind` is its FID variant (A, B, C, D, E_1, E_2)."""
  conv = lambda name, y: _conv(params, f'{block}.{name}', y)
  if kind == 'A':
    branches = [conv('branch1x1', x),
                conv('branch5x5_2', conv('branch5x5_1', x)),
                conv('branch3x3dbl_3', conv('branch3x3dbl_2', conv('branch3x3dbl_1', x))),
                conv('branch_pool', _avg_pool_valid_only(x))]
  elif kind == 'B':
    branches = [conv('branch3x3', x),
                conv('branch3x3dbl_3', conv('branch3x3dbl_2', conv('branch3x3dbl_1', x))),
                _max_pool(x, 2, 0)]
  elif kind == 'C':
    b7 = x
    for i in range(1, 4):
      b7 = conv(f'branch7x7_{i}', b7)
    b7dbl = x
    for i in range(1, 6):
      b7dbl = conv(f'branch7x7dbl_{i}', b7dbl)
    branches = [conv('branch1x1', x), b7, b7dbl, conv('branch_pool', _avg_pool_valid_only(x))]
  elif kind == 'D':
    b7 = x
    for i in range(1, 5):
      b7 = conv(f'branch7x7x3_{i}', b7)
    branches = [conv('branch3x3_2', conv('branch3x3_1', x)), b7, _max_pool(x, 2, 0)]
  else:  # E_1 / E_2
    b3 = conv('branch3x3_1', x)
    b3dbl = conv('branch3x3dbl_2', conv('branch3x3dbl_1', x))
    # The last block max-pools: pytorch-fid's patch, as the TF graph does.
    pooled = _avg_pool_valid_only(x) if kind == 'E_1' else _max_pool(x, 1, 1)
    branches = [conv('branch1x1', x),
                conv('branch3x3_2a', b3), conv('branch3x3_2b', b3),
                conv('branch3x3dbl_3a', b3dbl), conv('branch3x3dbl_3b', b3dbl),
                conv('branch_pool', pooled)]
  return jnp.concatenate(branches, axis=-1)


@jax.jit
def inception_network(params: dict, x: jax.Array) -> jax.Array:
  """The FID Inception from its [-1, 1] input (NHWC) to pool3 features [N, 2048]."""
  for name in ('Conv2d_1a_3x3', 'Conv2d_2a_3x3', 'Conv2d_2b_3x3'):
    x = _conv(params, name, x)
  x = _max_pool(x, 2, 0)
  x = _conv(params, 'Conv2d_3b_1x1', x)
  x = _conv(params, 'Conv2d_4a_3x3', x)
  x = _max_pool(x, 2, 0)
  for block, kind, _ in _MIXED:
    x = _mixed(params, block, kind, x)
  return jnp.mean(x, axis=(1, 2))


@functools.partial(jax.jit, static_argnames=('quantized',))
def inception_input(images: jax.Array, quantized: bool = True) -> jax.Array:
  """[0, 1] NHWC images -> the network's input: 299x299 in [-1, 1].

  uint8 rounding (if `quantized`), bilinear resize, then 2x - 1, in
  pytorch-fid's order.
  """
  images = jnp.asarray(images, jnp.float32)
  if quantized:
    images = quantize(images)
  return 2.0 * resize_bilinear(images) - 1.0


def inception_features(params: dict, images, quantized: bool = True) -> jax.Array:
  """pool3 features of pytorch-fid's FID Inception, [N, 2048] float32.

  The protocol of the module docstring: whole images, rounded to uint8
  levels (unless `quantized` is False), resized to 299x299 bilinear without
  antialiasing, scaled to [-1, 1]. The resize and the network are jit-ed
  separately, so images of a new size recompile only the resize. Jit-able.

  Args:
    params: from `load_inception` / `inception_params`.
    images: NHWC (or one HWC) float RGB in [0, 1].
    quantized: round to uint8 levels first, as pytorch-fid reads 8-bit PNGs.
  """
  images = jnp.asarray(images, jnp.float32)
  if images.ndim == 3:
    images = images[None]
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f'expected NHWC (or HWC) RGB images, got shape {images.shape}')
  return inception_network(params, inception_input(images, quantized=quantized))


# --- FID --------------------------------------------------------------------


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """Frechet distance of N(mu1, sigma1) and N(mu2, sigma2).

  ||mu1 - mu2||^2 + Tr(sigma1) + Tr(sigma2) - 2 Tr(sqrt(sigma1 sigma2)), the
  value of `pytorch_fid.fid_score.calculate_frechet_distance`. The trace of
  the square root is taken in the symmetric eigen form,
  Tr(sqrt(sigma1 sigma2)) = sum_i sqrt(lambda_i(A sigma2 A)) with A = sqrt(sigma1),
  which holds for covariances (symmetric, positive semi-definite): two
  symmetric eigen-decompositions instead of scipy's `sqrtm` of a
  non-symmetric product, faster, real-valued, and still accurate when there
  are fewer images than feature dimensions and the covariances are singular
  (where `sqrtm` warns that its result may be inaccurate). Eigenvalues that
  rounding pushed below zero count as zero.
  """
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
    raise ValueError(f'frechet_distance: shapes differ: means {mu1.shape}, {mu2.shape}; '
                     f'covariances {sigma1.shape}, {sigma2.shape}')
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2))


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
  """Tr(sqrt(sigma1 sigma2)) for symmetric positive semi-definite matrices."""
  sigma1 = (sigma1 + sigma1.T) / 2.0  # Exactly symmetric, for eigh.
  values, vectors = np.linalg.eigh(sigma1)
  root1 = (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T
  inner = root1 @ sigma2 @ root1
  return float(np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2.0), 0.0, None)).sum())


# --- KID --------------------------------------------------------------------


def _cubic_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  return (x @ y.T / x.shape[1] + 1.0)**3


def mmd2_unbiased(k_xx: np.ndarray, k_yy: np.ndarray, k_xy: np.ndarray) -> float:
  """Unbiased MMD^2 from the three m x m kernel matrices (diagonals of k_xx, k_yy left out)."""
  m = k_xx.shape[0]
  within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
  return float(within - 2.0 * k_xy.sum() / m**2)


def kid_subsets(feats_a, feats_b, num_subsets: int = 100, subset_size: int = 1000,
                seed: int = 2020) -> np.ndarray:
  """The unbiased MMD^2 of each random subset pair, [num_subsets] float64.

  torch-fidelity's draw: a NumPy RandomState(seed) picks, per subset, rows of
  `feats_a` then rows of `feats_b`, without replacement. `subset_size` is
  capped at the smaller set's row count (clean-fid; torch-fidelity refuses
  instead). The kernel is computed in float64.
  """
  a = np.asarray(feats_a, np.float64)
  b = np.asarray(feats_b, np.float64)
  if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
    raise ValueError(f'kid: expected [N, d] feature rows of one width, got {a.shape}, {b.shape}')
  m = min(subset_size, a.shape[0], b.shape[0])
  if m < 2:
    raise ValueError(f'kid: needs at least 2 rows per set, got {a.shape[0]} and {b.shape[0]}')
  full = max(a.shape[0], b.shape[0]) <= _KID_FULL_GRAM_MAX_ROWS
  if full:
    k_aa, k_bb, k_ab = _cubic_kernel(a, a), _cubic_kernel(b, b), _cubic_kernel(a, b)
  rng = np.random.RandomState(seed)
  values = np.empty(num_subsets, np.float64)
  for i in range(num_subsets):
    ia = rng.choice(a.shape[0], m, replace=False)
    ib = rng.choice(b.shape[0], m, replace=False)
    if full:
      values[i] = mmd2_unbiased(k_aa[np.ix_(ia, ia)], k_bb[np.ix_(ib, ib)], k_ab[np.ix_(ia, ib)])
    else:
      x, y = a[ia], b[ib]
      values[i] = mmd2_unbiased(_cubic_kernel(x, x), _cubic_kernel(y, y), _cubic_kernel(x, y))
  return values


def kid(feats_a, feats_b, num_subsets: int = 100, subset_size: int = 1000,
        seed: int = 2020) -> float:
  """KID: the mean over subsets of `kid_subsets` (unscaled; see `KID_LABEL`)."""
  return float(np.mean(kid_subsets(feats_a, feats_b, num_subsets, subset_size, seed)))


# --- Accumulation -----------------------------------------------------------


class FeatureStats:
  """Feature statistics of one image set, added image by image.

  Keeps the count, the float64 sum and sum of outer products (enough for
  FID's mean and covariance), and, unless `keep_rows` is False, every row
  as float32, because KID draws random subsets of rows.
  """

  def __init__(self, dim: int = FEATURE_DIM, keep_rows: bool = True):
    self.dim = dim
    self.count = 0
    self.keep_rows = keep_rows
    self._sum = np.zeros(dim, np.float64)
    self._outer = np.zeros((dim, dim), np.float64)
    self._rows: list[np.ndarray] = []

  def add(self, features) -> None:
    """Adds feature rows [n, dim] (or one row [dim])."""
    rows = np.asarray(features, np.float32)
    if rows.ndim == 1:
      rows = rows[None]
    if rows.ndim != 2 or rows.shape[1] != self.dim:
      raise ValueError(f'FeatureStats.add: expected [n, {self.dim}] features, got {rows.shape}')
    if not np.isfinite(rows).all():
      raise FloatingPointError('FeatureStats.add: non-finite Inception features')
    wide = rows.astype(np.float64)
    self.count += rows.shape[0]
    self._sum += wide.sum(axis=0)
    self._outer += wide.T @ wide
    if self.keep_rows:
      self._rows.append(rows.copy())

  def mean(self) -> np.ndarray:
    if self.count < 1:
      raise ValueError('FeatureStats: no features added')
    return self._sum / self.count

  def cov(self) -> np.ndarray:
    """Unbiased covariance (divides by count - 1, as np.cov and pytorch-fid)."""
    if self.count < 2:
      raise ValueError(f'FeatureStats: a covariance needs 2 or more images, got {self.count}')
    mu = self.mean()
    return (self._outer - self.count * np.outer(mu, mu)) / (self.count - 1)

  def rows(self) -> np.ndarray:
    """Every feature row added, [count, dim] float32."""
    if not self.keep_rows:
      raise ValueError('FeatureStats: rows were not kept (keep_rows=False); KID needs them')
    if not self._rows:
      return np.zeros((0, self.dim), np.float32)
    return np.concatenate(self._rows, axis=0)

  def fid(self, other: FeatureStats) -> float:
    """FID between this set and `other` (`FID_LABEL`)."""
    return frechet_distance(self.mean(), self.cov(), other.mean(), other.cov())

  def kid(self, other: FeatureStats, num_subsets: int = 100, subset_size: int = 1000,
          seed: int = 2020) -> float:
    """KID between this set and `other` (`KID_LABEL`); both must keep rows."""
    return kid(self.rows(), other.rows(), num_subsets, subset_size, seed)
