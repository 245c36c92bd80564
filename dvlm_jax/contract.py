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

from typing import Any, NamedTuple

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
