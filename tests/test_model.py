"""The model: no leakage through any path, every seed switch builds, a tiny model overfits.

Mixture of experts: routing unit tests, leakage with capacity drops, chunked decoding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dvlm_jax import config as cfg_lib
from dvlm_jax.errors import ConfigError
from dvlm_jax.validation import validate
from dvlm_jax import variants
from dvlm_jax import contract
from dvlm_jax.data import layout
from dvlm_jax.training import losses, optimizer as optim_lib, step as step_lib
from dvlm_jax import sharding
from dvlm_jax.model import layers, streams
from dvlm_jax.model.dvlm import DreamVLM
from tests.conftest import build, image_batch, tiny_config

TEXT, IMAGE = 1, 2


def every_position(batch):
  """Heads read at every position of the row: per-position outputs, for leakage tests."""
  rows, length = batch['segment_ids'].shape
  index = jnp.broadcast_to(jnp.arange(length), (rows, length))
  return {'text': index, 'image': index}


@pytest.fixture(scope='module')
def setup():
  config = tiny_config()
  batch = image_batch(config)
  model, params = build(config, batch)
  forward = jax.jit(lambda b: model.apply({'params': params}, b, return_hidden=True,
                                          heads=every_position(b)))
  return config, batch, forward


def flat_outputs(out):
  """Every per-position output of the model: heads and all stage hidden states."""
  leaves = {'text_logits': out['text_logits'], 'patch_pred': out['patch_pred'],
            'imgen_cond': out['imgen_cond']}
  leaves.update({f'hidden/{k}': v for k, v in out['hidden'].items()})
  return {k: np.asarray(v[0], np.float32) for k, v in leaves.items()}   # row 0 holds the image


def blocks(batch):
  """(start, end, scale, copy) of every image block in row 0."""
  copy, scale = batch['copy'][0], batch['scale'][0]
  is_img = batch['modality'][0] == IMAGE
  out, i = [], 0
  while i < len(copy):
    if is_img[i]:
      j = i
      while j + 1 < len(copy) and is_img[j + 1] and copy[j + 1] == copy[i] and scale[j + 1] == scale[i]:
        j += 1
      out.append((i, j, int(scale[i]), int(copy[i])))
      i = j + 1
    else:
      i += 1
  return out


def perturbed(batch, positions, seed=1):
  b = {k: v.copy() for k, v in batch.items()}
  rng = np.random.default_rng(seed)
  for p in positions:
    if b['modality'][0, p] == IMAGE:
      b['patches'][0, p] = rng.uniform(-1, 1, b['patches'].shape[-1])
    else:
      b['tokens'][0, p] = (b['tokens'][0, p] + 1 + rng.integers(200)) % 256 + 16
  return b


def max_diff(a, b, index):
  return {k: float(np.max(np.abs(a[k][index] - b[k][index]))) for k in a}


def test_layout_has_dual_copies(setup):
  _, batch, _ = setup
  found = {(s, c) for _, _, s, c in blocks(batch)}
  assert found == {(1, 1), (1, 2), (2, 1), (2, 2)}


def test_unmasked_copy_never_reaches_masked_copy_or_earlier(setup):
  _, batch, forward = setup
  base = flat_outputs(forward(batch))
  for start, end, scale, copy in blocks(batch):
    if copy != 2:
      continue
    out = flat_outputs(forward(perturbed(batch, range(start, end + 1))))
    before = max_diff(base, out, slice(0, start))
    assert max(before.values()) < 1e-6, (scale, before)
    after = max_diff(base, out, slice(start, end + 1))
    assert after['hidden/core'] > 1e-3            # the change did reach the model


@pytest.mark.parametrize('seed', range(4))
def test_later_tokens_never_change_earlier_outputs(setup, seed):
  _, batch, forward = setup
  base = flat_outputs(forward(batch))
  rng = np.random.default_rng(seed)
  valid = np.flatnonzero((batch['segment_ids'][0] > 0) & ~batch['is_masked'][0])
  p = int(rng.choice(valid[valid > 4]))
  # An image token may be seen by its own block; everything before the block may not.
  start = p
  for s, e, _, _ in blocks(batch):
    if s <= p <= e and batch['image_id'][0, p] and batch['attn_end'][0, p] > p:
      start = s
  out = flat_outputs(forward(perturbed(batch, [p], seed)))
  diffs = max_diff(base, out, slice(0, start))
  assert max(diffs.values()) < 1e-6, (p, diffs)
  assert max(max_diff(base, out, slice(start, None)).values()) > 1e-4


def test_one_image_token_changes_its_whole_block(setup):
  _, batch, forward = setup
  base = flat_outputs(forward(batch))
  masked = batch['is_masked'][0]
  for start, end, scale, copy in blocks(batch):
    visible = [p for p in range(start, end + 1) if not masked[p]]
    p = visible[len(visible) // 2]
    out = flat_outputs(forward(perturbed(batch, [p])))
    for name in ('hidden/image_in', 'hidden/core'):
      per_position = np.max(np.abs(base[name][start:end + 1] - out[name][start:end + 1]), axis=-1)
      assert np.all(per_position > 1e-7), (scale, copy, name, per_position)


def test_text_in_ignores_images_and_image_in_ignores_text(setup):
  _, batch, forward = setup
  base = flat_outputs(forward(batch))
  is_img = batch['modality'][0] == IMAGE
  is_text = batch['modality'][0] == TEXT
  out = flat_outputs(forward(perturbed(batch, np.flatnonzero(is_img))))
  assert np.max(np.abs(base['hidden/text_in'][is_text] - out['hidden/text_in'][is_text])) < 1e-6
  assert np.max(np.abs(base['hidden/core'][is_text] - out['hidden/core'][is_text])) > 1e-4
  out = flat_outputs(forward(perturbed(batch, np.flatnonzero(is_text))))
  assert np.max(np.abs(base['hidden/image_in'][is_img] - out['hidden/image_in'][is_img])) < 1e-6


VARIANTS = [None, 'janus', 'moe', 'demo'] + sorted(variants.ABLATIONS)
# The tiny model with 4 experts (top-2) in each core layer, groups of 64 of its 256 positions.
MOE = dict(model__moe_experts=4, model__moe_top_k=2, model__moe_group_size=64)


def full_row_reference(model, params, batch):
  """The model as it ran before each stage ran on its own positions: every stage over
  the whole row under the dense mask, stage outputs selected with `where`, out stacks
  as self-attention over the row. Per-position outputs [B, L, ...]."""
  m = model.bind({'params': params})
  c = model.cfg
  pos, seg, end = batch['positions'], batch['segment_ids'], batch['attn_end']
  own = jnp.broadcast_to(jnp.arange(seg.shape[1]), seg.shape)
  rule = lambda scope, q_end: contract.make_mask(scope, scope, q_end)
  is_text = batch['modality'] == TEXT
  text_in = m.text_in(m.embed_text(batch['tokens']), pos, rule(jnp.where(is_text, seg, 0), own))
  image_in = m.image_in(m.embed_image(batch), pos, rule(batch['image_id'], end))
  x = jnp.where((batch['modality'] == IMAGE)[..., None], image_in, text_in)
  doc = rule(seg, end)
  core = m.core(x, pos, doc, valid=seg > 0)
  out = {'text_logits': m.lm_head(m.text_norm(m.text_out(core, pos, doc))).astype(jnp.float32)}
  if c.imun_head:
    out['patch_pred'] = m.patch_head(m.imun_norm(m.imun_out(core, pos, doc))).astype(jnp.float32)
  if c.diffusion_head:
    out['imgen_cond'] = m.imgen_norm(m.imgen_out(core, pos, doc))
  return out


def reference_losses(model, params, batch, rng, cfg, ref):
  """compute_loss's parts over the reference's per-position outputs; the diffusion noise
  is drawn per image-target slot (the rows' loss positions in order), as the loss draws it."""
  w_text, w_image = batch['text_weights'], batch['image_weights']
  logp = jax.nn.log_softmax(ref['text_logits'], axis=-1)
  nll = -jnp.take_along_axis(logp, batch['text_targets'][..., None], axis=-1)[..., 0]
  out = {'text': losses.weighted_mean(nll, w_text)}
  targets = batch['image_targets']
  if 'patch_pred' in ref:
    target = losses.normalize_patches(targets) if cfg.imun_norm_pix else targets
    err = jnp.mean(jnp.square(ref['patch_pred'] - target), axis=-1)
    out['imun'] = losses.weighted_mean(err, w_image)
  if 'imgen_cond' in ref:
    slots = streams.Stream.select(jnp.asarray(w_image > 0), model.cfg.capacities[3])
    cond = slots.gather(ref['imgen_cond'])
    denoise = lambda x_t, t: model.apply({'params': params}, x_t, t, cond, method=DreamVLM.denoise)
    drawn = targets - batch['image_base'] if 'image_base' in batch else targets
    per_slot = cfg.objective.loss(denoise, slots.gather(drawn), rng)
    out['imgen'] = losses.weighted_mean(per_slot, slots.gather(w_image, fill=0.0))
  return out


def tight_capacities(config, batch):
  """The config with each per-row capacity at the batch's own largest count."""
  config = cfg_lib.ConfigDict(config)
  for key, count in zip(contract.CAPACITY_KEYS, layout.row_counts(batch).max(axis=0)):
    config.data[key.split('.')[1]] = max(int(count), 1)
  return config


@pytest.mark.parametrize('variant', VARIANTS)
def test_variant_builds_with_finite_loss_and_grads(variant):
  if variant == 'janus':
    config = variants.janus_like(tiny_config())
    validate(config)
  elif variant == 'moe':
    config = tiny_config(**MOE)
  elif variant == 'demo':   # the switches of the make-train recipe (experiments/small.py)
    config = tiny_config(model__rope_axes='yx', model__image_pos_embed=True,
                         loss__scale_weighting='scale', diffusion__noise_samples=4,
                         image__mask_ratio_min=0.5, image__mask_ratio_max=1.0,
                         diffusion__target='residual', diffusion__objective='flow_x0_mse',
                         diffusion__time_shift=3.0, model__embed_init_std=1.0,
                         image__prompted_fully_masked=1.0, data__generation_share=0.7,
                         data__prompt_text_weight=0.3)
  else:
    config = tiny_config(variant)
  batch = image_batch(config)
  if variant is None:   # streams filled to the last slot: nothing to spare, nothing dropped
    config = tight_capacities(config, batch)
    assert image_batch(config)['tokens'].tolist() == batch['tokens'].tolist()
  model, params = build(config, batch)
  # adaLN-Zero starts with zero modulation/output kernels, which pass no gradient to the
  # condition at step 0; nudge them as one optimizer step would, so liveness is testable.
  nudge = jax.random.key(3)
  params = jax.tree_util.tree_map(
      lambda x: x + 1e-3 * jax.random.normal(nudge, x.shape) if not np.any(x) else x, params)
  loss_cfg = losses.LossConfig.from_config(config)
  rng = jax.random.key(1)

  @jax.jit
  def run(params):
    value_and_grad = jax.value_and_grad(
        lambda p: losses.compute_loss(model, p, batch, rng, loss_cfg), has_aux=True)
    ref = full_row_reference(model, params, batch)
    # The heads' outputs slot by slot for one variant (every one: the loss parts below).
    out = model.apply({'params': params}, batch) if variant is None else None
    return value_and_grad(params), out, ref, reference_losses(model, params, batch, rng,
                                                              loss_cfg, ref)
  ((loss, metrics), grads), out, ref, ref_losses = run(params)
  assert np.isfinite(float(loss))
  # Each stage on its own positions computes what the full row computed there.
  for name, value in ref_losses.items():
    np.testing.assert_allclose(float(metrics[name]), float(value), rtol=1e-5, err_msg=name)
  assert set(ref_losses) == {k for k in ('text', 'imun', 'imgen') if k in metrics}
  for name, stream in (('text_logits', 'text_stream'), ('patch_pred', 'image_stream'),
                       ('imgen_cond', 'image_stream')):
    if out is None:
      break
    at = out[stream]
    want = np.flatnonzero(batch['text_weights' if stream == 'text_stream' else 'image_weights'])
    rows, index = np.nonzero(np.asarray(at.valid))
    assert len(rows) == len(want)          # every loss position has a slot
    got, full = np.asarray(out[name]), np.asarray(ref[name])
    np.testing.assert_allclose(got[rows, index], full[rows, np.asarray(at.index)[rows, index]],
                               atol=2e-5, err_msg=name)
  for name, value in metrics.items():
    assert np.isfinite(float(value)), name
  leaves = jax.tree_util.tree_leaves_with_path(grads)
  assert all(np.all(np.isfinite(g)) for _, g in leaves)
  # Every parameter gets gradient signal: no dead module in any variant.
  dead = [jax.tree_util.keystr(path) for path, g in leaves if not np.any(g)]
  assert not dead, dead
  assert float(metrics['text_tokens']) > 0 and float(metrics['image_targets']) > 0
  if config.model.imun_head:
    assert float(metrics['imun']) > 0
  else:
    assert 'imun' not in metrics and 'imun_out' not in params
  if config.model.diffusion_head:
    assert float(metrics['imgen']) > 0
  else:
    assert 'imgen' not in metrics and 'denoiser' not in params
  if config.model.text_in_layers == 0:
    assert 'text_in' not in params
  if variant == 'moe':
    assert 'moe' in params['core']['layers'] and 'mlp' not in params['core']['layers']
    assert 'moe' not in params['text_out']['layers']        # modality blocks stay dense
    assert float(metrics['moe_aux']) > 0.5                 # ~1 for near-uniform routing
    assert 0.0 <= float(metrics['moe_dropped']) < 1.0
    text_only = float(metrics['text']) + float(metrics['imun']) + float(metrics['imgen'])
    np.testing.assert_allclose(float(loss), text_only + 0.01 * float(metrics['moe_aux']),
                               rtol=1e-5)
  else:
    assert 'moe_aux' not in metrics


def test_tiny_model_overfits_a_fixed_batch():
  config = tiny_config()
  config.optim.lr = 3e-3
  config.optim.warmup_steps = 20
  config.optim.weight_decay = 0.0
  config.train.steps = 300
  batch = image_batch(config)
  ctx = sharding.Context.from_config(config)
  model, _ = build(config, batch)
  optimizer = optim_lib.make_optimizer(config)
  state, shardings = step_lib.init_state(model, optimizer, batch, jax.random.key(0), ctx)
  train_step = step_lib.JittedStep(
      step_lib.make_train_step(model, optimizer, losses.LossConfig.from_config(config),
                               optim_lib.learning_rate_schedule(config)),
      shardings, ctx)
  history = []
  for _ in range(config.train.steps):
    state, metrics = train_step(state, batch, jax.random.key(7))
    history.append({k: float(metrics[k]) for k in ('text', 'imun', 'imgen')})
  first = history[0]
  last = {k: np.mean([h[k] for h in history[-20:]]) for k in first}
  for k in first:
    assert last[k] < 0.5 * first[k], (k, first[k], last[k])


# ------------------------------------------------------------------------ mixture of experts

def test_padding_takes_no_capacity_and_overflow_is_dropped_in_position_order():
  # Four tokens that all want expert 0 first; one slot per expert; token 0 is padding.
  logits = jnp.asarray([[5.0, 1.0, 0.0]] * 4)
  valid = jnp.asarray([False, True, True, True])
  combine, dispatch, stats = layers.route(logits, valid, top_k=1, capacity=1)
  np.testing.assert_array_equal(np.asarray(dispatch[:, 0, 0]), [0, 1, 0, 0])
  assert float(jnp.sum(dispatch[0])) == 0 and float(jnp.sum(combine[0])) == 0
  np.testing.assert_allclose(float(stats['dropped']), 2 / 3)   # of the 3 valid tokens
  # With the padding valid, it is the earliest token and takes the slot.
  _, dispatch, _ = layers.route(logits, jnp.ones(4, bool), top_k=1, capacity=1)
  np.testing.assert_array_equal(np.asarray(dispatch[:, 0, 0]), [1, 0, 0, 0])


def test_priority_is_position_major():
  # Token 0 picks (e0, e1), token 1 picks (e1, e2); one slot each. Choice-major priority
  # would give e1 to token 1's first choice (a later token evicting an earlier one).
  logits = jnp.asarray([[3.0, 2.0, -9.0], [-9.0, 3.0, 2.0]])
  combine, dispatch, stats = layers.route(logits, jnp.ones(2, bool), top_k=2, capacity=1)
  np.testing.assert_array_equal(np.asarray(dispatch[..., 0]), [[1, 1, 0], [0, 0, 1]])
  probs = jax.nn.softmax(logits)
  gate = probs[1, 2] / (probs[1, 1] + probs[1, 2])   # renormalised over k, not after drops
  np.testing.assert_allclose(float(combine[1, 2, 0]), float(gate), rtol=1e-6)
  np.testing.assert_allclose(float(stats['dropped']), 0.25)


def test_later_router_logits_never_change_earlier_routing():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 32, 4)).astype(np.float32)
  valid = rng.random((2, 32)) > 0.2
  base = layers.route(jnp.asarray(logits), jnp.asarray(valid), 2, capacity=5)[0]
  for p in (2, 6, 9):   # early enough that the changed tokens still find slots
    changed = logits.copy()
    changed[:, p:] = rng.normal(size=changed[:, p:].shape)
    out = layers.route(jnp.asarray(changed), jnp.asarray(valid), 2, capacity=5)[0]
    np.testing.assert_array_equal(np.asarray(out[:, :p]), np.asarray(base[:, :p]))
    assert np.any(np.asarray(out[:, p:]) != np.asarray(base[:, p:]))


@pytest.fixture(scope='module')
def moe_setup():
  # Capacity factor 0.5: half of the routed choices overflow, so drops really happen.
  config = tiny_config(**MOE, model__moe_capacity_factor=0.5)
  batch = image_batch(config)
  model, params = build(config, batch)
  forward = jax.jit(lambda b: model.apply({'params': params}, b, return_hidden=True,
                                          heads=every_position(b), mutable=['intermediates']))
  return config, batch, lambda b: forward(b)[0], forward, model, params


def test_moe_drops_tokens_but_never_leaks_later_tokens(moe_setup):
  _, batch, forward, with_stats, _, _ = moe_setup
  dropped = np.asarray(with_stats(batch)[1]['intermediates']['core']['layers']['moe']['moe_dropped'])
  assert np.all(dropped[0] > 0.2), dropped
  base = flat_outputs(forward(batch))
  valid = np.flatnonzero((batch['segment_ids'][0] > 0) & ~batch['is_masked'][0])
  rng = np.random.default_rng(0)
  for p in rng.choice(valid[valid > 4], 4, replace=False):
    start = p
    for s, e, _, _ in blocks(batch):
      if s <= p <= e and batch['image_id'][0, p] and batch['attn_end'][0, p] > p:
        start = s
    out = flat_outputs(forward(perturbed(batch, [p], int(p))))
    diffs = max_diff(base, out, slice(0, start))
    assert max(diffs.values()) < 1e-6, (p, diffs)
    assert max(max_diff(base, out, slice(start, None)).values()) > 1e-4


def test_moe_chunked_decoding_matches_the_full_forward(moe_setup):
  # Group-aligned chunks route exactly as the full row does, drops included (position-major
  # priority: a group's routing needs no later token). A shorter chunk is its own group.
  config, batch, forward, _, model, params = moe_setup
  full = forward(batch)['text_logits']
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), batch, chunk=(0, 1), heads={}))
  cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes['cache'])
  group = config.model.moe_group_size

  @jax.jit
  def decode(cache):
    logits = []
    for chunk in ((0, group), (group, group), (2 * group, 1)):
      heads = {'text': jnp.broadcast_to(jnp.arange(chunk[1]), (batch['tokens'].shape[0], chunk[1]))}
      out, state = model.apply({'params': params, 'cache': cache}, batch, chunk=chunk,
                               heads=heads, mutable=['cache'])
      cache = state['cache']
      logits.append(out['text_logits'])
    return jnp.concatenate(logits, axis=1)
  got = np.asarray(decode(cache))
  used = batch['segment_ids'][:, :2 * group] > 0     # padding outputs are garbage anyway
  assert used.sum() > group
  np.testing.assert_allclose(got[:, :2 * group][used], np.asarray(full[:, :2 * group])[used],
                             atol=1e-4)
  assert np.all(np.isfinite(got[:, -1]))             # the one-token chunk ran as its own group


def test_moe_config_errors_name_their_key_and_flops_count_top_k_experts():
  for overrides, key in [(dict(model__moe_top_k=5), 'model.moe_top_k'),
                         (dict(model__moe_group_size=48), 'model.moe_group_size'),
                         (dict(model__moe_capacity_factor=0.0), 'model.moe_capacity_factor')]:
    with pytest.raises(ConfigError, match=key):
      tiny_config(**{**MOE, **overrides})
  config = tiny_config(**MOE, mesh__expert=3, mesh__fsdp=1)
  with pytest.raises(ValueError, match='mesh.expert'):
    sharding.mesh_shape(config, 3)
  assert sharding.rules(tiny_config())[0] == ('batch', ('data', 'fsdp'))   # dense: as before
  assert dict(sharding.rules(config))['batch'] == ('data', 'fsdp', 'expert')

  from dvlm_jax.training import flops
  dense, moe = tiny_config(), tiny_config(**MOE, model__moe_mlp_dim=32)
  batch = image_batch(dense)
  m, tokens = dense.model, np.count_nonzero(batch['segment_ids'])
  per_token = (2 * m.d_model * 4 + 2 * 2 * m.d_model * 32 * 3) - 2 * m.d_model * m.mlp_dim * 3
  expected = flops.TRAIN_FACTOR * m.core_layers * tokens * per_token
  got = flops.train_step_flops(moe, batch) - flops.train_step_flops(dense, batch)
  assert abs(got - expected) < 1e-9 * abs(expected)


def test_rope_axes_leave_text_alone_and_give_images_their_axes():
  assert layers.rope_sections(16, 'ttyx').tolist() == [0, 0, 1, 2, 0, 0, 1, 2]
  assert layers.rope_sections(12, 'yx').tolist() == [1, 2, 1, 2, 1, 2]
  x = jax.random.normal(jax.random.key(0), (1, 5, 2, 16))
  text = jnp.repeat(jnp.arange(5.0)[None, :, None], 3, axis=-1)        # t = y = x
  by_axes = [layers.apply_rope(x, text, 1e4, axes) for axes in ('ttyx', 'yxt', 'yx')]
  for other in by_axes[1:]:   # text is standard 1-D RoPE under every assignment
    np.testing.assert_allclose(by_axes[0], other, rtol=1e-6)
  image = jnp.stack([jnp.zeros(5), jnp.arange(5.0), jnp.zeros(5)], -1)[None]  # y moves
  assert not np.allclose(layers.apply_rope(x, image, 1e4, 'yx'), x)
  # With no pair on y (the model config refuses it) a move in y would not be seen at all.
  np.testing.assert_allclose(layers.apply_rope(x, image, 1e4, 'tx'), x, rtol=1e-6)


def test_scale_weighting_weighs_each_scale_once():
  per_position = jnp.asarray([[1.0, 1.0, 1.0, 4.0, 0.0]])    # scale 1 (three) and 2 (one)
  batch = {'image_weights': jnp.asarray([[1.0, 1.0, 1.0, 1.0, 0.0]]),
           'scale': jnp.asarray([[1, 1, 1, 2, 3]])}
  results = {}
  for weighting in ('token', 'scale'):
    cfg = losses.LossConfig(1.0, 1.0, 1.0, True, 3, None, scale_weighting=weighting,
                            detail_weight=0.0, moe=False, moe_aux_weight=0.0)
    metrics = {}
    results[weighting] = float(losses._image_part('imun', per_position, batch['image_weights'],
                                                       batch['scale'], cfg, metrics))
    assert float(metrics['imun/scale_2']) == 4.0 and float(metrics['imun/scale_3']) == 0.0
  assert results['token'] == 7.0 / 4
  assert results['scale'] == (1.0 + 4.0) / 2     # scale 3 has no target: not averaged in


def test_detail_weight_moves_the_optimised_loss_not_the_logged_one():
  per_position = jnp.asarray([[1.0, 3.0, 2.0, 5.0]])
  weights, scale = jnp.asarray([[1.0, 1.0, 1.0, 0.0]]), jnp.asarray([[1, 1, 2, 2]])
  emphasis = jnp.asarray([[1.0, 3.0, 2.0, 9.0]])   # 1 + d x std: flat, edgy, edgy, no target
  for weighting, expected in (('token', (1 + 9 + 4) / 6), ('scale', ((1 + 9) / 4 + 2) / 2)):
    cfg = losses.LossConfig(1.0, 1.0, 1.0, True, 2, None, scale_weighting=weighting,
                            detail_weight=1.0, moe=False, moe_aux_weight=0.0)
    metrics = {}
    got = float(losses._image_part('imgen', per_position, weights, scale, cfg, metrics, emphasis))
    assert abs(got - expected) < 1e-6, (weighting, got)
    assert abs(float(metrics['imgen']) - 2.0) < 1e-6            # (1 + 3 + 2) / 3, unweighted
    assert abs(float(metrics['imgen/scale_1']) - 2.0) < 1e-6

