"""The diffusion objectives: an oracle that knows the clean patch has zero loss and samples it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dvlm_jax.model import diffusion


@pytest.mark.parametrize('objective', diffusion.OBJECTIVES)
def test_an_oracle_denoiser_has_zero_loss_and_samples_the_clean_patch(objective):
  obj = diffusion.DiffusionObjective(objective, 'cosine', sample_steps=6, noise_samples=2)
  x0 = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (3, 5, 12)), jnp.float32)

  def oracle(x_t, t):
    """What the head should output at (x_t, t) when the clean patch is x0."""
    alpha, sigma = obj._alpha_sigma(t[..., None])    # pylint: disable=protected-access
    eps = (x_t - alpha * x0) / sigma
    return obj._target(x0, eps, alpha, sigma)         # pylint: disable=protected-access

  loss = obj.loss(oracle, x0, jax.random.key(1))
  assert loss.shape == x0.shape[:-1]
  np.testing.assert_allclose(loss, 0.0, atol=1e-6)
  # A wrong head (always 0) is penalised: the test can fail.
  assert float(jnp.min(obj.loss(lambda x_t, t: jnp.zeros_like(x_t), x0, jax.random.key(1)))) > 0.01
  sample = obj.sample(oracle, x0.shape, jax.random.key(2))
  # VP schedules stop at t = 0 with sigma ~ 0.0016 of noise left (the cosine clip).
  np.testing.assert_allclose(sample, x0, atol=1e-2 if objective in ('eps', 'v') else 1e-4)
