"""Janus-like baseline at any size: everything shared, causal single-scale images,
no masked image modelling, next-patch generation through the diffusion head.

  python -m dvlm_jax.train --config experiments/janus.py:small --workdir runs/janus_small
  python -m dvlm_jax.train --config experiments/janus.py:base --workdir runs/janus_base

The argument names the size (tiny | small | base | b1; default small) and picks the
data, diffusion and optimiser settings of the dream experiment of that size, so the
two are directly comparable: the same per-token depth (`variants.janus_like`) and, by a
wider MLP in the shared stack, the same parameter count within 5 % (the dream model's
modality blocks hold parameters that a shared stack of the same depth does not have).
"""

import os

from dvlm_jax import config as cfg_lib
from dvlm_jax.errors import ConfigError
from dvlm_jax import variants

# The matched MLP width is the coarsest of these multiples (tile- and shard-friendly) that
# lands within TOLERANCE of the dream model's parameter count.
MLP_MULTIPLES = (256, 128, 64, 32, 16)
TOLERANCE = 0.025


def get_config(arg=None):
  size = arg or 'small'
  if size not in variants.SIZES:
    raise ConfigError(f"janus.py: unknown size {size!r}; choose one of {sorted(variants.SIZES)}")
  path = os.path.join(os.path.dirname(__file__), f'{size}.py')
  dream = cfg_lib.load_experiment(path).get_config()
  c = variants.janus_like(cfg_lib.ConfigDict(dream.to_dict()))
  c.model.mlp_dim = matched_mlp_dim(c, dream)
  return c


def matched_mlp_dim(baseline, dream) -> int:
  """The MLP width that gives `baseline` the parameter count of `dream` (counts are
  linear in the width: two abstract inits give the line)."""
  from dvlm_jax.model.dvlm import param_count
  target = param_count(dream)
  c = cfg_lib.ConfigDict(baseline.to_dict())
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
