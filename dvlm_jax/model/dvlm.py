"""The dream VLM: modality blocks around a shared core, three heads.

    text tokens   -> text-in blocks  \\                      / text-out  -> LM head
                                      > core (L blocks) ---- imun-out  -> patch head
    pixel patches -> image-in blocks /                      \\ imgen-out -> diffusion head

Every block uses the one attention rule of `contract.make_mask` with its own scope:
text-in sees earlier text of its document, image-in sees its own image under
`attn_end` (bidirectional inside each M_k / U_k block), core and out blocks see the
whole document under `attn_end`. A block count of 0 makes that stage shared: with all
in/out counts 0 the model is the Janus-like baseline (one stack, heads on the core).

Each stage runs on its own positions only (`streams`): text-in on the text positions,
image-in (and the patch embedding) on the image positions, each out stack and its head
on the positions that head is read at, gathered into fixed per-row capacities
(`contract.Capacities`, config `data.max_*`) so shapes stay static. The core runs over
the whole row. An out stack's queries are its positions; the keys of every one of its
layers are the core output of the whole document (docs/architecture.md).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from dvlm_jax import contract
from dvlm_jax.model import attention, streams
from dvlm_jax.model.diffusion import DiffusionHead
from dvlm_jax.model.layers import Dense, ModelConfig, RMSNorm, Stack, constrain

CELL_FREQUENCIES = 8   # octaves of the cell-position features: up to 2^7 cells a side


def cell_features(positions: jax.Array) -> jax.Array:
  """[B, L, 4 * CELL_FREQUENCIES] sinusoidal features of each image token's cell centre.

  An image token sits at (t0, t0 + y, t0 + x) (data/layout.py grid_positions: cell centres in the
  finest grid's units), so (y, x) = positions[1:] - positions[0] is where the cell lies in
  its image, whatever the document around it. Rotary attention only sees differences of
  positions; these features let a token know its place in the picture (`model.image_pos_embed`),
  which a fully masked M_k token otherwise has to infer from attention patterns alone.
  """
  local = positions[..., 1:] - positions[..., :1]                      # [B, L, 2]
  omega = jnp.pi * 2.0 ** jnp.arange(-CELL_FREQUENCIES + 1, 1, dtype=jnp.float32)
  angle = local[..., None] * omega                                     # [B, L, 2, F]
  return jnp.concatenate([jnp.sin(angle), jnp.cos(angle)], -1).reshape(*positions.shape[:-1], -1)


def stage_rules(batch, cfg: ModelConfig, heads=None, chunk=None) -> dict[str, streams.StageRule]:
  """Each stage's queries and attention rule for one call (`DreamVLM.__call__`'s `heads`
  and `chunk`): text-in and image-in on their own streams, the core on every position of
  the call, each out stack at its head's positions with the whole row as keys. An out
  stack whose head does not run is left out (decoding keeps it, with no queries, so
  its cache stays complete for later chunks)."""
  length = batch['segment_ids'].shape[1]
  if heads is None:
    if chunk is not None:
      raise ValueError('chunk= (decoding) needs heads=: the positions to read heads at')
    caps = contract.Capacities(*(min(n, length) if n else length for n in cfg.capacities))
  else:   # inference rows are not packed to capacities: nothing may be dropped
    caps = contract.Capacities(*(length,) * 4)
  scopes = contract.stage_scopes(batch)
  text, image, core = scopes['text_in'], scopes['image_in'], scopes['core']
  rules = {'text_in': streams.in_stage_rule(text.queries, caps.text_tokens, text.scope,
                                            text.end, chunk),
           'image_in': streams.in_stage_rule(image.queries, caps.image_tokens, image.scope,
                                             image.end, chunk),
           'core': streams.row_rule(None, core.scope, core.end, chunk)}
  rows = core.scope.shape[0]
  outs = {'text_out': ('text', caps.text_targets, True),
          'imun_out': ('image', caps.image_targets, cfg.imun_head),
          'imgen_out': ('image', caps.image_targets, cfg.diffusion_head)}
  for stage, (head, capacity, present) in outs.items():
    if not present:
      continue
    if heads is None:   # training: the loss positions
      at = streams.Stream.select(scopes[stage].queries, capacity)
    elif head in heads:
      at = streams.Stream.at(heads[head])
    elif chunk is not None:
      at = streams.Stream.at(jnp.zeros((rows, 0), jnp.int32))
    else:
      continue
    rules[stage] = streams.row_rule(at, scopes[stage].scope, scopes[stage].end, chunk)
  return rules


class DreamVLM(nn.Module):
  cfg: ModelConfig

  def setup(self):
    c = self.cfg
    emb_init = nn.with_logical_partitioning(nn.initializers.normal(c.embed_init_std),
                                            ('vocab', 'embed'))
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

  def embed_text(self, tokens):
    return jnp.take(self.text_embed, tokens, axis=0).astype(self.cfg.dtype)

  def embed_image(self, fields):
    """Patch embeddings (plus scale, copy and, with `image_pos_embed`, the cell's place)
    from per-position image fields [..., ]."""
    c = self.cfg
    image = self.patch_embed(fields['patches'].astype(c.dtype))
    if c.mask_token:
      image = jnp.where(fields['is_masked'][..., None], self.mask_embed.astype(c.dtype), image)
    image = image + jnp.take(self.scale_embed, fields['scale'], axis=0).astype(c.dtype)
    image = image + jnp.take(self.copy_embed, fields['copy'], axis=0).astype(c.dtype)
    if c.image_pos_embed:
      image = image + self.cell_embed(cell_features(fields['positions']).astype(c.dtype))
    return image

  def __call__(self, batch, *, heads=None, chunk=None, return_hidden: bool = False):
    """Runs the model on a batch in the contract.

    heads=None (training): each stream is selected from the batch (text-out: positions
    with `text_weights`, image-out: with `image_weights`) into the configured per-row
    capacities (`cfg.capacities`). heads={'text': [B, n], 'image': [B, m]} (inference,
    evaluation): the heads run at these positions of the call, a head not named does not
    run, and every stream has the row's length as capacity, so no row can overflow.

    Returns a dict with `text_logits` [B, Ct, V] (float32) at `text_stream` (a
    `streams.Stream`: which positions of the call each slot is), `patch_pred` [B, Ci, P]
    (if imun_head) and `imgen_cond` [B, Ci, D] (the diffusion condition, if
    diffusion_head) at `image_stream`; with `return_hidden`, `hidden`: each stage's
    output at the call's positions where it is computed, 0 elsewhere.

    `chunk=(start, n)` decodes with a KV cache (collection 'cache', apply with
    mutable=['cache']; needs `heads`): `batch` holds the whole sequence (length L), only
    positions [start, start + n) are computed, `heads` index into them, and they see the
    cached keys of earlier positions. `start` may be traced, `n` is static. Positions
    after the chunk are ignored, so the caller may leave them as padding.
    """
    c = self.cfg
    rules = stage_rules(batch, c, heads, chunk)
    local = batch if chunk is None else jax.tree.map(
        lambda x: jax.lax.dynamic_slice_in_dim(x, chunk[0], chunk[1], axis=1), batch)

    def run(stack, rule, x, kv=None, valid=None):
      """`stack` on x [B, Cq, D], the inputs at the rule's queries."""
      if chunk is None:  # kernels take the scope ids (attention.stage_mask)
        mask = attention.stage_mask(rule.q_scope, rule.k_scope, rule.q_end, c.attention)
      else:
        mask = contract.make_mask(rule.q_scope, rule.k_scope, rule.q_end)
      positions = local['positions']
      if rule.queries is not None:
        positions = rule.queries.gather(positions)
      return stack(x, positions, mask, kv=kv, cache_slots=rule.cache_slots, valid=valid)

    names = ('batch', 'length', 'act_embed')
    text, image = rules['text_in'].queries, rules['image_in'].queries
    text_in = run(self.text_in, rules['text_in'],
                  constrain(self.embed_text(text.gather(local['tokens'])), names))
    image_fields = {k: image.gather(local[k])
                    for k in ('patches', 'is_masked', 'scale', 'copy', 'positions')}
    image_in = run(self.image_in, rules['image_in'],
                   constrain(self.embed_image(image_fields), names))
    # The core's row: each in-stage's output at its positions, 0 at padding.
    zeros = jnp.zeros(local['segment_ids'].shape + (c.d_model,), c.dtype)
    x = image.scatter(text.scatter(zeros, text_in), image_in)
    core = run(self.core, rules['core'], constrain(x, names), valid=local['segment_ids'] > 0)
    hidden = {'text_in': text.scatter(zeros, text_in), 'image_in': image.scatter(zeros, image_in),
              'core': core}

    def out_stage(name, stack, norm):
      """The out stack at its head's positions; keys: the core output of the whole call."""
      at = rules[name].queries
      h = run(stack, rules[name], at.gather(core), kv=(core, local['positions']))
      hidden[name] = at.scatter(zeros, h)
      return norm(h)

    out = {}
    if 'text_out' in rules:
      text_h = out_stage('text_out', self.text_out, self.text_norm)
      if c.tie_embeddings:
        logits = jnp.einsum('bld,vd->blv', text_h, self.text_embed.astype(c.dtype))
      else:
        logits = self.lm_head(text_h)
      out['text_logits'] = constrain(logits.astype(jnp.float32), ('batch', 'length', 'vocab'))
      out['text_stream'] = rules['text_out'].queries
    if 'imun_out' in rules:
      out['patch_pred'] = self.patch_head(out_stage('imun_out', self.imun_out,
                                                    self.imun_norm)).astype(jnp.float32)
      out['image_stream'] = rules['imun_out'].queries
    if 'imgen_out' in rules:
      out['imgen_cond'] = out_stage('imgen_out', self.imgen_out, self.imgen_norm)
      out['image_stream'] = rules['imgen_out'].queries
      if self.is_initializing():  # create the denoiser's parameters
        self.denoise(out['image_stream'].gather(local['image_targets']),
                     jnp.zeros(out['image_stream'].index.shape), out['imgen_cond'])
    if return_hidden:
      out['hidden'] = hidden
    return out

  def denoise(self, x_t, t, cond):
    """The diffusion head alone: used by the loss and by samplers on cached conditions."""
    return self.denoiser(x_t, t, cond)


def param_count(config) -> int:
  """Parameters of the model `config` builds, from an abstract init (nothing allocated)."""
  model_cfg = ModelConfig.from_config(config)
  spec = contract.batch_spec(1, int(config.data.seq_len), model_cfg.patch_dim)
  batch = {k: jax.ShapeDtypeStruct(shape, dtype) for k, (shape, dtype) in spec.items()}
  shapes = jax.eval_shape(DreamVLM(model_cfg).init, jax.random.key(0), batch)
  return sum(int(math.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes['params']))
