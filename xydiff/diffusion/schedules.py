"""Noise schedules: the levels a diffusion is trained on and the levels a sampler walks.

A `Schedule` is also the discretisation every sampler walks: its alpha_bars,
from alpha_bar_T down to alpha_bar_0 = 1, are the levels visited.
`sampling_schedule` makes one from an inference preset.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


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
