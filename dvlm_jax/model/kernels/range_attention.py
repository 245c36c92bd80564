"""Block-sparse attention under the VLM rule: a Pallas (Triton) kernel for GPUs.

The rule (`contract.make_mask`): query q sees key k iff scope[q] == scope[k] != 0 and
k <= attn_end[q]. Everything the kernel needs to skip work follows from per-element
bounds computed once in XLA (`compute_ranges`, O(L log L), no L x L array):

  q_lo[q]        first key of q's scope (a lower bound on every key q sees)
  q_hi[q]        attn_end[q] (the last key q may see)
  q_dense_lo[q]  every key in [q_dense_lo, q_hi] is visible: the part of the range that
                 lies in the same contiguous scope run as q_hi
  k_lo[k], k_hi[k]   the first / last query that may see key k (for the dK/dV pass)

For contiguous scopes (documents, images) [q_lo, q_hi] is exactly q's visible range.
For the text-in scope (text of a document, interrupted by its images) it is a superset
and the element-wise scope compare inside visited blocks keeps the result exact.

Each program takes one query block and reduces those bounds to four block indices
(`q_block_bounds`): the KV blocks [first, end) intersecting the union of its queries'
ranges are visited, everything else is never loaded; inside, [full_first, full_end) are
tiles where every pair is visible, run without the element mask. The dK/dV pass takes
one KV block and visits the query blocks [first, end) from `k_lo` / `k_hi`
(`k_block_bounds`) with the element mask on every tile.

Fully masked query rows (scope 0, padding, a token outside a stage's scope) produce
0 output and exactly zero gradients, never NaN. Softmax statistics, the output
accumulator and dQ/dK/dV accumulate in float32 whatever the input dtype (bf16 in).
With `interpret=True` the same kernels run anywhere (CPU tests) in Pallas interpret mode.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

# Finite on purpose: with -inf, a row whose keys are all masked so far gives
# exp2(-inf - (-inf)) = NaN in the online softmax.
_NEG = -1e30
_LOG2E = math.log2(math.e)
_MIN_BLOCK = 16  # Triton's dot needs every matmul dimension >= 16


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tile sizes. All must be powers of two >= 16.

  Defaults: the fastest fwd+bwd of the five settings timed on an H200 at L=4096, head_dim
  128 (benchmarks/gpu_check.sh, docs/performance.md): 64 x 64 tiles, 4 warps, 3 stages
  took 2.33 ms against 2.77-3.39 ms for 128 x 64 / 128 x 128 forward tiles or 8 warps
  and 2 stages. Tune others with `benchmarks/attention.py --range_blocks`.
  """
  block_q: int = 64           # forward: queries per program
  block_k: int = 64           # forward: keys per inner step
  block_q_bwd: int = 64       # backward: queries per dQ program / per dK,dV inner step
  block_k_bwd: int = 64       # backward: keys per dK,dV program / per dQ inner step
  num_warps: int | None = 4   # None: 4 for head_dim <= 64, else 8
  num_stages: int = 3

  def clipped(self, lq: int, lk: int) -> 'BlockSizes':
    """Blocks no larger than the (power-of-two rounded) sequence, so short rows work."""
    pq, pk = _next_pow2(max(lq, _MIN_BLOCK)), _next_pow2(max(lk, _MIN_BLOCK))
    return dataclasses.replace(
        self, block_q=min(self.block_q, pq), block_k=min(self.block_k, pk),
        block_q_bwd=min(self.block_q_bwd, pq), block_k_bwd=min(self.block_k_bwd, pk))


def _next_pow2(n: int) -> int:
  return 1 << (int(n) - 1).bit_length()


class Ranges(NamedTuple):
  """Per-element bounds driving block skipping (int32; see the module docstring).

  Empty ranges are (Lk, -1) for queries and (Lq, -1) for keys, so that min/max over a
  block ignore them.
  """
  q_lo: jax.Array          # [B, Lq]
  q_hi: jax.Array          # [B, Lq]
  q_dense_lo: jax.Array    # [B, Lq]
  k_lo: jax.Array          # [B, Lk]
  k_hi: jax.Array          # [B, Lk]


# ------------------------------------------------------------------------------ ranges

def _first_index(values: jax.Array, queries: jax.Array) -> jax.Array:
  """For each query value, the first i with values[i] == query; len(values) when absent.

  Sort-based, so scope ids may be any ints and need not be contiguous runs.
  """
  n = values.shape[0]
  order = jnp.argsort(values, stable=True)
  ordered = values[order]
  pos = jnp.minimum(jnp.searchsorted(ordered, queries, side='left'), n - 1)
  return jnp.where(ordered[pos] == queries, order[pos], n).astype(jnp.int32)


def _last_index(values: jax.Array, queries: jax.Array) -> jax.Array:
  """For each query value, the last i with values[i] == query; -1 when absent."""
  order = jnp.argsort(values, stable=True)   # stable: equal values keep index order
  ordered = values[order]
  pos = jnp.searchsorted(ordered, queries, side='right') - 1
  safe = jnp.maximum(pos, 0)
  return jnp.where((pos >= 0) & (ordered[safe] == queries), order[safe], -1).astype(jnp.int32)


def _row_ranges(q_scope, k_scope, q_end):
  lq, lk = q_scope.shape[0], k_scope.shape[0]
  k_index = jnp.arange(lk, dtype=jnp.int32)

  first_key = _first_index(k_scope, q_scope)
  hi = jnp.minimum(q_end.astype(jnp.int32), lk - 1)
  q_ok = (q_scope > 0) & (first_key <= hi)
  q_lo = jnp.where(q_ok, first_key, lk)
  q_hi = jnp.where(q_ok, hi, -1)

  # Keys [run_start[j], j] share k_scope[j]; intersected with [q_lo, q_hi] they are all
  # visible to q when q_hi's key is in q's scope (always true for contiguous scopes).
  change = jnp.concatenate([jnp.ones((1,), bool), k_scope[1:] != k_scope[:-1]])
  run_start = lax.cummax(jnp.where(change, k_index, 0))
  hi_safe = jnp.clip(q_hi, 0, lk - 1)
  dense_ok = q_ok & (k_scope[hi_safe] == q_scope)
  q_dense_lo = jnp.where(dense_ok, jnp.maximum(q_lo, run_start[hi_safe]), lk)

  # A query q sees key k only if q_hi[q] >= k; the running max of q_hi is non-decreasing,
  # so the first query whose running max reaches k is a lower bound (exact when attn_end
  # is non-decreasing within a scope, as the layout guarantees).
  reach = lax.cummax(q_hi)
  first_reach = jnp.searchsorted(reach, k_index, side='left').astype(jnp.int32)
  k_lo = jnp.maximum(_first_index(q_scope, k_scope), first_reach)
  k_hi = _last_index(q_scope, k_scope)
  k_ok = (k_scope > 0) & (k_lo <= k_hi)
  return (q_lo, q_hi, q_dense_lo, jnp.where(k_ok, k_lo, lq), jnp.where(k_ok, k_hi, -1))


def compute_ranges(q_scope: jax.Array, k_scope: jax.Array, q_end: jax.Array) -> Ranges:
  """Per-element bounds of the rule for [B, Lq] / [B, Lk] scope ids and attn_end."""
  return Ranges(*jax.vmap(_row_ranges)(q_scope.astype(jnp.int32), k_scope.astype(jnp.int32),
                                       q_end.astype(jnp.int32)))


# ------------------------------------------------------------------------ block bounds

def q_block_bounds(q_lo, q_hi, q_dense_lo, block_k: int):
  """(first, full_first, full_end, end) KV block indices for one query block.

  KV blocks [first, end) are visited; [full_first, full_end) ⊆ them are fully visible
  to every query of the block (no element mask). Runs inside the kernel on the loaded
  [block_q] bound vectors, and eagerly in tests (`block_schedule`), so both use this code.
  """
  first = lax.div(jnp.min(q_lo), block_k)
  end = lax.div(jnp.max(q_hi) + block_k, block_k)    # q_hi >= -1: numerator stays >= 0
  end = jnp.maximum(end, first)
  full_first = lax.div(jnp.max(q_dense_lo) + block_k - 1, block_k)
  full_end = lax.div(jnp.min(q_hi) + 1, block_k)     # blocks whose last key <= min(q_hi)
  full_first = jnp.minimum(jnp.maximum(full_first, first), end)
  full_end = jnp.minimum(jnp.maximum(full_end, full_first), end)
  return first, full_first, full_end, end


def k_block_bounds(k_lo, k_hi, block_q: int):
  """(first, end) query block indices that may see some key of one KV block."""
  first = lax.div(jnp.min(k_lo), block_q)
  end = jnp.maximum(lax.div(jnp.max(k_hi) + block_q, block_q), first)
  return first, end


def _visible(q_scope, q_hi, k_scope, k_start, block_k):
  k_index = k_start + jnp.arange(block_k, dtype=jnp.int32)
  return (q_scope[:, None] == k_scope[None, :]) & (k_index[None, :] <= q_hi[:, None])


# ----------------------------------------------------------------------------- kernels

def _fwd_kernel(q_ref, k_ref, v_ref, qs_ref, ks_ref, qlo_ref, qhi_ref, qdlo_ref,
                o_ref, lse_ref, *, scale, block_k):
  q = q_ref[...]
  q_scope, q_hi = qs_ref[...], qhi_ref[...]
  block_q, head_dim = q.shape
  first, full_first, full_end, end = q_block_bounds(qlo_ref[...], q_hi, qdlo_ref[...], block_k)
  qk_scale = scale * _LOG2E   # softmax in base 2: exp(x) = exp2(x log2 e)

  def body(kb, carry, masked):
    o, m, l = carry
    start = pl.multiple_of(kb * block_k, block_k)
    k = k_ref[pl.ds(start, block_k), :]
    v = v_ref[pl.ds(start, block_k), :]
    s = plgpu.dot(q, k, trans_b=True) * qk_scale
    if masked:
      visible = _visible(q_scope, q_hi, ks_ref[pl.ds(start, block_k)], start, block_k)
      s = jnp.where(visible, s, _NEG)
    m_new = jnp.maximum(m, jnp.max(s, axis=1))
    p = jnp.exp2(s - m_new[:, None])
    if masked:   # a row with nothing visible yet has m_new == _NEG and p == 1 there
      p = jnp.where(visible, p, 0.0)
    alpha = jnp.exp2(m - m_new)
    l = alpha * l + jnp.sum(p, axis=1)
    o = alpha[:, None] * o + plgpu.dot(p.astype(v.dtype), v)
    return o, m_new, l

  carry = (jnp.zeros((block_q, head_dim), jnp.float32),
           jnp.full((block_q,), _NEG, jnp.float32), jnp.zeros((block_q,), jnp.float32))
  carry = lax.fori_loop(first, full_first, functools.partial(body, masked=True), carry)
  carry = lax.fori_loop(full_first, full_end, functools.partial(body, masked=False), carry)
  o, m, l = lax.fori_loop(full_end, end, functools.partial(body, masked=True), carry)
  seen = l > 0.0
  l_safe = jnp.where(seen, l, 1.0)
  o_ref[...] = (o / l_safe[:, None]).astype(o_ref.dtype)
  # Rows that saw nothing get +1e30: exp2(s - lse) is then 0 in the backward pass.
  lse_ref[...] = jnp.where(seen, m + jnp.log2(l_safe), -_NEG)


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qs_ref, ks_ref, qlo_ref,
               qhi_ref, qdlo_ref, dq_ref, *, scale, block_k):
  q, do = q_ref[...], do_ref[...]
  lse, delta = lse_ref[...], delta_ref[...]
  q_scope, q_hi = qs_ref[...], qhi_ref[...]
  block_q, head_dim = q.shape
  first, full_first, full_end, end = q_block_bounds(qlo_ref[...], q_hi, qdlo_ref[...], block_k)
  qk_scale = scale * _LOG2E

  def body(kb, dq, masked):
    start = pl.multiple_of(kb * block_k, block_k)
    k = k_ref[pl.ds(start, block_k), :]
    v = v_ref[pl.ds(start, block_k), :]
    p = jnp.exp2(plgpu.dot(q, k, trans_b=True) * qk_scale - lse[:, None])
    if masked:
      p = jnp.where(_visible(q_scope, q_hi, ks_ref[pl.ds(start, block_k)], start, block_k),
                    p, 0.0)
    dp = plgpu.dot(do, v, trans_b=True)
    ds = p * (dp - delta[:, None])
    return dq + plgpu.dot(ds.astype(k.dtype), k)

  dq = jnp.zeros((block_q, head_dim), jnp.float32)
  dq = lax.fori_loop(first, full_first, functools.partial(body, masked=True), dq)
  dq = lax.fori_loop(full_first, full_end, functools.partial(body, masked=False), dq)
  dq = lax.fori_loop(full_end, end, functools.partial(body, masked=True), dq)
  dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


def _dkv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qs_ref, ks_ref, qhi_ref,
                klo_ref, khi_ref, dk_ref, dv_ref, *, scale, block_q):
  k, v = k_ref[...], v_ref[...]
  k_scope = ks_ref[...]
  block_k, head_dim = k.shape
  k_start = pl.program_id(0) * block_k
  first, end = k_block_bounds(klo_ref[...], khi_ref[...], block_q)
  qk_scale = scale * _LOG2E

  def body(qb, carry):
    dk, dv = carry
    start = pl.multiple_of(qb * block_q, block_q)
    q = q_ref[pl.ds(start, block_q), :]
    do = do_ref[pl.ds(start, block_q), :]
    lse = lse_ref[pl.ds(start, block_q)]
    delta = delta_ref[pl.ds(start, block_q)]
    visible = _visible(qs_ref[pl.ds(start, block_q)], qhi_ref[pl.ds(start, block_q)],
                       k_scope, k_start, block_k)
    p = jnp.where(visible, jnp.exp2(plgpu.dot(q, k, trans_b=True) * qk_scale - lse[:, None]), 0.0)
    dv = dv + plgpu.dot(p.astype(do.dtype), do, trans_a=True)
    ds = p * (plgpu.dot(do, v, trans_b=True) - delta[:, None])
    dk = dk + plgpu.dot(ds.astype(q.dtype), q, trans_a=True)
    return dk, dv

  zeros = jnp.zeros((block_k, head_dim), jnp.float32)
  dk, dv = lax.fori_loop(first, end, body, (zeros, zeros))
  dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


# ------------------------------------------------------------------------ pallas calls

@dataclasses.dataclass(frozen=True)
class _Static:
  blocks: BlockSizes
  scale: float
  interpret: bool

  def params(self, head_dim):
    warps = self.blocks.num_warps or (4 if head_dim <= 64 else 8)
    return plgpu.CompilerParams(num_warps=warps, num_stages=self.blocks.num_stages)


def _forward(st: _Static, q, k, v, q_scope, k_scope, r: Ranges):
  b, lq, h, d = q.shape
  lk, kvh = k.shape[1], k.shape[2]
  groups = h // kvh
  bq, bk = st.blocks.block_q, st.blocks.block_k
  q_rows = pl.BlockSpec((None, bq), lambda i, bi, hi: (bi, i))
  kv_all = pl.BlockSpec((None, lk, None, d), lambda i, bi, hi: (bi, 0, lax.div(hi, groups), 0))
  q_tile = pl.BlockSpec((None, bq, None, d), lambda i, bi, hi: (bi, i, hi, 0))
  return pl.pallas_call(
      functools.partial(_fwd_kernel, scale=st.scale, block_k=bk),
      grid=(lq // bq, b, h),
      in_specs=[q_tile, kv_all, kv_all, q_rows,
                pl.BlockSpec((None, lk), lambda i, bi, hi: (bi, 0)), q_rows, q_rows, q_rows],
      out_specs=[q_tile, pl.BlockSpec((None, None, bq), lambda i, bi, hi: (bi, hi, i))],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((b, h, lq), jnp.float32)],
      compiler_params=st.params(d), interpret=st.interpret, name='range_attention_fwd',
  )(q, k, v, q_scope, k_scope, r.q_lo, r.q_hi, r.q_dense_lo)


def _backward(st: _Static, q, k, v, q_scope, k_scope, r: Ranges, out, lse, do):
  b, lq, h, d = q.shape
  lk, kvh = k.shape[1], k.shape[2]
  groups = h // kvh
  bq, bk = st.blocks.block_q_bwd, st.blocks.block_k_bwd
  # delta = rowsum(dO * O): the softmax-Jacobian term, one fused XLA reduction.
  delta = jnp.einsum('bqhd,bqhd->bhq', do.astype(jnp.float32), out.astype(jnp.float32))

  q_rows = pl.BlockSpec((None, bq), lambda i, bi, hi: (bi, i))
  q_tile = pl.BlockSpec((None, bq, None, d), lambda i, bi, hi: (bi, i, hi, 0))
  head_rows = pl.BlockSpec((None, None, bq), lambda i, bi, hi: (bi, hi, i))
  kv_all = pl.BlockSpec((None, lk, None, d), lambda i, bi, hi: (bi, 0, lax.div(hi, groups), 0))
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, scale=st.scale, block_k=bk),
      grid=(lq // bq, b, h),
      in_specs=[q_tile, kv_all, kv_all, q_tile, head_rows, head_rows, q_rows,
                pl.BlockSpec((None, lk), lambda i, bi, hi: (bi, 0)), q_rows, q_rows, q_rows],
      out_specs=q_tile,
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      compiler_params=st.params(d), interpret=st.interpret, name='range_attention_dq',
  )(q, k, v, do, lse, delta, q_scope, k_scope, r.q_lo, r.q_hi, r.q_dense_lo)

  k_rows = pl.BlockSpec((None, bk), lambda j, bi, hi: (bi, j))
  k_tile = pl.BlockSpec((None, bk, None, d), lambda j, bi, hi: (bi, j, lax.div(hi, groups), 0))
  q_all = pl.BlockSpec((None, lq, None, d), lambda j, bi, hi: (bi, 0, hi, 0))
  q_all_rows = pl.BlockSpec((None, lq), lambda j, bi, hi: (bi, 0))
  head_all = pl.BlockSpec((None, None, lq), lambda j, bi, hi: (bi, hi, 0))
  # One dK/dV per query head (float32), summed over each KV head's group below.
  per_head = pl.BlockSpec((None, bk, None, d), lambda j, bi, hi: (bi, j, hi, 0))
  dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, scale=st.scale, block_q=bq),
      grid=(lk // bk, b, h),
      in_specs=[q_all, k_tile, k_tile, q_all, head_all, head_all, q_all_rows, k_rows,
                q_all_rows, k_rows, k_rows],
      out_specs=[per_head, per_head],
      out_shape=[jax.ShapeDtypeStruct((b, lk, h, d), jnp.float32)] * 2,
      compiler_params=st.params(d), interpret=st.interpret, name='range_attention_dkv',
  )(q, k, v, do, lse, delta, q_scope, k_scope, r.q_hi, r.k_lo, r.k_hi)
  dk = dk.reshape(b, lk, kvh, groups, d).sum(axis=3).astype(k.dtype)
  dv = dv.reshape(b, lk, kvh, groups, d).sum(axis=3).astype(v.dtype)
  return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention(st, q, k, v, q_scope, k_scope, ranges):
  return _forward(st, q, k, v, q_scope, k_scope, ranges)[0]


def _attention_fwd(st, q, k, v, q_scope, k_scope, ranges):
  out, lse = _forward(st, q, k, v, q_scope, k_scope, ranges)
  return out, (q, k, v, q_scope, k_scope, ranges, out, lse)


def _attention_bwd(st, residuals, do):
  q, k, v, q_scope, k_scope, ranges, out, lse = residuals
  dq, dk, dv = _backward(st, q, k, v, q_scope, k_scope, ranges, out, lse, do)
  return dq, dk, dv, None, None, None


_attention.defvjp(_attention_fwd, _attention_bwd)


# ---------------------------------------------------------------------------- public

def range_attention(q: jax.Array, k: jax.Array, v: jax.Array, q_scope: jax.Array,
                    k_scope: jax.Array, q_end: jax.Array, *,
                    block_sizes: BlockSizes | None = None, interpret: bool = False) -> jax.Array:
  """Attention under the VLM rule without a dense mask; differentiable in q, k, v.

  q: [B, Lq, H, D]; k, v: [B, Lk, KvH, D] (H a multiple of KvH: grouped-query attention;
  D a power of two >= 16); q_scope [B, Lq], k_scope [B, Lk], q_end [B, Lq] int (key
  index space). Returns [B, Lq, H, D] in q's dtype; rows that see no key are 0.
  Any lengths: rows are padded to whole blocks with scope 0 and the padding dropped.
  """
  b, lq, h, d = q.shape
  lk, kvh = k.shape[1], k.shape[2]
  if k.shape != v.shape or k.shape[0] != b or k.shape[3] != d:
    raise ValueError(f'k and v must be [B, Lk, KvH, {d}] like each other, got {k.shape}, {v.shape}')
  if h % kvh:
    raise ValueError(f'{h} query heads are not a multiple of {kvh} key/value heads')
  if d < _MIN_BLOCK or d & (d - 1):
    raise ValueError(f'range_attention needs head_dim a power of two >= {_MIN_BLOCK}, got {d}')
  if not q.dtype == k.dtype == v.dtype:
    raise ValueError(f'q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}')
  blocks = (block_sizes or BlockSizes()).clipped(lq, lk)
  for name in ('block_q', 'block_k', 'block_q_bwd', 'block_k_bwd'):
    size = getattr(blocks, name)
    if size < _MIN_BLOCK or size & (size - 1):
      raise ValueError(f'BlockSizes.{name} must be a power of two >= {_MIN_BLOCK}, got {size}')
  pad_q = -lq % max(blocks.block_q, blocks.block_q_bwd)
  pad_k = -lk % max(blocks.block_k, blocks.block_k_bwd)
  if pad_q:
    q = jnp.pad(q, ((0, 0), (0, pad_q), (0, 0), (0, 0)))
    q_scope = jnp.pad(q_scope, ((0, 0), (0, pad_q)))      # scope 0: sees nothing
    q_end = jnp.pad(q_end, ((0, 0), (0, pad_q)), constant_values=-1)
  if pad_k:
    k = jnp.pad(k, ((0, 0), (0, pad_k), (0, 0), (0, 0)))
    v = jnp.pad(v, ((0, 0), (0, pad_k), (0, 0), (0, 0)))
    k_scope = jnp.pad(k_scope, ((0, 0), (0, pad_k)))      # scope 0: seen by nobody
  q_scope, k_scope = q_scope.astype(jnp.int32), k_scope.astype(jnp.int32)
  ranges = compute_ranges(q_scope, k_scope, q_end)
  st = _Static(blocks, float(d) ** -0.5, bool(interpret))
  out = _attention(st, q, k, v, q_scope, k_scope, ranges)
  return out[:, :lq]


def _per_block(length_axis: jax.Array, block: int, visit) -> list:
  """Per batch row, per block of `block` positions along axis 1 of `length_axis`:
  visit(row, positions of the block)."""
  rows, length = length_axis.shape
  return [[visit(row, slice(start, start + block)) for start in range(0, length, block)]
          for row in range(rows)]


def block_schedule(q_scope, k_scope, q_end, block_q: int, block_k: int):
  """The blocks the forward / dQ kernels visit, computed eagerly with the kernel's code.

  Returns per batch row a list, per query block, of (visited, full): the KV block
  indices loaded, and those run without the element mask. For tests and for reading
  off the sparsity of a layout (benchmarks/attention.py).
  """
  r = compute_ranges(jnp.asarray(q_scope), jnp.asarray(k_scope), jnp.asarray(q_end))

  def visit(row, sl):
    first, full_first, full_end, end = (int(x) for x in q_block_bounds(
        r.q_lo[row, sl], r.q_hi[row, sl], r.q_dense_lo[row, sl], block_k))
    return list(range(first, end)), list(range(full_first, full_end))
  return _per_block(r.q_lo, block_q, visit)


def key_block_schedule(q_scope, k_scope, q_end, block_q: int, block_k: int):
  """Per batch row, per KV block, the query block indices the dK/dV kernel visits."""
  r = compute_ranges(jnp.asarray(q_scope), jnp.asarray(k_scope), jnp.asarray(q_end))

  def visit(row, sl):
    first, end = (int(x) for x in k_block_bounds(r.k_lo[row, sl], r.k_hi[row, sl], block_q))
    return list(range(first, end))
  return _per_block(r.k_lo, block_k, visit)
