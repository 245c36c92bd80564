"""Masked reconstruction by the imun head, per image and scale (`reconstruct`)."""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dvlm_jax.data import layout
from dvlm_jax.inference import sequence
from dvlm_jax.inference import text as text_lib
from dvlm_jax.inference.generation import (ImageGenerator, Unsupported, head_positions,
                                           in_context, to_uint8)
from dvlm_jax.model.dvlm import DreamVLM
from dvlm_jax.training import losses


@functools.partial(jax.jit, static_argnames=('model', 'positions'))
def _patch_pred(params, batch, *, model: DreamVLM, positions: tuple[int, ...]):
  """The imun head at `positions` of every row: [B, len(positions), P]."""
  heads = head_positions(batch['tokens'].shape[0], np.asarray(positions))
  return model.apply({'params': params}, batch, heads=heads)['patch_pred']


@in_context
def reconstruct(gen: ImageGenerator, params, images: Sequence[np.ndarray], mask_ratio: float,
                seed: int) -> list[dict]:
  """Masked reconstruction by the imun head, per image and scale.

  Per image a dict of per-scale lists: `masked` (input, masked patches grey),
  `prediction` (visible patches + the imun prediction at masked ones; a normalised
  prediction is shown with the true patch's mean and std), `target`, `mask` (bool
  [s, s]), `mse` (imun loss on masked patches, in the head's target space) and `psnr`
  (dB, pixels in [0, 1], masked patches; nan where nothing is masked).
  """
  if not gen.model.cfg.imun_head:
    raise Unsupported('reconstruct needs the imun head (model.imun_head=True)')
  if gen.cfg.image_targets != 'masked':
    raise Unsupported("reconstruct needs masked image targets (image.targets='masked')")
  if not 0.0 <= mask_ratio <= 1.0:
    raise ValueError(f'mask_ratio must lie in [0, 1], got {mask_ratio}')
  if not images:
    return []
  draw_cfg = dataclasses.replace(gen.cfg, share_unmasked=0.0, share_fully_masked=0.0,
                                 mask_ratio_min=mask_ratio, mask_ratio_max=mask_ratio)
  items = [sequence.image_item(img, gen.cfg,
                               layout.draw_masks(draw_cfg, np.random.default_rng([seed, i])))
           for i, img in enumerate(images)]
  docs = [sequence.encode([it], gen.cfg, gen.tokenizer)
          for it in text_lib.pad_rows(items, text_lib.row_bucket(len(items), gen.ctx))]
  length = sequence.bucket(len(docs[0]['tokens']), 64)
  batch = sequence.place(docs, gen.cfg, length, [0] * len(docs), 0)
  slots = sequence.image_slots(batch, gen.cfg.target_shift)
  # The imun head only where scale k's patches are predicted, scale after scale.
  firsts = np.cumsum((0,) + slots.sizes)
  positions = tuple(int(p) for k, size in enumerate(slots.sizes)
                    for p in slots.predicting(k) + np.arange(size))
  pred_all = gen.ctx.to_host(_patch_pred(params, gen.ctx.put_rows(batch), model=gen.model,
                                           positions=positions))
  results = []
  for r, it in enumerate(items):
    res = {key: [] for key in ('masked', 'prediction', 'target', 'mask', 'mse', 'psnr')}
    for k, s in enumerate(gen.cfg.scales):
      target, mask = it.patches[k], it.masks[k]
      raw = pred_all[r, firsts[k]:firsts[k + 1]]
      norm = losses.normalize_patches(jnp.asarray(target)) if gen.norm_pix else target
      err = np.mean(np.square(raw - np.asarray(norm)), axis=-1)
      if gen.norm_pix:   # de-normalise with the true patch statistics, for display
        mean = target.mean(-1, keepdims=True)
        raw = raw * np.sqrt(target.var(-1, keepdims=True) + 1e-6) + mean
      shown = np.where(mask[:, None], np.clip(raw, -1.0, 1.0), target)
      mse01 = np.mean(np.square((shown - target) / 2.0)[mask]) if mask.any() else np.nan
      res['masked'].append(to_uint8(np.where(mask[:, None], 0.0, target), gen.cfg.patch_size))
      res['prediction'].append(to_uint8(shown, gen.cfg.patch_size))
      res['target'].append(to_uint8(target, gen.cfg.patch_size))
      res['mask'].append(mask.reshape(s, s))
      res['mse'].append(float(err[mask].mean()) if mask.any() else float('nan'))
      res['psnr'].append(float(10 * np.log10(1.0 / max(mse01, 1e-12)))
                         if mask.any() else float('nan'))
    results.append(res)
  return results
