"""The diffusion maths against independent closed forms, and the sampler's contracts."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from xydiff import diffusion
from xydiff.models.dvsr import DvSR
from xydiff.models.unet import UNet


def test_schedule_matches_sr3_defaults():
  s = diffusion.linear_schedule(2000, 1e-6, 1e-2)
  assert s.num_steps == 2000
  assert s.alpha_bars[0] == 1.0
  np.testing.assert_allclose(s.alpha_bars[1:], np.cumprod(1 - np.linspace(1e-6, 1e-2, 2000)))
  # The schedule ends almost at pure noise, so z_T ~ N(0, I) is the right start.
  assert s.alpha_bars[-1] < 1e-3


def test_posterior_matches_the_closed_form():
  s = diffusion.linear_schedule(50, 1e-4, 0.2)
  rng = np.random.default_rng(0)
  x_t, x0 = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
  for t in (1, 2, 17, 50):
    a = 1 - np.linspace(1e-4, 0.2, 50)
    ab = np.cumprod(a)
    ab_t, ab_prev = ab[t - 1], (ab[t - 2] if t > 1 else 1.0)
    mean_ref = (np.sqrt(ab_prev) * (1 - a[t - 1]) / (1 - ab_t) * x0
                + np.sqrt(a[t - 1]) * (1 - ab_prev) / (1 - ab_t) * x_t)
    var_ref = (1 - ab_prev) / (1 - ab_t) * (1 - a[t - 1])
    mean, var = diffusion.posterior(s, t, jnp.asarray(x_t, jnp.float32),
                                    jnp.asarray(x0, jnp.float32))
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(var, var_ref, rtol=1e-4, atol=1e-8)
  # At t = 1 the posterior is x0 exactly, with no variance.
  mean, var = diffusion.posterior(s, 1, jnp.asarray(x_t, jnp.float32), jnp.asarray(x0, jnp.float32))
  np.testing.assert_allclose(mean, x0, atol=1e-6)
  assert float(var) == 0.0


def test_marginal_equals_composed_single_steps():
  s = diffusion.linear_schedule(20, 1e-3, 0.1)
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
  direct = diffusion.q_sample(jnp.broadcast_to(x0, (n, 3)), level,
                              jax.random.normal(jax.random.key(1), (n, 3)))
  expected_mean = np.sqrt(s.alpha_bars[t]) * np.asarray(x0)
  expected_std = np.sqrt(1 - s.alpha_bars[t])
  for draws in (x, direct):
    np.testing.assert_allclose(np.mean(draws, 0), expected_mean, atol=4e-3)
    np.testing.assert_allclose(np.std(draws, 0), expected_std, rtol=1e-2)


def test_continuous_levels_fall_between_adjacent_steps():
  s = diffusion.linear_schedule(10, 1e-3, 0.3)
  levels = np.asarray(diffusion.sample_noise_level(jax.random.key(0), s, 10_000))
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
  for schedule in (diffusion.linear_schedule(10, 1e-4, 0.8),
                   diffusion.linear_schedule(100, 1e-6, 0.2)):
    out = diffusion.sample(predict, _oracle(r0, blur), blur, jax.random.split(key, 3),
                           schedule=schedule, residual_scale=scale)
    assert out['samples'].shape == (3, 2, 8, 8, 3)
    np.testing.assert_allclose(out['mean'], sharp, atol=1e-4)
    np.testing.assert_allclose(out['std'], 0.0, atol=1e-4)
    np.testing.assert_allclose(out['predictor'], predict(blur), atol=1e-6)


def _tiny_model():
  g = UNet(base=4, multipliers=(1, 2), num_res=1, rngs=nnx.Rngs(0))
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
  schedule = diffusion.linear_schedule(5, 1e-4, 0.6)
  predict = lambda y: model.predict(y)['restored']
  run = lambda ks: diffusion.sample(predict, model.denoise, blur, ks, schedule=schedule,
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
    schedule = diffusion.linear_schedule(num_steps, 1e-4, 0.5)

    def run(p, y):
      m = nnx.merge(graphdef, p)
      return diffusion.sample(lambda x: m.predict(x)['restored'], m.denoise, y,
                              jax.random.split(jax.random.key(0), 2), schedule=schedule,
                              residual_scale=2.0)['mean']
    # The traced program holds the denoiser once, inside one while loop.
    text = jax.jit(run).lower(params, blur).as_text()
    return text.count('stablehlo.while'), text.count('stablehlo.convolution')

  loops_10, convs_10 = count_denoiser_calls(10)
  loops_500, convs_500 = count_denoiser_calls(500)
  assert loops_10 == loops_500 >= 1
  # No unrolling: T = 500 compiles to the same convolutions as T = 10.
  assert convs_10 == convs_500


def test_loss_falls_on_a_fixed_batch():
  model = _tiny_model()
  graphdef, params = nnx.split(model, nnx.Param)
  blur = jax.random.uniform(jax.random.key(0), (4, 16, 16, 3))
  sharp = jnp.clip(blur + 0.1 * jax.random.normal(jax.random.key(1), blur.shape), 0, 1)
  schedule = diffusion.linear_schedule(100, 1e-4, 0.1)
  tx = optax.adam(3e-3)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, key):
    def loss_of(p):
      return diffusion.loss(nnx.merge(graphdef, p), {'blur': blur, 'sharp': sharp}, key,
                            schedule=schedule, residual_scale=2.0)[0]
    loss, grads = jax.value_and_grad(loss_of)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  eval_keys = jax.random.split(jax.random.key(99), 16)
  eval_loss = lambda p: np.mean([diffusion.loss(nnx.merge(graphdef, p), {'blur': blur, 'sharp': sharp},
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
  schedule = diffusion.linear_schedule(100, 1e-4, 0.1)
  grads = jax.grad(lambda p: diffusion.loss(nnx.merge(graphdef, p), batch, jax.random.key(3),
                                            schedule=schedule, residual_scale=2.0)[0])(params)
  g_norm = optax.tree.norm(grads['predictor'])
  assert g_norm > 0  # predictor_weight is 0: this gradient came through f.
