"""What every evaluator shares: its settings from `config.eval`, and its outputs.

An evaluator is constructed from the config and has one method, `run(vlm, step) ->
dict[str, float]`; after a run, `chance` holds the chance level of each metric that has
one, `grids` the pictures to write (name -> Grid) and `not_applicable` the metric groups
this model variant cannot be asked for (group -> reason; `inference.generation.Unsupported`).
"""

from __future__ import annotations

import math

from dvlm_jax.evaluation.grid import Grid
from dvlm_jax.evaluation.heldout import HeldOut


def psnr(mse: float) -> float:
  """PSNR in dB of a mean squared error in [0, 1] pixel units."""
  return 10.0 * math.log10(1.0 / max(mse, 1e-12))


class Evaluator:
  """Base: held-out data, example count, batch size, sampling settings, seed."""

  def __init__(self, config):
    e = config.eval
    self.heldout = HeldOut(config)
    self.split = str(e.split)
    self.n = int(e.num_examples)
    self.batch_size = int(e.batch_size)
    self.seed = int(e.seed)
    self.cfg_scale = float(e.cfg_scale)
    self.temperature = float(e.temperature)
    self.steps = int(e.sample_steps) or None     # 0: the config's diffusion.sample_steps
    self.chance: dict[str, float] = {}
    self.grids: dict[str, Grid] = {}
    self.not_applicable: dict[str, str] = {}

  def run(self, vlm, step: int) -> dict[str, float]:
    raise NotImplementedError
