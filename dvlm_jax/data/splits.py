"""Which split a record belongs to, and the held-out records of the procedural worlds.

Pure functions of their inputs (no TFDS): the data set builders write these records,
and evaluation recomputes the same ones when nothing is built (`evaluation/heldout.py`).
Procedural captions are partitioned by hash, so no caption of the validation or test
split is ever trained on (an exact-answer test of composition, not memory).
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np

from dvlm_jax.data import glyphs, shapes

SPLITS = ('train', 'validation', 'test')
HELD_OUT = 0.05        # share of all procedural captions kept for validation, and for test
# One-shape scenes have 378 captions (3 kinds x 7 colours x 2 sizes x 9 cells): 5 % would
# leave 18 validation and 27 test compositions, too few to tell arms apart; at 15 % they
# are 62 and 58 (258 trained on; `compositions`).
HELD_OUT_ONE_SHAPE = 0.15
_MAX_DRAWS = 100_000   # per record; a split with no reachable caption is a bug, not a hang


def hash_fraction(key: str) -> float:
  """A stable number in [0, 1) per key: splits do not move when inputs are added."""
  digest = hashlib.sha256(key.encode('utf-8')).digest()
  return int.from_bytes(digest[:8], 'big') / 2.0**64


def split_by_hash(key: str, validation_fraction: float, test_fraction: float = 0.0) -> str:
  """train / validation / test by hash of `key`: the two fractions, the rest train."""
  u = hash_fraction(key)
  return ('validation' if u < validation_fraction else
          'test' if u < validation_fraction + test_fraction else 'train')


def split_by_caption(caption: str, held_out: float = HELD_OUT) -> str:
  """train / validation / test for a procedural caption: `held_out` of all captions each.
  Independent of the seed: every build holds out the same captions."""
  u = hash_fraction(caption)
  return 'validation' if u < held_out else 'test' if u < 2 * held_out else 'train'


def scene_split(scene: shapes.Scene) -> str:
  """The split of a scene's caption: one-shape captions hold out HELD_OUT_ONE_SHAPE each,
  the others HELD_OUT. A pure function of the caption, so every world agrees."""
  return split_by_caption(shapes.caption(scene),
                          HELD_OUT_ONE_SHAPE if len(scene.shapes) == 1 else HELD_OUT)


@functools.cache
def compositions(max_shapes: int = 1) -> dict[str, int] | None:
  """{split: distinct captions} of one-shape scenes (every one a world of one shape can
  show); None for larger worlds, whose hundreds of thousands of captions are not few."""
  if max_shapes != 1:
    return None
  counts = dict.fromkeys(SPLITS, 0)
  for kind in shapes.KINDS:
    for colour in shapes.COLOUR_NAMES:
      for size in shapes.SIZES:
        for row in shapes.ROWS:
          for col in shapes.COLS:
            counts[scene_split(shapes.Scene((shapes.Shape(kind, colour, size, row, col),)))] += 1
  return counts


def scene_for(seed: int, split: str, index: int, max_shapes: int) -> shapes.Scene:
  """The shapes scene of record `index` of `split`: its own generator (seed, split,
  index) draws scenes until one whose caption belongs to the split, so a record never
  changes when the split sizes do."""
  return draw_in_split(np.random.default_rng([seed, SPLITS.index(split), index]), split,
                       max_shapes=max_shapes)


def draw_in_split(rng: np.random.Generator, split: str, **sample) -> shapes.Scene:
  """`shapes.sample_scene(rng, **sample)` until the scene's caption belongs to `split`."""
  for _ in range(_MAX_DRAWS):
    scene = shapes.sample_scene(rng, **sample)
    if scene_split(scene) == split:
      return scene
  raise RuntimeError(f'no {split} scene in {_MAX_DRAWS} draws ({sample})')


@functools.cache
def split_glyphs(split: str) -> tuple[glyphs.Glyph, ...]:
  """The glyph combinations that belong to `split`, in a fixed order."""
  return tuple(g for g in glyphs.all_glyphs() if split_by_caption(glyphs.caption(g)) == split)


def glyph_for(seed: int, split: str, index: int) -> glyphs.Glyph:
  """The glyph of record `index` of `split`, uniform over the split's combinations."""
  choices = split_glyphs(split)
  rng = np.random.default_rng([seed, SPLITS.index(split), index])
  return choices[int(rng.integers(len(choices)))]
