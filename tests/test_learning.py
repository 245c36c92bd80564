"""The whole chain learns, from caption to pixels: a tiny model trained for a few hundred
steps on a fixed set of one-shape scenes (`data.builtin_scenes`) draws the colour its
caption asks for, as the detector reads the picture back, well above chance. A bug anywhere between the caption's bytes, the layout, the
model, the loss, the sampler and the detector shows here as a score at chance."""

import json
import os

from dvlm_jax import train
from tests.conftest import tiny_config

STEPS = 300


def test_tiny_model_draws_the_colour_its_caption_asks_for(tmp_path):
  config = tiny_config(
      # Four one-shape scenes, pictures of 3 x 3 then 6 x 6 patches of 5 px: the demo's
      # image grid, on a world small enough to learn in the suite's time.
      data__builtin_scenes=4, data__builtin_max_shapes=1, data__builtin_text=0.0,
      data__builtin_generation=0.7,
      data__seq_len=160, data__batch_size=8,
      image__patch_size=5, image__scales=(3, 6), image__share_fully_masked=0.3,
      image__mask_ratio_min=0.5, image__mask_ratio_max=1.0,
      model__rope_axes='yx', model__image_pos_embed=True, loss__scale_weighting='scale',
      train__steps=STEPS, train__log_every=STEPS, checkpoint__every=STEPS,
      eval__at_end=True, eval__evaluators=('shapes',), eval__num_examples=8,
      eval__max_new_tokens=48)
  train.train(config, str(tmp_path))
  with open(os.path.join(tmp_path, 'eval', f'{STEPS}.json')) as f:
    record = json.load(f)
  colour = record['metrics']['shapes/generation/colour']
  chance = record['chance']['shapes/generation/colour']
  assert colour >= 2 * chance, (colour, chance)
