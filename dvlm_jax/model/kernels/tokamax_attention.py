"""Attention under the VLM rule through tokamax's flash-attention kernels.

tokamax takes a mask as one key range per query (`Mask(k_start, k_end)`) and, on
Hopper, its Mosaic-GPU kernels skip key blocks outside those ranges in the forward and
the backward pass. The VLM rule (`contract.make_mask`: same non-zero scope and
k <= attn_end[q]) maps onto that as

  k_start[q] = first key of q's scope         (range_attention.compute_ranges' q_lo)
  k_end[q]   = attn_end[q] + 1                (q_hi + 1)
  key_ok[k]  = scope[k] != 0                  (a [B, 1, 1, Lk] mask, broadcast over queries)

This is exact for every stage of the model: inside [k_start, k_end] the only keys not
of q's scope are those outside the stage altogether (scope 0: the images interrupting a
document's text for text-in, the scale markers interrupting an image for image-in), and
`key_ok` removes them. Documents are contiguous, so for the core and out stages the
range alone is the rule. (Scopes that interleave two non-zero ids inside one range
would break this; the layout never makes them.)

Queries that see nothing (scope 0) get the range of one valid key, so their output is
a finite row the caller discards, as with XLA, and never NaN in either pass.

Where it runs: on GPUs tokamax's Mosaic-GPU kernel (sm90+), else its Triton kernel; on
other backends tokamax's XLA reference, which keeps this mapping testable on a CPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dvlm_jax.model.kernels import range_attention


def key_ranges(q_scope: jax.Array, k_scope: jax.Array, q_end: jax.Array):
  """(k_start [B, Lq], k_end [B, Lq], key_ok [B, Lk]) encoding the VLM rule (see above)."""
  r = range_attention.compute_ranges(q_scope, k_scope, q_end)
  lk = k_scope.shape[1]
  key_ok = k_scope > 0
  # A key every empty query may see: the first valid one (key 0 if the row has none,
  # made valid for them alone: only empty queries can exist in such a row).
  spare = jnp.argmax(key_ok, axis=1).astype(jnp.int32)[:, None]
  key_ok = key_ok | (jnp.arange(lk, dtype=jnp.int32)[None, :] == spare)
  seen = r.q_hi >= r.q_lo
  k_start = jnp.where(seen, r.q_lo, spare)
  k_end = jnp.where(seen, r.q_hi + 1, spare + 1)
  return k_start, k_end, key_ok


def _implementations():
  from absl import flags
  from tokamax._src.ops.attention import api, base  # tokamax has no public Mask export yet
  # tokamax reads its options from absl flags and, unparsed, parses sys.argv, which is
  # our own command line (--config.model.x=...): take its defaults instead.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  if jax.default_backend() == 'gpu':
    names = [n for n in ('mosaic_gpu', 'triton') if n in api.IMPLEMENTATIONS]
  else:
    names = ['xla']
  return [api.IMPLEMENTATIONS[n] for n in names], base.Mask


def tokamax_attention(q: jax.Array, k: jax.Array, v: jax.Array, q_scope: jax.Array,
                      k_scope: jax.Array, q_end: jax.Array) -> jax.Array:
  """The kernel signature of `kernels.sharded`: q [B, Lq, H, D], k/v [B, Lk, KvH, D]."""
  k_start, k_end, key_ok = key_ranges(q_scope, k_scope, q_end)
  impls, mask_cls = _implementations()
  mask = mask_cls(key_ok[:, None, None, :], k_start=k_start[:, None, :],
                  k_end=k_end[:, None, :])
  errors = []
  for impl in impls:   # the first that supports this device / shape
    try:
      return impl(q, k, v, mask=mask)
    except NotImplementedError as e:
      errors.append(f'{type(impl).__name__}: {e}')
  raise NotImplementedError('no tokamax attention kernel runs here: ' + '; '.join(errors))
