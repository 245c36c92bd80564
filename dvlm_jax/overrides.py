"""Command-line overrides of a config: `--config.a.b=value`, typed like the existing value.

  apply_overrides(config, ['model.core_layers=4', 'image.scales=2,4'])

Unknown keys fail with `ConfigError` naming the key (and the closest known one); the
config is validated after the overrides.
"""

from __future__ import annotations

import ast
import difflib
from typing import Any, Sequence

import ml_collections

from dvlm_jax.errors import ConfigError
from dvlm_jax.validation import validate

ConfigDict = ml_collections.ConfigDict


def apply_overrides(config: ConfigDict, overrides: Sequence[str], *, only: str = '') -> None:
  """Applies 'a.b=value' items (typed like the existing values), then validates.

  `only`: a key prefix the overrides must have (e.g. 'eval.' when evaluating a run,
  whose model and data are fixed).
  """
  for item in overrides:
    key, sep, value = item.partition('=')
    if not sep:
      raise ConfigError(f'override {item!r} must look like key=value')
    if only and not key.startswith(only):
      raise ConfigError(f'--config.{key}: only {only}* keys can be changed here')
    set_key(config, key, value)
  validate(config)


def set_key(config: ConfigDict, dotted: str, text: str) -> None:
  """Sets config[dotted] from its command-line text, typed like the existing value."""
  *parents, leaf = dotted.split('.')
  node, walked = config, []
  for name in parents + [leaf]:
    keys = list(node.keys()) if isinstance(node, ConfigDict) else []
    if name not in keys:
      where = '.'.join(walked) or '<top>'
      hint = difflib.get_close_matches(name, keys, n=1)
      hint = f"; did you mean '{'.'.join(walked + hint)}'?" if hint else ''
      raise ConfigError(f"unknown config key '{dotted}' (no '{name}' under {where}){hint}")
    walked.append(name)
    if name != leaf:
      node = node[name]
  node[leaf] = _parse_like(node[leaf], text, dotted)


def _parse_tuple(current, text: str) -> tuple:
  """A tuple from the forms people type: a Python literal ('(1, 2)', "'a:1','b:2'"), or
  bare comma-separated words ('shapes', 'shapes,glyphs', 'shapes:1,glyphs:2'). Items of
  a tuple of (name, weight) pairs may be written 'name:weight'."""
  text = text.strip()
  try:
    value = ast.literal_eval(text if text.startswith(('(', '[')) else f'({text},)')
  except (ValueError, SyntaxError):
    value = tuple(w.strip() for w in text.split(',') if w.strip())
  value = tuple(value)
  pairs = bool(current) and all(isinstance(x, (tuple, list)) and len(x) == 2 for x in current)
  if pairs and all(isinstance(x, str) for x in value):   # 'name:weight' -> (name, weight)
    out = []
    for item in value:
      name, sep, weight = item.partition(':')
      out.append((name, float(weight) if sep else 1.0))
    return tuple(out)
  return value


def _parse_like(current: Any, text: str, key: str) -> Any:
  try:
    if isinstance(current, bool):
      if text.lower() in ('1', 'true', 'yes'):
        return True
      if text.lower() in ('0', 'false', 'no'):
        return False
      raise ValueError(text)
    if isinstance(current, int):
      return int(text)
    if isinstance(current, float):
      return float(text)
    if isinstance(current, (tuple, list)):
      return _parse_tuple(current, text)
    if current is None:
      try:
        return ast.literal_eval(text)
      except (ValueError, SyntaxError):
        return text
    return type(current)(text)
  except (ValueError, SyntaxError) as e:
    example = (" (a tuple: --config.KEY=a,b or --config.KEY=\"'a','b'\")"
               if isinstance(current, (tuple, list)) else '')
    raise ConfigError(f"config key '{key}': cannot read {text!r} as "
                      f'{type(current).__name__}{example}') from e
