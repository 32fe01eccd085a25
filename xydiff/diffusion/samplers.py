"""Few-step samplers for DvSR's residual diffusion, on its continuous noise level.

The denoiser f(z, a, y) is conditioned on a = sqrt(alpha_bar) itself
(WaveGrad / SR3), so any decreasing sequence of levels can be walked with the
same weights. The levels are a `schedules.Schedule` (`schedules.sampling_schedule`
makes one from a preset): a sampler starts from z_T ~ N(0, I) at alpha_bar_T
and steps to alpha_bar_{T-1}, ..., alpha_bar_1 and finally alpha_bar_0 = 1,
where z is the residual itself. One denoiser call per step, T in all.

Notation: a_t = sqrt(alpha_bar_t), s_t = sqrt(1 - alpha_bar_t),
z_t = a_t r0 + s_t eps; the denoiser predicts eps, and the data prediction is
D_t = (z_t - s_t eps_hat) / a_t. The samplers:

- 'ancestral': the paper's Algorithm 1, `ancestral` below (the reference).
- 'ddim': DDIM (Song et al. 2021, eq. 12) with noise eta in [0, 1]; eta = 0
  is deterministic, eta = 1 is the ancestral step on the same levels.
- 'dpmpp_2m': DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), deterministic,
  second order from the data predictions of this step and the one before.
- 'dpmpp_2m_sde': its SDE form (the authors' later code; diffusers'
  'sde-dpmsolver++', midpoint), which adds fresh noise every step.

All of them are one update, with per-step scalars computed once in float64
from the levels:

    z_{t-1} = c_z z_t + c_d (D_t + w (D_t - D_{t+1})) + c_n xi_t,   xi_t ~ N(0, I)

so every sampler is the same `lax.scan`, one denoiser call and a few
elementwise operations per step, whatever T. (EDM's Heun sampler would need
two denoiser calls per step; it is not here.) The last step, to
alpha_bar_0 = 1, returns D_1 for every sampler here: no noise, first order.

Noise: z_T is sample i's draw fold_in(key_i, T + 1) and xi_t its draw
fold_in(key_i, t), as in Algorithm 1; so sample i depends on its own key
alone, and DDIM with eta = 1 draws exactly what the ancestral sampler draws.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from xydiff import progress
from xydiff.diffusion.schedules import Schedule, log_snr, posterior

SAMPLERS = ('ancestral', 'ddim', 'dpmpp_2m', 'dpmpp_2m_sde')


def _step_reporter(num_steps: int) -> Callable:
  """done -> None: shows `done` of `num_steps` on the open progress bar, from inside the loop.

  Decided at trace time: with no bar showing, nothing is added to the loop.
  """
  if progress.current() is None:
    return lambda done: None
  report = functools.partial(progress.substep, total=num_steps, what='step')
  return lambda done: jax.debug.callback(report, done)


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


def ancestral(predict: Callable, denoise: Callable, blur: jax.Array, sample_keys: jax.Array,
           *, schedule: Schedule, residual_scale: float) -> dict[str, jax.Array]:
  """Algorithm 1 for N samples at once; returns samples, mean, std and g(y).

  The paper's ancestral sampler, and the reference the other samplers
  (below) are checked against: DDIM with eta = 1 on the same
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
  report = _step_reporter(schedule.num_steps)

  def step(i, z):
    t = schedule.num_steps - i
    level = jnp.full((z.shape[0],), jnp.sqrt(ab[t]))
    eps_hat = denoise(z, level, stacked_blur)
    x0_hat = (z - jnp.sqrt(1.0 - ab[t]) * eps_hat) / jnp.sqrt(ab[t])
    mean, variance = posterior(schedule, t, z, x0_hat)
    report(i + 1)
    return mean + jnp.where(t > 1, jnp.sqrt(variance), 0.0) * noise_for(t)

  z = jax.lax.fori_loop(0, schedule.num_steps, step, noise_for(schedule.num_steps + 1))
  return sample_outputs(prediction, z, num_samples, residual_scale)


@dataclasses.dataclass(frozen=True)
class StepCoefficients:
  """Per-step scalars of the update above, index i = 0..T-1 for the step from level T - i.

  All [T] float64: `level` a_t fed to the denoiser, `s` s_t, and c_z, c_d, w, c_n.
  """

  level: np.ndarray
  s: np.ndarray
  c_z: np.ndarray
  c_d: np.ndarray
  w: np.ndarray
  c_n: np.ndarray

  @property
  def multistep(self) -> bool:
    """Whether any step uses the previous step's data prediction (w != 0)."""
    return bool(np.any(self.w != 0))

  @property
  def stochastic(self) -> bool:
    """Whether any step adds noise (c_n != 0)."""
    return bool(np.any(self.c_n != 0))


def check(sampler: str, eta: float = 0.0) -> None:
  """Raises ValueError unless `sampler` is known and `eta` fits it (DDIM alone takes one)."""
  if sampler not in SAMPLERS:
    raise ValueError(f'sampler must be one of {SAMPLERS}, got {sampler!r}')
  if sampler == 'ddim':
    if not 0.0 <= eta <= 1.0:
      raise ValueError(f'DDIM needs 0 <= eta <= 1, got {eta}')
  elif eta != 0.0:
    raise ValueError(f'eta is DDIM\'s; {sampler!r} takes none, got eta={eta}')


def coefficients(sampler: str, schedule: Schedule, eta: float = 0.0) -> StepCoefficients:
  """The per-step scalars of `sampler` ('ddim', 'dpmpp_2m' or 'dpmpp_2m_sde') on `schedule`."""
  check(sampler, eta)
  if sampler == 'ancestral':
    raise ValueError("'ancestral' is samplers.ancestral (Algorithm 1 verbatim), not a table")
  ab = np.asarray(schedule.alpha_bars, np.float64)  # [T + 1], ab[0] = 1.
  t = np.arange(schedule.num_steps, 0, -1)  # The level each step starts from.
  ab_t, ab_u = ab[t], ab[t - 1]  # From level t to level u = t - 1.
  a_t, s_t = np.sqrt(ab_t), np.sqrt(1.0 - ab_t)
  a_u, s_u = np.sqrt(ab_u), np.sqrt(1.0 - ab_u)
  w = np.zeros_like(ab_t)
  if sampler == 'ddim':
    # eq. 12 with sigma(eta) of eq. 16: z_u = a_u D + sqrt(s_u^2 - sigma^2) eps + sigma xi,
    # and eps = (z - a_t D) / s_t.
    sigma = eta * np.sqrt((1.0 - ab_u) / (1.0 - ab_t) * (1.0 - ab_t / ab_u))
    direction = np.sqrt(np.maximum(1.0 - ab_u - sigma ** 2, 0.0))
    c_z = direction / s_t
    c_d = a_u - direction * a_t / s_t
    c_n = sigma
  else:
    # In lambda = log(a / s) = -log(sigma_VE), sigma_VE = s / a: e^{-h} = sigma_VE(u) / sigma_VE(t),
    # 0 at the last step (s_0 = 0), where h is infinite and the step returns D.
    decay = (s_u / a_u) / (s_t / a_t)
    if sampler == 'dpmpp_2m':
      c_z, c_d, c_n = s_u / s_t, a_u * (1.0 - decay), np.zeros_like(ab_t)
    else:  # 'dpmpp_2m_sde': the same step with h doubled in the data term, and fresh noise.
      c_z = s_u / s_t * decay
      c_d = a_u * (1.0 - decay ** 2)
      c_n = s_u * np.sqrt(1.0 - decay ** 2)
    # Second order (Algorithm 2): D = (1 + 1/(2r)) D_t - 1/(2r) D_{t+1}, r = h_prev / h,
    # so w = h / (2 h_prev). The first step has no D_{t+1}; the last has h infinite: both first order.
    lam = log_snr(ab[1:])  # lambda at levels 1..T.
    if schedule.num_steps > 2:
      h = lam[t[1:-1] - 2] - lam[t[1:-1] - 1]  # Steps 2..T-1 (i = 1..T-2), from t to t - 1 >= 1.
      h_prev = lam[t[1:-1] - 1] - lam[t[1:-1]]
      w[1:-1] = h / (2.0 * h_prev)
  return StepCoefficients(level=a_t, s=s_t, c_z=c_z, c_d=c_d, w=w, c_n=c_n)


def solve(denoise: Callable, z: jax.Array, noise_for: Callable, *, sampler: str,
          schedule: Schedule, eta: float = 0.0, trajectory: bool = False):
  """Walks `schedule` from z = z_T to z_0 with `sampler`: one `lax.scan`, one denoise per step.

  `denoise(z, level)` -> eps_hat, level the scalar a_t; `noise_for(t)` -> xi_t
  like z, drawn only by the stochastic samplers (and never when c_n is 0 for
  every step). Returns z_0, or (z_0, [T, ...] the states z_{T-1}, ..., z_0)
  with `trajectory`.
  """
  coeffs = coefficients(sampler, schedule, eta)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  xs = {'t': jnp.arange(schedule.num_steps, 0, -1, dtype=jnp.int32), 'level': f32(coeffs.level),
        's': f32(coeffs.s), 'c_z': f32(coeffs.c_z), 'c_d': f32(coeffs.c_d), 'w': f32(coeffs.w),
        'c_n': f32(coeffs.c_n)}
  multistep, stochastic = coeffs.multistep, coeffs.stochastic
  report = _step_reporter(schedule.num_steps)

  def step(carry, x):
    z, d_prev = carry if multistep else (carry, None)
    eps_hat = denoise(z, x['level'])
    d = (z - x['s'] * eps_hat) / x['level']
    d_next = d
    if multistep:  # diffusers' D0 + 0.5 D1, D1 = (D0 - D_prev) / r.
      d = d + x['w'] * (d - d_prev)
    z_next = x['c_z'] * z + x['c_d'] * d
    if stochastic:
      z_next = z_next + x['c_n'] * noise_for(x['t'])
    carry = (z_next, d_next) if multistep else z_next
    report(schedule.num_steps - x['t'] + 1)
    return carry, (z_next if trajectory else None)

  init = (z, jnp.zeros_like(z)) if multistep else z
  carry, states = jax.lax.scan(step, init, xs)
  z_final = carry[0] if multistep else carry
  return (z_final, states) if trajectory else z_final


def sample(predict: Callable, denoise: Callable, blur: jax.Array, sample_keys: jax.Array,
           *, schedule: Schedule, residual_scale: float, sampler: str = 'ancestral',
           eta: float = 0.0) -> dict[str, jax.Array]:
  """N samples of x = g(y) + r0 by `sampler` on `schedule`; the same contract as `ancestral`.

  'ancestral' is `ancestral` itself, bit for bit. The others run
  `solve` on the N x B stacked batch, starting from the same z_T draw, so for a
  given key every sampler starts from the same point. Returns {'samples':
  [N, B, H, W, C], 'mean', 'std' (over N, image units), 'predictor': g(y)}.
  """
  check(sampler, eta)
  if sampler == 'ancestral':
    return ancestral(predict, denoise, blur, sample_keys, schedule=schedule,
                     residual_scale=residual_scale)
  num_samples = sample_keys.shape[0]
  prediction = predict(blur)
  stacked_blur = jnp.tile(blur, (num_samples, 1, 1, 1))
  noise_for = per_sample_noise(sample_keys, blur.shape)
  z = solve(lambda z, level: denoise(z, jnp.full((z.shape[0],), level), stacked_blur),
            noise_for(schedule.num_steps + 1), noise_for, sampler=sampler, schedule=schedule,
            eta=eta)
  return sample_outputs(prediction, z, num_samples, residual_scale)
