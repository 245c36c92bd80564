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


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def init_state(model, optimizer, example_batch, rng, mesh, axis_rules):
  """Initialises params and optimizer state directly into their shardings.

  Returns (state, state_shardings). The abstract init gives the logical names of every
  leaf; the real init is jitted with those shardings so no host ever holds it all.
  """
  def boxed_init(rng):
    params = model.init(rng, example_batch)['params']
    return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))

  with jax.set_mesh(mesh), nn.logical_axis_rules(axis_rules):
    abstract = jax.eval_shape(boxed_init, rng)
    shardings = sharding.logical_shardings(abstract, mesh, axis_rules)
    state = jax.jit(lambda r: nn.unbox(boxed_init(r)), out_shardings=shardings)(rng)
  return state, shardings


def make_train_step(model, optimizer: optax.GradientTransformation,
                    loss_cfg: losses.LossConfig, schedule: Callable) -> Callable:
  """(state, batch, rng) -> (state, metrics). Pure; jit it with shardings."""

  def train_step(state: TrainState, batch, rng):
    rng = jax.random.fold_in(rng, state.step)
    grad_fn = jax.value_and_grad(losses.compute_loss, argnums=1, has_aux=True)
    (_, metrics), grads = grad_fn(model, state.params, batch, rng, loss_cfg)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics['grad_norm'] = optax.tree.norm(grads)
    metrics['param_norm'] = optax.tree.norm(params)
    metrics['lr'] = schedule(state.step)
    return TrainState(state.step + 1, params, opt_state), metrics

  return train_step


def jit_train_step(train_step, state_shardings, mesh, axis_rules):
  """Jits the step with explicit shardings; the old state is donated."""
  data = sharding.batch_sharding(mesh, axis_rules)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  jitted = jax.jit(train_step, in_shardings=(state_shardings, data, replicated),
                   out_shardings=(state_shardings, replicated), donate_argnums=(0,))

  def run(state, batch, rng):
    with jax.set_mesh(mesh), nn.logical_axis_rules(axis_rules):
      return jitted(state, batch, rng)
  return run
