"""HeldOutLoss: the training losses of the image heads on fixed held-out documents, per scale.

The numbers the study compares arms on without sampling anything: each held-out scene
(`eval.split`) laid out twice like a training document (`layout.Packer`), with the masks
and diffusion noise drawn from `eval.seed`, so every model sees the same documents:

  generation   [caption, image], the image fully masked as generation sees it:
               `loss/imgen/SxS`, the diffusion head's loss on each scale's patches given
               the caption (a next-patch model: each patch given the caption and those
               before it)
  masked       [image, caption], `eval.masked_patch_psnr.mask_ratio` of each scale
               masked: `loss/imun/SxS`, the imun head's loss on the masked patches

S x S is the scale's patch grid, so a variant with fewer scales (single_scale, the
Janus-like baseline) is compared on the grids it has. Each is a sum over every target of
every batch divided once (like `losses.compute_loss`, targets weighing by
`image_weights`). A variant without a head has no such metric (`not_applicable`). The
caption's loss given the image is `text/caption_loss` (`text_perplexity`).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from dvlm_jax.data import layout as layout_lib
from dvlm_jax.data import pipeline
from dvlm_jax.data import shapes
from dvlm_jax.evaluation.base import Evaluator
from dvlm_jax.evaluation.text_perplexity import packed_batches
from dvlm_jax.training import losses


@functools.partial(jax.jit, static_argnums=(0, 4))   # one compile per model and batch shape
def _loss_sums(model, params, batch, rng, cfg):
  """{head: (loss sum [K], weight sum [K])} per scale 1..K of one packed batch."""
  out = model.apply({'params': params}, batch)
  sums = {}
  for name, (per_position, weights, scale) in losses.image_losses(
      model, params, out, batch, rng, cfg).items():
    at = [weights * (scale == k) for k in range(1, cfg.num_scales + 1)]
    sums[name] = (jnp.stack([jnp.sum(per_position * w) for w in at]),
                  jnp.stack([jnp.sum(w) for w in at]))
  return sums


class HeldOutLoss(Evaluator):
  """Per scale: the diffusion loss given the caption, the masked-patch loss."""

  def __init__(self, config):
    super().__init__(config)
    base = dataclasses.replace(layout_lib.LayoutConfig.from_config(config), caption_dropout=0.0)
    ratio = float(config.eval.masked_patch_psnr.mask_ratio)
    self.layouts = {
        'imgen': dataclasses.replace(base, prompted_fully_masked=1.0),
        'imun': dataclasses.replace(base, share_unmasked=0.0, share_fully_masked=0.0,
                                    mask_ratio_min=ratio, mask_ratio_max=ratio)}
    self.loss_cfg = losses.LossConfig.from_config(config)
    self.tokenizer = pipeline.load_tokenizer(config)
    self.grids = {}

  def _per_scale(self, vlm, name: str, docs) -> dict[str, float] | None:
    ctx = vlm.context
    total = weight = 0.0
    key = jax.random.key(self.seed)
    for index, batch in enumerate(packed_batches(docs, self.layouts[name], self.tokenizer,
                                                 ctx.rows_for(self.batch_size), self.seed)):
      with ctx.scope():
        sums = _loss_sums(vlm.model, vlm.params, ctx.put_rows(batch),
                          jax.random.fold_in(key, index), self.loss_cfg)
      if name not in sums:
        return None
      batch_loss, batch_weight = ctx.to_host(sums[name])
      total, weight = total + batch_loss, weight + batch_weight
    grids = [int(s) for s in self.layouts[name].scales]
    return {f'loss/{name}/{s}x{s}': float(total[k] / weight[k])
            for k, s in enumerate(grids) if weight[k] > 0}

  def run(self, vlm, step: int) -> dict[str, float]:
    del step
    scenes = self.heldout.scenes(self.split, self.n)
    metrics = {}
    for name, docs in (('imgen', [[shapes.caption(s), image] for s, image in scenes]),
                       ('imun', [[image, shapes.caption(s)] for s, image in scenes])):
      found = self._per_scale(vlm, name, docs)
      if found is None:
        self.not_applicable[f'loss/{name}'] = f'the model has no {name} head'
      else:
        metrics.update(found)
    return metrics
