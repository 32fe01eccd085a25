"""DvSR's predict-and-refine conditional diffusion: schedules, loss, sampler.

The diffusion models the residual r0 = x0 - g(y) of a deterministic predictor
g, in units of `residual_scale` (2 puts [0, 1] images on the usual [-1, 1]
diffusion scale). The denoiser f(z, level, y) is conditioned on the
continuous noise level sqrt(alpha_bar) (WaveGrad / SR3), so the sampling
schedule is chosen at inference without retraining.

Notation follows DvSR (Whang et al., CVPR 2022) and SR3: alpha_t per step,
alpha_bar_t their cumulative product, posterior q(x_{t-1} | x_t, x_0) =
N(mu_t, beta_t I).
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


def sample(predict: Callable, denoise: Callable, blur: jax.Array, sample_keys: jax.Array,
           *, schedule: Schedule, residual_scale: float) -> dict[str, jax.Array]:
  """Algorithm 1 for N samples at once; returns samples, mean, std and g(y).

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
  batch_shape = blur.shape
  stacked_blur = jnp.tile(blur, (num_samples, 1, 1, 1))
  ab = jnp.asarray(schedule.alpha_bars, jnp.float32)

  def noise_for(t):  # One draw per sample, each from its own key.
    draws = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, t), batch_shape))
    return draws(sample_keys).reshape((-1,) + batch_shape[1:])

  def step(i, z):
    t = schedule.num_steps - i
    level = jnp.full((z.shape[0],), jnp.sqrt(ab[t]))
    eps_hat = denoise(z, level, stacked_blur)
    x0_hat = (z - jnp.sqrt(1.0 - ab[t]) * eps_hat) / jnp.sqrt(ab[t])
    mean, variance = posterior(schedule, t, z, x0_hat)
    return mean + jnp.where(t > 1, jnp.sqrt(variance), 0.0) * noise_for(t)

  z = jax.lax.fori_loop(0, schedule.num_steps, step, noise_for(schedule.num_steps + 1))
  residual = z.reshape((num_samples,) + batch_shape) / residual_scale
  samples = prediction[None] + residual
  return {'samples': samples, 'mean': samples.mean(axis=0), 'std': samples.std(axis=0),
          'predictor': prediction}
