"""The names a config may choose among, where the code that implements them registers them.

Config validation reads them without importing what implements them (attention kernels,
the diffusion head, evaluators); `model/attention.py`, `model/diffusion.py` and
`evaluation/__init__.py` take their lists from here. Imports nothing of the project's own.
"""

# model.attention: 'auto' picks the fastest for the backend (model/attention.py AUTO).
ATTENTION_IMPLEMENTATIONS = ('auto', 'xla', 'tokamax', 'pallas_gpu', 'pallas_interpret', 'splash')

# diffusion.objective (model/diffusion.py).
DIFFUSION_OBJECTIVES = ('flow', 'flow_x0', 'flow_x0_mse', 'eps', 'v')

# eval.evaluators names -> the class that runs it ('module.Class' in dvlm_jax.evaluation,
# imported only when it runs: `evaluation.evaluator_class`) and what it measures.
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
