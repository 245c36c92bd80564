"""The diffusion objectives: an oracle that knows the clean patch has zero loss and samples it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dvlm_jax.model import diffusion


@pytest.mark.parametrize('objective,time_shift', [(o, 1.0) for o in diffusion.OBJECTIVES]
                         + [('flow_x0', 3.0)])
def test_an_oracle_denoiser_has_zero_loss_and_samples_the_clean_patch(objective, time_shift):
  obj = diffusion.DiffusionObjective(objective, 'cosine', sample_steps=6, noise_samples=2,
                                     time_shift=time_shift)
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


def test_time_shift_trains_at_high_noise():
  """s > 1 moves the noise levels the head is trained at toward t = 1 (the sampler's steps
  move with them; the oracle test above samples the clean patch under the shift)."""
  seen = {}
  for shift in (1.0, 3.0):
    obj = diffusion.DiffusionObjective('flow_x0', 'cosine', sample_steps=4, noise_samples=1,
                                       time_shift=shift)
    times = []

    def record(x_t, t, times=times):
      times.append(t)
      return jnp.zeros_like(x_t)

    obj.loss(record, jnp.zeros((4096, 3)), jax.random.key(0))
    seen[shift] = float(jnp.median(times[0]))
  assert abs(seen[1.0] - 0.5) < 0.03
  assert abs(seen[3.0] - 0.75) < 0.03      # the median u = 1/2 -> 3 (1/2) / (1 + 2 (1/2))
