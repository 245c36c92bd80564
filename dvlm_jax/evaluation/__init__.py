"""Evaluation of a dream VLM from a checkpoint or during training (docs/evaluation.md).

  runner.evaluate(vlm, config, step, workdir)      the configured evaluators, files, scalars
  runner.maybe_evaluate(config, params, step, workdir)   the training loop's hook
  python -m dvlm_jax.eval --workdir DIR [--step N]  the same from a checkpoint

Evaluators are registered by name in `dvlm_jax.names.EVALUATORS` (read by config
validation without importing them).
"""

import importlib

from dvlm_jax.names import EVALUATORS   # the one registry: name -> ('module.Class', what)


def evaluator_class(name: str) -> type:
  """The class registered as `name` in EVALUATORS."""
  module, cls = EVALUATORS[name][0].rsplit('.', 1)
  return getattr(importlib.import_module(f'{__name__}.{module}'), cls)
