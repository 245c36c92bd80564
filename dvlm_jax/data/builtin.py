"""The built-in source: shapes-world records computed on demand, no files, no download.

`data.source='builtin'` reads this source through the same Grain pipeline as the built
data sets (pipeline.py: per-process slices, shuffle, decode, packing, exact resume), so
the train command, the tests and smoke runs work anywhere with the one data path.

Record i is a pure function of (data.seed, i), in the builders' record format
(`builders.base.make_record`), with the image already decoded:
  caption pair  one image and its caption; the pipeline lays it out caption-first
                ('draw: <caption>', image: generation) with probability
                data.generation_share, else image-first (understanding)
  text          a two-shape scene told in words only, with its relation sentence
                (share data.builtin_text): keeps the LM honest on plain text

Scenes are the training split's (`splits.scene_for`): the captions that the shapes
builder holds out for validation and test are never trained on here either.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dvlm_jax import contract
from dvlm_jax.data import shapes, splits

GENERATION_PROMPT = 'draw: '
LENGTH = 2**31 - 1   # records in the source: endless for any run, and a valid index range


@dataclasses.dataclass(frozen=True)
class Mix:
  """What the records hold (config data.builtin_*, where the defaults live)."""
  text: float          # share of text-only records
  max_shapes: int
  scenes: int          # > 0: every image is one of this many fixed scenes (`fixed_scenes`)

  @classmethod
  def from_config(cls, config) -> 'Mix':
    data = config.data
    return cls(text=float(data.builtin_text), max_shapes=int(data.builtin_max_shapes),
               scenes=int(data.builtin_scenes))


_FIXED_SCENES_SEED = 1234


def fixed_scenes(mix: Mix) -> list[shapes.Scene]:
  """The small fixed world of `data.builtin_scenes` (a memorisation check: training and
  the held-out probes see the same scenes); independent of data.seed."""
  rng = np.random.default_rng(_FIXED_SCENES_SEED)
  return [shapes.sample_scene(rng, max_shapes=mix.max_shapes) for _ in range(mix.scenes)]


class BuiltinSource:
  """Random-access records (len, getitem) of the shapes world for Grain; picklable."""

  def __init__(self, config):
    self.mix = Mix.from_config(config)
    self.seed = int(config.data.seed)
    self.image_px = contract.image_side(config)
    self.fixed = fixed_scenes(self.mix)

  def __len__(self) -> int:
    return LENGTH

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    if not 0 <= index < LENGTH:
      raise IndexError(index)
    rid = f'builtin/{index}'
    rng = np.random.default_rng([self.seed, 7, index])   # 7: not a split of scene_for
    if rng.random() < self.mix.text:
      return {'id': rid, 'items': 'T', 'images': [],
              'texts': [shapes.caption(splits.draw_in_split(
                  rng, 'train', max_shapes=2, min_shapes=2, relation_prob=1.0))]}
    if self.fixed:
      scene = self.fixed[int(rng.integers(len(self.fixed)))]
    else:
      scene = splits.scene_for(self.seed, 'train', index, self.mix.max_shapes)
    return {'id': rid, 'items': '', 'images': [shapes.render(scene, self.image_px)],
            'texts': [shapes.caption(scene)]}

  def __repr__(self) -> str:
    return f'BuiltinSource(seed={self.seed}, {self.mix})'
