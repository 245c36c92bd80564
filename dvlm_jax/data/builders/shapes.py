"""The procedural shapes world (dvlm_jax/data/shapes.py) as a data set.

Record i of a split is a pure function of (seed, split, i): its own generator
draws scenes until one whose caption belongs to the split, so a record never
changes when the split sizes do. Captions are partitioned by hash between the
splits (`splits.scene_split`: 15 % each of one-shape captions, 5 % of others), so validation and test hold only scenes the
model was not trained on in those words. Labels are the scene as JSON
(`shapes.scene_to_dict`), from which the caption is exactly recoverable.
"""

from __future__ import annotations

import tensorflow_datasets as tfds

from dvlm_jax.data import shapes, splits
from dvlm_jax.data.builders import base


class Shapes(base.DvlmBuilder):
  """Coloured shapes on a 3x3 grid with compositional captions."""

  # 1.1.0: one-shape captions hold out 15 % each for validation and test (was 5 %).
  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {'1.0.0': 'First release of the dvlm_jax record format.',
                   '1.1.0': 'One-shape captions: 15 % validation, 15 % test.'}

  BUILDER = 'shapes'
  DESCRIPTION = ('Procedural shapes world: 1..max_shapes coloured shapes on a 3x3 grid, '
                 'exact compositional captions, labels = the scene as JSON. Deterministic '
                 'from the seed; captions partitioned between splits by hash.')
  OPTIONS = {'image_size': 64, 'seed': 0, 'max_shapes': shapes.WORLDS['shapes'],
             'train_size': 20000, 'validation_size': 1000, 'test_size': 1000}

  @property
  def max_shapes(self) -> int:
    return self.options['max_shapes']

  def check_options(self):
    base.check_positive(self.BUILDER, self.options, ['seed', 'train_size', 'validation_size',
                                                     'test_size'])
    base.check_positive(self.BUILDER, self.options, ['image_size'], minimum=8)
    if not 1 <= self.max_shapes <= 9:
      raise base.OptionError(f'{self.BUILDER} --max_shapes must lie in 1..9, got '
                             f'{self.max_shapes}')

  def _plan(self):
    return base.procedural_plan(self.options)

  def _record(self, work):
    split, index = work
    o = self.options
    scene = splits.scene_for(o['seed'], split, index, self.max_shapes)
    png = base.encode_png(shapes.render(scene, o['image_size']))
    return base.make_record(f'{self.BUILDER}/{split}/{index:06d}', [png],
                            [shapes.caption(scene)], labels=shapes.scene_to_dict(scene))


class SingleShapes(Shapes):
  """The shapes world with one shape per picture: the CPU demo's world (experiments/small.py).

  Every attribute of a shape (kind, colour, size, cell) is still drawn, so a model has to
  read and draw all four; what it is spared is binding phrases to cells among several
  shapes, which the 2.3M-parameter demo model does not reach in `make train`'s minutes
  (docs/findings.md). Test captions are held out as for shapes (27 of the 378).
  """

  BUILDER = 'shapes_single'
  DESCRIPTION = ('Procedural shapes world with one coloured shape per picture on a 3x3 '
                 'grid; otherwise as shapes.')
  OPTIONS = {k: v for k, v in Shapes.OPTIONS.items() if k != 'max_shapes'}
  max_shapes = shapes.WORLDS['shapes_single']
