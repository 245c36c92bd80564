"""The batch contract: the values the layout writes into a row and the attention rule each
stage of the model reads from it, written once (docs/batch.md, docs/architecture.md).

The data layout (`data/layout.py`) writes rows; the model, the FLOP counter, the attention
kernels, `data/inspect.py`, the benchmarks and the tests read them through this module.
It imports nothing of the project's own, so every layer may import it.

The one attention rule (`make_mask`): query q sees key k iff both carry the same non-zero
scope id and k <= end[q]. Each stage applies it with its own scope (`stage_scopes`):

  stage       queries                keys              scope ids              end
  text_in     text tokens            text tokens       document, text only    own index (causal)
  image_in    image tokens           image tokens      image_id               attn_end
  core        every position         every position    document               attn_end
  text_out    text-loss positions    every position    document               attn_end
  imun_out    image-loss positions   every position    document               attn_end
  imgen_out   image-loss positions   every position    document               attn_end

(At inference the out stages run at the positions whose heads are read instead.) The
functions take numpy arrays (the FLOP counter, inspect, data workers) or jax arrays (the
model, traced) and answer in kind, through the array API: this module imports no jax.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import numpy as np

# `modality`: what a position holds.
MODALITY_PAD, MODALITY_TEXT, MODALITY_IMAGE = 0, 1, 2
# `copy`: which copy of its scale an image token belongs to (not an image token, M_k, U_k).
COPY_NONE, COPY_MASKED, COPY_UNMASKED = 0, 1, 2

STAGES = ('text_in', 'image_in', 'core', 'text_out', 'imun_out', 'imgen_out')
# Out stage -> the batch field whose positive entries are its queries in training.
OUT_STAGE_WEIGHTS = {'text_out': 'text_weights', 'imun_out': 'image_weights',
                     'imgen_out': 'image_weights'}


class StageScope(NamedTuple):
  """One stage's rule over the whole row, [B, L] each."""
  queries: Any   # bool: the positions the stage computes (training)
  keys: Any      # bool: the positions it attends over
  scope: Any     # int: scope ids (0: attends to nothing, is seen by nothing)
  end: Any       # int: the last row index each position may see


def _xp(*arrays):
  """The arrays' namespace: jax.numpy when any is a jax array (or tracer), else numpy."""
  spaces = {a.__array_namespace__() for a in arrays}
  return next((s for s in spaces if s is not np), np)


def stage_scopes(batch: dict[str, Any]) -> dict[str, StageScope]:
  """Every stage's queries, keys, scope ids and attention ends over the row (the table
  above), from the contract fields of `batch`."""
  modality, seg, attn_end = batch['modality'], batch['segment_ids'], batch['attn_end']
  xp = _xp(modality, seg, attn_end)
  own = xp.broadcast_to(xp.arange(seg.shape[1], dtype=xp.int32), seg.shape)
  is_text, is_image, filled = modality == MODALITY_TEXT, modality == MODALITY_IMAGE, seg > 0
  scopes = {'text_in': StageScope(is_text, is_text, xp.where(is_text, seg, 0), own),
            'image_in': StageScope(is_image, is_image, batch['image_id'], attn_end),
            'core': StageScope(filled, filled, seg, attn_end)}
  for stage, weights in OUT_STAGE_WEIGHTS.items():
    scopes[stage] = StageScope(batch[weights] > 0, filled, seg, attn_end)
  return scopes


def make_mask(q_scope, k_scope, q_end, k_index=None):
  """Boolean mask [B, Lq, Lk]: query q sees key k under the rule.

  q_scope: [B, Lq] int scope ids of the queries (0 = attends to nothing).
  k_scope: [B, Lk] int scope ids of the keys.
  q_end:   [B, Lq] int, the last key index each query may see (`attn_end`).
  k_index: [B, Lk] or None; the row index of each key (default arange(Lk)).
  """
  xp = _xp(q_scope, k_scope, q_end)
  if k_index is None:
    k_index = xp.arange(k_scope.shape[-1], dtype=xp.int32)[None, :]
  same = (q_scope[:, :, None] == k_scope[:, None, :]) & (q_scope[:, :, None] > 0)
  visible = k_index[:, None, :] <= q_end[:, :, None]
  return same & visible


# ------------------------------------------------------------------ row sizes and fields

def image_tokens(scales: Sequence[int], dual_copy: bool) -> int:
  """Tokens one image takes: <IMG>, <IMG_END>, and per scale a marker plus its copies."""
  copies = 2 if dual_copy else 1
  return 2 + sum(1 + copies * s * s for s in scales)


class Capacities(NamedTuple):
  """Per-row sizes of the streams each model stage runs on (static shapes under jit).

  text_tokens    text-in: text positions (modality text)
  image_tokens   image-in and the patch embedding: image positions
  text_targets   text-out and the LM head: positions with a text target
  image_targets  imun-out / imgen-out, patch and diffusion heads: predicting positions
  """
  text_tokens: int
  image_tokens: int
  text_targets: int
  image_targets: int


# The config key bounding each capacity (0 = the layout's bound, `capacities`).
CAPACITY_KEYS = Capacities('data.max_text_tokens', 'data.max_image_tokens',
                           'data.max_text_targets', 'data.max_image_targets')


def capacity_bounds(seq_len: int, scales: Sequence[int], dual_copy: bool) -> Capacities:
  """What a row can hold at most: every position text, or as many images as fit
  (one document `<BOS> image ... image <EOS>`), each with every M_k patch a target."""
  patches = sum(s * s for s in scales)
  images = max(0, (seq_len - 2) // image_tokens(scales, dual_copy))
  copies = 2 if dual_copy else 1
  return Capacities(seq_len, images * copies * patches, seq_len - 1, images * patches)


def capacities(seq_len: int, scales: Sequence[int], dual_copy: bool,
               configured: Sequence[int]) -> Capacities:
  """The per-row capacities: the configured `CAPACITY_KEYS` values (0 = the bound), at
  most the bound."""
  return Capacities(*(min(c, b) if c else b
                      for c, b in zip(configured, capacity_bounds(seq_len, scales, dual_copy))))


def configured_capacities(config) -> Capacities:
  """The `CAPACITY_KEYS` values of a config (0 = the layout's bound)."""
  return Capacities(*(int(config.data[key.split('.')[1]]) for key in CAPACITY_KEYS))


def batch_spec(batch_size: int, seq_len: int, patch_dim: int,
               imgen_residual: bool = False) -> dict[str, tuple[tuple[int, ...], Any]]:
  """Field name -> (shape, dtype) of one packed batch: the whole contract in one place."""
  b, l, p = batch_size, seq_len, patch_dim
  return {
      'tokens': ((b, l), np.int32),
      'patches': ((b, l, p), np.float32),
      'modality': ((b, l), np.int32),
      'is_masked': ((b, l), np.bool_),
      'copy': ((b, l), np.int32),
      'scale': ((b, l), np.int32),
      'image_id': ((b, l), np.int32),
      'segment_ids': ((b, l), np.int32),
      'positions': ((b, l, 3), np.float32),
      'attn_end': ((b, l), np.int32),
      'text_targets': ((b, l), np.int32),
      'text_weights': ((b, l), np.float32),
      'image_targets': ((b, l, p), np.float32),
      'image_weights': ((b, l), np.float32),
      # Residual diffusion targets: the base each image target is drawn over
      # (`layout.upsampled_base`); read by the loss only.
      **({'image_base': ((b, l, p), np.float32)} if imgen_residual else {}),
  }


def image_side(config) -> int:
  """Pixels per side of a picture at the finest scale (`image.scales[-1]` patches of
  `image.patch_size`): what the data renders and generation draws, never resampled."""
  return int(config.image.scales[-1]) * int(config.image.patch_size)
