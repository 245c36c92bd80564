"""The block-sparse attention kernels against the XLA reference, on packed VLM layouts.

Everything runs on CPU: the Pallas kernel in interpret mode (the same kernel code the
GPU compiles), splash attention in TPU interpret mode, and lowering checks that build
the Triton / Mosaic programs for 'cuda' / 'tpu' without a device. Every kernel call
here shares one shape per dtype so each is compiled once (compiles dominate the time).
"""

import dataclasses
import functools
import logging
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dvlm_jax import contract
from dvlm_jax.errors import ConfigError
from dvlm_jax.data import layout
from dvlm_jax.data import tokenizer as tk
from dvlm_jax.model import attention
from dvlm_jax.model.kernels import range_attention as ra
from dvlm_jax.model.kernels import splash
from dvlm_jax.model.kernels import tokamax_attention
from dvlm_jax.model import dvlm
from dvlm_jax.model.dvlm import DreamVLM
from dvlm_jax.model.layers import ModelConfig
from tests.conftest import ROOT, build, image_batch, layout_config, tiny_config

TEXT = contract.MODALITY_TEXT
SEQ = 120          # not a multiple of the blocks: the wrapper pads
BLOCKS = ra.BlockSizes(block_q=32, block_k=16, block_q_bwd=16, block_k_bwd=32)
B, H, KVH = 2, 4, 2
SCOPES = ('document', 'text', 'image')


def packed_rows(seed, seq_len=SEQ, batch_size=B):
  """Packed rows of documents mixing text before, between and after images.

  Small images (scales 2 and 4, dual copy: 44 tokens each) so several documents and
  images share a row; rows end in padding.
  """
  rng = np.random.default_rng(seed)
  cfg = layout_config(seq_len=seq_len, patch_size=2, scales=(2, 4), caption_dropout=0.0)
  img = lambda: rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
  txt = lambda n: ''.join(rng.choice(list('abcdefgh '), size=n))
  docs = [[txt(5), img(), txt(7)], [txt(9)], [img(), txt(4)], [txt(3), img(), txt(2), img()],
          [txt(30)], [txt(6), img()], [txt(11)]]
  batch, stats = layout.make_batch(docs, cfg, tk.ByteTokenizer(), rng, batch_size)
  assert stats.documents >= 4
  return batch


def scope_inputs(batch, kind):
  """(scope, attn_end) of one stage over the whole row (`contract.stage_scopes`). The text
  scope is not contiguous where images interrupt a document's text."""
  stage = contract.stage_scopes(batch)[{'document': 'core', 'text': 'text_in',
                                        'image': 'image_in'}[kind]]
  return stage.scope, stage.end


def dense(scope, end):
  return np.asarray(contract.make_mask(jnp.asarray(scope), jnp.asarray(scope), jnp.asarray(end)))


def all_layouts():
  for seed in range(3):
    batch = packed_rows(seed)
    for kind in SCOPES:
      yield seed, kind, *scope_inputs(batch, kind)


def test_layouts_cover_the_hard_cases():
  batch = packed_rows(0)
  text_scope, _ = scope_inputs(batch, 'text')
  # Text-in scope interrupted by an image: the same id in two separate runs.
  runs = [np.unique(row[np.flatnonzero(np.diff(row, prepend=-1))], return_counts=True)
          for row in text_scope]
  assert any(np.any((ids > 0) & (n > 1)) for ids, n in runs)
  assert np.any(batch['attn_end'] > np.arange(SEQ))          # bidirectional image blocks
  assert np.all(batch['segment_ids'][:, -1] == 0)            # padding at the end


# --------------------------------------------------------------------------- ranges

@pytest.mark.parametrize('seed', range(3))
@pytest.mark.parametrize('kind', SCOPES)
def test_ranges_bound_the_mask(seed, kind):
  scope, end = scope_inputs(packed_rows(seed), kind)
  mask = dense(scope, end)
  r = jax.tree.map(np.asarray, ra.compute_ranges(jnp.asarray(scope), jnp.asarray(scope),
                                                 jnp.asarray(end)))
  index = np.arange(SEQ)
  # Documents are contiguous runs; text-in scopes are interrupted by images and image
  # scopes by their scale markers (text tokens): there the range is a superset.
  contiguous = kind == 'document'
  for b in range(mask.shape[0]):
    for q in range(SEQ):
      seen = np.flatnonzero(mask[b, q])
      if not seen.size:
        assert (r.q_lo[b, q], r.q_hi[b, q], r.q_dense_lo[b, q]) == (SEQ, -1, SEQ)
        continue
      assert (r.q_lo[b, q], r.q_hi[b, q]) == (seen[0], seen[-1])   # tight ends
      if contiguous:   # and nothing missing in between
        assert np.array_equal(seen, np.arange(seen[0], seen[-1] + 1))
      dense_part = index[r.q_dense_lo[b, q]:r.q_hi[b, q] + 1]
      assert mask[b, q, dense_part].all()
      assert dense_part.size > 0              # q_hi's own run is always dense
    for k in range(SEQ):
      seen_by = np.flatnonzero(mask[b, :, k])
      if seen_by.size:
        assert r.k_lo[b, k] <= seen_by[0] and seen_by[-1] <= r.k_hi[b, k]
      else:
        assert r.k_hi[b, k] < r.k_lo[b, k]


def tiles(mask, bq, bk):
  """[B, nq, nk] (any visible pair, every pair visible) per tile, on padded lengths."""
  b, lq, lk = mask.shape
  nq, nk = -(-lq // bq), -(-lk // bk)
  padded = np.zeros((b, nq * bq, nk * bk), bool)
  padded[:, :lq, :lk] = mask
  t = padded.reshape(b, nq, bq, nk, bk)
  return t.any(axis=(2, 4)), t.all(axis=(2, 4))


@pytest.mark.parametrize('bq,bk', [(32, 16), (16, 32), (64, 64)])
def test_visited_blocks_are_exactly_the_ones_that_matter(bq, bk):
  for _, kind, scope, end in all_layouts():
    mask = dense(scope, end)
    any_visible, all_visible = tiles(mask, bq, bk)
    schedule = ra.block_schedule(scope, scope, end, bq, bk)
    keyside = ra.key_block_schedule(scope, scope, end, bq, bk)
    for b, row in enumerate(schedule):
      for i, (visited, full) in enumerate(row):
        visited_set = set(visited)
        nonempty = set(np.flatnonzero(any_visible[b, i]))
        assert nonempty <= visited_set, (kind, b, i)                # correctness
        # One span from the first to the last block with a visible pair; for contiguous
        # scopes (documents) that is exactly the blocks with a visible pair.
        span = list(range(min(nonempty), max(nonempty) + 1)) if nonempty else []
        assert visited == span, (kind, b, i)
        if kind == 'document':
          assert visited_set == nonempty, (kind, b, i)
        assert set(full) <= visited_set
        assert all(all_visible[b, i, j] for j in full), (kind, b, i)  # unmasked tiles
      for j, q_blocks in enumerate(keyside[b]):
        seen_by = set(np.flatnonzero(any_visible[b, :, j]))
        assert seen_by <= set(q_blocks), (kind, b, j)
        if kind == 'document':
          assert set(q_blocks) == seen_by, (kind, b, j)


def test_full_tiles_are_used_on_long_documents():
  # One document filling the row: most tiles below the diagonal are full (no mask work).
  scope = np.ones((1, 256), np.int32)
  end = np.arange(256, dtype=np.int32)[None]
  schedule = ra.block_schedule(scope, scope, end, 32, 32)[0]
  assert [len(v) for v, _ in schedule] == list(range(1, 9))
  assert [len(f) for _, f in schedule] == list(range(0, 8))   # all but the diagonal


# --------------------------------------------------------------------------- kernel

@functools.lru_cache(maxsize=None)
def kernel_fn(dtype, head_dim):
  """jit: (q, k, v, scope, end, w) -> (out, dq, dk, dv) of sum(out * w); one compile."""
  def run(q, k, v, scope, end, w):
    f = lambda q, k, v: ra.range_attention(q, k, v, scope, scope, end, block_sizes=BLOCKS,
                                           interpret=True)
    out, vjp = jax.vjp(f, q, k, v)
    return (out, *vjp(w.astype(out.dtype)))
  del dtype, head_dim  # cache keys: one compiled function per (dtype, head_dim)
  return jax.jit(run)


@jax.jit
def reference(q, k, v, scope, end, w):
  """XLA attention in float32, valid rows only (its garbage rows are never used)."""
  mask = contract.make_mask(scope, scope, end)
  valid = jnp.any(mask, axis=-1)[..., None, None]
  f = lambda q, k, v: jnp.where(valid, attention.attend(q, k, v, mask), 0.0)
  out, vjp = jax.vjp(f, *(x.astype(jnp.float32) for x in (q, k, v)))
  return (out, *vjp(w.astype(jnp.float32)))


def random_qkvw(seed, dtype, head_dim):
  ks = jax.random.split(jax.random.key(seed), 4)
  q = jax.random.normal(ks[0], (B, SEQ, H, head_dim), jnp.float32)
  k = jax.random.normal(ks[1], (B, SEQ, KVH, head_dim), jnp.float32)
  v = jax.random.normal(ks[2], (B, SEQ, KVH, head_dim), jnp.float32)
  w = jax.random.normal(ks[3], (B, SEQ, H, head_dim), jnp.float32)
  return tuple(x.astype(dtype) for x in (q, k, v)) + (w,)


def assert_matches_reference(fn, args, mask, tol, where):
  """fn's (out, dq, dk, dv) against the reference's, relative max error < tol; the
  cotangent is zero on rows that see nothing (their gradients are the kernel's own
  business, checked separately). Returns fn's outputs."""
  q, k, v, scope, end, w = args
  valid = mask.any(-1)[..., None, None]
  got = fn(q, k, v, scope, end, w * valid)
  want = reference(q, k, v, scope, end, w * valid)
  for name, g, r in zip(('out', 'dq', 'dk', 'dv'), got, want):
    g, r = np.asarray(g, np.float32), np.asarray(r, np.float32)
    assert g.shape == r.shape and np.all(np.isfinite(g)), (where, name)
    err = np.max(np.abs(g - r)) / max(np.max(np.abs(r)), 1e-6)
    assert err < tol, (where, name, err)
  return got


@pytest.mark.parametrize('dtype,head_dim,tol', [(jnp.float32, 64, 2e-5), (jnp.bfloat16, 128, 3e-2)],
                         ids=['f32-d64', 'bf16-d128'])
def test_kernel_matches_reference_values_and_grads(dtype, head_dim, tol):
  fn = kernel_fn(jnp.dtype(dtype).name, head_dim)
  for seed in range(2):
    batch = packed_rows(seed)
    q, k, v, w = random_qkvw(seed, dtype, head_dim)
    for kind in SCOPES:
      scope, end = scope_inputs(batch, kind)
      mask = dense(scope, end)
      got = assert_matches_reference(fn, (q, k, v, scope, end, w), mask, tol, (seed, kind))
      assert got[0].dtype == dtype
      # Rows that see nothing: exactly 0 output and 0 dq (also with a cotangent there).
      empty = ~mask.any(-1)
      assert empty.any()
      out, dq, _, _ = fn(q, k, v, scope, end, w)
      assert np.all(np.asarray(out, np.float32)[empty] == 0.0), kind
      assert np.all(np.asarray(dq, np.float32)[empty] == 0.0), kind


@pytest.mark.parametrize('seed', range(3))
@pytest.mark.parametrize('kind', SCOPES)
def test_tokamax_ranges_are_the_rule(seed, kind):
  """k_start / k_end / key_ok give exactly make_mask on every stage's scope (text-in and
  image-in scopes are interrupted, by images and by scale markers: key_ok removes those),
  and a query that sees nothing gets exactly one key (a finite row, never NaN)."""
  scope, end = scope_inputs(packed_rows(seed), kind)
  mask = dense(scope, end)
  k_start, k_end, key_ok = (np.asarray(x) for x in tokamax_attention.key_ranges(
      jnp.asarray(scope), jnp.asarray(scope), jnp.asarray(end)))
  index = np.arange(SEQ)
  got = ((index[None, None, :] >= k_start[..., None]) & (index[None, None, :] < k_end[..., None])
         & key_ok[:, None, :])
  seen = mask.any(-1)
  assert np.array_equal(got[seen], mask[seen]), kind
  assert np.all(got[~seen].sum(-1) == 1)


def test_tokamax_matches_reference_values_and_grads():
  """Through tokamax's XLA path (the CPU stand-in for its GPU kernels): the same values
  and gradients as the reference on every stage's scope."""
  fn = jax.jit(lambda q, k, v, scope, end, w: (lambda out, vjp: (out, *vjp(w)))(
      *jax.vjp(lambda q, k, v: tokamax_attention.tokamax_attention(q, k, v, scope, scope, end),
               q, k, v)))
  batch = packed_rows(0)
  q, k, v, w = random_qkvw(0, jnp.float32, 64)
  for kind in SCOPES:
    scope, end = scope_inputs(batch, kind)
    valid = dense(scope, end).any(-1)[..., None, None]
    got = fn(q, k, v, scope, end, w * valid)
    want = reference(q, k, v, scope, end, w * valid)
    for name, g, r in zip(('out', 'dq', 'dk', 'dv'), got, want):
      g = np.where(valid, g, 0.0) if name == 'out' else np.asarray(g)
      assert np.all(np.isfinite(g)), (kind, name)
      err = np.max(np.abs(g - np.asarray(r))) / np.max(np.abs(np.asarray(r)))
      assert err < 2e-5, (kind, name, err)


def test_kernel_never_loads_skipped_blocks():
  """NaN in blocks that no block of the other side may visit reaches no output or gradient.

  Trailing padding, whole blocks of it, is reachable only through visits the schedule
  skips; a visit there (even one fully masked) would turn 0 * NaN into NaN.
  """
  fn = kernel_fn('float32', 64)
  batch = packed_rows(1)
  scope, end = scope_inputs(batch, 'document')
  align = max(BLOCKS.block_q, BLOCKS.block_k, BLOCKS.block_q_bwd, BLOCKS.block_k_bwd)
  content_end = [int(np.flatnonzero(row)[-1]) + 1 for row in batch['segment_ids']]
  pad_start = [-(-n // align) * align for n in content_end]
  assert min(pad_start) < SEQ                # some row has whole padding blocks
  poisoned = np.zeros((B, SEQ), bool)
  for b, p in enumerate(pad_start):
    poisoned[b, p:] = True
  q, k, v, w = random_qkvw(3, jnp.float32, 64)
  poison = lambda x: jnp.where(poisoned[:, :, None, None], jnp.nan, x)
  got = fn(poison(q), poison(k), poison(v), scope, end, poison(w))
  want = reference(q, k, v, scope, end, jnp.where(poisoned[:, :, None, None], 0.0, w))
  for name, g, r in zip(('out', 'dq', 'dk', 'dv'), got, want):
    g, r = np.asarray(g)[~poisoned], np.asarray(r)[~poisoned]
    assert np.all(np.isfinite(g)), name
    np.testing.assert_allclose(g, r, atol=2e-5 * np.max(np.abs(r)), err_msg=name)
  for name, x in zip(('out', 'dq', 'dk', 'dv'), got):   # exactly zero there, not NaN
    assert np.all(np.asarray(x)[poisoned] == 0.0), name


@pytest.mark.parametrize('head_dim', [64, 128])
def test_kernel_lowers_to_triton_for_gpu(head_dim):
  """Forward and both backward kernels lower to Triton for 'cuda' (on a CPU-only host)."""
  b, l = 1, 512
  q = jnp.zeros((b, l, 8, head_dim), jnp.bfloat16)
  kv = jnp.zeros((b, l, 2, head_dim), jnp.bfloat16)
  scope = jnp.ones((b, l), jnp.int32)
  end = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
  loss = lambda q, k, v: ra.range_attention(q, k, v, scope, scope, end).astype(jnp.float32).sum()
  lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(q, kv, kv).lower(
      lowering_platforms=('cuda',))
  text = lowered.as_text()
  assert text.count('__gpu$xla.gpu.triton') == 3   # forward, dQ, dK/dV


def test_kernel_rejects_unsupported_shapes():
  q = jnp.zeros((1, 32, 4, 48))
  with pytest.raises(ValueError, match='power of two'):
    ra.range_attention(q, q[:, :, :2], q[:, :, :2], jnp.ones((1, 32)), jnp.ones((1, 32)),
                       jnp.zeros((1, 32)), interpret=True)
  q = jnp.zeros((1, 32, 3, 64))
  with pytest.raises(ValueError, match='multiple'):
    ra.range_attention(q, q[:, :, :2], q[:, :, :2], jnp.ones((1, 32)), jnp.ones((1, 32)),
                       jnp.zeros((1, 32)), interpret=True)


# --------------------------------------------------------------------------- splash

@pytest.mark.parametrize('kind', SCOPES)
def test_splash_range_mask_is_the_dense_rule(kind):
  batch = packed_rows(2)
  scope, end = scope_inputs(batch, kind)
  mask = dense(scope, end)
  masks = splash.row_masks(scope, scope, end, num_heads=2)
  for b, multi in enumerate(masks):
    assert multi.shape == (2, SEQ, SEQ)
    np.testing.assert_array_equal(multi[0, :, :], mask[b])
    np.testing.assert_array_equal(multi[1, 10:50, 30:100], mask[b, 10:50, 30:100])
  # With empty rows seeing themselves, only those rows change, by their diagonal entry.
  fixed = splash.RangeMask(scope[0], scope[0], end[0], empty_rows_see_self=True)[:, :]
  empty = ~mask[0].any(-1)
  np.testing.assert_array_equal(fixed[~empty], mask[0][~empty])
  np.testing.assert_array_equal(fixed[empty], np.eye(SEQ, dtype=bool)[empty])


def test_splash_mask_info_skips_what_the_gpu_kernel_skips():
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask_info as info
  batch = packed_rows(0, seq_len=256)
  scope, end = scope_inputs(batch, 'document')
  [multi] = splash.row_masks(scope[:1], scope[:1], end[:1], num_heads=1)
  mask_info, _ = info.process_mask(multi, (64, 64), shrink_grid=False)
  block_mask = np.asarray(mask_info.block_mask)[0]     # 0 empty, 1 partial, 2 full
  for i, (visited, full) in enumerate(ra.block_schedule(scope[:1], scope[:1], end[:1], 64, 64)[0]):
    assert set(np.flatnonzero(block_mask[i] > 0)) == set(visited)
    assert set(full) <= set(np.flatnonzero(block_mask[i] == 2))


def model_stage_rules(batch):
  """Every stage's (q_scope, k_scope, q_end) exactly as the model passes them to attention
  in training (`dvlm.stage_rules`): text-in and image-in on their own streams, the core
  over the row, each out stack's compacted queries (capacities = the batch's largest
  counts, so the out stacks' queries are fewer than the row's keys) against the row."""
  scopes = contract.stage_scopes(batch)
  most = lambda stage: int(np.max(np.sum(scopes[stage].queries, axis=1)))
  caps = layout.Capacities(most('text_in'), most('image_in'), most('text_out'), most('imun_out'))
  cfg = dataclasses.replace(ModelConfig.from_config(tiny_config()), capacities=tuple(caps))
  rules = dvlm.stage_rules(jax.tree.map(jnp.asarray, batch), cfg)
  return {name: (r.q_scope, r.k_scope, r.q_end) for name, r in rules.items()}


@functools.lru_cache(maxsize=None)
def splash_fn(impl):
  """(out, dq, dk, dv) of one attention implementation, jitted (one compile per shape)."""
  def run(q, k, v, q_scope, k_scope, q_end, w):
    if impl == 'splash':
      f = lambda q, k, v: splash.splash_attention(q, k, v, q_scope, k_scope, q_end, block=128,
                                                  interpret=True)
    else:
      f = lambda q, k, v: attention.attend(q, k, v, q_scope=q_scope, k_scope=k_scope,
                                           q_end=q_end, implementation='xla')
    out, vjp = jax.vjp(f, q, k, v)
    return (out, *vjp(w))
  return jax.jit(run)


def test_splash_interpret_is_the_rule_on_every_stage():
  """What compiles for a TPU is what the model means: splash (Pallas interpret mode, the
  kernel code the TPU compiles) against the reference on each stage's own scope ids and
  ends, values and gradients; rows that see nothing are exactly 0."""
  batch = packed_rows(0, seq_len=SEQ)
  rules = model_stage_rules(batch)
  assert set(rules) == {'text_in', 'image_in', 'core', 'text_out', 'imun_out', 'imgen_out'}
  assert rules['text_out'][0].shape[1] < SEQ and rules['imun_out'][0].shape[1] < SEQ
  ks = jax.random.split(jax.random.key(5), 4)
  for stage, (q_scope, k_scope, q_end) in rules.items():
    lq, lk = q_scope.shape[1], k_scope.shape[1]
    q = jax.random.normal(ks[0], (B, lq, H, 64))
    k, v = (jax.random.normal(key, (B, lk, KVH, 64)) for key in ks[1:3])
    mask = np.asarray(contract.make_mask(q_scope, k_scope, q_end))
    seen = mask.any(-1)
    assert seen.any(), stage
    w = jax.random.normal(ks[3], q.shape) * seen[..., None, None]
    got = splash_fn('splash')(q, k, v, q_scope, k_scope, q_end, w)
    want = splash_fn('xla')(q, k, v, q_scope, k_scope, q_end, w)
    for name, g, r in zip(('out', 'dq', 'dk', 'dv'), got, want):
      g, r = np.asarray(g), np.asarray(r)
      if name in ('out', 'dq'):   # rows that see nothing: the kernel's 0, XLA's garbage
        assert np.all(g[~seen] == 0.0), (stage, name)
        g, r = g[seen], r[seen]
      err = np.max(np.abs(g - r)) / max(np.max(np.abs(r)), 1e-6)
      assert err < 1e-4, (stage, name, err)


def test_splash_lowers_for_tpu():
  b, l = 1, 512
  q = jnp.zeros((b, l, 4, 128), jnp.bfloat16)
  kv = jnp.zeros((b, l, 2, 128), jnp.bfloat16)
  scope = jnp.ones((b, l), jnp.int32)
  end = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
  loss = lambda q, k, v: splash.splash_attention(q, k, v, scope, scope, end).astype(
      jnp.float32).sum()
  text = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(q, kv, kv).lower(
      lowering_platforms=('tpu',)).as_text()
  assert 'tpu_custom_call' in text


# ------------------------------------------------------------------ dispatch, model

def test_attend_dispatch(caplog):
  batch = packed_rows(0)
  scope, end = scope_inputs(batch, 'document')
  scope, end = jnp.asarray(scope), jnp.asarray(end)
  q, k, v, _ = random_qkvw(0, jnp.float32, 64)
  mask = contract.make_mask(scope, scope, end)
  xla = np.asarray(attention.attend(q, k, v, mask))
  # Kernel stages get the scope ids, not a mask (the model test runs them through attend).
  spec = attention.stage_mask(scope, scope, end, 'pallas_interpret')
  assert isinstance(spec, attention.ScopeMask) and spec.q_end is end
  # The dense path is untouched: 'xla' stage masks are make_mask itself.
  assert np.array_equal(np.asarray(attention.stage_mask(scope, scope, end)), np.asarray(mask))
  np.testing.assert_array_equal(
      np.asarray(attention.attend(q, k, v, q_scope=scope, k_scope=scope, q_end=end)), xla)
  # No GPU / no scope ids: the XLA result, bit for bit, and a warning.
  with caplog.at_level(logging.WARNING):
    for impl in ('pallas_gpu', 'splash'):
      fallback = attention.attend(q, k, v, mask if impl == 'splash' else spec, implementation=impl)
      np.testing.assert_array_equal(np.asarray(fallback), xla)
  assert 'using xla' in caplog.text
  with pytest.raises(ValueError, match='choose one of'):
    attention.attend(q, k, v, mask, implementation='flash')
  # 'auto' is the measured-fastest kernel on GPU / TPU, the dense XLA path here (bit for bit).
  assert attention.AUTO == {'gpu': 'pallas_gpu', 'tpu': 'splash'}
  assert attention.resolve('auto') == 'xla' and attention.resolve('splash') == 'splash'
  assert not isinstance(attention.stage_mask(scope, scope, end, 'auto'), attention.ScopeMask)
  np.testing.assert_array_equal(np.asarray(attention.attend(q, k, v, mask, implementation='auto')),
                                xla)


def test_config_accepts_the_kernels():
  for impl in attention.IMPLEMENTATIONS:
    tiny_config(model__attention=impl)
  with pytest.raises(ConfigError, match='model.attention'):
    tiny_config(model__attention='cudnn')


def test_model_with_kernel_matches_xla():
  """The tiny model with every stage's attention through the interpret-mode kernel: the
  same outputs where they are used (non-padding positions; stage outputs are already
  masked per modality). Out stages off (they reuse the core's scopes) to keep it quick."""
  outs = dict(model__text_out_layers=0, model__imun_out_layers=0, model__imgen_out_layers=0)
  config = tiny_config(**outs)
  batch = image_batch(config)
  model, params = build(config, batch)
  kernel_model = DreamVLM(ModelConfig.from_config(
      tiny_config(model__attention='pallas_interpret', **outs)))
  rows, length = batch['segment_ids'].shape
  index = jnp.broadcast_to(jnp.arange(length), (rows, length))
  run = lambda m: jax.jit(lambda b: m.apply({'params': params}, b, return_hidden=True,
                                            heads={'text': index, 'image': index}))(batch)
  want, got = run(model), run(kernel_model)
  used = batch['segment_ids'] > 0
  flat = lambda o: {**{k: o[k] for k in ('text_logits', 'patch_pred', 'imgen_cond')},
                    **{f'hidden/{k}': x for k, x in o['hidden'].items()}}
  for name, x in flat(want).items():
    y = flat(got)[name]
    np.testing.assert_allclose(np.asarray(y)[used], np.asarray(x)[used], atol=2e-5,
                               err_msg=name)


SHARDED_SCRIPT = r'''
import flax.linen as nn, jax, jax.numpy as jnp, numpy as np
from dvlm_jax import config as cfg_lib, contract
from dvlm_jax.model import attention
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
mesh = Mesh(np.asarray(jax.devices()).reshape(2, 1, 2), ('data', 'fsdp', 'tensor'))
rules = cfg_lib.default_logical_rules()
b, l, h, kvh, d = 4, 64, 4, 2, 32
rng = np.random.default_rng(0)
scope = np.repeat(np.arange(1, 5), 16)[None].repeat(b, 0).astype(np.int32)
scope[:, -8:] = 0
end = np.broadcast_to(np.arange(l, dtype=np.int32), (b, l)).copy()
end[:, 20:28] = 27                                        # a bidirectional block
ks = jax.random.split(jax.random.key(0), 4)
q = jax.random.normal(ks[0], (b, l, h, d)); w = jax.random.normal(ks[3], (b, l, h, d))
k = jax.random.normal(ks[1], (b, l, kvh, d)); v = jax.random.normal(ks[2], (b, l, kvh, d))
valid = np.asarray(contract.make_mask(scope, scope, end).any(-1))[..., None, None]
def loss(q, k, v, impl):
  spec = attention.stage_mask(jnp.asarray(scope), jnp.asarray(scope), jnp.asarray(end), impl)
  out = attention.attend(q, k, v, spec, implementation=impl)
  return jnp.sum(jnp.where(valid, out, 0.0) * w), out
grad = lambda impl: jax.jit(jax.value_and_grad(lambda *a: loss(*a, impl), argnums=(0, 1, 2), has_aux=True))
want = grad('xla')(q, k, v)
put = lambda x: jax.device_put(x, NamedSharding(mesh, P(('data', 'fsdp'), None, 'tensor', None)))
with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
  fn = grad('pallas_interpret')
  text = str(jax.make_jaxpr(fn)(put(q), put(k), put(v)))
  got = fn(put(q), put(k), put(v))
assert 'shard_map' in text
errs = [float(np.max(np.abs(np.where(valid, a, 0) - np.where(valid, b_, 0))))
        for a, b_ in zip(jax.tree.leaves(got), jax.tree.leaves(want))]
print('max errors', errs)
assert max(errs) < 1e-4, errs
print('OK')
'''


def test_kernel_runs_per_device_under_a_mesh():
  """With 4 devices (data 2 x tensor 2) each device runs the kernel on its rows and heads
  (shard_map) and the values and gradients are those of the unsharded reference."""
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4',
             JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
  done = subprocess.run([sys.executable, '-c', SHARDED_SCRIPT], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0 and 'OK' in done.stdout, done.stdout + done.stderr[-3000:]
