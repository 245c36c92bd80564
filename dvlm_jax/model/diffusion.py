"""The diffusion head and its objective: training loss and sampler in one place.

The head is MAR-style: a small per-position MLP with adaLN, conditioned on the hidden
state of the imgen-out block and on the diffusion time. It denoises one patch of raw
pixels (never normalised: the sample must be an image) per position, all positions of
a scale at once.

Objectives (`config.diffusion.objective`):
  flow  rectified flow: x_t = (1 - t) x0 + t eps, predict v = eps - x0, Euler sampler.
  flow_x0  the same flow, the head predicts the clean patch x0 and the loss is taken on
        the v it implies (JiT, Li & He 2025: "Back to Basics: Let Denoising Generative
        Models Denoise"): v - v_hat = (x0_hat - x0) / t, with t clipped at T_MIN. A clean
        patch lies on a low-dimensional set (flat background, one colour), the noise
        does not: a small head learns the first much faster than to pass the noise through.
  flow_x0_mse  as flow_x0, the loss the plain MSE of x0 (every t weighs the same, so the
        noisy draws, where only the condition tells the patch, weigh as much as the clean).
  eps   VP diffusion, alpha_t^2 + sigma_t^2 = 1 (cosine or linear log-SNR-free schedule),
        predict eps, DDIM sampler.
  v     same noising, predict v = alpha_t eps - sigma_t x0, DDIM sampler.

`time_shift` s warps the noise level t -> s t / (1 + (s - 1) t) in training and sampling
(SD3's resolution shift, Esser et al. 2024): s > 1 spends more of both at high noise,
where only the condition tells the patch (its colour, its shape) and x_t does not.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from dvlm_jax import names
from dvlm_jax.model.layers import Dense


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
  """Sinusoidal embedding of t in [0, 1] (scaled by 1000 like DDPM step indices)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = (t.astype(jnp.float32) * 1000.0)[..., None] * freqs
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class AdaLNBlock(nn.Module):
  width: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, h, c):
    kw = dict(dtype=self.dtype)
    shift, scale, gate = jnp.split(
        Dense(3 * self.width, ('diff_in', 'diff_width'), zero_init=True, use_bias=True,
              name='modulation', **kw)(nn.silu(c)), 3, axis=-1)
    y = nn.LayerNorm(use_scale=False, use_bias=False, dtype=self.dtype)(h) * (1 + scale) + shift
    y = Dense(self.width, ('diff_in', 'diff_width'), use_bias=True, name='fc1', **kw)(y)
    y = Dense(self.width, ('diff_in', 'diff_width'), use_bias=True, name='fc2', **kw)(nn.silu(y))
    return h + gate * y


class DiffusionHead(nn.Module):
  """Per-position denoiser: (noisy patch x_t, time t, condition z) -> prediction."""
  patch_dim: int
  width: int
  depth: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_t, t, cond):
    kw = dict(dtype=self.dtype, use_bias=True)
    h = Dense(self.width, ('patch', 'diff_width'), name='in', **kw)(x_t)
    t_emb = timestep_embedding(t, self.width)
    c = Dense(self.width, ('diff_in', 'diff_width'), name='time', **kw)(t_emb)
    c = c + Dense(self.width, ('embed', 'diff_width'), name='cond', **kw)(cond)
    for i in range(self.depth):
      h = AdaLNBlock(self.width, self.dtype, name=f'block_{i}')(h, c)
    shift, scale = jnp.split(Dense(2 * self.width, ('diff_in', 'diff_width'), zero_init=True,
                                   name='final_modulation', **kw)(nn.silu(c)), 2, axis=-1)
    h = nn.LayerNorm(use_scale=False, use_bias=False, dtype=self.dtype)(h) * (1 + scale) + shift
    out = Dense(self.patch_dim, ('diff_in', 'patch'), zero_init=True, name='out', **kw)(h)
    return out.astype(jnp.float32)


DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]   # (x_t, t) -> prediction
OBJECTIVES = names.DIFFUSION_OBJECTIVES
PREDICTS_X0 = ('flow_x0', 'flow_x0_mse')
T_MIN = 0.05   # flow_x0: the smallest t in 1 / t (the loss weight of x0 errors near clean)


@dataclasses.dataclass(frozen=True)
class DiffusionObjective:
  """config.diffusion's objective, schedule and step counts (the defaults are the config's)."""
  objective: str        # OBJECTIVES
  schedule: str         # cosine | linear (eps / v)
  sample_steps: int
  noise_samples: int
  time_shift: float     # 1 = uniform t (config.diffusion.time_shift)

  @classmethod
  def from_config(cls, config) -> 'DiffusionObjective':
    d = config.diffusion
    return cls(d.objective, d.schedule, d.sample_steps, d.noise_samples, d.time_shift)

  def _shift(self, t):
    """t -> s t / (1 + (s - 1) t): fixes 0 and 1, pushes the rest toward 1 for s > 1."""
    if self.time_shift == 1.0:
      return t
    return self.time_shift * t / (1.0 + (self.time_shift - 1.0) * t)

  # -- noising
  @property
  def flow(self) -> bool:
    return self.objective in ('flow',) + PREDICTS_X0

  def _alpha_sigma(self, t):
    if self.flow:
      return 1.0 - t, t
    if self.schedule == 'cosine':
      # Clipped so that t = 1 is (almost) pure noise and t = 0 (almost) clean.
      angle = (t * 0.998 + 0.001) * (math.pi / 2)
      return jnp.cos(angle), jnp.sin(angle)
    abar = jnp.exp(-(0.1 * t + 9.95 * t * t))        # continuous linear-beta VP schedule
    return jnp.sqrt(abar), jnp.sqrt(1.0 - abar)

  def _target(self, x0, eps, alpha, sigma):
    if self.objective in PREDICTS_X0:
      return x0
    if self.objective == 'flow':
      return eps - x0
    if self.objective == 'eps':
      return eps
    return alpha * eps - sigma * x0

  def _x0_eps(self, pred, x_t, alpha, sigma):
    """Estimates (x0, eps) from a prediction at x_t."""
    if self.objective == 'flow':
      return x_t - sigma * pred, x_t + alpha * pred
    if self.objective in PREDICTS_X0:
      return pred, (x_t - alpha * pred) / jnp.maximum(sigma, T_MIN)
    if self.objective == 'eps':
      return (x_t - sigma * pred) / jnp.maximum(alpha, 1e-4), pred
    return alpha * x_t - sigma * pred, sigma * x_t + alpha * pred

  # -- training
  def loss(self, denoise: DenoiseFn, x0: jax.Array, rng: jax.Array) -> jax.Array:
    """Per-position loss [..., ] (mean over the patch dim and noise samples)."""
    total = 0.0
    for i, key in enumerate(jax.random.split(rng, self.noise_samples)):
      k_t, k_eps = jax.random.split(key)
      t = self._shift(jax.random.uniform(k_t, x0.shape[:-1]))
      eps = jax.random.normal(k_eps, x0.shape)
      alpha, sigma = self._alpha_sigma(t[..., None])
      x_t = alpha * x0 + sigma * eps
      pred = denoise(x_t, t)
      error = jnp.mean(jnp.square(pred - self._target(x0, eps, alpha, sigma)), axis=-1)
      if self.objective == 'flow_x0':   # the loss on v: x0 errors weigh 1 / t^2
        error = error / jnp.square(jnp.maximum(t, T_MIN))
      total = total + error
    return total / self.noise_samples

  # -- sampling
  def sample(self, denoise: DenoiseFn, shape: tuple[int, ...], rng: jax.Array,
             temperature: float = 1.0, steps: int | None = None) -> jax.Array:
    """Draws x0 of `shape` from noise in `steps` deterministic steps (Euler / DDIM).

    `temperature` scales the starting noise. Classifier-free guidance is the caller's
    `denoise` (it combines conditional and unconditional predictions).
    """
    steps = steps or self.sample_steps
    x = temperature * jax.random.normal(rng, shape)
    times = self._shift(jnp.linspace(1.0, 0.0, steps + 1))

    def step(x, i):
      t, t_next = times[i], times[i + 1]
      alpha, sigma = self._alpha_sigma(t)
      alpha_n, sigma_n = self._alpha_sigma(t_next)
      pred = denoise(x, jnp.full(shape[:-1], t))
      x0, eps = self._x0_eps(pred, x, alpha, sigma)
      return alpha_n * x0 + sigma_n * eps, None

    x, _ = jax.lax.scan(step, x, jnp.arange(steps))
    return x
