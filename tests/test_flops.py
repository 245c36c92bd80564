"""FLOP counting: attention pairs match the real masks; each stage counts its own tokens."""

import flax.linen as nn
import jax
import numpy as np

from dvlm_jax import variants
from dvlm_jax import contract
from dvlm_jax.data import layout
from dvlm_jax.model.dvlm import DreamVLM
from dvlm_jax.model.layers import ModelConfig
from dvlm_jax.training import flops
from tests.conftest import image_batch, tiny_config


def test_visible_pairs_equal_the_mask_of_every_scope():
  config = tiny_config()
  batch = image_batch(config)
  for stage in contract.stage_scopes(batch).values():
    mask = np.asarray(contract.make_mask(stage.scope, stage.scope, stage.end))
    np.testing.assert_array_equal(flops.visible_pairs(stage.scope, stage.end), mask.sum(-1))


def test_stage_counts_follow_the_switches():
  config = tiny_config()
  batch = image_batch(config)
  useful = flops.stage_flops(config, batch)
  assert set(useful) == set(flops.STAGES) and all(v > 0 for v in useful.values())
  assert flops.train_step_flops(config, batch) == flops.TRAIN_FACTOR * sum(useful.values())
  # Without out blocks those stages cost nothing and nothing else changes.
  # (the switch alone: the study's arm also gives the blocks' depth to the core)
  no_out = flops.stage_flops(variants.apply_ablation(tiny_config(), 'no_out_blocks'), batch)
  for stage, value in no_out.items():
    assert value == (0.0 if stage.endswith('_out') else useful[stage]), stage
  # Each stage's useful work is part of what the model computes today.
  implemented = flops.implemented_stage_flops(config, batch['segment_ids'].shape[0])
  assert all(useful[s] <= implemented[s] for s in flops.STAGES)
  # Bidirectional image blocks cost more attention than causal ones.
  causal = tiny_config('causal_images')
  cb = image_batch(causal)
  pairs = flops.visible_pairs(batch['segment_ids'], batch['attn_end'])
  assert flops.visible_pairs(cb['segment_ids'], cb['attn_end']).sum() < pairs.sum()


def xla_flops(fn, *args) -> float:
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  return float((cost[0] if isinstance(cost, list) else cost)['flops'])


def test_implemented_flops_are_what_xla_counts():
  """The block, head and diffusion-head formulas against XLA's cost analysis of the
  compiled forward pass (dense attention, layers unrolled: XLA counts a scanned body
  once). XLA also counts norms, softmax and rotary, so it may exceed the matmul count
  by a little, never fall short."""
  config = tiny_config(model__d_model=256, model__n_heads=4, model__n_kv_heads=2,
                       model__head_dim=64, model__mlp_dim=512, model__attention='xla',
                       model__scan_layers=False)
  batch = image_batch(config)
  model = DreamVLM(ModelConfig.from_config(config))
  params = nn.unbox(jax.eval_shape(lambda b: model.init(jax.random.key(0), b), batch))['params']
  rows, length = batch['segment_ids'].shape
  want = flops.implemented_stage_flops(config, rows)
  forward = xla_flops(lambda p, b: model.apply({'params': p}, b), params, batch)
  blocks_and_heads = sum(v for k, v in want.items() if k != 'diffusion_head')
  assert 1.0 <= forward / blocks_and_heads < 1.02, forward / blocks_and_heads
  # The diffusion head runs on the image-target slots of each row.
  slots = layout.LayoutConfig.from_config(config).capacities().image_targets
  shape = lambda *s: jax.ShapeDtypeStruct((rows, slots, *s), np.float32)
  denoise = xla_flops(lambda p, x, t, c: model.apply({'params': p}, x, t, c, method=DreamVLM.denoise),
                      params, shape(config.image.patch_size ** 2 * 3), shape(), shape(256))
  per_sample = want['diffusion_head'] / config.diffusion.noise_samples
  assert 1.0 <= denoise / per_sample < 1.05, denoise / per_sample


def test_peak_flops_known_for_gpus_unknown_for_cpu():
  class Dev:
    device_kind = 'NVIDIA H100 80GB HBM3'
  assert flops.peak_flops_per_device(Dev()) == 989e12
  Dev.device_kind = 'cpu'
  assert flops.peak_flops_per_device(Dev()) is None
