"""Surprise of real pictures: self-correction thresholds and surprisal of documents.

  calibrate(gen, params, images, prompts, prefix)   per scale, a percentile of real
                                                    pictures' surprise (the thresholds
                                                    of self-correction, `generation`)
  surprisal(gen, params, documents)                 [B, K] activation surprise at each
                                                    document's masked patches

The measures themselves (`activation_surprise`, `pixel_surprise`) live with generation,
whose self-correction uses them while drawing.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from dvlm_jax.inference import sequence
from dvlm_jax.inference import text as text_lib
from dvlm_jax.inference.generation import (SURPRISES, GenerationOptions, ImageGenerator,
                                           Unsupported, activation_surprise, core_at, full_pass,
                                           in_context, pixel_surprise, surprise_positions)


@in_context
def calibrate(gen: ImageGenerator, params, images: Sequence[np.ndarray], prompts: Sequence[str],
              prefix: str, surprise: str = 'activation', percentile: float = 90.0) -> tuple[float, ...]:
  """Per scale, the `percentile` of the surprise of real images: the self-correction
  threshold drawn from the training distribution instead of a constant.

  Each image is teacher-forced as generation sees it (the prompt, every scale before k
  known, scale k masked), then fed the real scale k: a sample is re-drawn when it
  surprises the model more than (100 - percentile) % of real pictures do.
  """
  if surprise not in SURPRISES:
    raise ValueError(f'surprise: one of {SURPRISES}, got {surprise!r}')
  if not 0.0 <= percentile <= 100.0:
    raise ValueError(f'percentile must lie in [0, 100], got {percentile}')
  if len(images) != len(prompts) or not images:
    raise ValueError(f'calibrate: {len(images)} images, {len(prompts)} prompts (need >= 1 each)')
  gen.check_can_generate(GenerationOptions(1.0, 1.0, self_correct=True, surprise=surprise))
  padded = text_lib.row_bucket(len(images), gen.ctx)
  items = [sequence.image_item(image, gen.cfg) for image in text_lib.pad_rows(images, padded)]
  docs = [[prefix + p, it] for p, it in zip(text_lib.pad_rows(prompts, padded), items)]
  thresholds = []
  for k, size in enumerate(s * s for s in gen.cfg.scales):
    # Scales before k known, k on masked: what generating scale k sees.
    masked = [sequence.ImageItem(it.patches, tuple(np.full(len(p), j >= k)
                                                   for j, p in enumerate(it.patches)))
              for it in items]
    batch = gen.rows([[d[0], m] for d, m in zip(docs, masked)])
    slots = sequence.image_slots(batch, gen.cfg.target_shift)
    for j in range(k, len(gen.cfg.scales)):   # nothing not yet drawn is visible
      batch['patches'][:, slots.fed(j) + np.arange(slots.sizes[j])] = 0.0
    expecting, fed = surprise_positions(slots, k)
    truth = np.stack([it.patches[k] for it in items])
    where = np.ones((padded, size), bool)
    if surprise == 'activation':
      before = core_at(params, gen.ctx.put_rows(batch), expecting, model=gen.model)
      after = core_at(params, gen.ctx.put_rows(gen.fed(batch, fed, truth, 1)), fed,
                       model=gen.model)
      values = activation_surprise(before, after, where)
    else:
      _, pred = full_pass(params, gen.ctx.put_rows(batch), expecting, model=gen.model)
      values = pixel_surprise(pred, truth, where, gen.norm_pix)
    thresholds.append(float(np.percentile(gen.ctx.to_host(values)[:len(images)], percentile)))
  return tuple(thresholds)

@in_context
def surprisal(gen, params, documents: Sequence[Sequence]) -> np.ndarray:
  """[B, K]: per document (ending with an image whose M_k masks are set) and scale, the
  activation surprise at the masked patches: the core output at M_k (what the model
  expects there, from the text before the image and the earlier scales) against U_k
  (what it makes of the picture); nan for a scale with nothing masked. Needs two copies."""
  if not gen.cfg.dual_copy or gen.cfg.image_targets != 'masked':
    raise Unsupported('surprisal compares M_k with U_k: it needs masked targets and two '
                      'copies (image.dual_copy=True)')
  b = len(documents)
  padded = text_lib.row_bucket(b, gen.ctx)
  batch = gen.rows(text_lib.pad_rows(documents, padded))
  slots = sequence.image_slots(batch, gen.cfg.target_shift)
  out = np.full((b, len(slots.sizes)), np.nan, np.float32)
  pairs = [surprise_positions(slots, k) for k in range(len(slots.sizes))]
  expecting = np.concatenate([e for e, _ in pairs])
  fed = np.concatenate([f for _, f in pairs])
  core = core_at(params, gen.ctx.put_rows(batch), np.concatenate([expecting, fed]),
                 model=gen.model)
  before, after = np.split(gen.ctx.to_host(core), 2, axis=1)
  # Patch j of M_k is masked or not at M_k's position j (its own place, not where it is
  # decoded from).
  masked = batch['is_masked'][:, np.concatenate(
      [slots.masked[k] + np.arange(n) for k, n in enumerate(slots.sizes)])]
  start = 0
  for k, n in enumerate(slots.sizes):
    at = slice(start, start + n)
    s = np.asarray(activation_surprise(before[:, at], after[:, at], masked[:, at]))
    out[:, k] = np.where(masked[:, at].any(-1), s, np.nan)[:b]
    start += n
  return out
