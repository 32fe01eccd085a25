"""DvSR's training loss: L1 on the predicted noise of the residual x0 - g(y)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from xydiff.diffusion.schedules import Schedule, q_sample, sample_noise_level


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
