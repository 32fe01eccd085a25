"""DvSR's predict-and-refine conditional diffusion, in three parts (as score_sde keeps them).

The diffusion models the residual r0 = x0 - g(y) of a deterministic predictor
g, in units of `residual_scale` (2 puts [0, 1] images on the usual [-1, 1]
diffusion scale). The denoiser f(z, level, y) is conditioned on the
continuous noise level sqrt(alpha_bar) (WaveGrad / SR3), so the sampling
schedule is chosen at inference without retraining.

- `schedules`: the levels (Schedule), training's noise-level draw, q(z_t | r0)
  and the posterior.
- `losses`: the eps-prediction L1 loss that trains g and f together.
- `samplers`: Algorithm 1 (ancestral, the reference), DDIM and DPM-Solver++,
  each one compiled loop over a Schedule.

Notation follows DvSR (Whang et al., CVPR 2022) and SR3: alpha_t per step,
alpha_bar_t their cumulative product, posterior q(x_{t-1} | x_t, x_0) =
N(mu_t, beta_t I).
"""
