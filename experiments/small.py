"""Small dream VLM, the CPU demo that `make train` runs (48-px shapes pictures at 2 scales).

The demo's recipe (each part measured against the previous demo on the same budget and
seed, docs/findings.md): the one-shape shapes world (`shapes_single`: every attribute of
a shape still varies, but a picture holds one, so that kind, the attribute learnt last, is
read and drawn within the budget); scales 3 and 6 of 8-px patches (a small shape is 8
pixels wide instead of 5: its outline, the kind, has pixels to show), so the coarsest
scale is the world's 3 x 3 grid and an image takes 94 tokens; image targets weighted by
their detail (`loss.detail_weight=8`: a patch with an edge counts up to ~9x a flat one,
so the shape's outline is not drowned by the background around it);
rotary pairs on y and x only and the cell-position features (`model.rope_axes`,
`model.image_pos_embed`); each scale's loss weighing the same (`loss.scale_weighting`);
70 % of captioned pictures drawn from their caption, every such picture fully masked as
generation sees it (`data.generation_share`, `image.prompted_fully_masked`), the caption
it is drawn from weighing 0.3 in the text loss (`data.prompt_text_weight`); pictures read
first 60 % whole, 20 % fully and 20 % partly (50-100 % of each scale) masked; four noise
draws per target for the diffusion head; a BPE tokenizer of the world's words
(`assets/shapes_bpe.model`, every word one token: a one-shape caption is 9 tokens at most),
so one document fills a row of 112 tokens (text-in and text-out on 24 and 20 of them,
`data.max_text_tokens`, `data.max_text_targets`); the fine scale drawn as its difference from the
coarse one upsampled (`diffusion.target='residual'`); the diffusion head predicting the clean
patch with the plain x0 loss, trained and sampled mostly at high noise
(`diffusion.objective='flow_x0_mse'`, `diffusion.time_shift=3`), guided at 1.5
(`eval.cfg_scale`); the text embedding initialised at std 1 (`model.embed_init_std`), so
a word that predicts no later word (a colour) still stands out in the residual stream the
image tokens read.

The tokenizer was trained on the built shapes set's captions (deterministic):

  python -m dvlm_jax.data.sentencepiece_tokenizer --data_dir data --datasets shapes \
      --vocab_size 380 --model_type bpe --out experiments/assets/shapes_bpe.model

  python -m dvlm_jax.train --config experiments/small.py --workdir runs/small
  python -m dvlm_jax.train --config experiments/small.py:single_copy --workdir runs/small_1copy

The optional argument names one ablation from `dvlm_jax.variants.ABLATIONS`
(`variants.ablate`: removed modality blocks give their depth and parameters to the core).
"""

import os

from dvlm_jax import config as cfg_lib
from dvlm_jax import variants
from dvlm_jax.errors import ConfigError

TOKENIZER = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'assets', 'shapes_bpe.model')


def get_config(arg=None):
  c = variants.apply_size(cfg_lib.defaults(), 'small')
  c.diffusion.width = 128
  c.diffusion.depth = 2
  c.diffusion.noise_samples = 4  # MAR's: 4 noise draws per image target, no measurable cost here
  c.diffusion.target = 'residual'
  c.diffusion.objective = 'flow_x0_mse'  # the head predicts the clean patch (JiT): no speckle
  c.diffusion.time_shift = 3.0   # with the x0 loss: the head learns to draw the prompt's colour
  c.image.patch_size = 8          # 48-px pictures: a small shape is 8 px, its kind visible
  c.image.scales = (3, 6)
  # Generation learns from caption-first documents drawn from nothing: every image after
  # its caption is masked as generation sees it, and 70 % of captioned pictures are laid
  # out that way; pictures read first keep 60 % whole (captions read them whole: kind is
  # read only from enough whole pictures), 20 % fully and 20 % partly masked (masked
  # modelling).
  c.image.prompted_fully_masked = 1.0
  c.data.generation_share = 0.7
  # The caption a picture is drawn from is unconditioned text (its loss cannot fall below
  # the world's entropy); at 0.3 it still trains the words, and captions read from a
  # picture carry 59 % of the text loss instead of 30 %: reading (kind) learns sooner.
  c.data.prompt_text_weight = 0.3
  c.image.share_unmasked = 0.6
  c.image.share_fully_masked = 0.2
  c.image.mask_ratio_min = 0.5
  c.image.mask_ratio_max = 1.0
  c.model.rope_axes = 'yx'
  c.model.image_pos_embed = True
  c.model.embed_init_std = 1.0   # words keep their identity: the prompt's colour reaches the image
  c.loss.scale_weighting = 'scale'
  c.loss.detail_weight = 8.0      # edges over background: generation draws the named kind
  c.data.mixture = (('shapes_single', 1.0),)
  c.data.builtin_max_shapes = 1  # the same world from the built-in source (the study)
  c.data.tokenizer = TOKENIZER
  c.model.vocab_size = 400       # the tokenizer's 396 ids
  c.data.seq_len = 112           # the longest document: 9 caption tokens + a 96-token image
  c.data.batch_size = 16
  # A row holds one document: at most 21 text tokens and 17 text targets (a caption of 9
  # tokens, the markers), so text-in and text-out run on 24 and 20 slots instead of the
  # layout's bound (112 and 111): 1.2-1.45x the step's speed on 2 cores, the same numbers.
  c.data.max_text_tokens = 24
  c.data.max_text_targets = 20
  c.optim.lr = 2e-3
  c.model.remat = 'dots'        # recompute attention scores: faster on CPU, less memory
  c.optim.warmup_steps = 60
  # Every attribute is drawn by two thirds of this on every seed measured, on 1 and 2
  # threads (docs/findings.md), and make train stays well under 15 min on 2 cores.
  c.train.steps = 1200
  c.train.log_every = 25
  c.eval.evaluators = ('text_perplexity', 'masked_patch_psnr', 'shapes', 'inpainting')
  c.eval.num_examples = 32
  c.eval.max_new_tokens = 16     # a caption is at most 9 tokens
  c.eval.cfg_scale = 1.5         # 3 washes this head's colours out to white
  if arg:
    variants.ablate(c, arg)
  return c


def get_study(arg=None):
  """The seed's claims against the dream config and the Janus-like baseline, at equal
  training FLOPs and parameters, 5 paired seeds, metrics pre-registered below:

    python -m dvlm_jax.study --config experiments/small.py --workdir runs/study

  Every arm trains for the FLOPs of 400 steps of the dream config and is evaluated on
  64 test scenes at 4 points along its budget (docs/study.md). The budget sits mid-way up
  the dream config's learning curve on validation (docs/findings.md, "The study's
  budget"): at 400 steps its whole-scene accuracy is well above chance and below the
  ceiling both ways, which it reaches by 800, so a claim can show as help or harm. `arg` 'lr=X' runs every
  arm at learning rate X (the same small sweep for every arm).
  """
  lr = {}
  if arg:
    key, _, value = arg.partition('=')
    if key != 'lr' or not value:
      raise ConfigError(f"small.py: get_study takes 'lr=X' or nothing, got {arg!r}")
    lr = {'optim.lr': float(value)}
  here = os.path.abspath(__file__)
  arms = {'dream': here, **{name: f'{here}:{name}' for name in sorted(variants.ABLATIONS)},
          'janus': os.path.join(os.path.dirname(here), 'janus.py') + ':small'}
  # Per claim the primary metrics its mechanism should move (each claim: 2 to 5, 30 in
  # the family Holm corrects over; every metric below is recorded at every point).
  caption = ('text/caption_loss', 'shapes/caption/scene')
  generation = ('loss/imgen/6x6', 'shapes/generation/scene')
  learning = ('text/caption_loss@auc', 'loss/imgen/6x6@auc')
  metrics = {**{m: 'lower' for m in ('text/caption_loss', 'loss/imgen/3x3', 'loss/imgen/6x6',
                                     'recon/imun_loss/scale_1', 'recon/imun_loss/scale_2')
                + learning},
             **{f'shapes/{probe}/{a}': 'higher' for probe in ('caption', 'generation')
                for a in ('kind', 'colour', 'size', 'position', 'scene')},
             'inpaint/psnr': 'higher', 'inpaint/shape_recovered': 'higher',
             **{f'surprisal/auroc_{edit}': 'higher' for edit in ('recolour', 'move', 'remove')},
             'shapes/self_correction/scene': 'higher'}
  comparisons = {
      'no_modality_blocks': caption + generation,
      'no_in_blocks': caption + generation,
      'no_out_blocks': caption + generation,
      'causal_images': caption + generation + ('inpaint/psnr',),
      'no_masked_modelling': caption + ('shapes/generation/scene',),
      'single_scale': generation,
      'single_copy': generation + ('recon/imun_loss/scale_2',),
      'no_diffusion': caption,
      'no_target_shift': generation + ('recon/imun_loss/scale_2',),
      'janus': caption + generation + learning}
  return {'variants': arms, 'reference': 'dream', 'baseline': 'janus',
          'seeds': (0, 1, 2, 3, 4), 'points': 4, 'metrics': metrics,
          'comparisons': comparisons,
          # The dream config alone: does self-correction change what it draws, does its
          # surprise tell an edited picture from a clean one (against 0 and chance 0.5)?
          'effects': {'shapes/self_correction/scene': 0.0, 'surprisal/auroc_recolour': 0.5,
                      'surprisal/auroc_move': 0.5, 'surprisal/auroc_remove': 0.5},
          'overrides': {**lr, 'train.steps': 400, 'eval.num_examples': 64,
                        'eval.shapes.self_correct': True,
                        'eval.evaluators': ('text_perplexity', 'heldout_loss', 'masked_patch_psnr',
                                            'shapes', 'inpainting', 'surprisal')},
          'chart': ('text/caption_loss', 'loss/imgen/6x6', 'shapes/caption/scene',
                    'shapes/generation/scene', 'surprisal/auroc_recolour')}


def get_sweep(arg=None):
  """The ablation study: the dream config, then each seed claim switched off alone.

    python launch/sweep.py --config experiments/small.py --workdir runs/ablations --run
  """
  del arg
  return [{}] + [{'arg': name} for name in sorted(variants.ABLATIONS)]
