"""HeldOutLoss: the diffusion head's training loss on fixed held-out documents, per scale.

A number the study compares arms on without sampling anything: each held-out scene
(`eval.split`) laid out like a training generation document (`layout.Packer`),
[caption, image] with the image fully masked as generation sees it, its diffusion
noise drawn from `eval.seed`, so every model sees the same documents and noise:

  loss/imgen/SxS   the diffusion loss on scale SxS's patches given the caption (a
                   next-patch model: each patch given the caption and those before it)

S x S is the scale's patch grid, so a variant with fewer scales (single_scale, the
Janus-like baseline) is compared on the grids it has. A sum over every target of every
batch divided once (targets weighing by `image_weights`, as `losses.compute_loss`). A
variant without the head has no such metric (`not_applicable`). The other held-out
losses: the caption's given the image is `text/caption_loss` (`text_perplexity`), the
masked-patch loss `recon/imun_loss/scale_k` (`masked_patch_psnr`).
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
  """{head: (loss sum [K], weight sum [K])} per scale 1..K of one packed batch (the
  heads the model has)."""
  out = model.apply({'params': params}, batch)
  sums = {}
  for name, (per_position, weights, scale) in losses.image_losses(
      model, params, out, batch, rng, cfg).items():
    at = [weights * (scale == k) for k in range(1, cfg.num_scales + 1)]
    sums[name] = (jnp.stack([jnp.sum(per_position * w) for w in at]),
                  jnp.stack([jnp.sum(w) for w in at]))
  return sums


class HeldOutLoss(Evaluator):
  """Per scale: the diffusion loss given the caption."""

  def __init__(self, config):
    super().__init__(config)
    self.layout = dataclasses.replace(layout_lib.LayoutConfig.from_config(config),
                                      caption_dropout=0.0, prompted_fully_masked=1.0)
    self.loss_cfg = losses.LossConfig.from_config(config)
    self.tokenizer = pipeline.load_tokenizer(config)
    self.grids = {}

  def run(self, vlm, step: int) -> dict[str, float]:
    del step
    docs = [[shapes.caption(s), image] for s, image in self.heldout.scenes(self.split, self.n)]
    ctx = vlm.context
    total = weight = 0.0
    key = jax.random.key(self.seed)
    for index, batch in enumerate(packed_batches(docs, self.layout, self.tokenizer,
                                                 ctx.rows_for(self.batch_size), self.seed)):
      with ctx.scope():
        sums = _loss_sums(vlm.model, vlm.params, ctx.put_rows(batch),
                          jax.random.fold_in(key, index), self.loss_cfg)
      if 'imgen' not in sums:
        self.not_applicable['loss/imgen'] = 'the model has no diffusion head'
        return {}
      batch_loss, batch_weight = ctx.to_host(sums['imgen'])
      total, weight = total + batch_loss, weight + batch_weight
    return {f'loss/imgen/{s}x{s}': float(total[k] / weight[k])
            for k, s in enumerate(self.layout.scales) if weight[k] > 0}
