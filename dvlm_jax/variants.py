"""Model variants shared by the experiment files: sizes, the ablations of the seed essay's
claims, the Janus-like baseline, and sweep points.

  c = config.defaults(); variants.apply_size(c, 'small'); variants.ablate(c, 'single_copy')

  ablate(config, name)            `apply_ablation`; where it removes modality blocks, their
                                  per-token depth goes to the shared core and the MLP width
                                  restores the parameter count
  matched_mlp_dim(config, target) the MLP width that gives `config` `target` parameters

Removing the modality blocks alone would halve the small model's parameters and compare
separation with size; the Janus-like baseline (`experiments/janus.py`) is matched the
same way. Every experiment that takes an ablation argument goes through `ablate`, so
`small.py:no_modality_blocks` is the same model in a train command and in the study.
"""

from __future__ import annotations

import itertools
from typing import Any

import ml_collections

from dvlm_jax.errors import ConfigError

ConfigDict = ml_collections.ConfigDict


# Model (and matching data) sizes shared by the experiment files. Parameter counts are
# printed at start by the train command; base and b1 land near 300M and 1B.
SIZES = {
    'tiny': dict(d_model=64, n_heads=2, n_kv_heads=2, head_dim=32, mlp_dim=128, core_layers=2),
    'small': dict(d_model=128, n_heads=4, n_kv_heads=4, head_dim=32, mlp_dim=384, core_layers=4),
    'base': dict(d_model=1024, n_heads=16, n_kv_heads=16, head_dim=64, mlp_dim=4096,
                 core_layers=12),
    'b1': dict(d_model=2048, n_heads=16, n_kv_heads=8, head_dim=128, mlp_dim=5632,
               core_layers=15),
}


def apply_size(c: ConfigDict, size: str) -> ConfigDict:
  if size not in SIZES:
    raise ConfigError(f"unknown size {size!r}; choose one of {sorted(SIZES)}")
  c.model.update(SIZES[size])
  return c


# Each claim of the seed essay, as the overrides that switch it off in the dream config.
ABLATIONS = {
    'no_modality_blocks': {'model.text_in_layers': 0, 'model.image_in_layers': 0,
                           'model.text_out_layers': 0, 'model.imun_out_layers': 0,
                           'model.imgen_out_layers': 0},
    'no_in_blocks': {'model.text_in_layers': 0, 'model.image_in_layers': 0},
    'no_out_blocks': {'model.text_out_layers': 0, 'model.imun_out_layers': 0,
                      'model.imgen_out_layers': 0},
    'causal_images': {'image.attention': 'causal'},
    'no_masked_modelling': {'model.imun_head': False},
    'single_scale': {'image.scales': None},       # None: keep only the finest scale
    'single_copy': {'image.dual_copy': False},
    'no_diffusion': {'model.diffusion_head': False},
    'no_target_shift': {'image.target_shift': 0},
}


def apply_ablation(c: ConfigDict, name: str) -> ConfigDict:
  """Flips one seed claim off (see ABLATIONS and docs/configs.md)."""
  if name not in ABLATIONS:
    raise ConfigError(f"unknown ablation {name!r}; choose one of {sorted(ABLATIONS)}")
  for key, value in ABLATIONS[name].items():
    section, leaf = key.split('.')
    if key == 'image.scales':
      value = (c.image.scales[-1],)
    c[section][leaf] = value
  return c


def product(**axes) -> list[dict[str, Any]]:
  """Sweep points: the cartesian product of `key=[values]` (use '__' for '.' in keys)."""
  keys = [k.replace('__', '.') for k in axes]
  return [dict(zip(keys, values)) for values in itertools.product(*axes.values())]


def janus_like(c: ConfigDict) -> ConfigDict:
  """The Janus-like baseline: one shared stack, causal single-scale images, no MIM,
  next-patch generation through the diffusion head (continuous-token autoregression).

  The core gets the layers the modality blocks had, so every token passes through as
  many blocks as in the dream model of the same size (compare at equal depth).
  """
  m = c.model
  m.core_layers += modality_depth(m)
  apply_ablation(c, 'no_modality_blocks')
  c.model.imun_head = False
  c.image.attention = 'causal'
  c.image.scales = (c.image.scales[-1],)
  c.image.dual_copy = False
  c.image.targets = 'next_patch'
  c.image.target_shift = 1
  c.image.share_unmasked = 1.0
  c.image.share_fully_masked = 0.0
  return c


def modality_depth(m: ConfigDict) -> int:
  """Modality blocks a token passes outside the core (config.model): in, then out."""
  return (max(m.text_in_layers, m.image_in_layers)
          + max(m.text_out_layers, m.imun_out_layers, m.imgen_out_layers))


# The matched MLP width is the coarsest of these multiples (tile- and shard-friendly) that
# lands within TOLERANCE of the target parameter count.
MLP_MULTIPLES = (256, 128, 64, 32, 16)
TOLERANCE = 0.025


def matched_mlp_dim(config, target: int) -> int:
  """The MLP width that gives `config` `target` parameters (counts are linear in the
  width: two abstract inits give the line)."""
  from dvlm_jax.model.dvlm import param_count   # jax: only when a width is matched
  c = ConfigDict(config.to_dict())
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
  """Switches claim `name` off (`ABLATIONS`) at the parameters of `config`."""
  from dvlm_jax.model.dvlm import param_count
  depth = modality_depth(config.model)
  target = None
  if any(key.endswith('_layers') for key in ABLATIONS.get(name, {})):
    target = param_count(config)
  apply_ablation(config, name)
  if target is not None:
    config.model.core_layers += depth - modality_depth(config.model)
    config.model.mlp_dim = matched_mlp_dim(config, target)
  return config
