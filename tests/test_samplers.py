"""The few-step samplers against diffusers' PyTorch schedulers, step by step, and their contracts.

The reference is diffusers' DDIMScheduler and DPMSolverMultistepScheduler
(dpmsolver++ and sde-dpmsolver++, order 2, midpoint), driven on exactly our
levels (their alphas_cumprod / sigmas set to ours, after checking that their
own float32 arithmetic on our betas gives the same levels) with the same
noise, and a fixed analytic denoiser: the exact eps-prediction for Gaussian
data r0 ~ N(m, v) per element, eps_hat(z) = (z - a m) s / (a^2 v + s^2).
Every state along the way must agree to float32 precision.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from xydiff.diffusion import samplers, schedules
from test_diffusion import _linear_denoiser, _tiny_model

# Per-element data mean and variance of the analytic denoiser: not uniform, so a
# wrong level moves every element differently.
_SHAPE = (2, 3, 4, 3)
_M = np.random.default_rng(0).normal(0.2, 0.5, _SHAPE)
_V = np.random.default_rng(1).uniform(0.05, 0.6, _SHAPE)


def _gaussian_eps(z, a):
  """E[eps | z_t = z] for r0 ~ N(_M, _V): works on jax (float32) and numpy (float64) alike."""
  s2 = 1.0 - a * a
  return (z - a * _M) * (s2 ** 0.5) / (a * a * _V + s2)


def _states(sampler, schedule, z_T, noise, eta=0.0):
  """Our [T] states z_{T-1}..z_0 from z_T, with xi_t = noise[t]."""
  noise = jnp.asarray(noise, jnp.float32)
  _, states = jax.jit(lambda z: samplers.solve(
      lambda x, level: _gaussian_eps(x, level).astype(jnp.float32), z, lambda t: noise[t],
      sampler=sampler, schedule=schedule, eta=eta, trajectory=True))(jnp.asarray(z_T))
  return np.asarray(states)


def _diffusers_ddim_states(schedule, z_T, noise, eta):
  torch = pytest.importorskip('torch')
  diffusers = pytest.importorskip('diffusers')
  num_steps = schedule.num_steps
  scheduler = diffusers.DDIMScheduler(
      num_train_timesteps=num_steps, trained_betas=schedule.betas, clip_sample=False,
      set_alpha_to_one=True, timestep_spacing='leading', steps_offset=0)
  # Its own float32 cumprod of our betas is our levels; then exactly ours, in float64.
  np.testing.assert_allclose(scheduler.alphas_cumprod.numpy(), schedule.alpha_bars[1:], rtol=2e-6)
  scheduler.alphas_cumprod = torch.tensor(schedule.alpha_bars[1:], dtype=torch.float64)
  scheduler.set_timesteps(num_steps)
  assert scheduler.timesteps.tolist() == list(range(num_steps - 1, -1, -1))
  x, states = torch.tensor(z_T), []
  for i, t in enumerate(scheduler.timesteps):
    a = float(scheduler.alphas_cumprod[t]) ** 0.5
    eps = torch.tensor(_gaussian_eps(x.numpy().astype(np.float64), a), dtype=torch.float32)
    x = scheduler.step(eps, t, x, eta=eta,
                       variance_noise=torch.tensor(noise[num_steps - i])).prev_sample
    states.append(x.numpy())
  return np.stack(states)


def _diffusers_dpm_states(schedule, z_T, noise, algorithm):
  torch = pytest.importorskip('torch')
  diffusers = pytest.importorskip('diffusers')
  num_steps = schedule.num_steps
  scheduler = diffusers.DPMSolverMultistepScheduler(
      num_train_timesteps=num_steps, trained_betas=schedule.betas, algorithm_type=algorithm,
      solver_order=2, solver_type='midpoint', lower_order_final=True, final_sigmas_type='zero',
      prediction_type='epsilon')
  scheduler.set_timesteps(timesteps=list(range(num_steps - 1, -1, -1)))
  ab = schedule.alpha_bars[:0:-1]  # Levels T..1.
  sigmas = np.concatenate([np.sqrt((1 - ab) / ab), [0.0]])  # VE sigma; 0 is the clean end.
  # Its own float32 levels from our betas are ours (read as alpha_bar = 1 / (1 + sigma^2):
  # its sigmas of levels near 1 carry float32's cancellation in 1 - alpha_bar).
  their_ab = 1.0 / (1.0 + scheduler.sigmas.numpy().astype(np.float64) ** 2)
  np.testing.assert_allclose(their_ab, np.concatenate([ab, [1.0]]), rtol=2e-6)
  scheduler.sigmas = torch.tensor(sigmas, dtype=torch.float64)
  x, states = torch.tensor(z_T), []
  for i, t in enumerate(scheduler.timesteps):
    a = 1.0 / np.sqrt(sigmas[i] ** 2 + 1.0)
    eps = torch.tensor(_gaussian_eps(x.numpy().astype(np.float64), a), dtype=torch.float32)
    x = scheduler.step(eps, t, x, variance_noise=torch.tensor(noise[num_steps - i])).prev_sample
    states.append(x.numpy())
  return np.stack(states)


def _start_and_noise(num_steps, seed=0):
  rng = np.random.default_rng(seed)
  z_T = rng.normal(size=_SHAPE).astype(np.float32)
  noise = rng.normal(size=(num_steps + 2,) + _SHAPE).astype(np.float32)  # noise[t], t = 1..T.
  return z_T, noise


# Few steps, where every coefficient matters, on both spacings; a logSNR schedule
# over a wide range, where the first levels are almost pure noise; and enough steps
# that most of the DPM-Solver++ steps are second order.
_SCHEDULES = {
    'linear_beta_6': schedules.sampling_schedule(6, 1e-3, 0.6),
    'logsnr_6': schedules.sampling_schedule(6, 1e-3, 0.6, spacing='logsnr'),
    'logsnr_wide_12': schedules.logsnr_schedule(12, 1 - 1e-5, 4e-5),
    'linear_beta_25': schedules.sampling_schedule(25, 1e-4, 0.2),
}
# Float32 against a float32 reference of other arithmetic: states of order one agree
# to a few ulps times the steps taken; a wrong coefficient, level or order moves them
# by 1e-2 or more (the planted bugs, README of this file's tests in the report).
_ATOL = 2e-5


@pytest.mark.parametrize('eta', [0.0, 0.5, 1.0])
@pytest.mark.parametrize('name', list(_SCHEDULES))
def test_ddim_matches_diffusers_step_for_step(name, eta):
  schedule = _SCHEDULES[name]
  z_T, noise = _start_and_noise(schedule.num_steps)
  ours = _states('ddim', schedule, z_T, noise, eta)
  theirs = _diffusers_ddim_states(schedule, z_T, noise, eta)
  np.testing.assert_allclose(ours, theirs, atol=_ATOL, rtol=0)


@pytest.mark.parametrize('sampler,algorithm', [('dpmpp_2m', 'dpmsolver++'),
                                               ('dpmpp_2m_sde', 'sde-dpmsolver++')])
@pytest.mark.parametrize('name', list(_SCHEDULES))
def test_dpm_solver_pp_matches_diffusers_step_for_step(name, sampler, algorithm):
  schedule = _SCHEDULES[name]
  z_T, noise = _start_and_noise(schedule.num_steps)
  ours = _states(sampler, schedule, z_T, noise)
  theirs = _diffusers_dpm_states(schedule, z_T, noise, algorithm)
  np.testing.assert_allclose(ours, theirs, atol=_ATOL, rtol=0)


@pytest.mark.parametrize('num_steps', [1, 2, 3])
@pytest.mark.parametrize('sampler,algorithm', [('dpmpp_2m', 'dpmsolver++'),
                                               ('dpmpp_2m_sde', 'sde-dpmsolver++')])
def test_dpm_solver_pp_edge_lengths_match_diffusers(num_steps, sampler, algorithm):
  # One step is first order only; two are a first step and a last; three have one 2M step.
  schedule = schedules.sampling_schedule(num_steps, 0.05, 0.7)
  z_T, noise = _start_and_noise(num_steps, seed=num_steps)
  np.testing.assert_allclose(_states(sampler, schedule, z_T, noise),
                             _diffusers_dpm_states(schedule, z_T, noise, algorithm),
                             atol=_ATOL, rtol=0)


def _ode_error(sampler, num_steps):
  """Max error of z_1 (the last noisy level) against the exact probability-flow ODE solution.

  For Gaussian data r0 ~ N(m, v) the ODE keeps (z_t - a_t m) / sqrt(a_t^2 v + s_t^2)
  fixed. z_1, not z_0: the last step (to alpha_bar = 1) returns the data
  prediction D_1, whose error is set by alpha_bar_1 alone, whatever the steps.
  """
  schedule = schedules.logsnr_schedule(num_steps, 0.999, 1e-3)
  z_T, noise = _start_and_noise(num_steps)
  level = lambda ab: (np.sqrt(ab), np.sqrt(ab * _V + 1 - ab))
  (a_T, std_T), (a_1, std_1) = level(schedule.alpha_bars[-1]), level(schedule.alpha_bars[1])
  exact = a_1 * _M + std_1 * (z_T - a_T * _M) / std_T
  return np.abs(_states(sampler, schedule, z_T, noise)[-2] - exact).max()


def test_dpm_solver_pp_2m_is_second_order_and_ddim_first():
  # Halving the step in lambda divides the global error by about 2**order (DDIM is
  # DPM-Solver++'s first-order method: a 2M that lost its second-order term is DDIM).
  orders = {s: np.log2(_ode_error(s, 16) / _ode_error(s, 32)) for s in ('ddim', 'dpmpp_2m')}
  assert 0.8 < orders['ddim'] < 1.3, orders
  assert 1.7 < orders['dpmpp_2m'] < 2.5, orders


def _jitted_sample(schedule, sampler, eta=0.0, sample=samplers.sample):
  """jitted (blur, keys) -> samples dict, with g(y) = 0.5 y + 0.2 and the linear denoiser."""
  return jax.jit(lambda blur, keys: sample(lambda y: 0.5 * y + 0.2, _linear_denoiser, blur, keys,
                                           schedule=schedule, residual_scale=2.0,
                                           **({} if sample is samplers.ancestral else
                                              dict(sampler=sampler, eta=eta))))


def test_ddim_with_eta_one_is_the_ancestral_sampler():
  # The same levels and the same draws: DDIM(eta = 1) is Algorithm 1 (samplers.ancestral).
  blur = jax.random.uniform(jax.random.key(3), (2, 4, 4, 3))
  keys = jax.random.split(jax.random.key(4), 3)
  schedule = schedules.linear_schedule(10, 0.05, 0.5)
  ancestral = _jitted_sample(schedule, None, sample=samplers.ancestral)(blur, keys)
  ddim = _jitted_sample(schedule, 'ddim', 1.0)(blur, keys)
  np.testing.assert_allclose(ddim['samples'], ancestral['samples'], atol=1e-5, rtol=0)
  # The same start, no noise after it: a different sample.
  ddim0 = _jitted_sample(schedule, 'ddim', 0.0)(blur, keys)
  assert np.abs(ddim0['samples'] - ancestral['samples']).max() > 1e-2


def test_ancestral_is_diffusion_sample_bit_for_bit():
  blur = jax.random.uniform(jax.random.key(2), (1, 4, 4, 3))
  keys = samplers.sample_keys(jax.random.key(7), 2)
  # Today's 'sa' preset's levels, through the preset route and the old one.
  ours = _jitted_sample(schedules.sampling_schedule(10, 1e-4, 0.8), 'ancestral')(blur, keys)
  reference = _jitted_sample(schedules.linear_schedule(10, 1e-4, 0.8), None,
                             sample=samplers.ancestral)(blur, keys)
  assert ours.keys() == reference.keys()
  for name in reference:
    np.testing.assert_array_equal(ours[name], reference[name])


@pytest.mark.parametrize('sampler,eta', [('ddim', 0.0), ('ddim', 0.7), ('dpmpp_2m', 0.0),
                                         ('dpmpp_2m_sde', 0.0)])
def test_a_sample_depends_on_its_own_key_alone(sampler, eta):
  blur = jax.random.uniform(jax.random.key(2), (2, 4, 4, 3))
  keys = jax.random.split(jax.random.key(7), 3)
  run = _jitted_sample(schedules.sampling_schedule(5, 1e-3, 0.6), sampler, eta)
  together = run(blur, keys)
  assert together['samples'].shape == (3, 2, 4, 4, 3)
  singles = np.stack([run(blur, keys[i:i + 1])['samples'][0] for i in range(3)])
  np.testing.assert_allclose(together['samples'], singles, atol=1e-6, rtol=0)
  np.testing.assert_allclose(together['mean'], singles.mean(0), atol=1e-6, rtol=0)
  np.testing.assert_allclose(together['std'], singles.std(0), atol=1e-6, rtol=0)
  np.testing.assert_allclose(together['predictor'], 0.5 * blur + 0.2, atol=1e-6)
  assert np.abs(singles[0] - singles[1]).max() > 1e-2  # Distinct keys, distinct samples.


@pytest.mark.parametrize('sampler', ['ddim', 'dpmpp_2m', 'dpmpp_2m_sde'])
def test_each_sampler_is_one_loop_with_one_denoiser_call_whatever_the_steps(sampler):
  model = _tiny_model()
  graphdef, params = nnx.split(model)
  blur = jnp.zeros((1, 8, 8, 3))

  def count(num_steps, name):
    schedule = schedules.sampling_schedule(num_steps, 1e-4, 0.5)

    def run(p, y):
      m = nnx.merge(graphdef, p)
      return samplers.sample(lambda x: m.predict(x)['restored'], m.denoise, y,
                             jax.random.split(jax.random.key(0), 2), schedule=schedule,
                             residual_scale=2.0, sampler=name)['mean']
    text = jax.jit(run).lower(params, blur).as_text()
    # Functions called from an unrolled loop body appear once and are called once per
    # copy: the call sites count copies, the convolutions count distinct calls.
    return text.count('stablehlo.while'), text.count('stablehlo.convolution'), text.count('call @')

  loops_10, convs_10, calls_10 = count(10, sampler)
  loops_300, convs_300, calls_300 = count(300, sampler)
  assert loops_10 == loops_300 >= 1
  assert (convs_10, calls_10) == (convs_300, calls_300)  # No unrolling.
  # As many convolutions as Algorithm 1: the predictor once and the denoiser once.
  assert convs_10 == count(10, 'ancestral')[1]


def test_deterministic_samplers_draw_no_noise_after_the_start():
  # DDIM(eta = 0) and DPM-Solver++(2M) are ODE solvers: their only draw is z_T.
  for sampler in ('ddim', 'dpmpp_2m'):
    calls = []
    samplers.solve(lambda z, level: z, jnp.ones((1, 2)), lambda t: calls.append(t),
                   sampler=sampler, schedule=schedules.sampling_schedule(4, 1e-3, 0.5))
    assert not calls, sampler
  for sampler, eta in (('ddim', 0.5), ('dpmpp_2m_sde', 0.0)):
    coeffs = samplers.coefficients(sampler, schedules.sampling_schedule(4, 1e-3, 0.5), eta)
    assert np.all(coeffs.c_n[:-1] > 0) and coeffs.c_n[-1] == 0, sampler  # The last step is clean.


def test_dpm_solver_pp_weights_are_the_step_ratios():
  # w = h_i / (2 h_{i-1}) on interior steps, 0 on the first and the last; equal steps
  # in lambda (logSNR spacing) give w = 1/2 throughout the interior.
  coeffs = samplers.coefficients('dpmpp_2m', schedules.logsnr_schedule(6, 0.99, 0.01))
  np.testing.assert_allclose(coeffs.w, [0, 0.5, 0.5, 0.5, 0.5, 0], atol=1e-12)
  assert not samplers.coefficients('ddim', schedules.logsnr_schedule(6, 0.99, 0.01)).multistep


def test_logsnr_schedule_is_diffusers_lu_lambdas():
  torch = pytest.importorskip('torch')
  diffusers = pytest.importorskip('diffusers')
  del torch
  scheduler = diffusers.DPMSolverMultistepScheduler(
      num_train_timesteps=300, beta_start=1e-4, beta_end=2e-2, use_lu_lambdas=True)
  scheduler.set_timesteps(7)
  ac = scheduler.alphas_cumprod.numpy().astype(np.float64)
  ours = schedules.logsnr_schedule(7, ac[0], ac[-1]).alpha_bars[::-1]  # Noisiest first, then 1.
  np.testing.assert_allclose(scheduler.sigmas.numpy(), np.sqrt((1 - ours) / ours), rtol=5e-6)


def test_spacings_keep_a_presets_ends_and_count():
  linear = schedules.sampling_schedule(10, 1e-4, 0.8)
  np.testing.assert_array_equal(linear.betas, schedules.linear_schedule(10, 1e-4, 0.8).betas)
  logsnr = schedules.sampling_schedule(10, 1e-4, 0.8, spacing='logsnr')
  assert logsnr.num_steps == 10
  np.testing.assert_allclose(logsnr.alpha_bars[[1, -1]], linear.alpha_bars[[1, -1]], rtol=1e-12)
  lam = schedules.log_snr(logsnr.alpha_bars[1:])
  np.testing.assert_allclose(np.diff(lam), np.diff(lam)[0], rtol=1e-9)  # Uniform in logSNR.
  assert np.diff(lam)[0] < 0  # Level t is noisier than level t - 1.
  # One step starts from the noisiest end, where z_T ~ N(0, I) belongs.
  np.testing.assert_allclose(schedules.logsnr_schedule(1, 0.99, 0.01).alpha_bars, [1, 0.01])
  # A schedule is its alpha_bars: rebuilding one from them gives the same levels.
  np.testing.assert_allclose(schedules.schedule_from_alpha_bars(linear.alpha_bars[1:]).alpha_bars,
                             linear.alpha_bars, rtol=1e-13)


def test_bad_arguments_are_refused():
  schedule = schedules.sampling_schedule(3, 1e-3, 0.5)
  with pytest.raises(ValueError, match='sampler must be one of'):
    samplers.coefficients('heun', schedule)
  with pytest.raises(ValueError, match='0 <= eta <= 1'):
    samplers.coefficients('ddim', schedule, eta=1.5)
  with pytest.raises(ValueError, match="eta is DDIM's"):
    samplers.check('dpmpp_2m', eta=0.5)
  with pytest.raises(ValueError, match='spacing must be one of'):
    schedules.sampling_schedule(3, 1e-3, 0.5, spacing='karras')
  with pytest.raises(ValueError, match='decrease strictly'):
    schedules.schedule_from_alpha_bars([0.5, 0.6])
  with pytest.raises(ValueError, match='alpha_bar_min'):
    schedules.logsnr_schedule(4, 0.5, 0.5)


@pytest.mark.parametrize('sampler', samplers.SAMPLERS)
def test_every_sampler_moves_the_open_progress_bar_once_per_step(sampler, monkeypatch):
  import io
  from xydiff import progress

  class Terminal(io.StringIO):
    def isatty(self):
      return True

  seen = []
  monkeypatch.setattr(progress.Task, 'substep',
                      lambda self, done, total, what='step': seen.append((int(done), total, what)))
  schedule = schedules.linear_schedule(3, 1e-4, 0.6)
  denoise = lambda z, level, y: _gaussian_eps(z, level[0]).astype(jnp.float32)
  blur = jnp.zeros(_SHAPE[1:])[None]
  run = lambda: samplers.sample(lambda y: y, denoise, blur,
                                samplers.sample_keys(jax.random.key(0), 2), schedule=schedule,
                                residual_scale=2.0, sampler=sampler)['mean'].block_until_ready()
  run()  # No bar open: the loop reports nothing.
  jax.effects_barrier()
  assert seen == []
  progress.show(True, Terminal())
  try:
    with progress.task('deblur', total=1):
      run()
      jax.effects_barrier()
  finally:
    progress.show(False)
  assert seen == [(1, 3, 'step'), (2, 3, 'step'), (3, 3, 'step')]


def test_presets_walk_the_levels_they_name():
  from xydiff import configs
  from xydiff.models import dvsr
  config = configs.get_config('dvsr_gopro')
  paper = schedules.linear_schedule(500, 1e-6, 4e-2)
  # perceptual: 20 levels even in logSNR between the first and last of the paper's 500.
  fast = dvsr.FAMILY.settings(config, preset='perceptual')
  assert (fast.sampler, fast.num_steps) == ('dpmpp_2m_sde', 20)
  np.testing.assert_allclose(fast.schedule.alpha_bars[[1, -1]], paper.alpha_bars[[1, -1]],
                             rtol=1e-12)
  lam_1, lam_T = schedules.log_snr(paper.alpha_bars[[1, -1]])
  np.testing.assert_allclose(np.diff(schedules.log_snr(fast.schedule.alpha_bars[1:])),
                             np.full(19, (lam_T - lam_1) / 19), rtol=1e-8)
  # perceptual_ancestral is the paper's chain; a steps override keeps its betas.
  chain = dvsr.FAMILY.settings(config, preset='perceptual_ancestral')
  np.testing.assert_array_equal(chain.schedule.betas, paper.betas)
  shorter = dvsr.FAMILY.settings(config, preset='perceptual_ancestral', steps=50)
  np.testing.assert_array_equal(shorter.schedule.betas,
                                schedules.linear_schedule(50, 1e-6, 4e-2).betas)
  # Any other sampler on it keeps its first and last level instead.
  solver = dvsr.FAMILY.settings(config, preset='perceptual_ancestral', steps=50,
                                sampler='ddim')
  assert (solver.eta, solver.schedule.num_steps) == (1.0, 50)
  np.testing.assert_allclose(solver.schedule.alpha_bars[[1, -1]], paper.alpha_bars[[1, -1]],
                             rtol=1e-12)
