"""AdamW with warmup + cosine / constant / rsqrt decay, global-norm clipping, decay mask."""

from __future__ import annotations

import jax
import optax



def learning_rate_schedule(config) -> optax.Schedule:
  o, steps = config.optim, config.train.steps
  # Starts at lr / warmup_steps, not 0: the first step is not wasted.
  warmup = optax.linear_schedule(o.lr / max(o.warmup_steps, 1), o.lr, max(o.warmup_steps, 1))
  decay_steps = max(steps - o.warmup_steps, 1)
  if o.schedule == 'cosine':
    decay = optax.cosine_decay_schedule(o.lr, decay_steps, alpha=o.min_lr_ratio)
  elif o.schedule == 'constant':
    decay = optax.constant_schedule(o.lr)
  else:  # rsqrt
    decay = lambda s: o.lr * jax.lax.rsqrt(1.0 + s / max(o.warmup_steps, 1))
  return optax.join_schedules([warmup, decay], [o.warmup_steps])


def decay_mask(params):
  """True where weight decay applies: Dense kernels only.

  Norm scales, biases and embedding tables (token, mask, scale, copy) are not decayed.
  Decided by name, not rank: scanned stacks make every leaf one rank higher.
  """
  def decays(path, leaf):
    names = [p.key for p in path if hasattr(p, 'key')]  # works on boxed (Partitioned) trees too
    return bool(names) and names[-1] == 'kernel'
  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(config) -> optax.GradientTransformation:
  o = config.optim
  return optax.chain(
      optax.clip_by_global_norm(o.clip_norm),
      optax.adamw(learning_rate_schedule(config), b1=o.b1, b2=o.b2, eps=o.eps,
                  weight_decay=o.weight_decay, mask=decay_mask),
  )
