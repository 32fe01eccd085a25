"""DvSR's predict-and-refine conditional diffusion: schedules, loss, ancestral sampler.

The diffusion models the residual r0 = x0 - g(y) of a deterministic predictor
g, in units of `residual_scale` (2 puts [0, 1] images on the usual [-1, 1]
diffusion scale). The denoiser f(z, level, y) is conditioned on the
continuous noise level sqrt(alpha_bar) (WaveGrad / SR3), so the sampling
schedule is chosen at inference without retraining.

Notation follows DvSR (Whang et al., CVPR 2022) and SR3: alpha_t per step,
alpha_bar_t their cumulative product, posterior q(x_{t-1} | x_t, x_0) =
N(mu_t, beta_t I).

A `Schedule` is also the discretisation every sampler walks: its alpha_bars,
from alpha_bar_T down to alpha_bar_0 = 1, are the levels visited.
`sampling_schedule` makes one from an inference preset; the few-step
samplers (DDIM, DPM-Solver++) that walk them live in xydiff/samplers.py.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


# ---------------------------------------------------------------- schedules

@dataclasses.dataclass(frozen=True)
class Schedule:
  """A discrete noise schedule; index t = 1..T, with alpha_bar_0 = 1."""

  betas: np.ndarray  # [T], the per-step forward variances 1 - alpha_t.

  @property
  def num_steps(self) -> int:
    return len(self.betas)

  @property
  def alphas(self) -> np.ndarray:
    return 1.0 - self.betas

  @property
  def alpha_bars(self) -> np.ndarray:
    """[T + 1]: alpha_bar_0 = 1, then the cumulative products."""
    return np.concatenate([[1.0], np.cumprod(self.alphas)])


def linear_schedule(num_steps: int, beta_start: float, beta_end: float) -> Schedule:
  if num_steps < 1:
    raise ValueError(f'a schedule needs at least one step, got {num_steps}')
  if not 0.0 < beta_start <= beta_end < 1.0:
    raise ValueError(f'need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}')
  return Schedule(np.linspace(beta_start, beta_end, num_steps, dtype=np.float64))


def schedule_from_alpha_bars(alpha_bars) -> Schedule:
  """The schedule whose alpha_bar_1..alpha_bar_T are `alpha_bars` (strictly decreasing in (0, 1)).

  beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}, with alpha_bar_0 = 1: any
  decreasing sequence of levels is a schedule, and a sampler walks it the
  same way whichever family it came from.
  """
  alpha_bars = np.asarray(alpha_bars, np.float64)
  if alpha_bars.ndim != 1 or len(alpha_bars) < 1:
    raise ValueError(f'need a 1-D sequence of at least one alpha_bar, got shape {alpha_bars.shape}')
  with_one = np.concatenate([[1.0], alpha_bars])
  if not (np.all(np.diff(with_one) < 0) and alpha_bars[-1] > 0):
    raise ValueError(f'alpha_bars must decrease strictly within (0, 1), got {alpha_bars}')
  return Schedule(1.0 - with_one[1:] / with_one[:-1])


def log_snr(alpha_bar):
  """lambda = log(a / s) = log(alpha_bar / (1 - alpha_bar)) / 2, DPM-Solver's time variable."""
  alpha_bar = np.asarray(alpha_bar, np.float64)
  return 0.5 * (np.log(alpha_bar) - np.log1p(-alpha_bar))


def logsnr_schedule(num_steps: int, alpha_bar_max: float, alpha_bar_min: float) -> Schedule:
  """`num_steps` levels uniform in logSNR, from alpha_bar_min (level T, the noisiest, where
  sampling starts) to alpha_bar_max (level 1, the least noisy), both ends included.

  DPM-Solver's own step schedule (Lu et al. 2022): equal steps h in lambda,
  which its error bounds are written in. diffusers' `use_lu_lambdas` is the
  same discretisation between the ends of the training schedule.
  """
  if num_steps < 1:
    raise ValueError(f'a schedule needs at least one step, got {num_steps}')
  if not 0.0 < alpha_bar_min <= alpha_bar_max < 1.0 or (
      num_steps > 1 and alpha_bar_min == alpha_bar_max):
    raise ValueError(f'need 0 < alpha_bar_min < alpha_bar_max < 1 (equal only for one step), '
                     f'got {alpha_bar_min}, {alpha_bar_max}')
  # From the noisiest level up, so that a single step starts from alpha_bar_min.
  lam = np.linspace(log_snr(alpha_bar_min), log_snr(alpha_bar_max), num_steps)[::-1]
  return schedule_from_alpha_bars(1.0 / (1.0 + np.exp(-2.0 * lam)))  # lambda -> alpha_bar.


SPACINGS = ('linear_beta', 'logsnr')


def sampling_schedule(num_steps: int, beta_start: float, beta_end: float,
                      spacing: str = 'linear_beta') -> Schedule:
  """The levels an inference preset (num_steps, beta_start, beta_end) visits.

  'linear_beta': `linear_schedule(num_steps, beta_start, beta_end)`, the
  presets' meaning since the start (Algorithm 1 on it is bit for bit what it was).
  'logsnr': as many levels, with the same first and last level as that
  linear-beta schedule, but uniform in logSNR between them: a preset keeps its
  range and count and changes only how the levels are spread.
  """
  linear = linear_schedule(num_steps, beta_start, beta_end)
  if spacing == 'linear_beta':
    return linear
  if spacing == 'logsnr':
    return logsnr_schedule(num_steps, linear.alpha_bars[1], linear.alpha_bars[-1])
  raise ValueError(f'spacing must be one of {SPACINGS}, got {spacing!r}')


def sample_noise_level(key: jax.Array, schedule: Schedule, batch: int) -> jax.Array:
  """Continuous sqrt(alpha_bar): t ~ U{1..T}, then U(sqrt ab_t, sqrt ab_{t-1}).

  Conditioning on a continuous level instead of the integer t is what lets
  any sampling schedule be used at test time.
  """
  t_key, u_key = jax.random.split(key)
  sqrt_ab = jnp.asarray(np.sqrt(schedule.alpha_bars), jnp.float32)
  t = jax.random.randint(t_key, (batch,), 1, schedule.num_steps + 1)
  low, high = sqrt_ab[t], sqrt_ab[t - 1]
  return low + (high - low) * jax.random.uniform(u_key, (batch,))


def q_sample(r0: jax.Array, level: jax.Array, noise: jax.Array) -> jax.Array:
  """Draws from q(x_t | x_0) = N(sqrt(ab) x_0, (1 - ab) I), with level = sqrt(ab)."""
  level = level.reshape((-1,) + (1,) * (r0.ndim - 1))
  return level * r0 + jnp.sqrt(1.0 - level ** 2) * noise


def posterior(schedule: Schedule, t: int | jax.Array, x_t: jax.Array, x0: jax.Array):
  """Mean and variance of q(x_{t-1} | x_t, x_0) for step index t (1-based)."""
  a = jnp.asarray(schedule.alphas, jnp.float32)[t - 1]
  ab = jnp.asarray(schedule.alpha_bars, jnp.float32)
  ab_t, ab_prev = ab[t], ab[t - 1]
  mean = (jnp.sqrt(ab_prev) * (1.0 - a) / (1.0 - ab_t) * x0
          + jnp.sqrt(a) * (1.0 - ab_prev) / (1.0 - ab_t) * x_t)
  variance = (1.0 - ab_prev) / (1.0 - ab_t) * (1.0 - a)
  return mean, variance


# ---------------------------------------------------------------- loss

def loss(model, batch: dict[str, jax.Array], key: jax.Array, *, schedule: Schedule,
         residual_scale: float, predictor_weight: float = 0.0):
  """L = E |eps - f(sqrt(ab) r0 + sqrt(1 - ab) eps, sqrt(ab), y)|_1, r0 = x0 - g(y).

  g is trained through f: the gradient of the eps-loss reaches g via r0. An
  optional L1 on g(y) itself (weight 0 in the paper) can speed up g early on.
  """
  blur, sharp = batch['blur'], batch['sharp']
  level_key, noise_key = jax.random.split(key)
  prediction = model.predict(blur)['restored']
  r0 = (sharp - prediction) * residual_scale
  level = sample_noise_level(level_key, schedule, blur.shape[0])
  noise = jax.random.normal(noise_key, r0.shape)
  eps_hat = model.denoise(q_sample(r0, level, noise), level, blur)
  eps_loss = jnp.mean(jnp.abs(noise - eps_hat))
  predictor_l1 = jnp.mean(jnp.abs(prediction - sharp))
  total = eps_loss + predictor_weight * predictor_l1
  return total, {'eps_l1': eps_loss, 'predictor_l1': predictor_l1}


# ---------------------------------------------------------------- sampling

def sample_keys(key: jax.Array, num_samples: int) -> jax.Array:
  """[N] keys, key i = fold_in(key, i): the first N of N_max keys are the N-sample keys."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(num_samples))


def per_sample_noise(sample_keys: jax.Array, batch_shape: tuple[int, ...]) -> Callable:
  """t -> [N * B, ...] standard normals: sample i's block from fold_in(sample_keys[i], t) alone.

  So a sample's draws do not depend on the batch it is drawn in, and step t's
  draw is the same whichever sampler asks for it.
  """
  def draw(t):
    draws = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, t), batch_shape))
    return draws(sample_keys).reshape((-1,) + tuple(batch_shape[1:]))
  return draw


def sample_outputs(prediction: jax.Array, z: jax.Array, num_samples: int,
                   residual_scale: float) -> dict[str, jax.Array]:
  """{'samples': g(y) + z_0 / scale as [N, B, H, W, C], 'mean', 'std' over N, 'predictor'}."""
  residual = z.reshape((num_samples,) + prediction.shape) / residual_scale
  samples = prediction[None] + residual
  return {'samples': samples, 'mean': samples.mean(axis=0), 'std': samples.std(axis=0),
          'predictor': prediction}


def sample(predict: Callable, denoise: Callable, blur: jax.Array, sample_keys: jax.Array,
           *, schedule: Schedule, residual_scale: float) -> dict[str, jax.Array]:
  """Algorithm 1 for N samples at once; returns samples, mean, std and g(y).

  The paper's ancestral sampler, and the reference the other samplers
  (xydiff/samplers.py) are checked against: DDIM with eta = 1 on the same
  schedule is this sampler.

  `sample_keys` holds one key per sample ([N] keys). Sample i's noise comes
  from its key alone, so the mean over N samples equals the mean of N single
  runs with the same keys: sample averaging changes batching, not the draws.
  g runs once; the denoiser runs once per step on the N x B stacked batch,
  inside a `lax.fori_loop`, so cost is T denoiser calls plus one g call.

  Returns {'samples': [N, B, H, W, C], 'mean', 'std' (per pixel over N, in
  image units), 'predictor': g(y)}.
  """
  num_samples = sample_keys.shape[0]
  prediction = predict(blur)
  stacked_blur = jnp.tile(blur, (num_samples, 1, 1, 1))
  ab = jnp.asarray(schedule.alpha_bars, jnp.float32)
  noise_for = per_sample_noise(sample_keys, blur.shape)

  def step(i, z):
    t = schedule.num_steps - i
    level = jnp.full((z.shape[0],), jnp.sqrt(ab[t]))
    eps_hat = denoise(z, level, stacked_blur)
    x0_hat = (z - jnp.sqrt(1.0 - ab[t]) * eps_hat) / jnp.sqrt(ab[t])
    mean, variance = posterior(schedule, t, z, x0_hat)
    return mean + jnp.where(t > 1, jnp.sqrt(variance), 0.0) * noise_for(t)

  z = jax.lax.fori_loop(0, schedule.num_steps, step, noise_for(schedule.num_steps + 1))
  return sample_outputs(prediction, z, num_samples, residual_scale)
