"""The diffusion maths against independent closed forms, and the sampler's contracts."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from xydiff.diffusion import losses, samplers, schedules
from xydiff.models.dvsr import DvSR
from xydiff.models.unet import UNet, UNetDeblur


def test_schedule_matches_sr3_defaults():
  s = schedules.linear_schedule(2000, 1e-6, 1e-2)
  assert s.num_steps == 2000
  assert s.alpha_bars[0] == 1.0
  np.testing.assert_allclose(s.alpha_bars[1:], np.cumprod(1 - np.linspace(1e-6, 1e-2, 2000)))
  # The schedule ends almost at pure noise, so z_T ~ N(0, I) is the right start.
  assert s.alpha_bars[-1] < 1e-3


def test_posterior_matches_the_closed_form():
  s = schedules.linear_schedule(50, 1e-4, 0.2)
  rng = np.random.default_rng(0)
  x_t, x0 = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
  for t in (1, 2, 17, 50):
    a = 1 - np.linspace(1e-4, 0.2, 50)
    ab = np.cumprod(a)
    ab_t, ab_prev = ab[t - 1], (ab[t - 2] if t > 1 else 1.0)
    mean_ref = (np.sqrt(ab_prev) * (1 - a[t - 1]) / (1 - ab_t) * x0
                + np.sqrt(a[t - 1]) * (1 - ab_prev) / (1 - ab_t) * x_t)
    var_ref = (1 - ab_prev) / (1 - ab_t) * (1 - a[t - 1])
    mean, var = schedules.posterior(s, t, jnp.asarray(x_t, jnp.float32),
                                    jnp.asarray(x0, jnp.float32))
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(var, var_ref, rtol=1e-4, atol=1e-8)
  # At t = 1 the posterior is x0 exactly, with no variance.
  mean, var = schedules.posterior(s, 1, jnp.asarray(x_t, jnp.float32), jnp.asarray(x0, jnp.float32))
  np.testing.assert_allclose(mean, x0, atol=1e-6)
  assert float(var) == 0.0


def test_marginal_equals_composed_single_steps():
  s = schedules.linear_schedule(20, 1e-3, 0.1)
  t = 12
  x0 = jnp.asarray([-0.8, 0.1, 0.6])
  n = 200_000
  key = jax.random.key(0)
  # Compose q(x_k | x_{k-1}) = N(sqrt(a_k) x_{k-1}, (1 - a_k) I) t times.
  x = jnp.broadcast_to(x0, (n, 3))
  for k in range(t):
    key, sub = jax.random.split(key)
    a = float(s.alphas[k])
    x = np.sqrt(a) * x + np.sqrt(1 - a) * jax.random.normal(sub, x.shape)
  level = jnp.full((n,), np.sqrt(s.alpha_bars[t]))
  direct = schedules.q_sample(jnp.broadcast_to(x0, (n, 3)), level,
                              jax.random.normal(jax.random.key(1), (n, 3)))
  expected_mean = np.sqrt(s.alpha_bars[t]) * np.asarray(x0)
  expected_std = np.sqrt(1 - s.alpha_bars[t])
  for draws in (x, direct):
    np.testing.assert_allclose(np.mean(draws, 0), expected_mean, atol=4e-3)
    np.testing.assert_allclose(np.std(draws, 0), expected_std, rtol=1e-2)


def test_continuous_levels_fall_between_adjacent_steps():
  s = schedules.linear_schedule(10, 1e-3, 0.3)
  levels = np.asarray(schedules.sample_noise_level(jax.random.key(0), s, 10_000))
  sqrt_ab = np.sqrt(s.alpha_bars)
  assert levels.min() >= sqrt_ab[-1] - 1e-6 and levels.max() <= 1.0
  # Continuous, not the 11 grid values: almost every draw is off the grid.
  assert len(np.unique(np.round(levels, 6))) > 9000
  # Each interval (sqrt ab_t, sqrt ab_{t-1}) is hit about equally often (t is uniform).
  counts = np.histogram(levels, bins=sqrt_ab[::-1])[0]
  np.testing.assert_allclose(counts / len(levels), 0.1, atol=0.02)


def _oracle(r0, blur):
  """A denoiser that knows the clean residual returns the true noise."""
  def denoise(z, level, y):
    del y
    lv = level.reshape(-1, 1, 1, 1)
    stacked = jnp.tile(r0, (z.shape[0] // r0.shape[0], 1, 1, 1))
    return (z - lv * stacked) / jnp.sqrt(1 - lv ** 2)
  return denoise


def test_sampler_with_an_oracle_denoiser_returns_x0():
  key = jax.random.key(0)
  blur = jax.random.uniform(key, (2, 8, 8, 3))
  sharp = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3))
  predict = lambda y: 0.5 * y + 0.2  # Any deterministic g.
  scale = 2.0
  r0 = (sharp - predict(blur)) * scale
  for schedule in (schedules.linear_schedule(10, 1e-4, 0.8),
                   schedules.linear_schedule(100, 1e-6, 0.2)):
    out = samplers.ancestral(predict, _oracle(r0, blur), blur, jax.random.split(key, 3),
                           schedule=schedule, residual_scale=scale)
    assert out['samples'].shape == (3, 2, 8, 8, 3)
    np.testing.assert_allclose(out['mean'], sharp, atol=1e-4)
    np.testing.assert_allclose(out['std'], 0.0, atol=1e-4)
    np.testing.assert_allclose(out['predictor'], predict(blur), atol=1e-6)


def _tiny_model():
  g = UNetDeblur(base=4, multipliers=(1, 2), num_res=1, rngs=nnx.Rngs(0))
  f = UNet(in_channels=6, base=4, multipliers=(1, 2), num_res=1, noise_conditioned=True,
           rngs=nnx.Rngs(1))
  model = DvSR(g, f)
  # Non-zero output convs, so samples depend on the network.
  for net, k in ((g, 5), (f, 6)):
    net.decoder.out.kernel[...] = 0.1 * jax.random.normal(jax.random.key(k),
                                                          net.decoder.out.kernel.shape)
  return model


def test_sample_averaging_is_the_mean_of_single_samples_with_the_same_keys():
  model = _tiny_model()
  blur = jax.random.uniform(jax.random.key(2), (1, 16, 16, 3))
  keys = jax.random.split(jax.random.key(7), 4)
  schedule = schedules.linear_schedule(5, 1e-4, 0.6)
  predict = lambda y: model.predict(y)['restored']
  run = lambda ks: samplers.ancestral(predict, model.denoise, blur, ks, schedule=schedule,
                                    residual_scale=2.0)
  together = run(keys)
  singles = [run(keys[i:i + 1])['samples'][0] for i in range(4)]
  np.testing.assert_allclose(together['mean'], np.mean(singles, axis=0), atol=1e-5)
  np.testing.assert_allclose(together['std'], np.std(singles, axis=0), atol=1e-5)
  # Distinct keys give distinct samples: averaging is over real variation.
  assert np.abs(singles[0] - singles[1]).max() > 1e-3


def test_sampler_is_one_jitted_loop_whatever_the_number_of_steps():
  model = _tiny_model()
  graphdef, params = nnx.split(model)
  blur = jnp.zeros((1, 8, 8, 3))

  def count_denoiser_calls(num_steps):
    schedule = schedules.linear_schedule(num_steps, 1e-4, 0.5)

    def run(p, y):
      m = nnx.merge(graphdef, p)
      return samplers.ancestral(lambda x: m.predict(x)['restored'], m.denoise, y,
                              jax.random.split(jax.random.key(0), 2), schedule=schedule,
                              residual_scale=2.0)['mean']
    # The traced program holds the denoiser once, inside one while loop. An unrolled
    # body's copies would share its functions and add call sites, so count both.
    text = jax.jit(run).lower(params, blur).as_text()
    return text.count('stablehlo.while'), text.count('stablehlo.convolution'), text.count('call @')

  loops_10, convs_10, calls_10 = count_denoiser_calls(10)
  loops_500, convs_500, calls_500 = count_denoiser_calls(500)
  assert loops_10 == loops_500 >= 1
  # No unrolling: T = 500 compiles to the same convolutions and calls as T = 10.
  assert (convs_10, calls_10) == (convs_500, calls_500)


def test_loss_falls_on_a_fixed_batch():
  model = _tiny_model()
  graphdef, params = nnx.split(model, nnx.Param)
  blur = jax.random.uniform(jax.random.key(0), (4, 16, 16, 3))
  sharp = jnp.clip(blur + 0.1 * jax.random.normal(jax.random.key(1), blur.shape), 0, 1)
  schedule = schedules.linear_schedule(100, 1e-4, 0.1)
  tx = optax.adam(3e-3)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, key):
    def loss_of(p):
      return losses.loss(nnx.merge(graphdef, p), {'blur': blur, 'sharp': sharp}, key,
                            schedule=schedule, residual_scale=2.0)[0]
    loss, grads = jax.value_and_grad(loss_of)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  eval_keys = jax.random.split(jax.random.key(99), 16)
  eval_loss = lambda p: np.mean([losses.loss(nnx.merge(graphdef, p), {'blur': blur, 'sharp': sharp},
                                                k, schedule=schedule, residual_scale=2.0)[0]
                                 for k in eval_keys])
  before = eval_loss(params)
  for i in range(40):
    params, opt_state, _ = step(params, opt_state, jax.random.key(i))
  after = eval_loss(params)
  assert after < 0.9 * before, (before, after)


def test_the_loss_trains_the_predictor_through_the_denoiser():
  model = _tiny_model()
  graphdef, params = nnx.split(model, nnx.Param)
  batch = {'blur': jax.random.uniform(jax.random.key(0), (2, 16, 16, 3)),
           'sharp': jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))}
  schedule = schedules.linear_schedule(100, 1e-4, 0.1)
  grads = jax.grad(lambda p: losses.loss(nnx.merge(graphdef, p), batch, jax.random.key(3),
                                            schedule=schedule, residual_scale=2.0)[0])(params)
  g_norm = optax.tree.norm(grads['predictor'])
  assert g_norm > 0  # predictor_weight is 0: this gradient came through f.


# ------------------------------------------- the sampler, step by step
#
# An oracle denoiser makes every x0_hat exact, and a small beta_1 makes the
# last step return x0_hat with next to no noise, so the oracle test above
# cannot see a wrong noise scale, a wrong x0_hat or reused noise. The tests
# below use denoisers that are not oracles (and a large beta_1 where the last
# step would hide the rest), so every step's arithmetic and draw reach the output.


def _linear_denoiser(z, level, y):
  """Not an oracle: a fixed function of z, the level and y, so x0_hat is never exact."""
  lv = level.reshape(-1, 1, 1, 1)
  return 0.6 * lv * z + 0.3 * (1.0 - lv) * z - 0.4 * y + 0.1


def _step_noise(keys, steps, shape):
  """{t: [N, *shape] float64}: sample i's step-t draw, as the sampler defines it."""
  return {t: np.asarray([jax.random.normal(jax.random.fold_in(k, t), shape) for k in keys],
                        np.float64)
          for t in steps}


def _reference_sample(predict, denoise, blur, noise, schedule, residual_scale):
  """Algorithm 1 in float64 NumPy, all samples stacked, on the draws `noise[t]`."""
  ab, alphas = schedule.alpha_bars, schedule.alphas
  num_steps = schedule.num_steps
  y = np.asarray(blur, np.float64)
  z = noise[num_steps + 1]
  for t in range(num_steps, 0, -1):
    level = np.full((y.shape[0],), np.sqrt(ab[t]))
    eps_hat = np.stack([np.asarray(denoise(z_i, level, y), np.float64) for z_i in z])
    x0_hat = (z - np.sqrt(1 - ab[t]) * eps_hat) / np.sqrt(ab[t])
    a, ab_prev = alphas[t - 1], ab[t - 1]
    mean = (np.sqrt(ab_prev) * (1 - a) / (1 - ab[t]) * x0_hat
            + np.sqrt(a) * (1 - ab_prev) / (1 - ab[t]) * z)
    beta_tilde = (1 - ab_prev) / (1 - ab[t]) * (1 - a)
    z = mean + (np.sqrt(beta_tilde) * noise[t] if t > 1 else 0.0)
  return np.asarray(predict(y), np.float64)[None] + z / residual_scale


def test_sampler_matches_a_float64_reference_loop_step_for_step():
  # A batch of 2 and 3 samples, so the stacking of samples over the batch is seen too.
  blur = jax.random.uniform(jax.random.key(3), (2, 4, 4, 3))
  keys = jax.random.split(jax.random.key(4), 3)
  predict = lambda y: 0.5 * y + 0.2
  scale = 2.0
  # beta_1 = 0.05: the last step keeps much of what the earlier steps drew.
  schedule = schedules.linear_schedule(10, 0.05, 0.5)
  noise = _step_noise(keys, range(1, schedule.num_steps + 2), blur.shape)
  out = samplers.ancestral(predict, _linear_denoiser, blur, keys, schedule=schedule,
                         residual_scale=scale)
  ref = _reference_sample(predict, _linear_denoiser, blur, noise, schedule, scale)
  # Float32 against float64 over ten steps: round-off stays far below 1e-4, while
  # a wrong coefficient or a reused draw moves values by a sizeable fraction of one.
  np.testing.assert_allclose(out['samples'], ref, atol=1e-4, rtol=0)
  np.testing.assert_allclose(out['mean'], ref.mean(0), atol=1e-4, rtol=0)
  np.testing.assert_allclose(out['std'], ref.std(0), atol=1e-4, rtol=0)


def test_a_single_step_returns_x0_hat_in_closed_form():
  # With T = 1 the posterior at t = 1 is x0_hat with no noise, so the output is
  # g(y) + x0_hat / scale; alpha_bar_1 = 0.4 tells sqrt(alpha_bar) from alpha_bar.
  schedule = schedules.linear_schedule(1, 0.6, 0.6)
  blur = jax.random.uniform(jax.random.key(5), (2, 4, 4, 3))
  keys = jax.random.split(jax.random.key(6), 2)
  predict = lambda y: 0.5 * y + 0.2
  scale = 2.0
  out = samplers.ancestral(predict, _linear_denoiser, blur, keys, schedule=schedule,
                         residual_scale=scale)
  ab = 0.4
  z = _step_noise(keys, [2], blur.shape)[2]  # z_T is drawn with t = T + 1.
  y = np.asarray(blur, np.float64)
  eps_hat = np.stack([_linear_denoiser(z_i, np.full((2,), np.sqrt(ab)), y) for z_i in z])
  x0_hat = (z - np.sqrt(1 - ab) * eps_hat) / np.sqrt(ab)
  np.testing.assert_allclose(out['samples'], np.asarray(predict(y)) + x0_hat / scale,
                             atol=1e-5, rtol=0)


def test_samples_from_gaussian_data_have_its_mean_and_std():
  # If r0 ~ N(mu, s^2) per pixel (in the sampler's units: residual_scale times
  # the image residual x0 - g(y)), then
  # z = l r0 + sqrt(1 - l^2) eps is jointly Gaussian with eps and the exact
  # eps-prediction is E[eps | z] = sqrt(1 - l^2) (z - l mu) / (l^2 s^2 + 1 - l^2).
  # With it, a correct sampler draws from N(mu, s^2) up to its finite-T error.
  mu, s, scale = 0.3, 0.5, 2.0

  def exact_denoiser(z, level, y):
    del y
    l2 = level.reshape(-1, 1, 1, 1) ** 2
    return jnp.sqrt(1 - l2) * (z - jnp.sqrt(l2) * mu) / (l2 * s ** 2 + 1 - l2)

  schedule = schedules.linear_schedule(2000, 1e-6, 1e-2)  # SR3's training schedule.
  blur = jax.random.uniform(jax.random.key(8), (1, 32, 32, 3))
  predict = lambda y: 0.5 * y + 0.2
  keys = samplers.sample_keys(jax.random.key(9), 8)
  out = samplers.ancestral(predict, exact_denoiser, blur, keys, schedule=schedule,
                         residual_scale=scale)
  # Every pixel of every sample is an independent draw (elementwise denoiser, iid noise).
  r0 = np.asarray((out['samples'] - out['predictor'][None]) * scale, np.float64).ravel()
  n = r0.size
  # Four standard errors of the sample mean and sample std of n Gaussian draws; the std
  # also gets 0.005 for ancestral sampling's variance deficit at finite T (the sampler
  # adds beta_tilde, not beta_tilde plus the x0 posterior's spread), which is below
  # that for this schedule by the closed-form recursion of the Gaussian case.
  assert abs(r0.mean() - mu) < 4 * s / np.sqrt(n), r0.mean()
  assert abs(r0.std() - s) < 4 * s / np.sqrt(2 * n) + 0.005, r0.std()
