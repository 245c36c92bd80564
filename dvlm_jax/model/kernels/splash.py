"""TPU splash attention under the VLM rule, with masks built from the per-row ranges.

Splash attention (jax.experimental.pallas.ops.tpu.splash_attention) skips KV blocks
from a per-(head, q block, kv block) table (`MaskInfo`: empty / partial / full) and
loads the element mask only for partial blocks. Its masks are normally static (one
layout compiled in); ours change with every packed batch. Two ways in:

  RangeMask / row_masks   host-side splash `Mask` objects for one row's layout, exact
                          to `contract.make_mask`; `make_splash_mha` turns them into
                          a static MaskInfo (a fixed layout: evaluation, inference,
                          benchmarking one layout).
  splash_attention        inside jit, for training: each row's mask is processed as a
                          *dynamic* splash mask (MaskInfo computed on device; block
                          skipping as above) and the kernel is vmapped over the rows.
                          The dynamic path materialises the row's [L, L] bool mask
                          (as the XLA path does) and all its blocks; computing MaskInfo
                          straight from the ranges would remove that and is future work.

Splash has no scale argument (q is pre-scaled by head_dim ** -0.5) and a query row
whose keys are all masked is undefined in it, so such rows are given their own key
and their output set to 0 (zero gradients too, as in `range_attention`).
Only lowering is checked off-TPU (tests lower for 'tpu' on CPU and run the kernel in
Pallas interpret mode); TPU timings are not measured yet.
"""

from __future__ import annotations

import numpy as np

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash_kernel
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as mask_lib

from dvlm_jax import contract
from dvlm_jax.model.kernels import range_attention as ra

_LANES = 128   # TPU blocks are multiples of the 128-wide lane dimension


class RangeMask(mask_lib.Mask):
  """One row's attention rule as a lazy splash mask: q sees k iff
  q_lo[q] <= k <= q_hi[q] and scope[q] == scope[k] (the ranges of `range_attention`).

  Slices are computed on demand, so building MaskInfo never holds the [L, L] array.
  `empty_rows_see_self`: a query that sees nothing sees its own key instead, as the
  splash kernel needs a non-empty row (the caller zeroes those rows).
  """

  def __init__(self, q_scope, k_scope, q_end, *, empty_rows_see_self: bool = False):
    q_scope = np.asarray(q_scope, np.int32)
    k_scope = np.asarray(k_scope, np.int32)
    q_end = np.asarray(q_end, np.int32)
    if q_scope.ndim != 1 or k_scope.ndim != 1 or q_end.shape != q_scope.shape:
      raise ValueError('RangeMask takes one row: 1-D q_scope, k_scope and q_end (len Lq)')
    r = ra.compute_ranges(q_scope[None], k_scope[None], q_end[None])
    self.q_scope, self.k_scope = q_scope, k_scope
    self.q_lo, self.q_hi = np.asarray(r.q_lo[0]), np.asarray(r.q_hi[0])
    self.empty_rows_see_self = empty_rows_see_self

  @property
  def shape(self) -> tuple[int, int]:
    return (self.q_scope.shape[0], self.k_scope.shape[0])

  def __getitem__(self, idx) -> np.ndarray:
    if not isinstance(idx, tuple) or len(idx) != 2:
      raise NotImplementedError(f'RangeMask supports [rows, cols] indexing, got {idx!r}')
    rows, cols = (np.arange(n)[i] for i, n in zip(idx, self.shape))
    rows2, cols2 = np.atleast_1d(rows), np.atleast_1d(cols)
    lo, hi = self.q_lo[rows2][:, None], self.q_hi[rows2][:, None]
    out = ((lo <= cols2[None, :]) & (cols2[None, :] <= hi)
           & (self.q_scope[rows2][:, None] == self.k_scope[cols2][None, :]))
    if self.empty_rows_see_self:
      out |= (hi < lo) & (rows2[:, None] == cols2[None, :])
    return out.reshape(np.shape(rows) + np.shape(cols))

  def _key(self):
    return (self.q_scope.tobytes(), self.k_scope.tobytes(), self.q_hi.tobytes(),
            self.empty_rows_see_self)

  def __eq__(self, other: object):
    if not isinstance(other, RangeMask):
      return NotImplemented
    return self._key() == other._key()

  def __hash__(self):
    return hash((RangeMask,) + self._key())


def row_masks(q_scope, k_scope, q_end, num_heads: int, *,
              empty_rows_see_self: bool = False) -> list[mask_lib.MultiHeadMask]:
  """One splash MultiHeadMask per batch row ([B, L] numpy inputs), the same for every head."""
  out = []
  for qs, ks, qe in zip(np.asarray(q_scope), np.asarray(k_scope), np.asarray(q_end)):
    m = RangeMask(qs, ks, qe, empty_rows_see_self=empty_rows_see_self)
    out.append(mask_lib.MultiHeadMask([m] * num_heads))
  return out


def block_sizes(lq: int, lk: int, block: int = 512) -> splash_kernel.BlockSizes:
  """Splash tiles (multiples of 128, at most `block`) that divide the padded lengths."""
  bq = min(block, _round_up(lq, _LANES))
  bk = min(block, _round_up(lk, _LANES))
  return splash_kernel.BlockSizes(
      block_q=bq, block_kv=bk, block_kv_compute=bk, block_q_dkv=bq, block_kv_dkv=bk,
      block_kv_dkv_compute=bk, block_q_dq=bq, block_kv_dq=bk)


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def make_kernel(mask, blocks: splash_kernel.BlockSizes, *, interpret: bool = False):
  """`make_splash_mha` for a static (Mask) or dynamic (jax.Array [heads, Lq, Lk]) mask.

  The kernel converts MaskInfo.is_dynamic_mask to an array, and then branches on it in
  Python, which fails under jit; it is a trace-time constant, so restore the bool.
  """
  kernel = splash_kernel.make_splash_mha(mask, block_sizes=blocks, head_shards=1,
                                         q_seq_shards=1, interpret=interpret)
  dynamic = isinstance(mask, jax.Array)
  for name in ('fwd_mask_info', 'dq_mask_info', 'dkv_mask_info'):
    info = getattr(kernel, name)
    if info is not None:
      setattr(kernel, name, info._replace(is_dynamic_mask=dynamic))
  return kernel


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, q_scope: jax.Array,
                     k_scope: jax.Array, q_end: jax.Array, *, block: int = 512,
                     interpret: bool = False) -> jax.Array:
  """Attention under the VLM rule with splash kernels; the `range_attention` contract.

  q: [B, Lq, H, D]; k, v: [B, Lk, KvH, D] (grouped-query when KvH < H); scopes and
  attn_end [B, L]. Rows that see no key are 0. Traceable (dynamic per-row masks).
  """
  b, lq, h, d = q.shape
  lk = k.shape[1]
  if h % k.shape[2]:
    raise ValueError(f'{h} query heads are not a multiple of {k.shape[2]} key/value heads')
  blocks = block_sizes(lq, lk, block)
  pq, pk = -lq % blocks.block_q, -lk % blocks.block_kv
  pad = lambda x, n: jnp.pad(x, ((0, 0), (0, n)) + ((0, 0),) * (x.ndim - 2))
  q_scope, q_end, k_scope = pad(q_scope, pq), pad(q_end, pq), pad(k_scope, pk)
  q, k, v = pad(q, pq), pad(k, pk), pad(v, pk)
  mask = contract.make_mask(q_scope, k_scope, q_end)
  empty = ~jnp.any(mask, axis=-1)
  own = jnp.arange(lq + pq)[:, None] == jnp.arange(lk + pk)[None, :]
  mask = mask | (empty[:, :, None] & own[None])

  heads_first = lambda x: jnp.swapaxes(x, 1, 2)   # splash wants [heads, L, D] per row
  q = heads_first(q * jnp.asarray(d ** -0.5, q.dtype))

  def one_row(q_row, k_row, v_row, mask_row):
    return make_kernel(mask_row[None], blocks, interpret=interpret)(q_row, k_row, v_row)

  out = jax.vmap(one_row)(q, heads_first(k), heads_first(v), mask)
  out = jnp.where(empty[:, None, :, None], jnp.zeros((), out.dtype), out)
  return heads_first(out)[:, :lq]
