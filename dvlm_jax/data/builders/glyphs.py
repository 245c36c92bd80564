"""Glyphs made of small shapes (dvlm_jax/data/glyphs.py) as a data set.

There are 36 glyphs x 3 kinds x 7 colours = 756 pictures per image size. The
combinations are partitioned between the splits by caption hash
(`splits.split_by_caption`): validation and test ask for combinations never seen
in training (every glyph, kind and colour is seen, just not together), which
tests whether both readings compose. Record i of a split is drawn uniformly
from that split's combinations by its own generator (seed, split, i).
"""

from __future__ import annotations

import functools

from dvlm_jax.data import glyphs, splits
from dvlm_jax.data.builders import base


@functools.lru_cache(maxsize=len(glyphs.all_glyphs()))
def _png(glyph: glyphs.Glyph, size_px: int) -> bytes:
  """There are only 756 distinct pictures per size: encode each once."""
  return base.encode_png(glyphs.render(glyph, size_px))


class Glyphs(base.DvlmBuilder):
  """A large letter or digit drawn out of many small shapes; both answers in the labels."""

  BUILDER = 'glyphs'
  DESCRIPTION = ('Letters A-Z and digits 0-9 of a 5x7 font, each on-cell a small circle, '
                 'square or triangle of one colour; labels {"glyph", "kind", "colour"}. '
                 'Combinations partitioned between splits by hash.')
  OPTIONS = {'image_size': 64, 'seed': 0,
             'train_size': 20000, 'validation_size': 1000, 'test_size': 1000}

  def check_options(self):
    base.check_positive(self.BUILDER, self.options, ['seed', 'train_size', 'validation_size',
                                                     'test_size'])
    base.check_positive(self.BUILDER, self.options, ['image_size'], minimum=glyphs.MIN_SIZE_PX)

  def _plan(self):
    return base.procedural_plan(self.options)

  def _record(self, work):
    split, index = work
    glyph = splits.glyph_for(self.options['seed'], split, index)
    png = _png(glyph, self.options['image_size'])
    return base.make_record(f'glyphs/{split}/{index:06d}', [png], [glyphs.caption(glyph)],
                            labels=glyphs.to_dict(glyph))
