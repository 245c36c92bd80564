"""Held-out examples of the shapes and glyphs worlds, with their exact labels.

Where they come from follows the training data:

  data.source='tfds' and the set is built in data.data_dir
      the split's first n records by id (what the builder wrote: its seed,
      image size and shape count), labels from the record's JSON; scenes come
      from the shapes world data.mixture trains on (`shapes`, or `shapes_single`
      where the mixture names it);
  otherwise
      the same records computed by the builders' own record functions
      (`data.splits.scene_for`, `data.splits.glyph_for`, seed 0: what
      a default build writes), so nothing has to be built. With
      data.source='builtin' scenes have at most data.builtin_max_shapes shapes
      and are rendered at the model's finest resolution, like the training
      documents. The built-in source trains on the 'train' split's captions only,
      so these are captions the model never saw (except with data.builtin_scenes,
      a memorisation check: then they are the fixed training scenes).

Both are pure functions of (split, index): every call returns the same examples.
"""

from __future__ import annotations

import io
import json
import logging
import os

import numpy as np
from PIL import Image

from dvlm_jax.data.mixture import parse_mixture
from dvlm_jax import contract
from dvlm_jax.data import builtin
from dvlm_jax.data import glyphs as glyphs_lib
from dvlm_jax.data import shapes as shapes_lib
from dvlm_jax.data import splits

log = logging.getLogger(__name__)

_BUILDER_SEED = 0       # the builders' default seed: a default build holds these records
_BUILDER_IMAGE_SIZE = 64


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def _decode_png(data) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(bytes(data))).convert('RGB'), dtype=np.uint8)


def shapes_world(config) -> str:
  """The shapes-world data set the model trains on: the first one data.mixture names."""
  names = [name for name, _ in parse_mixture(config.data.mixture)]
  return next((name for name in names if name in shapes_lib.WORLDS), 'shapes')


class HeldOut:
  """`scenes(split, n)` and `glyphs(split, n)`: (label, uint8 [S, S, 3] image) pairs."""

  def __init__(self, config):
    self.source = str(config.data.source)
    self.data_dir = str(config.data.data_dir)
    self.fixed = []
    self.world = shapes_world(config)
    if self.source == 'builtin':
      mix = builtin.Mix.from_config(config)
      self.max_shapes = mix.max_shapes
      self.fixed = builtin.fixed_scenes(mix)   # data.builtin_scenes > 0: the training scenes
      self.image_size = contract.image_side(config)
    else:
      self.max_shapes = shapes_lib.WORLDS[self.world]
      self.image_size = _BUILDER_IMAGE_SIZE

  def _records(self, name: str, split: str, n: int) -> list[dict] | None:
    """The first n records of a built split, or None when the set is not built here."""
    if self.source != 'tfds':
      return None
    from dvlm_jax.data import builders  # imports TFDS: only for built data
    if not builders.is_built(self.data_dir, name):
      log.warning('%s is not built in %s: evaluating on the records a default build would '
                  'hold (computed, not read)', name, os.path.abspath(self.data_dir))
      return None
    source = builders.open_splits(self.data_dir, name)[split]
    if len(source) < n:
      raise ValueError(f'{name} {split} has {len(source)} records, eval.num_examples={n}')
    # TFDS stores records in a shuffled order; the builders' ids ('shapes/test/000007')
    # carry the record index, so the first n by id are the same examples at any size.
    records = sorted((source[i] for i in range(len(source))), key=lambda r: _text(r['id']))
    return records[:n]

  def scenes(self, split: str, n: int) -> list[tuple[shapes_lib.Scene, np.ndarray]]:
    records = self._records(self.world, split, n)
    if records is not None:
      return [(shapes_lib.scene_from_dict(json.loads(r['labels'])), _decode_png(r['images'][0]))
              for r in records]
    out = []
    for i in range(n):
      scene = (self.fixed[i % len(self.fixed)] if self.fixed
               else splits.scene_for(_BUILDER_SEED, split, i, self.max_shapes))
      out.append((scene, shapes_lib.render(scene, self.image_size)))
    return out

  def glyphs(self, split: str, n: int) -> list[tuple[glyphs_lib.Glyph, np.ndarray]]:
    records = self._records('glyphs', split, n)
    if records is not None:
      return [(glyphs_lib.from_dict(json.loads(r['labels'])), _decode_png(r['images'][0]))
              for r in records]
    size = max(self.image_size, glyphs_lib.MIN_SIZE_PX)
    out = []
    for i in range(n):
      glyph = splits.glyph_for(_BUILDER_SEED, split, i)
      out.append((glyph, glyphs_lib.render(glyph, size)))
    return out
