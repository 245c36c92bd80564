"""Shared layers: every parameter and activation carries logical axis names.

Logical names are mapped to mesh axes by `config.sharding.rules` (see `dvlm_jax.sharding`).
Parameter names: embed, vocab, heads, kv_heads, head_dim, mlp, patch, norm, table, cell (the
image cell-position features), diff_width,
exp (the expert dimension of mixture-of-experts weights).
Activation names: batch, length, act_embed, act_heads, act_mlp, exp_batch (the rows of
tokens dispatched to experts, which leave the expert axis to the experts).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dvlm_jax import contract

Dtype = Any


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The static part of `config.model` (+ image/diffusion sizes) the modules read; built
  by `from_config` (the defaults are the config's)."""
  vocab_size: int
  d_model: int
  n_heads: int
  n_kv_heads: int
  head_dim: int
  mlp_dim: int
  core_layers: int
  text_in_layers: int
  image_in_layers: int
  text_out_layers: int
  imun_out_layers: int
  imgen_out_layers: int
  imun_head: bool
  diffusion_head: bool
  patch_dim: int
  num_scales: int
  mask_token: bool   # images may be masked (False for next-patch targets)
  rope_theta: float
  rope_axes: str
  image_pos_embed: bool
  norm_eps: float
  tie_embeddings: bool
  dtype: Dtype
  param_dtype: Dtype
  remat: str
  scan_layers: bool
  attention: str
  init_std: float
  embed_init_std: float   # the text embedding table (a token's identity in the residual stream)
  diffusion_width: int
  diffusion_depth: int
  # Mixture of experts in the core stack (0 experts = dense MLP); see MoEMLP.
  moe_experts: int
  moe_top_k: int
  moe_capacity_factor: float
  moe_group_size: int
  moe_mlp_dim: int
  # Per-row slots of the text-in, image-in, text-out and image-out streams of a training
  # call (`contract.Capacities`); 0 = the call's row length.
  capacities: tuple[int, int, int, int]

  @classmethod
  def from_config(cls, config) -> 'ModelConfig':
    m, i, d = config.model, config.image, config.diffusion
    return cls(
        vocab_size=m.vocab_size, d_model=m.d_model, n_heads=m.n_heads,
        n_kv_heads=m.n_kv_heads, head_dim=m.head_dim, mlp_dim=m.mlp_dim,
        core_layers=m.core_layers, text_in_layers=m.text_in_layers,
        image_in_layers=m.image_in_layers, text_out_layers=m.text_out_layers,
        imun_out_layers=m.imun_out_layers, imgen_out_layers=m.imgen_out_layers,
        imun_head=m.imun_head, diffusion_head=m.diffusion_head,
        patch_dim=i.patch_size ** 2 * 3, num_scales=len(i.scales),
        mask_token=i.targets == 'masked',
        rope_theta=m.rope_theta, rope_axes=m.rope_axes,
        image_pos_embed=m.image_pos_embed, norm_eps=m.norm_eps, tie_embeddings=m.tie_embeddings,
        dtype=jnp.dtype(m.dtype), param_dtype=jnp.dtype(m.param_dtype), remat=m.remat,
        scan_layers=m.scan_layers, attention=m.attention, init_std=m.init_std,
        embed_init_std=m.embed_init_std,
        diffusion_width=d.width, diffusion_depth=d.depth,
        moe_experts=m.moe_experts, moe_top_k=m.moe_top_k,
        moe_capacity_factor=m.moe_capacity_factor,
        moe_group_size=m.moe_group_size, moe_mlp_dim=m.moe_mlp_dim,
        capacities=tuple(contract.capacities(config.data.seq_len, i.scales, i.dual_copy,
                                             contract.configured_capacities(config))))


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Logical sharding constraint on an activation (a no-op outside a mesh + rules context)."""
  return nn.with_logical_constraint(x, tuple(names))


def dense_init(std: float, names: Sequence[str]):
  return nn.with_logical_partitioning(nn.initializers.normal(std), tuple(names))


def zeros_init(names: Sequence[str]):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), tuple(names))


class Dense(nn.Module):
  """y = x . kernel (+ bias) over the trailing `axis` dims; the kernel is created at its true
  shape (contracted dims, then out dims) so its logical `names` line up with its dims.
  (nn.DenseGeneral initialises a flattened 2-D kernel, which breaks multi-dim names.)"""
  features: int | Sequence[int]
  names: Sequence[str]
  axis: int | Sequence[int] = -1
  std: float = 0.02
  zero_init: bool = False
  use_bias: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
    axis = (self.axis,) if isinstance(self.axis, int) else tuple(self.axis)
    axis = tuple(sorted(a % x.ndim for a in axis))
    if len(self.names) != len(axis) + len(features):
      raise ValueError(f'{self.name}: {len(self.names)} kernel names for '
                       f'{len(axis)} contracted + {len(features)} output dims')
    shape = tuple(x.shape[a] for a in axis) + features
    init = zeros_init(self.names) if self.zero_init else dense_init(self.std, self.names)
    kernel = self.param('kernel', init, shape, self.param_dtype)
    y = jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype),
                            ((axis, tuple(range(len(axis)))), ((), ())))
    if self.use_bias:
      bias = self.param('bias', zeros_init(self.names[len(axis):]), features, self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


class RMSNorm(nn.Module):
  eps: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param('scale', nn.with_logical_partitioning(nn.initializers.ones_init(), ('norm',)),
                       (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * scale).astype(self.dtype)


# ------------------------------------------------------------------------------ rotary

def rope_sections(head_dim: int, axes: str) -> np.ndarray:
  """Which position coordinate (0 = t, 1 = y, 2 = x) drives each rotary frequency pair.

  Pair i (highest frequency first) uses the axis `axes[i % len(axes)]` (`model.rope_axes`).
  A text token has t = y = x = p, so for text every assignment is exactly standard 1-D
  RoPE; for image tokens it is 2-D RoPE in the shared frame. t is constant inside an
  image, so the pairs given to t tell image cells apart not at all: 'ttyx' spends half of
  them (the highest frequencies among them) on t, 'yxt' gives y and x two thirds of the
  pairs and the highest frequencies, 'yx' all of them (image tokens still sit at
  t0 + (y, x), so their distance to text is in y and x too).
  """
  return np.array(['tyx'.index(axes[i % len(axes)]) for i in range(head_dim // 2)], np.int32)


def apply_rope(x: jax.Array, positions: jax.Array, theta: float, axes: str) -> jax.Array:
  """x: [B, L, H, D]; positions: [B, L, 3] float (t, y, x). Rotates half-split pairs."""
  d = x.shape[-1]
  pairs = d // 2
  inv_freq = theta ** (-np.arange(pairs, dtype=np.float32) * 2.0 / d)
  pos = jnp.take(positions.astype(jnp.float32), jnp.asarray(rope_sections(d, axes)), axis=-1)
  angle = pos * inv_freq                                     # [B, L, pairs]
  sin, cos = jnp.sin(angle)[:, :, None, :], jnp.cos(angle)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


# ------------------------------------------------------------------------------ blocks

class Attention(nn.Module):
  """Attention under a given mask; keys from `kv` or from the queries; with `cache_slots`,
  against a KV cache.

  `kv=(x_kv, positions_kv)`: keys and values come from these rows (an out stack's core
  output) instead of from `x` (self-attention). Decoding: the keys and values computed
  here are written into this layer's cache (collection 'cache', one row per key of the
  mask) at `cache_slots` [B, n] (out-of-range slots are not written) and the queries
  attend over the whole cache; the mask hides keys not written yet, so a chunk is
  anything from one text token to a whole image.
  """
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x, positions, mask, kv=None, cache_slots=None):
    from dvlm_jax.model import attention as attn_lib
    c = self.cfg
    kw = dict(dtype=c.dtype, param_dtype=c.param_dtype, std=c.init_std)
    x_kv, positions_kv = (x, positions) if kv is None else kv
    q = Dense((c.n_heads, c.head_dim), ('embed', 'heads', 'head_dim'), name='q', **kw)(x)
    k = Dense((c.n_kv_heads, c.head_dim), ('embed', 'kv_heads', 'head_dim'), name='k', **kw)(x_kv)
    v = Dense((c.n_kv_heads, c.head_dim), ('embed', 'kv_heads', 'head_dim'), name='v', **kw)(x_kv)
    q = constrain(apply_rope(q, positions, c.rope_theta, c.rope_axes),
                  ('batch', 'length', 'act_heads', None))
    k = apply_rope(k, positions_kv, c.rope_theta, c.rope_axes)
    if cache_slots is not None:
      shape = (x.shape[0], attn_lib.key_length(mask), c.n_kv_heads, c.head_dim)
      cached_k = self.variable('cache', 'cached_key', jnp.zeros, shape, k.dtype)
      cached_v = self.variable('cache', 'cached_value', jnp.zeros, shape, v.dtype)
      write = jax.vmap(lambda cache, at, new: cache.at[at].set(new, mode='drop'))
      cached_k.value = write(cached_k.value, cache_slots, k)
      cached_v.value = write(cached_v.value, cache_slots, v)
      k, v = cached_k.value, cached_v.value
    out = attn_lib.attend(q, k, v, mask, implementation=c.attention)
    out = constrain(out, ('batch', 'length', 'act_heads', None))
    return Dense(c.d_model, ('heads', 'head_dim', 'embed'), axis=(-2, -1), name='o', **kw)(out)


class MLP(nn.Module):
  """SwiGLU feed-forward."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x):
    c = self.cfg
    kw = dict(dtype=c.dtype, param_dtype=c.param_dtype, std=c.init_std)
    gate = Dense(c.mlp_dim, ('embed', 'mlp'), name='gate', **kw)(x)
    up = Dense(c.mlp_dim, ('embed', 'mlp'), name='up', **kw)(x)
    h = constrain(nn.silu(gate) * up, ('batch', 'length', 'act_mlp'))
    return Dense(c.d_model, ('mlp', 'embed'), name='down', **kw)(h)


def moe_capacity(group: int, top_k: int, experts: int, capacity_factor: float) -> int:
  """Slots per expert and group: C = ceil(G * k / E * capacity_factor), at most G."""
  return max(1, min(group, math.ceil(group * top_k / experts * capacity_factor)))


def route(logits: jax.Array, valid: jax.Array, top_k: int, capacity: int):
  """Top-k routing of each group of tokens to `capacity` slots per expert.

  logits: [..., G, E] router logits (float32); valid: [..., G] bool, False at padding.
  Returns (combine [..., G, E, C] gate weights, dispatch [..., G, E, C] 0/1, stats).

  Slots are handed out position-major: token g's choices (first, then second, ...)
  claim slots before any choice of token g + 1. So whether a token is dropped depends
  only on itself and earlier tokens of its group, never on later ones: with causal
  attention no future token can leak into an earlier output through the capacity
  competition (choice-major priority, as in Switch/GShard, would let a later token's
  first choice evict an earlier token's second). Invalid tokens claim nothing.
  stats: 'aux' (Switch load-balancing loss E * sum_e f_e * P_e over valid tokens, f_e
  the share of the k choices that pick e, P_e the mean router probability; 1 when
  balanced) and 'dropped' (share of valid tokens' choices that found no slot).
  """
  experts = logits.shape[-1]
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  top_p, top_e = jax.lax.top_k(probs, top_k)                   # [..., G, k]
  gates = top_p / jnp.sum(top_p, axis=-1, keepdims=True)       # renormalised over the k
  valid_f = valid.astype(jnp.float32)
  choice = jax.nn.one_hot(top_e, experts, dtype=jnp.float32) * valid_f[..., None, None]
  group = choice.shape[-3]
  flat = choice.reshape(choice.shape[:-3] + (group * top_k, experts))
  # Rank of each claim in its expert's queue, counting (position, choice) in row-major order.
  rank = (jnp.cumsum(flat, axis=-2) - 1.0).reshape(choice.shape)
  slot = jnp.sum(rank * choice, axis=-1).astype(jnp.int32)     # [..., G, k]
  kept = valid_f[..., None] * (slot < capacity)
  slot_hot = jax.nn.one_hot(slot, capacity, dtype=jnp.float32)  # out-of-range rows are 0
  dispatch = jnp.einsum('...gk,...gke,...gkc->...gec', kept, choice, slot_hot)
  combine = jnp.einsum('...gk,...gke,...gkc->...gec', kept * gates, choice, slot_hot)
  n_valid = jnp.maximum(jnp.sum(valid_f), 1.0)
  share = jnp.sum(choice, axis=tuple(range(choice.ndim - 1))) / (n_valid * top_k)
  mean_p = jnp.sum(probs * valid_f[..., None], axis=tuple(range(probs.ndim - 1))) / n_valid
  stats = {'aux': experts * jnp.sum(share * mean_p),
           'dropped': 1.0 - jnp.sum(kept) / (n_valid * top_k)}
  return combine, dispatch, stats


class MoEMLP(nn.Module):
  """Mixture of SwiGLU experts with top-k routing within groups of positions of a row.

  A row is cut into groups of `moe_group_size` positions (a shorter call, such as a
  decoding chunk, is one group) so dispatch is [groups, G, E, C] rather than [L, E, C].
  Tokens dropped by every chosen expert output 0 (the residual carries them). The
  load-balancing loss and the dropped share are sown into 'intermediates' (moe_aux,
  moe_dropped); `losses.compute_loss` collects them.
  """
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x, valid=None):
    c = self.cfg
    b, length, d = x.shape
    experts, mlp = c.moe_experts, c.moe_mlp_dim or c.mlp_dim
    if valid is None:
      valid = jnp.ones((b, length), bool)
    group = min(c.moe_group_size, length)
    pad = -length % group
    if pad:   # padded positions are invalid: they take no slot and are cut off below
      x = jnp.pad(x, ((0, 0), (0, pad), (0, 0)))
      valid = jnp.pad(valid, ((0, 0), (0, pad)))
    n = (length + pad) // group
    xg = x.reshape(b, n, group, d)
    # The router runs in float32: near-tied logits in bf16 would flip top-k choices.
    logits = Dense(experts, ('embed', 'exp'), name='router', dtype=jnp.float32,
                   param_dtype=c.param_dtype, std=c.init_std)(xg.astype(jnp.float32))
    capacity = moe_capacity(group, c.moe_top_k, experts, c.moe_capacity_factor)
    combine, dispatch, stats = route(logits, valid.reshape(b, n, group), c.moe_top_k, capacity)
    self.sow('intermediates', 'moe_aux', stats['aux'])
    self.sow('intermediates', 'moe_dropped', stats['dropped'])

    def weight(name, shape, names):
      return self.param(name, dense_init(c.init_std, names), shape, c.param_dtype).astype(c.dtype)
    w_gate = weight('gate', (experts, d, mlp), ('exp', 'embed', 'mlp'))
    w_up = weight('up', (experts, d, mlp), ('exp', 'embed', 'mlp'))
    w_down = weight('down', (experts, mlp, d), ('exp', 'mlp', 'embed'))
    names = ('exp', 'exp_batch', None, None, 'act_embed')
    xin = constrain(jnp.einsum('bngec,bngd->ebncd', dispatch.astype(c.dtype), xg.astype(c.dtype)),
                    names)
    h = nn.silu(jnp.einsum('ebncd,edm->ebncm', xin, w_gate)) * jnp.einsum(
        'ebncd,edm->ebncm', xin, w_up)
    h = constrain(h, names[:-1] + ('act_mlp',))
    y = constrain(jnp.einsum('ebncm,emd->ebncd', h, w_down), names)
    out = jnp.einsum('ebncd,bngec->bngd', y, combine.astype(c.dtype))
    return out.reshape(b, n * group, d)[:, :length]


class Block(nn.Module):
  """Pre-norm transformer block: attention (under the given mask) + MLP (MoE if `moe`).

  `kv`: (x, positions) the keys and values come from, normed like the queries (out
  stacks: the core output); None = self-attention. `valid` ([B, L] bool, False at
  padding) keeps padding out of expert routing.
  """
  cfg: ModelConfig
  moe: bool = False

  @nn.compact
  def __call__(self, x, positions, mask, kv=None, cache_slots=None, valid=None):
    c = self.cfg
    norm = dict(eps=c.norm_eps, dtype=c.dtype, param_dtype=c.param_dtype)
    attn_norm = RMSNorm(name='attn_norm', **norm)
    kv = None if kv is None else (attn_norm(kv[0]), kv[1])
    x = x + Attention(c, name='attn')(attn_norm(x), positions, mask, kv, cache_slots)
    h = RMSNorm(name='mlp_norm', **norm)(x)
    x = x + (MoEMLP(c, name='moe')(h, valid) if self.moe else MLP(c, name='mlp')(h))
    return constrain(x, ('batch', 'length', 'act_embed'))


class ScannedBlock(Block):
  """Block with the (carry, out) signature nn.scan needs."""

  def __call__(self, x, positions, mask, kv=None, cache_slots=None, valid=None):  # pytype: disable=signature-mismatch
    return super().__call__(x, positions, mask, kv, cache_slots, valid), None


_REMAT_POLICIES = {
    'full': None,  # save nothing: recompute the whole block in the backward pass
    'dots': jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class Stack(nn.Module):
  """`num_layers` blocks with one attention mask; scanned (one compile) when configured.

  `moe`: the blocks use MoEMLP (the core, when model.moe_experts > 0). `kv` is given to
  every layer as is (out stacks: each layer's keys are the core output, see
  docs/architecture.md), `cache_slots` too (decoding).
  """
  cfg: ModelConfig
  num_layers: int
  moe: bool = False

  @nn.compact
  def __call__(self, x, positions, mask, kv=None, cache_slots=None, valid=None):
    c = self.cfg
    if self.num_layers == 0:
      return x
    block = ScannedBlock if c.scan_layers else Block
    if c.remat != 'none':
      block = nn.remat(block, policy=_REMAT_POLICIES[c.remat], prevent_cse=not c.scan_layers)
    if c.scan_layers:
      # 'intermediates' is stacked per layer so MoE statistics sown in a block survive.
      scanned = nn.scan(block, variable_axes={'params': 0, 'cache': 0, 'intermediates': 0},
                        split_rngs={'params': True},
                        in_axes=(nn.broadcast,) * 5,
                        length=self.num_layers, metadata_params={nn.PARTITION_NAME: 'layers'})
      x, _ = scanned(c, self.moe, name='layers')(x, positions, mask, kv, cache_slots, valid)
      return x
    for i in range(self.num_layers):
      x = block(c, self.moe, name=f'layer_{i}')(x, positions, mask, kv, cache_slots, valid)
    return x
