"""TextPerplexity: the LM's loss on held-out captions, with a plain forward pass.

Two document kinds per held-out scene (`eval.split`, see heldout.py),
laid out and packed exactly like training documents (`layout.Packer`), with no
masking and no caption dropout:

  text      [caption]          how well the LM knows the language of the world
  caption   [image, caption]   the caption given the clean image (captioning)

The loss is the text cross-entropy of `losses.compute_loss` (the same
`text_targets`/`text_weights`), summed over every weighted token of every
batch and divided once, so it is a per-token average that does not depend on
how documents fell into rows. Perplexity = exp(loss). The gap between the two
is what the image tells the LM about its caption. Chance: a uniform guess over
the tokenizer's ids (perplexity = its vocabulary size).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from dvlm_jax.data import layout as layout_lib
from dvlm_jax.data import pipeline
from dvlm_jax.data import shapes
from dvlm_jax.evaluation.base import Evaluator
from dvlm_jax.training import losses


@functools.partial(jax.jit, static_argnums=0)  # one compile per model and batch shape
def _text_nll_sums(model, params, batch):
  """(sum of next-token NLL over text_weights, sum of weights) of one packed batch."""
  nll, _, weights = losses.text_nll(model.apply({'params': params}, batch), batch)
  return jnp.sum(nll * weights), jnp.sum(weights)


def packed_batches(docs, layout, tokenizer, rows: int, seed: int):
  """Packed batches of `rows` rows holding every document once, laid out by `layout`
  (its masks drawn from a generator of `seed`: the same for every model)."""
  rng = np.random.default_rng(seed)
  packer = layout_lib.Packer(layout, rows)
  for doc in docs:
    encoded = layout_lib.encode_document(doc, layout, tokenizer, rng)
    if not packer.add(encoded):
      yield packer.finish()[0]
      packer.add(encoded)
  if packer.stats.documents:
    yield packer.finish()[0]


class TextPerplexity(Evaluator):
  """Per-token loss and perplexity of held-out captions, alone and after their image."""

  def __init__(self, config):
    super().__init__(config)
    self.layout = dataclasses.replace(
        layout_lib.LayoutConfig.from_config(config), share_unmasked=1.0,
        share_fully_masked=0.0, caption_dropout=0.0)
    self.tokenizer = pipeline.load_tokenizer(config)
    vocab = self.tokenizer.vocab_size
    self.chance = {'text/loss': math.log(vocab), 'text/perplexity': float(vocab),
                   'text/caption_loss': math.log(vocab), 'text/caption_perplexity': float(vocab)}
    self.grids = {}

  def _loss(self, vlm, docs) -> float:
    nll = weight = 0.0
    ctx = vlm.context   # the rows split over its devices: padded to a multiple of them
    for batch in packed_batches(docs, self.layout, self.tokenizer,
                                ctx.rows_for(self.batch_size), self.seed):
      with ctx.scope():
        sums = _text_nll_sums(vlm.model, vlm.params, ctx.put_rows(batch))
      batch_nll, batch_weight = ctx.to_host(sums)
      nll += float(batch_nll)
      weight += float(batch_weight)
    return nll / max(weight, 1.0)

  def run(self, vlm, step: int) -> dict[str, float]:
    del step
    scenes = self.heldout.scenes(self.split, self.n)
    text = self._loss(vlm, [[shapes.caption(s)] for s, _ in scenes])
    caption = self._loss(vlm, [[image, shapes.caption(s)] for s, image in scenes])
    return {'text/loss': text, 'text/perplexity': math.exp(text),
            'text/caption_loss': caption, 'text/caption_perplexity': math.exp(caption)}
