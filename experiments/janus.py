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
from dvlm_jax import variants
from dvlm_jax.errors import ConfigError


def get_config(arg=None):
  size = arg or 'small'
  if size not in variants.SIZES:
    raise ConfigError(f"janus.py: unknown size {size!r}; choose one of {sorted(variants.SIZES)}")
  path = os.path.join(os.path.dirname(__file__), f'{size}.py')
  dream = cfg_lib.load_experiment(path).get_config()
  from dvlm_jax.model.dvlm import param_count   # jax: only when a config is built
  c = variants.janus_like(cfg_lib.ConfigDict(dream.to_dict()))
  c.model.mlp_dim = variants.matched_mlp_dim(c, param_count(dream))
  return c
