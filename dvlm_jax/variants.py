"""Model variants shared by the experiment files: sizes, the ablations of the seed essay's
claims, the Janus-like baseline, and sweep points.

  c = config.defaults(); variants.apply_size(c, 'small'); variants.apply_ablation(c, 'single_copy')
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
  m.core_layers += (max(m.text_in_layers, m.image_in_layers)
                    + max(m.text_out_layers, m.imun_out_layers, m.imgen_out_layers))
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
