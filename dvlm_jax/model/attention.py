"""Attention under the VLM rule: same scope and `key index <= attn_end[query]`.

Every block of the model uses the same rule (`contract.make_mask`) with its own *scope
ids* (`contract.stage_scopes`: the table of every stage's scope ids and ends).

A scope id of 0 never attends (padding, or a token outside the block's scope):
such a query's output is garbage-but-finite and is discarded by the caller.

This file holds the reference XLA implementation. Faster kernels
(block-sparse Pallas, splash attention) plug in behind `attend` (`implementation`);
they take the scope ids and attn_end instead of the dense mask (`ScopeMask`): per-row
key ranges are exactly (scope start .. attn_end). Kernel rows that see nothing are 0.
"""

from __future__ import annotations

import functools
import logging
from typing import NamedTuple

import jax
import jax.numpy as jnp

from dvlm_jax import contract, names
from dvlm_jax.model import kernels
from dvlm_jax.model.kernels import range_attention, splash, tokamax_attention

IMPLEMENTATIONS = names.ATTENTION_IMPLEMENTATIONS
_BACKEND = {'pallas_gpu': 'gpu', 'splash': 'tpu'}   # kernels that need a device kind
# What 'auto' runs per backend: the fastest implementation measured there
# (docs/performance.md; on an H200 the range kernel, since tokamax 0.0.12's Mosaic-GPU
# kernel did not build under jax 0.11.2); XLA's dense path elsewhere.
AUTO = {'gpu': 'pallas_gpu', 'tpu': 'splash'}
_warned: set[str] = set()


def platform() -> str:
  """The platform the program being traced will run on: that of the mesh in context (a
  TPU slice compiled ahead of time on a CPU host is 'tpu'), else JAX's default backend."""
  device = getattr(jax.sharding.get_abstract_mesh(), 'abstract_device', None)
  return device.platform if device is not None else jax.default_backend()


def resolve(implementation: str) -> str:
  """The implementation that runs: 'auto' picks per platform (`AUTO`, `platform`)."""
  if implementation == 'auto':
    return AUTO.get(platform(), 'xla')
  return implementation


class ScopeMask(NamedTuple):
  """The rule's inputs, in place of a dense mask, for the kernels (a pytree)."""
  q_scope: jax.Array   # [B, Lq] int
  k_scope: jax.Array   # [B, Lk] int
  q_end: jax.Array     # [B, Lq] int


def stage_mask(q_scope: jax.Array, k_scope: jax.Array, q_end: jax.Array,
               implementation: str = 'xla'):
  """What one stage passes to its blocks: the dense mask for 'xla' (built once, shared
  by every layer), the scope ids for the kernels (no [B, L, L] array at all)."""
  if resolve(implementation) == 'xla':
    return contract.make_mask(q_scope, k_scope, q_end)
  return ScopeMask(q_scope, k_scope, q_end)


def key_length(mask: jax.Array | ScopeMask) -> int:
  """The number of keys a mask (dense or `ScopeMask`) ranges over."""
  return mask.k_scope.shape[-1] if isinstance(mask, ScopeMask) else mask.shape[-1]


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | ScopeMask | None = None,
           *, implementation: str = 'xla', q_scope: jax.Array | None = None,
           k_scope: jax.Array | None = None, q_end: jax.Array | None = None) -> jax.Array:
  """Multi-head attention under the VLM rule.

  q: [B, Lq, H, D]; k, v: [B, Lk, KvH, D] with H a multiple of KvH (GQA);
  mask: [B, Lq, Lk] bool, or a `ScopeMask`; q_scope/k_scope/q_end: the rule's inputs
  (`contract.make_mask`), which the kernels need. Softmax in float32.

  implementation: 'auto' (the fastest for the backend: `AUTO`), 'xla' (reference,
  dense mask), 'tokamax' (tokamax flash attention on per-query key ranges; Mosaic-GPU
  kernels on Hopper, its XLA reference elsewhere), 'pallas_gpu' (our block-sparse Triton
  kernel), 'pallas_interpret' (the same kernel in Pallas interpret mode, any device),
  'splash' (TPU). A kernel without scope ids, or on the wrong device kind, falls back
  to 'xla' with a warning. XLA gives fully masked rows a finite (uniform) result, the
  kernels 0; never NaN, so callers discard them with `where`.
  """
  if isinstance(mask, ScopeMask):
    q_scope, k_scope, q_end = mask
    mask = None
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f'attention implementation {implementation!r}; choose one of {IMPLEMENTATIONS}')
  implementation = resolve(implementation)
  have_scopes = q_scope is not None and k_scope is not None and q_end is not None
  if implementation != 'xla':
    needs = _BACKEND.get(implementation)
    if not have_scopes:
      _warn_once(f'{implementation}: no scope ids passed (only a dense mask); using xla')
    elif needs and platform() != needs:
      _warn_once(f'{implementation} needs a {needs.upper()}, running on '
                 f'{platform()}; using xla')
    else:   # one kernel call per device under the mesh in context
      if implementation == 'splash':
        kernel = splash.splash_attention
      elif implementation == 'tokamax':
        kernel = tokamax_attention.tokamax_attention
      else:
        kernel = functools.partial(range_attention.range_attention,
                                   interpret=implementation == 'pallas_interpret')
      return kernels.sharded(kernel, q, k, v, q_scope, k_scope, q_end)
  if mask is None:
    if not have_scopes:
      raise ValueError('attend needs a mask or q_scope, k_scope and q_end')
    mask = contract.make_mask(q_scope, k_scope, q_end)
  b, lq, h, d = q.shape
  kvh = k.shape[2]
  if h % kvh:
    raise ValueError(f'{h} query heads are not a multiple of {kvh} key/value heads')
  q = q.reshape(b, lq, kvh, h // kvh, d)
  logits = jnp.einsum('bqkgd,bskd->bkgqs', q, k, preferred_element_type=jnp.float32)
  logits = logits * (d ** -0.5)
  big_neg = jnp.finfo(jnp.float32).min
  logits = jnp.where(mask[:, None, None, :, :], logits, big_neg)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  out = jnp.einsum('bkgqs,bskd->bqkgd', probs, v)
  return out.reshape(b, lq, h, d)


def _warn_once(message: str) -> None:
  if message not in _warned:
    _warned.add(message)
    logging.getLogger(__name__).warning('attention: %s', message)
