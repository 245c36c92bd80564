"""Evaluation of a dream VLM from a checkpoint or during training (docs/evaluation.md).

  runner.evaluate(vlm, config, step, workdir)      the configured evaluators, files, scalars
  runner.maybe_evaluate(config, params, step, workdir)   the training loop's hook
  python -m dvlm_jax.eval --workdir DIR [--step N]  the same from a checkpoint

This module stays free of jax imports: config validation reads the names below.
"""

# config.eval.evaluators names -> what they measure (classes in runner.EVALUATOR_CLASSES).
EVALUATORS = {
    'text_perplexity': 'LM loss and perplexity of held-out captions (plain forward pass)',
    'masked_patch_psnr': 'imun reconstruction PSNR and MSE of masked patches, per scale',
    'shapes': 'caption and generation accuracy per attribute on shapes scenes',
    'glyphs': 'letter and small-shape accuracy of captions of glyph pictures',
    'inpainting': 'MSE/PSNR inside an inpainted region, unchanged pixels outside',
    'surprisal': 'AUROC of the surprise of pictures edited against their caption vs clean ones',
}
