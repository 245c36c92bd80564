"""The whole chain learns, from caption to pixels: a tiny model trained for a few hundred
steps on four fixed one-shape scenes (`data.builtin_scenes`) draws the colour and the cell
each caption asks for, as the detector reads the picture back. A bug anywhere
between the caption's tokens, the layout, the model, the loss, the sampler and the
detector shows here as pictures at chance (1 in 7 for a colour)."""

import os

from dvlm_jax import config as cfg_lib
from dvlm_jax import train
from dvlm_jax.data import builtin, shapes
from dvlm_jax.evaluation import detector
from dvlm_jax.inference.api import VLM
from tests.conftest import ROOT

SMALL = os.path.join(ROOT, 'experiments', 'small.py')
STEPS = 400
OVERRIDES = [
    # small.py's recipe (its tokenizer, image grid, diffusion objective), a tiny model
    'model.d_model=64', 'model.n_heads=2', 'model.n_kv_heads=2', 'model.mlp_dim=128',
    'model.core_layers=2', 'diffusion.width=64', 'data.batch_size=8',
    # generation only, on four fixed one-shape scenes
    'data.source=builtin', 'data.builtin_scenes=4', 'data.builtin_max_shapes=1',
    'data.builtin_text=0', 'data.generation_share=1', 'image.share_fully_masked=1',
    'image.share_unmasked=0', 'image.prompted_fully_masked=0',   # every image fully masked
    'optim.lr=3e-3', 'optim.warmup_steps=20', f'train.steps={STEPS}',
    f'train.log_every={STEPS}', f'checkpoint.every={STEPS}', 'eval.at_end=False',
]


def test_a_tiny_model_draws_what_its_prompts_name(tmp_path):
  config = cfg_lib.load(SMALL, OVERRIDES)
  train.train(config, str(tmp_path))
  vlm = VLM.from_workdir(str(tmp_path))
  scenes = builtin.fixed_scenes(builtin.Mix.from_config(config))
  asked = [scene.shapes[0] for scene in scenes]
  out = vlm.generate_images([shapes.caption(s) for s in scenes],
                            cfg_scale=config.eval.cfg_scale, steps=config.eval.sample_steps)
  drawn = [detector.detect(o.image) for o in out]
  read = [f'{shapes.describe(a)} -> {[shapes.describe(s) for s in d]}' for a, d in zip(asked, drawn)]
  found = [d[0] if len(d) == 1 else None for d in drawn]
  assert sum(f is not None and f.colour == a.colour for a, f in zip(asked, found)) >= 3, read
  assert sum(f is not None and f.cell == a.cell for a, f in zip(asked, found)) >= 3, read
