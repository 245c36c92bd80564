"""The seed's claims switched off at equal parameters, and the width that matches them.

  ablate(config, name)            `config.apply_ablation`; where it removes modality blocks,
                                  their per-token depth goes to the shared core and the
                                  MLP width restores the parameter count
  matched_mlp_dim(config, target) the MLP width that gives `config` `target` parameters

Removing the modality blocks alone would halve the small model's parameters and compare
separation with size; the Janus-like baseline (`experiments/janus.py`) is matched the
same way. Every experiment that takes an ablation argument goes through `ablate`, so
`small.py:no_modality_blocks` is the same model in a train command and in the study.
"""

from __future__ import annotations

from dvlm_jax import config as cfg_lib

# The matched MLP width is the coarsest of these multiples (tile- and shard-friendly) that
# lands within TOLERANCE of the target parameter count.
MLP_MULTIPLES = (256, 128, 64, 32, 16)
TOLERANCE = 0.025


def matched_mlp_dim(config, target: int) -> int:
  """The MLP width that gives `config` `target` parameters (counts are linear in the
  width: two abstract inits give the line)."""
  from dvlm_jax.model.dvlm import param_count   # jax: only when a width is matched
  c = cfg_lib.ConfigDict(config.to_dict())
  width = c.model.mlp_dim
  at_width = param_count(c)
  c.model.mlp_dim = width + 1
  per_unit = param_count(c) - at_width
  exact = width + (target - at_width) / per_unit
  for multiple in MLP_MULTIPLES:
    matched = max(multiple, int(round(exact / multiple)) * multiple)
    if abs(at_width + (matched - width) * per_unit - target) <= TOLERANCE * target:
      break
  return matched


def ablate(config, name: str):
  """Switches claim `name` off (`config.ABLATIONS`) at the parameters of `config`."""
  from dvlm_jax.model.dvlm import param_count
  depth = cfg_lib.modality_depth(config.model)
  target = None
  if any(key.endswith('_layers') for key in cfg_lib.ABLATIONS.get(name, {})):
    target = param_count(config)
  cfg_lib.apply_ablation(config, name)
  if target is not None:
    config.model.core_layers += depth - cfg_lib.modality_depth(config.model)
    config.model.mlp_dim = matched_mlp_dim(config, target)
  return config
