"""Tiny dream VLM for tests: two core layers, two scales, 256-token rows.

  python -m dvlm_jax.train --config experiments/tiny.py --workdir runs/tiny
  python -m dvlm_jax.train --config experiments/tiny.py:causal_images --workdir runs/tiny_causal

The optional argument names one ablation from `dvlm_jax.variants.ABLATIONS`
(`variants.ablate`: removed modality blocks give their depth and parameters to the core).
"""

import os

from dvlm_jax import config as cfg_lib
from dvlm_jax import variants


def get_config(arg=None):
  c = variants.apply_size(cfg_lib.defaults(), 'tiny')
  c.diffusion.width = 64
  c.diffusion.depth = 2
  c.diffusion.sample_steps = 8
  c.image.patch_size = 4
  c.image.scales = (2, 4)
  c.data.seq_len = 256
  c.data.batch_size = 4
  c.optim.lr = 3e-3
  c.optim.warmup_steps = 10
  c.train.steps = 50
  c.train.log_every = 10
  c.eval.at_end = False          # tests evaluate explicitly; keeps every tiny run fast
  if arg:
    variants.ablate(c, arg)
  return c


def get_study(arg=None):
  """A two-arm study on a minimal budget, used by the tests of `dvlm_jax.study`: 4 steps of
  the dream config, evaluated at every step on 2 held-out scenes.

    python -m dvlm_jax.study --config experiments/tiny.py --workdir runs/tiny_study
  """
  del arg
  here = os.path.abspath(__file__)
  return {'variants': {'dream': here, 'no_diffusion': f'{here}:no_diffusion'},
          'reference': 'dream', 'seeds': (0, 1), 'points': 4,
          'metrics': {'text/caption_loss': 'lower', 'text/loss': 'lower',
                      'text/caption_loss@auc': 'lower'},
          'overrides': {'train.steps': 4, 'train.log_every': 2, 'model.core_layers': 1,
                        'eval.evaluators': ('text_perplexity',), 'eval.num_examples': 2}}


def get_sweep(arg=None):
  """A small grid, used by the tests of launch/sweep.py.

    python launch/sweep.py --config experiments/tiny.py --workdir runs/tiny_sweep
  """
  del arg
  return variants.product(optim__lr=[1e-3, 3e-3], model__core_layers=[1, 2])
