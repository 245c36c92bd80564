"""data.mixture: which built data sets a run mixes, and with which weights."""

from __future__ import annotations

from typing import Any

from dvlm_jax.errors import ConfigError


def parse_mixture(value: Any) -> tuple[tuple[str, float], ...]:
  """data.mixture -> ((name, weight), ...).

  Accepts pairs (('shapes', 1.0), ('twemoji', 2.0)), bare names ('shapes',
  'twemoji') with weight 1, 'name:weight' strings, or one string
  'shapes:1,twemoji:2' (the command-line friendly forms).
  """
  if isinstance(value, str):
    value = [v for v in value.split(',') if v.strip()]
  out = []
  for entry in value or ():
    if isinstance(entry, str):
      name, _, weight = entry.strip().partition(':')
      entry = (name, float(weight) if weight else 1.0)
    if not (isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[0], str)):
      raise ConfigError(f"data.mixture: entries are (name, weight) or 'name:weight', got {entry!r}")
    name, weight = entry[0].strip(), float(entry[1])
    if not name or not weight > 0:
      raise ConfigError(f'data.mixture: {entry!r} needs a name and a weight > 0')
    out.append((name, weight))
  if not out:
    raise ConfigError('data.mixture is empty: name at least one built data set')
  if len({n for n, _ in out}) != len(out):
    raise ConfigError(f'data.mixture names a data set twice: {value!r}')
  return tuple(out)
