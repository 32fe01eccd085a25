"""RealBlur's evaluation protocol: align the output to the ground truth, then score.

RealBlur (Rim, Lee, Won, Cho, "Real-World Blur Dataset for Learning and
Benchmarking Deblurring Algorithms", ECCV 2020) pairs real blurred photos with
sharp ones taken through a second camera, so a pair is only roughly
registered. Its benchmark therefore scores a deblurred image only after
aligning it to the ground truth; the authors' `evaluate_RealBlur.py` (also
shipped with MPRNet and Restormer, based on Koehler et al.'s evaluation code)
does, for float32 RGB images in [0, 1], x = ground truth, z = deblurred:

1. Intensity matching: zs = (sum(x z) / sum(z z)) z.
2. A homography from OpenCV's `findTransformECC(gray(x), gray(zs), eye(3),
   MOTION_HOMOGRAPHY, (COUNT | EPS, 100, 0), None, 5)`: the Enhanced
   Correlation Coefficient maximisation of Evangelidis & Psarakis
   ("Parametric Image Alignment Using Enhanced Correlation Coefficient
   Maximization", IEEE TPAMI 30(10), 2008), gray = 0.299 R + 0.587 G + 0.114 B.
3. zr = warpPerspective(zs, warp, INTER_CUBIC + WARP_INVERSE_MAP,
   BORDER_REFLECT); cr = the same warp of ones with INTER_NEAREST and
   BORDER_CONSTANT 0; zr = zr cr, xr = x cr.
4. PSNR = 10 log10(1 / (sum (xr - zr)^2 / sum cr)), on the floats.
5. SSIM: skimage's full Gaussian SSIM map of (xr, zr), times cr, cropped by 5
   pixels per side, per channel sum(map) / sum(cr), mean over channels.

Steps 4 and 5 are `metrics.psnr_masked` and `metrics.ssim_masked`; this
module does steps 1-3 in JAX (jit-able, one compile per image shape) and
`realblur_scores` chains all five.

`ecc_homography` follows OpenCV's `findTransformECC` (modules/video/src/ecc.cpp)
step by step: the same 5x5 binomial pre-blur (what GaussianBlur(5, sigma 0)
uses, REFLECT_101 borders), central-difference gradients, bilinear warps of
the input and its gradients with zero borders, a nearest-neighbour validity
mask, the same zero-mean / norm bookkeeping (including OpenCV's quirk that
warped input pixels outside the mask keep their values in the projections),
the same Jacobian and the same update
  lambda = (|Iz|^2 - ip' H^-1 ip) / (Tz.Iz - tp' H^-1 ip),
  delta_p = H^-1 J' (lambda Tz - Iz),
added to the 8 homography entries, for a fixed number of iterations
(termination eps 0 makes OpenCV run all of them).

Deliberate differences from OpenCV:

* Where OpenCV throws ("The algorithm stopped before its convergence", or
  "NaN encountered" for an empty or flat overlap), `ecc_homography` stops
  updating, keeps the last good warp and returns `converged=False`; nothing
  becomes NaN. (The RealBlur script does not catch the exception, so such an
  image has no score there.)
* The 8x8 Gauss-Newton system is solved in an equivalent, better conditioned
  parametrisation (affine columns about the image centre, coordinates scaled
  to ~[-1, 1], then Jacobi scaling) instead of OpenCV's float32 `inv()` of
  the raw Hessian (on a 680x773 GoPro crop: diagonal 3e2 .. 3e13, condition
  number 6e12; 3e2 after the change of basis). In exact
  arithmetic the step is identical (Gauss-Newton steps are invariant to a
  linear change of parameters); the converged warp depends only on the
  projections J'Iz and J'Tz, which are summed in two float32 stages (rows,
  then the image) where OpenCV sums in double.
* Warps sample at exact source coordinates. Older OpenCV releases (4.x
  remap) round them to 1/32 pixel; opencv-python-headless 5.0.0, which the
  tests compare against, samples exactly for INTER_LINEAR and INTER_CUBIC and
  agrees with `warp_perspective` to ~1e-5.
* Coordinates are float32 displacements (see `_displacement`) where OpenCV
  uses doubles; only a pixel whose source coordinate lies within ~1e-6 of a
  half-integer can round to the other neighbour in the nearest-neighbour
  mask.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from xydiff import metrics

# cv2.cvtColor(COLOR_RGB2GRAY) weights for float images.
GRAY_WEIGHTS = (0.299, 0.587, 0.114)
# GaussianBlur(ksize 5, sigma 0) uses this fixed kernel (getGaussianKernel's
# table for small odd sizes), separably.
_BINOMIAL_5 = (1.0 / 16, 4.0 / 16, 6.0 / 16, 4.0 / 16, 1.0 / 16)
# Keys' cubic convolution parameter used by OpenCV's INTER_CUBIC.
_CUBIC_A = -0.75
_ORDERS = ('nearest', 'linear', 'cubic')
_BORDERS = ('constant', 'reflect', 'reflect101', 'edge')
_NUM_PARAMS = 8


def rgb_to_gray(image: jax.Array) -> jax.Array:
  """HxWx3 RGB -> HxW, as cv2.cvtColor(image, COLOR_RGB2GRAY) for floats."""
  r, g, b = GRAY_WEIGHTS
  return r * image[..., 0] + g * image[..., 1] + b * image[..., 2]


def _sum2d(x: jax.Array) -> jax.Array:
  """Sum over the two leading (H, W) axes in two float32 stages: rows, then the image."""
  return jnp.sum(jnp.sum(x, axis=1), axis=0)


def _binomial_blur(image: jax.Array) -> jax.Array:
  """GaussianBlur(image, (5, 5), 0) of an HxW float image (REFLECT_101 borders)."""
  padded = jnp.pad(image, 2, mode='reflect')
  height, width = image.shape
  rows = sum(tap * padded[k:k + height] for k, tap in enumerate(_BINOMIAL_5))
  return sum(tap * rows[:, k:k + width] for k, tap in enumerate(_BINOMIAL_5))


def _gradients(image: jax.Array) -> tuple[jax.Array, jax.Array]:
  """filter2D with [-0.5, 0, 0.5] along x and along y (REFLECT_101 borders)."""
  padded = jnp.pad(image, 1, mode='reflect')
  gx = 0.5 * (padded[1:-1, 2:] - padded[1:-1, :-2])
  gy = 0.5 * (padded[2:, 1:-1] - padded[:-2, 1:-1])
  return gx, gy


def _grid(height: int, width: int) -> tuple[jax.Array, jax.Array]:
  """Pixel-centre coordinates (x = column, y = row) of an HxW image, float32."""
  ys, xs = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32),
                        jnp.arange(width, dtype=jnp.float32), indexing='ij')
  return xs, ys


def _displacement(warp: jax.Array, height: int, width: int):
  """Where `warp` sends each pixel of an HxW grid, as (x, y, du, dv, d).

  u = (h00 x + h01 y + h02) / d, v = (h10 x + h11 y + h12) / d,
  d = h20 x + h21 y + h22, and du = u - x, dv = v - y are formed directly,
  ((h00 - 1) x + h01 y + h02 - x (d - 1)) / d, so that they keep float32's
  relative precision (u itself would only be good to ~1e-4 pixel at x ~ 1000).
  """
  warp = jnp.asarray(warp, jnp.float32)
  xs, ys = _grid(height, width)
  d_minus_1 = warp[2, 0] * xs + warp[2, 1] * ys + (warp[2, 2] - 1.0)
  d = d_minus_1 + 1.0
  du = ((warp[0, 0] - 1.0) * xs + warp[0, 1] * ys + warp[0, 2] - xs * d_minus_1) / d
  dv = (warp[1, 0] * xs + (warp[1, 1] - 1.0) * ys + warp[1, 2] - ys * d_minus_1) / d
  return xs, ys, du, dv, d


def _cubic_weights(t: jax.Array) -> list[jax.Array]:
  """OpenCV's interpolateCubic: Keys (a = -0.75) weights of taps -1, 0, 1, 2."""
  a = _CUBIC_A
  w0 = ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a
  w1 = ((a + 2) * t - (a + 3)) * t * t + 1
  w2 = ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1
  return [w0, w1, w2, 1.0 - w0 - w1 - w2]


def _border_index(index: jax.Array, size: int, border: str) -> jax.Array:
  """Maps integer source indices into [0, size) the way OpenCV's border modes do."""
  if border in ('constant', 'edge'):
    return jnp.clip(index, 0, size - 1)
  if border == 'reflect':  # BORDER_REFLECT: fedcba|abcdefgh|hgfedcb (numpy 'symmetric').
    period = 2 * size
    index = jnp.mod(index, period)
    return jnp.where(index >= size, period - 1 - index, index)
  if size == 1:  # BORDER_REFLECT_101: gfedcb|abcdefgh|gfedcba (numpy 'reflect').
    return jnp.zeros_like(index)
  period = 2 * size - 2
  index = jnp.mod(index, period)
  return jnp.where(index >= size, period - index, index)


def _axis_tap(index: jax.Array, size: int, weight, border: str):
  """(in-range index, weight) of one interpolation tap along one axis."""
  if border == 'constant':  # Outside taps read pixel 0 with weight 0.
    weight = jnp.where((index >= 0) & (index < size), weight, 0.0)
  return _border_index(index, size, border), weight


def _sample_taps(image: jax.Array, du: jax.Array, dv: jax.Array, order: str, border: str):
  """Resamples HxWxC `image` at (x + du, y + dv) of the output grid."""
  height, width = image.shape[:2]
  out_h, out_w = du.shape
  xs, ys = _grid(out_h, out_w)
  # Keep wild coordinates (diverged warps) finite and within a few periods.
  limit = float(4 * max(height, width) + 8)
  du = jnp.clip(jnp.nan_to_num(du, nan=limit), -limit, limit)
  dv = jnp.clip(jnp.nan_to_num(dv, nan=limit), -limit, limit)
  if order == 'nearest':
    base_x, base_y = jnp.round(du), jnp.round(dv)
    offsets, wx, wy = (0,), [jnp.ones_like(du)], [jnp.ones_like(dv)]
  else:
    base_x, base_y = jnp.floor(du), jnp.floor(dv)
    tx, ty = du - base_x, dv - base_y
    if order == 'linear':
      offsets, wx, wy = (0, 1), [1.0 - tx, tx], [1.0 - ty, ty]
    else:
      offsets, wx, wy = (-1, 0, 1, 2), _cubic_weights(tx), _cubic_weights(ty)
  col0 = xs.astype(jnp.int32) + base_x.astype(jnp.int32)
  row0 = ys.astype(jnp.int32) + base_y.astype(jnp.int32)
  flat = image.reshape(height * width, -1)
  out = 0.0
  for j, oy in enumerate(offsets):
    row_in, weight_y = _axis_tap(row0 + oy, height, wy[j], border)
    row_part = 0.0
    for i, ox in enumerate(offsets):
      col_in, weight_x = _axis_tap(col0 + ox, width, wx[i], border)
      row_part = row_part + weight_x[..., None] * flat[row_in * width + col_in]
    out = out + weight_y[..., None] * row_part
  return out


def warp_perspective(image, warp, *, order: str = 'linear', border: str = 'constant',
                     shape: tuple[int, int] | None = None) -> jax.Array:
  """cv2.warpPerspective(image, warp, flags=<order> + WARP_INVERSE_MAP, borderMode=<border>).

  `warp` maps output pixel coordinates (x = column, y = row, 0-based pixel
  centres) to source coordinates: out(x, y) = image(u, v) with
  (u, v, 1) ~ warp (x, y, 1).

  Args:
    image: HxW or HxWxC float image.
    warp: 3x3 homography, output -> source.
    order: 'nearest' (OpenCV rounds to the nearest pixel), 'linear' (exact
      bilinear) or 'cubic' (Keys, a = -0.75, as OpenCV's INTER_CUBIC, but at
      exact rather than 1/32-pixel coordinates).
    border: 'constant' (zero outside the image: out-of-image taps contribute
      0), 'reflect' (BORDER_REFLECT, edge pixel repeated), 'reflect101'
      (BORDER_REFLECT_101) or 'edge' (BORDER_REPLICATE).
    shape: (H, W) of the output; defaults to the image's.

  Returns:
    The warped image, float32, with `image`'s channel layout.
  """
  if order not in _ORDERS:
    raise ValueError(f'order must be one of {_ORDERS}, got {order!r}')
  if border not in _BORDERS:
    raise ValueError(f'border must be one of {_BORDERS}, got {border!r}')
  image = jnp.asarray(image, jnp.float32)
  squeeze = image.ndim == 2
  if squeeze:
    image = image[..., None]
  if image.ndim != 3:
    raise ValueError(f'expected an HxW or HxWxC image, got shape {image.shape}')
  out_h, out_w = shape if shape is not None else image.shape[:2]
  _, _, du, dv, _ = _displacement(warp, out_h, out_w)
  out = _sample_taps(image, du, dv, order, border)
  return out[..., 0] if squeeze else out


def warp_mask(warp, shape: tuple[int, int], source_shape: tuple[int, int] | None = None):
  """Where the nearest-neighbour warp lands inside the source: 1.0 inside, 0.0 outside.

  cv2.warpPerspective(ones, warp, INTER_NEAREST + WARP_INVERSE_MAP,
  BORDER_CONSTANT 0) for an output of `shape` (H, W) and a source of
  `source_shape` (defaults to `shape`).
  """
  src_h, src_w = source_shape if source_shape is not None else shape
  xs, ys, du, dv, _ = _displacement(warp, *shape)
  return _nearest_inside(xs, ys, du, dv, src_h, src_w).astype(jnp.float32)


def _nearest_inside(xs, ys, du, dv, height: int, width: int) -> jax.Array:
  """Whether (x + du, y + dv), rounded to the nearest pixel, lies in an HxW image."""
  col = xs + jnp.round(du)
  row = ys + jnp.round(dv)
  return (col >= 0) & (col <= width - 1) & (row >= 0) & (row <= height - 1)


def _scaled_jacobian(gxw, gyw, xs, ys, du, dv, d, center, scale) -> list[jax.Array]:
  """The homography Jacobian in OpenCV's order, in a better conditioned basis.

  OpenCV's columns for (h00, h01, h02, h10, h11, h12, h20, h21) are
  [gx x/d, gx y/d, gx/d, gy x/d, gy y/d, gy/d, -(gx u + gy v) x/d,
  -(gx u + gy v) y/d]. Here x and y are centred and scaled in the affine
  columns and the perspective columns are divided by scale^2, i.e.
  J_here = J_opencv L for the fixed matrix L that `_to_opencv_step` undoes.
  Returns the 8 columns as HxW images.
  """
  cx, cy = center
  gxd, gyd = gxw / d, gyw / d
  xn, yn = (xs - cx) / scale, (ys - cy) / scale
  persp = -(gxd * (xs + du) + gyd * (ys + dv)) / scale
  return [gxd * xn, gxd * yn, gxd, gyd * xn, gyd * yn, gyd,
          persp * (xs / scale), persp * (ys / scale)]


def _to_opencv_step(q: jax.Array, center, scale) -> jax.Array:
  """delta_p = L delta_q: the scaled-basis step q as increments of the 3x3 warp."""
  cx, cy = center
  d00, d01 = q[0] / scale, q[1] / scale
  d10, d11 = q[3] / scale, q[4] / scale
  d02 = q[2] - cx * d00 - cy * d01
  d12 = q[5] - cx * d10 - cy * d11
  d20, d21 = q[6] / scale**2, q[7] / scale**2
  return jnp.array([[d00, d01, d02], [d10, d11, d12], [d20, d21, 0.0]], jnp.float32)


def _ecc_step(warp, template, source, center, scale):
  """One findTransformECC iteration: (new warp, ok)."""
  height, width = template.shape
  xs, ys, du, dv, d = _displacement(warp, height, width)
  warped = _sample_taps(source, du, dv, 'linear', 'constant')
  image_w, gxw, gyw = warped[..., 0], warped[..., 1], warped[..., 2]
  mask = _nearest_inside(xs, ys, du, dv, height, width)
  maskf = mask.astype(jnp.float32)

  count = _sum2d(maskf)
  img_mean = _sum2d(maskf * image_w) / count
  tmp_mean = _sum2d(maskf * template) / count
  image_zm = jnp.where(mask, image_w - img_mean, image_w)  # OpenCV's masked subtract.
  template_zm = jnp.where(mask, template - tmp_mean, 0.0)
  img_norm_sq = _sum2d(jnp.where(mask, image_zm * image_zm, 0.0))

  columns = _scaled_jacobian(gxw, gyw, xs, ys, du, dv, d, center, scale)
  columns += [image_zm, template_zm]
  # The 10x10 Gram matrix of [J, Iz, Tz]: one fused multiply-reduce per entry
  # (measured faster on CPU than stacking the columns for a matmul).
  size = len(columns)
  entries = {(i, j): _sum2d(columns[i] * columns[j]) for i in range(size) for j in range(i, size)}
  gram = jnp.stack([jnp.stack([entries[min(i, j), max(i, j)] for j in range(size)])
                    for i in range(size)])
  hessian = gram[:_NUM_PARAMS, :_NUM_PARAMS]
  img_proj = gram[:_NUM_PARAMS, _NUM_PARAMS]
  tmp_proj = gram[:_NUM_PARAMS, _NUM_PARAMS + 1]
  correlation = gram[_NUM_PARAMS, _NUM_PARAMS + 1]
  tmp_norm_sq = gram[_NUM_PARAMS + 1, _NUM_PARAMS + 1]

  diag = jnp.diagonal(hessian)
  jacobi = jnp.where(diag > 0, jax.lax.rsqrt(jnp.where(diag > 0, diag, 1.0)), 0.0)
  scaled_h = hessian * jacobi[:, None] * jacobi[None, :]
  scaled_h = scaled_h + jnp.diag(jnp.where(diag > 0, 0.0, 1.0))  # Empty columns: no step.
  rhs = jnp.stack([img_proj, tmp_proj], axis=-1) * jacobi[:, None]
  solved = jnp.linalg.solve(scaled_h, rhs) * jacobi[:, None]
  img_proj_h, tmp_proj_h = solved[:, 0], solved[:, 1]

  rho = correlation / jnp.sqrt(img_norm_sq * tmp_norm_sq)
  lambda_n = img_norm_sq - jnp.dot(img_proj, img_proj_h)
  lambda_d = correlation - jnp.dot(tmp_proj, img_proj_h)
  lam = lambda_n / jnp.where(lambda_d > 0, lambda_d, 1.0)
  # J'(lambda Tz - Iz) = lambda tp - ip, so H^-1 J' error = lambda H^-1 tp - H^-1 ip.
  step = _to_opencv_step(lam * tmp_proj_h - img_proj_h, center, scale)
  new_warp = warp + step
  ok = (count > 0) & jnp.isfinite(rho) & (lambda_d > 0) & jnp.all(jnp.isfinite(new_warp))
  return new_warp, ok


@functools.partial(jax.jit, static_argnames=('num_iterations',))
def ecc_homography(template_gray, input_gray, num_iterations: int = 100):
  """cv2.findTransformECC(template, input, eye(3), MOTION_HOMOGRAPHY, ...) in JAX.

  The criteria are (COUNT | EPS, num_iterations, eps 0), no input mask,
  gaussFiltSize 5, the call RealBlur's evaluation makes. See the module
  docstring for what is reproduced and what differs.

  Like OpenCV's, the estimate is biased towards whole-pixel shifts (bilinear
  resampling smooths fractional positions more): on 160x200 GoPro crops
  moved by known small homographies both land 0.05-0.35 px from the truth at
  the worst corner, while agreeing with each other to ~1e-5 px.

  Args:
    template_gray: HxW float image the input is aligned to.
    input_gray: HxW float image, same shape.
    num_iterations: Gauss-Newton iterations (all are run unless one fails).

  Returns:
    (warp, converged): warp is the float32 3x3 homography mapping template
    pixel coordinates to input coordinates (use it with `warp_perspective`,
    i.e. WARP_INVERSE_MAP); converged is False where OpenCV would have raised
    (correlation going to be minimised, or an empty / flat overlap), in which
    case warp is the last one before the failing iteration.
  """
  template = jnp.asarray(template_gray, jnp.float32)
  source = jnp.asarray(input_gray, jnp.float32)
  if template.ndim != 2 or template.shape != source.shape:
    raise ValueError(f'expected two HxW images of one shape, got {template.shape} and '
                     f'{source.shape}')
  height, width = template.shape
  template = _binomial_blur(template)
  source = _binomial_blur(source)
  gx, gy = _gradients(source)
  stacked = jnp.stack([source, gx, gy], axis=-1)
  center = ((width - 1) / 2.0, (height - 1) / 2.0)
  scale = max(height, width) / 2.0

  def cond(state):
    i, _, ok = state
    return (i < num_iterations) & ok

  def body(state):
    i, warp, _ = state
    new_warp, ok = _ecc_step(warp, template, stacked, center, scale)
    return i + 1, jnp.where(ok, new_warp, warp), ok

  state = (jnp.int32(0), jnp.eye(3, dtype=jnp.float32), jnp.bool_(True))
  _, warp, ok = jax.lax.while_loop(cond, body, state)
  return warp, ok


@functools.partial(jax.jit, static_argnames=('num_iterations',))
def realblur_align(deblurred, gt, num_iterations: int = 100):
  """Steps 1-3 of RealBlur's protocol (`image_align` of evaluate_RealBlur.py).

  Args:
    deblurred: HxWx3 float RGB in [0, 1], the image to score (z).
    gt: HxWx3 float RGB in [0, 1], the ground truth (x).
    num_iterations: ECC iterations (the protocol's 100).

  Returns:
    (aligned_deblurred, aligned_gt, mask, warp, converged): zr = the
    intensity-matched deblurred image warped onto gt (cubic, BORDER_REFLECT)
    times the mask; xr = gt times the mask; the mask cr (HxWx3 of 0/1 floats,
    the nearest-neighbour footprint of the warp); the 3x3 warp (gt pixel ->
    deblurred pixel); and whether ECC converged (see `ecc_homography`).
  """
  z = jnp.asarray(deblurred, jnp.float32)
  x = jnp.asarray(gt, jnp.float32)
  if z.shape != x.shape or z.ndim != 3 or z.shape[-1] != 3:
    raise ValueError(f'expected two HxWx3 images of one shape, got {z.shape} and {x.shape}')
  numerator = jnp.sum(_sum2d(x * z))
  denominator = jnp.sum(_sum2d(z * z))
  gain = jnp.where(denominator > 0, numerator / jnp.where(denominator > 0, denominator, 1.0),
                   0.0)
  zs = gain * z
  warp, converged = ecc_homography(rgb_to_gray(x), rgb_to_gray(zs), num_iterations)
  height, width = x.shape[:2]
  mask = jnp.broadcast_to(warp_mask(warp, (height, width))[..., None], x.shape)
  zr = warp_perspective(zs, warp, order='cubic', border='reflect') * mask
  xr = x * mask
  return zr, xr, mask, warp, converged


@functools.partial(jax.jit, static_argnames=('num_iterations',))
def realblur_scores(pred, target, num_iterations: int = 100):
  """RealBlur PSNR and SSIM of one HxWx3 pair (label `metrics.REALBLUR_LABEL`).

  Args:
    pred: HxWx3 float RGB in [0, 1], the deblurred image.
    target: HxWx3 float RGB in [0, 1], the ground truth.
    num_iterations: ECC iterations (the protocol's 100).

  Returns:
    (psnr, ssim, converged) as scalars. Scores are on the float images (no
    uint8 rounding after alignment), as the reference script computes them.
    Where converged is False the scores use the last good warp; the
    reference script would have stopped with an OpenCV error instead.
  """
  zr, xr, mask, _, converged = realblur_align(pred, target, num_iterations)
  psnr = metrics.psnr_masked(zr, xr, mask)[0]
  ssim = metrics.ssim_masked(zr, xr, mask)[0]
  return psnr, ssim, converged
