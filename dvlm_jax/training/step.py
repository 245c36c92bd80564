"""Train state, its sharded initialisation, and the jitted train step."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from dvlm_jax import sharding
from dvlm_jax.training import losses
from dvlm_jax.training import optimizer as optim_lib


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  ema_params: Any          # None when optim.ema_decay == 0
  bad_steps: jax.Array     # non-finite steps skipped, in total
  bad_in_a_row: jax.Array  # ... and in a row (the run stops past train.max_bad_steps)


def _boxed_init(model, optimizer, ema: bool):
  """(rng, batch shapes) -> TrainState with nn.Partitioned (logically named) leaves."""
  def init(rng, batch_shapes):
    batch = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), batch_shapes)
    params = model.init(rng, batch)['params']
    zero = jnp.zeros((), jnp.int32)
    return TrainState(zero, params, optimizer.init(params), params if ema else None, zero, zero)
  return init


def abstract_state(model, optimizer, example_batch, rng, ctx: sharding.Context, *,
                   ema: bool = False):
  """(ShapeDtypeStructs carrying their shardings, shardings) of the state; allocates nothing.

  The abstract init gives the logical names of every leaf, the rules map them to the mesh.
  `example_batch` may be arrays or jax.ShapeDtypeStructs.
  """
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), example_batch)
  return ctx.abstract_sharded(_boxed_init(model, optimizer, ema), rng, batch)


def init_state(model, optimizer, example_batch, rng, ctx: sharding.Context, *,
               ema: bool = False):
  """Initialises the train state directly into its shardings: no host ever holds it all.

  Returns (state, state_shardings).
  """
  _, shardings = abstract_state(model, optimizer, example_batch, rng, ctx, ema=ema)
  init = _boxed_init(model, optimizer, ema)
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), example_batch)
  with ctx.scope():
    state = jax.jit(lambda r: nn.unbox(init(r, batch)), out_shardings=shardings)(rng)
  return state, shardings


def _grads(model, params, batch, rng, loss_cfg, accum_steps: int):
  """Loss metrics and gradients, averaged over `accum_steps` micro-batches (split by rows)."""
  grad_fn = jax.value_and_grad(losses.compute_loss, argnums=1, has_aux=True)
  if accum_steps == 1:
    (_, metrics), grads = grad_fn(model, params, batch, rng, loss_cfg)
    return metrics, grads
  micro = jax.tree.map(lambda x: x.reshape(accum_steps, x.shape[0] // accum_steps, *x.shape[1:]),
                       batch)

  def body(carry, inputs):
    i, mb = inputs
    (_, metrics), grads = grad_fn(model, params, mb, jax.random.fold_in(rng, i), loss_cfg)
    return jax.tree.map(jnp.add, carry, (metrics, grads)), None

  (_, metric_shapes), grad_shapes = jax.eval_shape(
      lambda mb: grad_fn(model, params, mb, rng, loss_cfg), jax.tree.map(lambda x: x[0], micro))
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (metric_shapes, grad_shapes))
  (metrics, grads), _ = jax.lax.scan(body, zeros, (jnp.arange(accum_steps), micro))
  return jax.tree.map(lambda x: x / accum_steps, (metrics, grads))


def make_train_step(model, optimizer: optax.GradientTransformation, loss_cfg: losses.LossConfig,
                    schedule: Callable, *, accum_steps: int = 1, ema_decay: float = 0.0,
                    nan_at_steps: tuple[int, ...] = ()) -> Callable:
  """(state, batch, rng) -> (state, metrics). Pure; jit it with shardings.

  A step whose loss or gradient is not finite leaves params and optimizer state as they
  were and is counted in `bad_steps` / `bad_in_a_row` (the loop stops the run past a limit).
  """

  def train_step(state: TrainState, batch, rng):
    rng = jax.random.fold_in(rng, state.step)
    metrics, grads = _grads(model, state.params, batch, rng, loss_cfg, accum_steps)
    if nan_at_steps:  # fault injection for tests: poison this step's loss and gradients
      poison = jnp.isin(state.step + 1, jnp.asarray(nan_at_steps))
      grads = jax.tree.map(lambda g: jnp.where(poison, jnp.nan, g), grads)
      metrics['loss'] = jnp.where(poison, jnp.nan, metrics['loss'])
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(metrics['loss']) & jnp.isfinite(grad_norm)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
    ema = state.ema_params
    if ema is not None:
      ema = jax.tree.map(lambda e, p: ema_decay * e + (1 - ema_decay) * p, ema, params)
    bad = (~finite).astype(jnp.int32)
    new_state = TrainState(state.step + 1, params, opt_state, ema, state.bad_steps + bad,
                           (state.bad_in_a_row + bad) * bad)
    metrics.update(grad_norm=grad_norm, param_norm=optax.tree.norm(params),
                   lr=schedule(state.step), bad_steps=new_state.bad_steps,
                   bad_in_a_row=new_state.bad_in_a_row)
    return new_state, metrics

  return train_step


class JittedStep:
  """The jitted train step with explicit shardings (the old state is donated), run and
  lowered under its mesh and logical rules: `step(state, batch, rng)` trains,
  `step.lower(state, batch, rng).compile()` compiles from arrays or jax.ShapeDtypeStructs
  without running (dvlm_jax/compile.py: memory and FLOPs ahead of time)."""

  def __init__(self, train_step, state_shardings, ctx: sharding.Context):
    self.jitted = jax.jit(train_step,
                          in_shardings=(state_shardings, ctx.batch_sharding, ctx.replicated),
                          out_shardings=(state_shardings, ctx.replicated), donate_argnums=(0,))
    self.ctx = ctx

  def __call__(self, state, batch, rng):
    with self.ctx.scope():
      return self.jitted(state, batch, rng)

  def lower(self, state, batch, rng):
    with self.ctx.scope():
      return self.jitted.lower(state, batch, rng)


def configured_train_step(config, model, optimizer, state_shardings,
                          ctx: sharding.Context) -> JittedStep:
  """The train step as `config` defines it (loss, schedule, accumulation, EMA, fault
  injection), jitted: what the train command runs and the compile command compiles."""
  return JittedStep(
      make_train_step(model, optimizer, losses.LossConfig.from_config(config),
                      optim_lib.learning_rate_schedule(config),
                      accum_steps=config.train.grad_accum_steps,
                      ema_decay=config.optim.ema_decay,
                      nan_at_steps=tuple(config.debug.nan_at_steps)),
      state_shardings, ctx)
