"""Shared layers: every parameter and activation carries logical axis names.

Logical names are mapped to mesh axes by `config.sharding.rules` (see `dvlm_jax.sharding`).
Parameter names: embed, vocab, heads, kv_heads, head_dim, mlp, patch, norm, table, diff_width.
Activation names: batch, length, act_embed, act_heads, act_mlp.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The static part of `config.model` (+ image/diffusion sizes) the modules read."""
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
  mask_token: bool = True       # images may be masked (False for next-patch targets)
  rope_theta: float = 10_000.0
  norm_eps: float = 1e-6
  tie_embeddings: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat: str = 'none'
  scan_layers: bool = True
  attention: str = 'xla'
  init_std: float = 0.02
  diffusion_width: int = 256
  diffusion_depth: int = 3

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
        rope_theta=m.rope_theta, norm_eps=m.norm_eps, tie_embeddings=m.tie_embeddings,
        dtype=jnp.dtype(m.dtype), param_dtype=jnp.dtype(m.param_dtype), remat=m.remat,
        scan_layers=m.scan_layers, attention=m.attention, init_std=m.init_std,
        diffusion_width=d.width, diffusion_depth=d.depth)


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

def rope_sections(head_dim: int) -> np.ndarray:
  """Which position coordinate (0 = t, 1 = y, 2 = x) drives each rotary frequency pair.

  Interleaved so that t, y and x each get high and low frequencies: pair i uses t for
  i % 4 in {0, 1}, y for 2, x for 3. A text token has t = y = x = p, so for text this
  is exactly standard 1-D RoPE; for image tokens it is 2-D RoPE in the shared frame.
  """
  return np.array([(0, 0, 1, 2)[i % 4] for i in range(head_dim // 2)], dtype=np.int32)


def apply_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """x: [B, L, H, D]; positions: [B, L, 3] float (t, y, x). Rotates half-split pairs."""
  d = x.shape[-1]
  pairs = d // 2
  inv_freq = theta ** (-np.arange(pairs, dtype=np.float32) * 2.0 / d)
  pos = jnp.take(positions.astype(jnp.float32), jnp.asarray(rope_sections(d)), axis=-1)
  angle = pos * inv_freq                                     # [B, L, pairs]
  sin, cos = jnp.sin(angle)[:, :, None, :], jnp.cos(angle)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


# ------------------------------------------------------------------------------ blocks

class Attention(nn.Module):
  """Self-attention under a given mask; with `cache_start`, a chunk against a KV cache.

  Decoding: `x` holds the queries of positions [cache_start, cache_start + n); their keys
  and values are written into this layer's cache (collection 'cache', full sequence
  length = mask.shape[-1]) and the queries attend over the whole cache. The mask hides
  positions not written yet, so a chunk is anything from one text token to a whole image.
  """
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x, positions, mask, cache_start=None):
    from dvlm_jax.model import attention as attn_lib
    c = self.cfg
    kw = dict(dtype=c.dtype, param_dtype=c.param_dtype, std=c.init_std)
    q = Dense((c.n_heads, c.head_dim), ('embed', 'heads', 'head_dim'), name='q', **kw)(x)
    k = Dense((c.n_kv_heads, c.head_dim), ('embed', 'kv_heads', 'head_dim'), name='k', **kw)(x)
    v = Dense((c.n_kv_heads, c.head_dim), ('embed', 'kv_heads', 'head_dim'), name='v', **kw)(x)
    q = constrain(apply_rope(q, positions, c.rope_theta), ('batch', 'length', 'act_heads', None))
    k = apply_rope(k, positions, c.rope_theta)
    if cache_start is not None:
      shape = (x.shape[0], mask.shape[-1], c.n_kv_heads, c.head_dim)
      cached_k = self.variable('cache', 'cached_key', jnp.zeros, shape, k.dtype)
      cached_v = self.variable('cache', 'cached_value', jnp.zeros, shape, v.dtype)
      at = (0, cache_start, 0, 0)
      cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k, at)
      cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v, at)
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


class Block(nn.Module):
  """Pre-norm transformer block: attention (under the given mask) + MLP."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x, positions, mask, cache_start=None):
    c = self.cfg
    norm = dict(eps=c.norm_eps, dtype=c.dtype, param_dtype=c.param_dtype)
    x = x + Attention(c, name='attn')(RMSNorm(name='attn_norm', **norm)(x), positions, mask,
                                      cache_start)
    x = x + MLP(c, name='mlp')(RMSNorm(name='mlp_norm', **norm)(x))
    return constrain(x, ('batch', 'length', 'act_embed'))


class ScannedBlock(Block):
  """Block with the (carry, out) signature nn.scan needs."""

  def __call__(self, x, positions, mask, cache_start=None):  # pytype: disable=signature-mismatch
    return super().__call__(x, positions, mask, cache_start), None


_REMAT_POLICIES = {
    'full': None,  # save nothing: recompute the whole block in the backward pass
    'dots': jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class Stack(nn.Module):
  """`num_layers` blocks with one attention mask; scanned (one compile) when configured."""
  cfg: ModelConfig
  num_layers: int

  @nn.compact
  def __call__(self, x, positions, mask, cache_start=None):
    c = self.cfg
    if self.num_layers == 0:
      return x
    block = ScannedBlock if c.scan_layers else Block
    if c.remat != 'none':
      block = nn.remat(block, policy=_REMAT_POLICIES[c.remat], prevent_cse=not c.scan_layers)
    if c.scan_layers:
      scanned = nn.scan(block, variable_axes={'params': 0, 'cache': 0},
                        split_rngs={'params': True},
                        in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
                        length=self.num_layers, metadata_params={nn.PARTITION_NAME: 'layers'})
      x, _ = scanned(c, name='layers')(x, positions, mask, cache_start)
      return x
    for i in range(self.num_layers):
      x = block(c, name=f'layer_{i}')(x, positions, mask, cache_start)
    return x
