"""FLOPs of a training step, counted from the batch itself (see docs/flops.md).

Each token is counted only through the blocks it really uses, and attention only over
the (query, key) pairs the mask lets through:

  stage      queries (q, o, MLP)                 keys (k, v)            attention pairs
  text-in    text tokens                         text tokens            text scope, causal
  image-in   image tokens                        image tokens           own image under attn_end
  core       every non-pad token                 every non-pad token    document under attn_end
  text-out   text-loss positions                 every non-pad token    those queries' rows
  imun-out   image-loss positions                every non-pad token    those queries' rows
  imgen-out  image-loss positions                every non-pad token    those queries' rows

With MoE in the core (`model.moe_experts > 0`) each core token counts the router and the
MLPs of its `moe_top_k` experts instead of one dense MLP (dropped tokens are counted as
routed: capacity overflow is a training-time detail, not a cost saving one plans on);
plus the embeddings' patch projection, the heads (LM head on text-loss positions, patch
head and diffusion head on image-loss positions, the latter `noise_samples` times) and a
factor 3 for training (forward + backward = 3 x forward matmul FLOPs). A matmul of
[n, a] x [a, b] is 2nab FLOPs. Norms, softmax, rotary and the optimizer are not counted
(as in MaxText / PaLM MFU accounting).
"""

from __future__ import annotations

import numpy as np

from dvlm_jax import contract
from dvlm_jax.data import layout

TRAIN_FACTOR = 3

# Dense bf16 peak FLOP/s per device (vendor figures, no sparsity).
PEAK_BF16_FLOPS = {
    'H100': 989e12, 'H200': 989e12, 'GH200': 989e12, 'B200': 2250e12, 'A100': 312e12,
    'L4': 121e12, 'TPU v4': 275e12, 'TPU v5 lite': 197e12, 'TPU v5e': 197e12,
    'TPU v5p': 459e12, 'TPU v5': 459e12, 'TPU v6 lite': 918e12, 'TPU v6e': 918e12,
}


def peak_flops_per_device(device=None) -> float | None:
  """Peak bf16 FLOP/s of `device` (default: the first), None when unknown (e.g. CPU)."""
  import jax
  device = device or jax.devices()[0]
  kind = getattr(device, 'device_kind', '')
  for name in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):
    if name.lower() in kind.lower():
      return PEAK_BF16_FLOPS[name]
  return None


def visible_pairs(scope: np.ndarray, attn_end: np.ndarray) -> np.ndarray:
  """[B, L] number of keys each query sees: same non-zero scope and k <= attn_end[q]."""
  pairs = np.zeros(scope.shape, np.int64)
  for b in range(scope.shape[0]):
    row, end = scope[b], attn_end[b]
    for s in np.unique(row[row > 0]):
      members = row == s
      seen = np.cumsum(members)                       # keys of scope s at index <= i
      pairs[b, members] = seen[end[members]]
  return pairs


def _block_flops(cfg, n_queries: float, n_keys: float, pairs: float, moe: bool = False) -> float:
  """Forward FLOPs of one transformer block for the given query/key/pair counts.

  `moe`: the MLP is a mixture of experts (router + top_k experts' SwiGLU per query).
  """
  d, h, kvh, hd, mlp = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.mlp_dim
  q_and_o = 2 * n_queries * d * h * hd * 2
  k_and_v = 2 * n_keys * d * kvh * hd * 2
  attention = 2 * pairs * h * hd * 2                  # q.k and p.v
  if moe:
    expert_mlp = cfg.moe_mlp_dim or mlp
    swiglu = 2 * n_queries * d * cfg.moe_experts + cfg.moe_top_k * 2 * n_queries * d * expert_mlp * 3
  else:
    swiglu = 2 * n_queries * d * mlp * 3
  return q_and_o + k_and_v + attention + swiglu


def diffusion_head_flops(config) -> float:
  """Forward FLOPs of the diffusion head for one position and one noise sample."""
  w, depth, p, d = (config.diffusion.width, config.diffusion.depth,
                    config.image.patch_size ** 2 * 3, config.model.d_model)
  per_block = 2 * w * 3 * w + 2 * 2 * w * w           # adaLN modulation + two-layer MLP
  return 2 * p * w + 2 * w * w + 2 * d * w + depth * per_block + 2 * w * 2 * w + 2 * w * p


STAGES = contract.STAGES + ('patch_embed', 'lm_head', 'patch_head', 'diffusion_head')


def _per_stage(config, stack, n_image: float, n_text_loss: float,
               n_image_loss: float) -> dict[str, float]:
  """Forward FLOPs per stage: `stack(stage, layers)` gives a block stack's, the heads
  follow from the token counts they run on."""
  m = config.model
  layers = {'text_in': m.text_in_layers, 'image_in': m.image_in_layers, 'core': m.core_layers,
            'text_out': m.text_out_layers, 'imun_out': m.imun_out_layers if m.imun_head else 0,
            'imgen_out': m.imgen_out_layers if m.diffusion_head else 0}
  out = {stage: stack(stage, n) if n else 0.0 for stage, n in layers.items()}
  patch_dim = config.image.patch_size ** 2 * 3
  out['patch_embed'] = 2 * n_image * patch_dim * m.d_model
  out['lm_head'] = 2 * n_text_loss * m.d_model * m.vocab_size
  out['patch_head'] = 2 * n_image_loss * m.d_model * patch_dim if m.imun_head else 0.0
  out['diffusion_head'] = (n_image_loss * config.diffusion.noise_samples
                           * diffusion_head_flops(config) if m.diffusion_head else 0.0)
  return out


def _moe(config, stage: str) -> bool:
  return stage == 'core' and config.model.moe_experts > 0


def stage_flops(config, batch) -> dict[str, float]:
  """Useful forward FLOPs per stage of one batch (numpy, contract fields): each stage over
  the tokens it serves, attention over the pairs its mask lets through (docs/flops.md)."""
  scopes = contract.stage_scopes(batch)
  # stage -> (queries, keys, visible pairs per query)
  rules = {stage: (s.queries, s.keys, visible_pairs(s.scope, s.end)) for stage, s in scopes.items()}

  def stack(stage, layers):
    queries, keys, pairs = rules[stage]
    return layers * _block_flops(config.model, float(np.count_nonzero(queries)),
                                 float(np.count_nonzero(keys)), float(np.sum(pairs[queries])),
                                 _moe(config, stage))
  return _per_stage(config, stack, float(np.count_nonzero(scopes['image_in'].queries)),
                    float(np.count_nonzero(scopes['text_out'].queries)),
                    float(np.count_nonzero(scopes['imun_out'].queries)))


def implemented_stage_flops(config, rows: int, attention_pairs: dict[str, float] | None = None,
                            capacities: contract.Capacities | None = None) -> dict[str, float]:
  """Forward FLOPs per stage of what the model computes for `rows` rows of data.seq_len:
  each stage over its stream's slots (`contract.Capacities`: text-in over `text_tokens`,
  image-in and the patch embedding over `image_tokens`, text-out and the LM head over
  `text_targets`, the image out stacks and heads over `image_targets`), the core over
  the whole row, every out stack's keys over the whole row; attention over every (query
  slot, key slot) pair (dense XLA) or over `attention_pairs[stage]` (e.g. the tiles a
  block-sparse kernel visits). `useful / implemented` is the share of the work not
  thrown away (benchmarks/flops_audit.py). `capacities`: other stream sizes than the
  config's (all `seq_len`: every stage over the whole row, as before compaction)."""
  length = config.data.seq_len
  caps = capacities or layout.LayoutConfig.from_config(config).capacities()
  # stage -> (query slots, key slots) per row
  shapes = {'text_in': (caps.text_tokens,) * 2, 'image_in': (caps.image_tokens,) * 2,
            'core': (length, length), 'text_out': (caps.text_targets, length),
            'imun_out': (caps.image_targets, length), 'imgen_out': (caps.image_targets, length)}

  def stack(stage, layers):
    queries, keys = shapes[stage]
    pairs = (attention_pairs or {}).get(stage, float(rows) * queries * keys)
    return layers * _block_flops(config.model, float(rows * queries), float(rows * keys), pairs,
                                 _moe(config, stage))
  return _per_stage(config, stack, float(rows * caps.image_tokens),
                    float(rows * caps.text_targets), float(rows * caps.image_targets))


def train_step_flops(config, batch) -> float:
  """Training FLOPs (forward + backward) of one step on `batch` (numpy, contract fields)."""
  return TRAIN_FACTOR * sum(stage_flops(config, batch).values())
