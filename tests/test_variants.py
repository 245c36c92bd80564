"""Every variant of the study runs end to end: the dream config, each ablation in
`variants.ABLATIONS` and the Janus-like baseline train a few steps, save, and are evaluated
from their checkpoint as `python -m dvlm_jax.study` does: captions, generation, surprisal
and reconstruction. What a variant cannot do is n/a with a reason; everything
else is a finite number. (Inpainting and self-correction, whose code paths the variants
share, are covered on four variants by test_evaluation's n/a test; perplexity is the
training forward pass.)"""

import json
import math
import os

import pytest

from dvlm_jax import variants
from tests.conftest import ROOT

TINY = os.path.join(ROOT, 'experiments', 'tiny.py')
VARIANTS = ('dream', *sorted(variants.ABLATIONS), 'janus')
EVALUATORS = {'masked_patch_psnr': 'recon/', 'shapes': 'shapes/', 'surprisal': 'surprisal/'}
# (name -> the prefix of its metrics; perplexity is the training forward pass, left out)
# The smallest budget that still exercises every path: two training steps, two examples per
# evaluator, short captions, two diffusion steps per scale.
OVERRIDES = ['train.steps=2', 'checkpoint.every=1000', 'eval.evaluators=' + ','.join(EVALUATORS),
             'eval.num_examples=2', 'eval.batch_size=2', 'eval.max_new_tokens=4',
             'eval.sample_steps=2']


def variant_spec(variant):
  if variant == 'janus':
    return os.path.join(ROOT, 'experiments', 'janus.py') + ':tiny'
  return TINY + ('' if variant == 'dream' else f':{variant}')


@pytest.mark.parametrize('variant', VARIANTS)
def test_variant_trains_and_evaluates_from_its_checkpoint(variant, tmp_path):
  from dvlm_jax import study as study_lib
  study = study_lib.Study(TINY, {variant: variant_spec(variant)}, variant, None, (0,),
                          {'text/loss': True}, {}, {}, 1, tuple(OVERRIDES), (), str(tmp_path))
  study_lib.run_one(study, variant, 0, 2)    # what the study runs: train, evaluate at its end
  workdir = study.runs()[0].workdir
  with open(os.path.join(workdir, 'eval', '2.json')) as f:
    record = json.load(f)
  metrics = record['metrics']
  assert metrics and all(math.isfinite(v) for v in metrics.values()), metrics
  assert all(reason for reason in record['not_applicable'].values())
  # Every evaluator either scored something or says why it could not.
  for name, prefix in EVALUATORS.items():
    assert (any(k.startswith(prefix) for k in metrics) or name in record['not_applicable']), name
  # Only what the variant lacks is n/a: a generating model generates, an imun head scores.
  generates = variant != 'no_diffusion'
  assert any(k.startswith('shapes/generation/') for k in metrics) == generates
  assert ('shapes/generation' in record['not_applicable']) == (not generates)
  assert any(k.startswith('recon/') for k in metrics) == (
      variant not in ('no_masked_modelling', 'janus'))
