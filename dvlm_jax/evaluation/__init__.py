"""Evaluation of a dream VLM from a checkpoint or during training (docs/evaluation.md).

  runner.evaluate(vlm, config, step, workdir)      the configured evaluators, files, scalars
  runner.maybe_evaluate(config, params, step, workdir)   the training loop's hook
  python -m dvlm_jax.eval --workdir DIR [--step N]  the same from a checkpoint

This module stays free of jax imports: config validation reads the names below.
"""

import importlib

# config.eval.evaluators names -> the class that runs it ('module.Class' in this package,
# imported only when it runs) and what it measures. The one registry.
EVALUATORS = {
    'text_perplexity': ('text_perplexity.TextPerplexity',
                        'LM loss and perplexity of held-out captions (plain forward pass)'),
    'heldout_loss': ('heldout_loss.HeldOutLoss',
                     'diffusion loss given the caption, per scale (no sampling)'),
    'masked_patch_psnr': ('reconstruction.MaskedPatchPSNR',
                          'imun reconstruction PSNR and MSE of masked patches, per scale'),
    'shapes': ('shapes_eval.ShapesEval',
               'caption and generation accuracy per attribute on shapes scenes'),
    'glyphs': ('shapes_eval.GlyphsEval',
               'letter and small-shape accuracy of captions of glyph pictures'),
    'inpainting': ('inpainting.InpaintingError',
                   'MSE/PSNR inside an inpainted region, unchanged pixels outside'),
    'surprisal': ('surprisal.SurprisalAUROC',
                  'AUROC of the surprise of pictures edited against their caption vs clean ones'),
}


def evaluator_class(name: str) -> type:
  """The class registered as `name` in EVALUATORS."""
  module, cls = EVALUATORS[name][0].rsplit('.', 1)
  return getattr(importlib.import_module(f'{__name__}.{module}'), cls)
