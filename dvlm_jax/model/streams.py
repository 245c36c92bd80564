"""Each stage on its own positions: a row's positions of one kind, gathered into slots.

A `Stream` is the positions one stage runs on (text-in: the text positions; image-in:
the image positions; an out stack: the positions its head reads), in row order at the
front of a fixed number of slots per row, so shapes stay static under jit. Empty slots
(past the row's count) point one past the row and are dropped by `scatter`.

An in-stage attends among its own positions only, so its keys are its own stream over
the whole row and the VLM rule (`contract.make_mask`: same non-zero scope and
key <= attn_end[query]) is restated in that stream's coordinates (`in_stage_rule`):
scope ids gathered, `attn_end` mapped to the last stream slot at or before it. The
stream drops only positions of other stages, so each document's text (each image) is
one contiguous run of the stream: every query sees one key range, start .. end.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Stream(NamedTuple):
  index: jax.Array   # [B, C] int32: position of each slot in the call; the call length if empty
  valid: jax.Array   # [B, C] bool: the slot holds a position

  @staticmethod
  def select(selected: jax.Array, capacity: int) -> 'Stream':
    """The positions where `selected` [B, L] is True, in order, in `capacity` slots.

    Positions past the capacity are not in the stream: the packer never makes such rows
    (`layout.Packer`) and `layout.check_capacities` says so for any other batch."""
    b, length = selected.shape
    slot = jnp.where(selected, slots(selected), capacity)        # unselected: dropped
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))
    empty = jnp.full((capacity,), length, jnp.int32)
    index = jax.vmap(lambda s, p: empty.at[s].set(p, mode='drop'))(slot, positions)
    return Stream(index, index < length)

  @staticmethod
  def at(index: jax.Array) -> 'Stream':
    """Named positions [B, C] (inference: where a head is read), every slot valid."""
    index = jnp.asarray(index, jnp.int32)
    return Stream(index, jnp.ones(index.shape, bool))

  def gather(self, x: jax.Array, fill=None) -> jax.Array:
    """x [B, L, ...] at the stream's positions -> [B, C, ...]; empty slots hold `fill`
    (None: whatever the clamped index reads, for values nothing will use)."""
    index = jnp.minimum(self.index, x.shape[1] - 1)
    out = jax.vmap(lambda row, i: row[i])(x, index)
    if fill is None:
      return out
    valid = self.valid.reshape(self.valid.shape + (1,) * (out.ndim - 2))
    return jnp.where(valid, out, jnp.asarray(fill, out.dtype))

  def scatter(self, row: jax.Array, values: jax.Array) -> jax.Array:
    """row [B, L, ...] with `values` [B, C, ...] written at the stream's positions."""
    return jax.vmap(lambda r, i, v: r.at[i].set(v.astype(r.dtype), mode='drop'))(
        row, self.index, values)


def slots(selected: jax.Array) -> jax.Array:
  """[B, L]: the stream slot of each selected position (count of selected before it)."""
  return jnp.cumsum(selected, axis=1, dtype=jnp.int32) - 1


def _local(x: jax.Array, chunk):
  return x if chunk is None else jax.lax.dynamic_slice_in_dim(x, chunk[0], chunk[1], axis=1)


class StageRule(NamedTuple):
  """One stage's queries and keys in stream coordinates, and the rule's inputs there."""
  queries: Stream | None     # in the call's positions (the chunk's when decoding); None: all
  q_scope: jax.Array         # [B, Cq]
  k_scope: jax.Array         # [B, Ck]
  q_end: jax.Array           # [B, Cq]: last key slot each query may see
  cache_slots: jax.Array | None   # [B, Cq]: key slot of each query (decoding writes it)


def row_rule(queries: Stream | None, scope: jax.Array, end: jax.Array, chunk=None) -> StageRule:
  """The rule of a stage whose keys are every position of the row: the core (queries
  None: every position of the call) and the out stacks (their head's positions)."""
  length = scope.shape[1]
  k_scope = scope
  cache_slots = None
  if chunk is not None:
    start, n = chunk
    k_scope = jnp.where(jnp.arange(length) < start + n, scope, 0)   # not written yet
    cache_slots = jnp.broadcast_to(start + jnp.arange(n, dtype=jnp.int32), (scope.shape[0], n))
  q_scope, q_end = _local(scope, chunk), _local(end, chunk)
  if queries is not None:
    q_scope, q_end = queries.gather(q_scope, fill=0), queries.gather(q_end)
  return StageRule(queries, q_scope, k_scope, q_end, cache_slots)


def in_stage_rule(selected: jax.Array, capacity: int, scope: jax.Array, end: jax.Array,
                  chunk=None) -> StageRule:
  """The rule of a stage that attends among its own positions (text-in, image-in).

  selected / scope / end: [B, L] over the whole row (the stage's positions, their scope
  ids, the last row index each may see). Without `chunk` the queries are the keys;
  with `chunk=(start, n)` (KV-cache decoding) the queries are the stage's positions in
  the chunk and the keys are the whole row's stream, those after the chunk hidden.
  """
  keys = Stream.select(selected, capacity)
  k_scope = keys.gather(scope, fill=0)
  if chunk is None:
    queries, cache_slots = keys, None
  else:
    start, n = chunk
    k_scope = jnp.where(keys.index < start + n, k_scope, 0)   # not written yet
    queries = Stream.select(_local(selected, chunk), min(n, capacity))
    cache_slots = jnp.where(queries.valid, queries.gather(_local(slots(selected), chunk)),
                            capacity)
  q_scope = queries.gather(_local(scope, chunk), fill=0)
  q_row_end = queries.gather(_local(end, chunk))
  # The last key slot whose row index is <= the query's attn_end (empty slots sort last).
  q_end = jax.vmap(lambda k, e: jnp.searchsorted(k, e, side='right'))(keys.index, q_row_end) - 1
  return StageRule(queries, q_scope, k_scope, q_end.astype(jnp.int32), cache_slots)
