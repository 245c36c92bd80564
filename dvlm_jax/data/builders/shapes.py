"""The procedural shapes world (dvlm_jax/data/shapes.py) as a data set.

Record i of a split is a pure function of (seed, split, i): its own generator
draws scenes until one whose caption belongs to the split, so a record never
changes when the split sizes do. Captions are partitioned by hash between the
splits (`splits.split_by_caption`), so validation and test hold only scenes the
model was not trained on in those words. Labels are the scene as JSON
(`shapes.scene_to_dict`), from which the caption is exactly recoverable.
"""

from __future__ import annotations

from dvlm_jax.data import shapes, splits
from dvlm_jax.data.builders import base


class Shapes(base.DvlmBuilder):
  """Coloured shapes on a 3x3 grid with compositional captions."""

  BUILDER = 'shapes'
  DESCRIPTION = ('Procedural shapes world: 1..max_shapes coloured shapes on a 3x3 grid, '
                 'exact compositional captions, labels = the scene as JSON. Deterministic '
                 'from the seed; captions partitioned between splits by hash.')
  OPTIONS = {'image_size': 64, 'seed': 0, 'max_shapes': 3,
             'train_size': 20000, 'validation_size': 1000, 'test_size': 1000}

  def check_options(self):
    base.check_positive(self.BUILDER, self.options, ['seed', 'train_size', 'validation_size',
                                                     'test_size'])
    base.check_positive(self.BUILDER, self.options, ['image_size'], minimum=8)
    if not 1 <= self.options['max_shapes'] <= 9:
      raise base.OptionError(f'shapes --max_shapes must lie in 1..9, got '
                             f'{self.options["max_shapes"]}')

  def _plan(self):
    return base.procedural_plan(self.options)

  def _record(self, work):
    split, index = work
    o = self.options
    scene = splits.scene_for(o['seed'], split, index, o['max_shapes'])
    png = base.encode_png(shapes.render(scene, o['image_size']))
    return base.make_record(f'shapes/{split}/{index:06d}', [png], [shapes.caption(scene)],
                            labels=shapes.scene_to_dict(scene))
