"""Attention under the VLM rule: same scope and `key index <= attn_end[query]`.

Every block of the model uses the same rule with its own *scope ids*:

  block        scope ids                               attn_end
  core, out    segment_ids (document)                  attn_end from the layout
  text-in      segment_ids where modality == text      own index (causal)
  image-in     image_id (row-unique, 0 = no image)     attn_end from the layout

A scope id of 0 never attends (padding, or a token outside the block's scope):
such a query's output is garbage-but-finite and is discarded by the caller.

This file holds the mask and the reference XLA implementation. Faster kernels
(block-sparse Pallas, splash attention) plug in behind `attend` with the same
arguments: per-row key ranges are exactly (scope start .. attn_end).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def make_mask(q_scope: jax.Array, k_scope: jax.Array, q_end: jax.Array,
              k_index: jax.Array | None = None) -> jax.Array:
  """Boolean mask [B, Lq, Lk]: query q sees key k under the VLM rule.

  q_scope: [B, Lq] int scope ids of the queries (0 = attends to nothing).
  k_scope: [B, Lk] int scope ids of the keys.
  q_end:   [B, Lq] int, the last key index each query may see (`attn_end`).
  k_index: [B, Lk] or None; the row index of each key (default arange(Lk)).
  """
  if k_index is None:
    k_index = jnp.arange(k_scope.shape[-1], dtype=jnp.int32)[None, :]
  same = (q_scope[:, :, None] == k_scope[:, None, :]) & (q_scope[:, :, None] > 0)
  visible = k_index[:, None, :] <= q_end[:, :, None]
  return same & visible


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
           *, implementation: str = 'xla') -> jax.Array:
  """Multi-head attention, reference XLA path.

  q: [B, Lq, H, D]; k, v: [B, Lk, KvH, D] with H a multiple of KvH (GQA);
  mask: [B, Lq, Lk] bool. Softmax in float32. Fully masked rows give a finite
  (uniform) result, never NaN, so callers may discard them with `where`.
  """
  if implementation != 'xla':
    raise ValueError(f"attention implementation {implementation!r} is not available; "
                     "use 'xla' (the block-sparse kernel is tracked separately)")
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


def mask_density(mask: jax.Array, q_valid: jax.Array) -> jax.Array:
  """Fraction of (query, key) pairs attended, over valid queries; for FLOP counting."""
  seen = jnp.sum(mask, axis=-1) * q_valid
  return jnp.sum(seen) / jnp.maximum(jnp.sum(q_valid) * mask.shape[-1], 1)
