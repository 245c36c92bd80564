"""The dream VLM: modality blocks around a shared core, three heads.

    text tokens   -> text-in blocks  \\                      / text-out  -> LM head
                                      > core (L blocks) ---- imun-out  -> patch head
    pixel patches -> image-in blocks /                      \\ imgen-out -> diffusion head

Every block uses the one attention rule of `attention.make_mask` with its own scope:
text-in sees earlier text of its document, image-in sees its own image under
`attn_end` (bidirectional inside each M_k / U_k block), core and out blocks see the
whole document under `attn_end`. A block count of 0 makes that stage shared: with all
in/out counts 0 the model is the Janus-like baseline (one stack, heads on the core).

Modality blocks run over the whole row and their outputs are selected per position
(`where`); queries outside a block's scope attend to nothing and are discarded. This
keeps shapes static; compacting each modality's positions is a performance change that
must not change any output.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from dvlm_jax.model import attention
from dvlm_jax.model.diffusion import DiffusionHead
from dvlm_jax.model.layers import Dense, ModelConfig, RMSNorm, Stack, constrain

TEXT, IMAGE = 1, 2


CELL_FREQUENCIES = 8   # octaves of the cell-position features: up to 2^7 cells a side


def cell_features(positions: jax.Array) -> jax.Array:
  """[B, L, 4 * CELL_FREQUENCIES] sinusoidal features of each image token's cell centre.

  An image token sits at (t0, t0 + y, t0 + x) (layout.grid_positions: cell centres in the
  finest grid's units), so (y, x) = positions[1:] - positions[0] is where the cell lies in
  its image, whatever the document around it. Rotary attention only sees differences of
  positions; these features let a token know its place in the picture (`model.image_pos_embed`),
  which a fully masked M_k token otherwise has to infer from attention patterns alone.
  """
  local = positions[..., 1:] - positions[..., :1]                      # [B, L, 2]
  omega = jnp.pi * 2.0 ** jnp.arange(-CELL_FREQUENCIES + 1, 1, dtype=jnp.float32)
  angle = local[..., None] * omega                                     # [B, L, 2, F]
  return jnp.concatenate([jnp.sin(angle), jnp.cos(angle)], -1).reshape(*positions.shape[:-1], -1)


class DreamVLM(nn.Module):
  cfg: ModelConfig

  def setup(self):
    c = self.cfg
    emb_init = nn.with_logical_partitioning(nn.initializers.normal(c.init_std), ('vocab', 'embed'))
    table_init = nn.with_logical_partitioning(nn.initializers.normal(c.init_std), ('table', 'embed'))
    self.text_embed = self.param('text_embed', emb_init, (c.vocab_size, c.d_model), c.param_dtype)
    self.patch_embed = Dense(c.d_model, ('patch', 'embed'), use_bias=True, dtype=c.dtype,
                             param_dtype=c.param_dtype, std=c.patch_dim ** -0.5)
    if c.mask_token:
      self.mask_embed = self.param('mask_embed', table_init, (1, c.d_model), c.param_dtype)
    # Scale 0 and copy 0 are unused rows (text); they keep the tables index-aligned.
    self.scale_embed = self.param('scale_embed', table_init, (c.num_scales + 1, c.d_model),
                                  c.param_dtype)
    self.copy_embed = self.param('copy_embed', table_init, (3, c.d_model), c.param_dtype)
    if c.image_pos_embed:
      self.cell_embed = Dense(c.d_model, ('cell', 'embed'), dtype=c.dtype,
                              param_dtype=c.param_dtype, std=c.init_std)

    self.text_in = Stack(c, c.text_in_layers)
    self.image_in = Stack(c, c.image_in_layers)
    self.core = Stack(c, c.core_layers, moe=c.moe_experts > 0)   # MoE only in the core
    norm = dict(eps=c.norm_eps, dtype=c.dtype, param_dtype=c.param_dtype)
    self.text_out = Stack(c, c.text_out_layers)
    self.text_norm = RMSNorm(**norm)
    if not c.tie_embeddings:
      self.lm_head = Dense(c.vocab_size, ('embed', 'vocab'), dtype=c.dtype,
                           param_dtype=c.param_dtype, std=c.init_std)
    if c.imun_head:
      self.imun_out = Stack(c, c.imun_out_layers)
      self.imun_norm = RMSNorm(**norm)
      self.patch_head = Dense(c.patch_dim, ('embed', 'patch'), dtype=c.dtype,
                              param_dtype=c.param_dtype, std=c.init_std)
    if c.diffusion_head:
      self.imgen_out = Stack(c, c.imgen_out_layers)
      self.imgen_norm = RMSNorm(**norm)
      self.denoiser = DiffusionHead(c.patch_dim, c.diffusion_width, c.diffusion_depth, c.dtype)

  def embed(self, batch):
    """Token embeddings for text positions and patch embeddings for image positions."""
    c = self.cfg
    text = jnp.take(self.text_embed, batch['tokens'], axis=0).astype(c.dtype)
    image = self.patch_embed(batch['patches'].astype(c.dtype))
    if c.mask_token:
      image = jnp.where(batch['is_masked'][..., None], self.mask_embed.astype(c.dtype), image)
    image = image + jnp.take(self.scale_embed, batch['scale'], axis=0).astype(c.dtype)
    image = image + jnp.take(self.copy_embed, batch['copy'], axis=0).astype(c.dtype)
    if c.image_pos_embed:
      image = image + self.cell_embed(cell_features(batch['positions']).astype(c.dtype))
    names = ('batch', 'length', 'act_embed')
    return constrain(text, names), constrain(image, names)

  def __call__(self, batch, *, return_hidden: bool = False, chunk=None):
    """Runs the model on a batch in the contract.

    Returns a dict with `text_logits` [B, L, V] (float32), `patch_pred` [B, L, P] (if
    imun_head), `imgen_cond` [B, L, D] (the diffusion condition, if diffusion_head) and,
    with `return_hidden`, `hidden`: each stage's output where it is used.

    `chunk=(start, n)` decodes with a KV cache (collection 'cache', apply with
    mutable=['cache']): `batch` holds the whole sequence (length L), only positions
    [start, start + n) are computed (outputs have length n) and they see the cached keys
    of earlier positions. `start` may be traced, `n` is static. Positions after the chunk
    are ignored, so the caller may leave them as padding.
    """
    c = self.cfg
    length = batch['segment_ids'].shape[1]
    k_index = jnp.arange(length, dtype=jnp.int32)[None, :]
    if chunk is None:
      cache_start, queries, key_valid = None, batch, None
    else:
      cache_start, n = chunk
      queries = jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, cache_start, n, axis=1),
                             batch)
      key_valid = k_index < cache_start + n           # keys written so far, incl. this chunk
    q_index = jnp.broadcast_to(jnp.arange(queries['segment_ids'].shape[1], dtype=jnp.int32)
                               + (0 if cache_start is None else cache_start),
                               queries['segment_ids'].shape)

    def mask(scope, q_end):
      """The VLM rule for queries of this call against every key of the sequence."""
      k_scope = scope if key_valid is None else jnp.where(key_valid, scope, 0)
      q_scope = scope if chunk is None else jax.lax.dynamic_slice_in_dim(scope, cache_start,
                                                                         q_end.shape[1], axis=1)
      if chunk is None:  # full rows: kernels take the scope ids (attention.stage_mask)
        return attention.stage_mask(q_scope, k_scope, q_end, c.attention)
      return attention.make_mask(q_scope, k_scope, q_end)

    modality, positions = queries['modality'], queries['positions']
    is_image = (modality == IMAGE)[..., None]
    text_x, image_x = self.embed(queries)

    text_scope = jnp.where(batch['modality'] == TEXT, batch['segment_ids'], 0)
    text_in = self.text_in(text_x, positions, mask(text_scope, q_index), cache_start)
    image_in = self.image_in(image_x, positions, mask(batch['image_id'], queries['attn_end']),
                             cache_start)
    x = jnp.where(is_image, image_in, text_in)

    doc_mask = mask(batch['segment_ids'], queries['attn_end'])
    # Padding is not routed to experts (and takes no expert capacity) when MoE is on.
    core = self.core(x, positions, doc_mask, cache_start, queries['segment_ids'] > 0)

    # Stage outputs as used: text-in at text positions, image-in at image positions.
    hidden = {'text_in': jnp.where(modality == TEXT, 1, 0)[..., None] * text_in,
              'image_in': is_image * image_in, 'core': core}
    out = {}
    text_h = self.text_out(core, positions, doc_mask, cache_start)
    hidden['text_out'] = text_h
    text_h = self.text_norm(text_h)
    if c.tie_embeddings:
      logits = jnp.einsum('bld,vd->blv', text_h, self.text_embed.astype(c.dtype))
    else:
      logits = self.lm_head(text_h)
    out['text_logits'] = constrain(logits.astype(jnp.float32), ('batch', 'length', 'vocab'))
    if c.imun_head:
      imun_h = self.imun_out(core, positions, doc_mask, cache_start)
      hidden['imun_out'] = imun_h
      out['patch_pred'] = self.patch_head(self.imun_norm(imun_h)).astype(jnp.float32)
    if c.diffusion_head:
      imgen_h = self.imgen_out(core, positions, doc_mask, cache_start)
      hidden['imgen_out'] = imgen_h
      out['imgen_cond'] = self.imgen_norm(imgen_h)
      if self.is_initializing():  # create the denoiser's parameters
        self.denoise(queries['image_targets'], jnp.zeros(modality.shape), out['imgen_cond'])
    if return_hidden:
      out['hidden'] = hidden
    return out

  def denoise(self, x_t, t, cond):
    """The diffusion head alone: used by the loss and by samplers on cached conditions."""
    return self.denoiser(x_t, t, cond)
