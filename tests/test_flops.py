"""FLOP counting: attention pairs match the real masks; each stage counts its own tokens."""

import numpy as np

from dvlm_jax.model import attention
from dvlm_jax.training import flops
from tests.conftest import image_batch, tiny_config


def test_visible_pairs_equal_the_mask_of_every_scope():
  config = tiny_config()
  batch = image_batch(config)
  own = np.broadcast_to(np.arange(batch['segment_ids'].shape[1]), batch['segment_ids'].shape)
  text_scope = np.where(batch['modality'] == 1, batch['segment_ids'], 0)
  for scope, end in [(batch['segment_ids'], batch['attn_end']), (text_scope, own),
                     (batch['image_id'], batch['attn_end'])]:
    mask = np.asarray(attention.make_mask(scope, scope, end))
    np.testing.assert_array_equal(flops.visible_pairs(scope, end), mask.sum(-1))


def test_stage_counts_follow_the_switches():
  config = tiny_config()
  batch = image_batch(config)
  full = flops.train_step_flops(config, batch)
  assert full > 0
  # Removing the out blocks removes exactly their block FLOPs.
  no_out = tiny_config('no_out_blocks')
  m = config.model
  n_text = np.count_nonzero(batch['text_weights'] > 0)
  n_img = np.count_nonzero(batch['image_weights'] > 0)
  keys = np.count_nonzero(batch['segment_ids'])
  pairs = flops.visible_pairs(batch['segment_ids'], batch['attn_end'])
  def block(nq, pq):
    return flops._block_flops(m, nq, keys, pq)
  expected = flops.TRAIN_FACTOR * (
      block(n_text, pairs[batch['text_weights'] > 0].sum())
      + 2 * block(n_img, pairs[batch['image_weights'] > 0].sum()))
  assert abs((full - flops.train_step_flops(no_out, batch)) - expected) < 1e-6 * full
  # Bidirectional image blocks cost more attention than causal ones.
  causal = tiny_config('causal_images')
  cb = image_batch(causal)
  assert flops.visible_pairs(cb['segment_ids'], cb['attn_end']).sum() < pairs.sum()


def test_peak_flops_known_for_gpus_unknown_for_cpu():
  class Dev:
    device_kind = 'NVIDIA H100 80GB HBM3'
  assert flops.peak_flops_per_device(Dev()) == 989e12
  Dev.device_kind = 'cpu'
  assert flops.peak_flops_per_device(Dev()) is None
