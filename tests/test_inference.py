"""Inference: the layout is training's, KV-cache decoding equals the full forward pass,
K + 1 generation passes equal the cache-free reference, inpainting keeps every unmasked
pixel, self-correction re-samples exactly past the threshold, loading and the CLI.

One tiny run (2 steps, 1 core layer) is trained once for the module. The math tests use
its model with perturbed parameters: the diffusion head's output layers start at zero, so
without the perturbation a sample would not depend on its conditions and a wrong
condition could not fail a test.
"""

import dataclasses
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from dvlm_jax.data import layout, tokenizer as tok
from dvlm_jax.inference import generation
from dvlm_jax.inference import inpainting
from dvlm_jax.inference import surprisal as surprisal_lib
from dvlm_jax.inference import sequence, text as text_lib
from dvlm_jax.inference.api import VLM
from dvlm_jax import generate
from tests.conftest import ROOT, layout_config

PROMPTS = ['a red circle', 'two blue squares above a green star']   # different lengths


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('inference_run'))
  cmd = [sys.executable, '-m', 'dvlm_jax.train', '--config', 'experiments/tiny.py', '--workdir',
         path, '--config.train.steps=2', '--config.checkpoint.every=2',
         '--config.model.core_layers=1']
  subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
  return path


@pytest.fixture(scope='module')
def trained(workdir):
  return VLM.from_workdir(workdir)


@pytest.fixture(scope='module')
def vlm(trained):
  """The trained model with every parameter perturbed (zero-initialised heads included)."""
  return VLM.from_params(trained.config, _perturbed(trained.params), step=trained.step)


def random_image(seed, h=20, w=30):
  return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


# ------------------------------------------------------------------------------ layout

def test_inference_rows_are_the_training_layout(vlm, monkeypatch):
  """A prompt with an image plus text slots, placed with left padding, has exactly the
  fields training gives the finished document (shifted by the padding)."""
  cfg = vlm.layout
  image = random_image(0)
  masks = [np.arange(s * s) % 3 == 0 for s in cfg.scales]
  doc = sequence.encode(['hi ', sequence.image_item(image, cfg, masks), 'ok'], cfg,
                        vlm.tokenizer, text_slots=2)
  train_cfg = dataclasses.replace(cfg, caption_dropout=0.0)
  # Training's own encoding of the finished document, with the same masks.
  monkeypatch.setattr(layout, 'draw_masks', lambda c, rng, prompted=False: masks)
  full = layout.encode_document(['hi ', image, 'ok!'], train_cfg, vlm.tokenizer,
                                np.random.default_rng(0))
  n = len(doc['tokens'])
  assert len(full['tokens']) == n      # 'ok' + 2 slots == 'ok!' + <EOS>
  for key in ('modality', 'copy', 'scale', 'image_id', 'is_masked', 'positions', 'attn_end',
              'patches', 'segment_ids'):
    np.testing.assert_array_equal(doc[key], full[key], err_msg=key)
  np.testing.assert_array_equal(doc['tokens'][:-2], full['tokens'][:-2])

  batch = sequence.place([doc], cfg, n + 10, [n], n + 4)
  np.testing.assert_array_equal(batch['attn_end'][0, 4:4 + n], full['attn_end'] + 4)
  np.testing.assert_array_equal(batch['positions'][0, 4:4 + n], full['positions'])
  assert (batch['segment_ids'][0, :4] == 0).all() and (batch['segment_ids'][0, 4 + n:] == 0).all()
  with pytest.raises(ValueError, match='does not fit'):
    sequence.place([doc], cfg, n, [0], 5)


def test_image_slots_and_passes(vlm):
  cfg = vlm.layout
  docs = [sequence.encode([p, sequence.blank_image(cfg)], cfg, vlm.tokenizer) for p in PROMPTS]
  starts = [int(np.flatnonzero(d['tokens'] == tok.IMG)[0]) for d in docs]
  batch = sequence.place(docs, cfg, max(starts) + cfg.image_tokens, starts, max(starts))
  slots = sequence.image_slots(batch, cfg.target_shift)
  passes = slots.passes()
  assert len(passes) == len(cfg.scales) + 1
  # The passes tile the row from 0 to <IMG_END>, each ending where the next begins.
  ends = [s + n for s, n in passes]
  assert passes[0][0] == 0 and ends[-1] == slots.end + 1
  assert all(e == s for e, (s, _) in zip(ends, passes[1:]))
  for k, s in enumerate(cfg.scales):
    assert batch['tokens'][0, slots.markers[k]] == tok.scale_token(k + 1)
    assert (batch['is_masked'][:, slots.masked[k]:slots.masked[k] + s * s]).all()
    # pass k+1 starts with U_k: scale k's sample and the next scale's M in one pass
    assert passes[k + 1][0] == slots.unmasked[k]
  # The predicting positions are where training puts the targets of a fully masked image.
  predicting = np.concatenate([np.arange(slots.predicting(k), slots.predicting(k) + n)
                               for k, n in enumerate(slots.sizes)])
  for r in range(2):
    np.testing.assert_array_equal(np.flatnonzero(batch['image_weights'][r]), predicting)
  shifted = sequence.place(docs, cfg, 100 + cfg.image_tokens, [0, 0], 30)
  with pytest.raises(ValueError, match='aligned'):
    sequence.image_slots(shifted, cfg.target_shift)


# ------------------------------------------------------------------------------- text

def test_sampling_knobs():
  logits = np.log(np.array([[0.1, 0.2, 0.3, 0.4]], np.float32))
  allowed = np.array([True, True, True, True])
  key = jax.random.key(0)
  greedy = text_lib.sample_logits(logits, key, allowed, 0.0, 0, 1.0)
  assert int(greedy[0]) == 3
  for k in range(8):   # top_k=1 and a tiny top_p leave only the argmax
    key = jax.random.key(k)
    assert int(text_lib.sample_logits(logits, key, allowed, 1.0, 1, 1.0)[0]) == 3
    assert int(text_lib.sample_logits(logits, key, allowed, 1.0, 0, 0.05)[0]) == 3
    # top_p 0.65 keeps {3, 2} (0.4 + 0.3 >= 0.65), never 0 or 1
    assert int(text_lib.sample_logits(logits, key, allowed, 1.0, 0, 0.65)[0]) in (2, 3)
  draws = {int(text_lib.sample_logits(logits, jax.random.key(k), allowed, 1.0, 0, 1.0)[0])
           for k in range(40)}
  assert draws == {0, 1, 2, 3}
  banned = np.array([True, True, True, False])
  assert int(text_lib.sample_logits(logits, key, banned, 0.0, 0, 1.0)[0]) == 2
  ok = text_lib.allowed_ids(384, tok.VOCAB_SIZE)
  assert ok[tok.EOS] and ok[tok.IMG] and ok[tok.BYTE_OFFSET + 65]
  assert not ok[[tok.PAD, tok.BOS, tok.PATCH, tok.IMG_END, tok.scale_token(1), 300]].any()


def test_kv_cache_decoding_equals_full_forward(vlm):
  """Prefill (an image inside, whole) + one token at a time gives the logits of a full
  forward pass over the decoded rows, at every decoded position of every row."""
  cfg = vlm.layout
  masks = [np.arange(s * s) % 2 == 0 for s in cfg.scales]
  docs = [['see ', sequence.image_item(random_image(1), cfg, masks), ' it is'],
          ['a much longer text-only prompt about shapes']]
  decoded = vlm._text.decode(vlm.params, docs, max_new_tokens=6,
                             sampling=text_lib.Sampling(temperature=1.0, seed=3),
                             keep_logits=True)
  every = lambda b: {'text': np.broadcast_to(np.arange(b['tokens'].shape[1]), b['tokens'].shape)}
  out = vlm.model.apply({'params': vlm.params}, decoded.batch, heads=every(decoded.batch))
  p = decoded.prompt_end
  for r in range(2):
    n = len(decoded.ids[r])
    assert n >= 1
    full = np.asarray(out['text_logits'][r, p - 1:p - 1 + n])
    np.testing.assert_allclose(decoded.logits[r, :n], full, atol=2e-5, rtol=1e-5)
    np.testing.assert_array_equal(decoded.batch['tokens'][r, p:p + n], decoded.ids[r])
  # Greedy decoding = argmax of the full pass over allowed ids, token by token.
  greedy = vlm._text.decode(vlm.params, docs, max_new_tokens=6, keep_logits=True)
  out = vlm.model.apply({'params': vlm.params}, greedy.batch, heads=every(greedy.batch))
  allowed = text_lib.allowed_ids(vlm.model.cfg.vocab_size, vlm.tokenizer.vocab_size)
  for r in range(2):
    n = len(greedy.ids[r])
    full = np.where(allowed, np.asarray(out['text_logits'][r, p - 1:p - 1 + n]), -np.inf)
    np.testing.assert_array_equal(np.argmax(full, -1), greedy.ids[r])


def test_text_api_batches_and_seeds(vlm):
  a = vlm.generate_text(PROMPTS, max_new_tokens=6, temperature=1.0, seed=1)
  b = vlm.generate_text(PROMPTS, max_new_tokens=6, temperature=1.0, seed=1)
  c = vlm.generate_text(PROMPTS, max_new_tokens=6, temperature=1.0, seed=2)
  assert a == b and a != c and all(isinstance(t, str) for t in a)
  # A row's text does not depend on the rows beside it (per-row keys, padded batches).
  alone = vlm.generate_text(PROMPTS[:1], max_new_tokens=6, temperature=1.0, seed=1)
  assert alone[0] == a[0]
  answers = vlm.describe([random_image(2), random_image(3, 40, 24)], ['colour?', ''],
                         mode='surprisal', max_new_tokens=4, seed=0)
  assert len(answers) == 2
  with pytest.raises(ValueError, match='mode'):
    vlm.describe([random_image(2)], mode='blurry')
  with pytest.raises(ValueError, match='uint8'):
    vlm.describe([np.zeros((8, 8, 3), np.float32)])


# ------------------------------------------------------------------------- generation

def test_k_plus_one_passes_equal_the_cache_free_reference(vlm):
  opts = generation.GenerationOptions(cfg_scale=3.0, temperature=1.0, cfg_schedule='linear',
                                      steps=4, seed=5)
  fast = vlm._images.text_to_image(vlm.params, PROMPTS, opts, 'draw: ')
  slow = vlm._images.text_to_image(vlm.params, PROMPTS, opts, 'draw: ', reference=True)
  for f, s in zip(fast, slow):
    assert len(f.patches) == len(vlm.layout.scales)
    for a, b in zip(f.patches, s.patches):
      np.testing.assert_allclose(a, b, atol=1e-4)
    np.testing.assert_allclose(f.surprise, s.surprise, atol=1e-4)
    assert f.image.shape == (vlm.layout.scales[-1] * vlm.layout.patch_size,) * 2 + (3,)
    assert f.image.dtype == np.uint8
  # The samples depend on the conditions: another seed or prompt changes them.
  other = vlm._images.text_to_image(vlm.params, PROMPTS[::-1], opts, 'draw: ')
  assert np.abs(other[0].patches[-1] - fast[0].patches[-1]).max() > 1e-2
  api = vlm.generate_images(PROMPTS, cfg_scale=3.0, cfg_schedule='linear', steps=4, seed=5)
  np.testing.assert_array_equal(api[1].image, fast[1].image)


def _perturbed(params, seed=7):
  """Every parameter perturbed, so that zero-initialised heads depend on their input."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(k, x.shape, x.dtype)
                                   for x, k in zip(leaves, keys)])


def test_next_patch_generation_over_the_cache_equals_the_reference():
  """The Janus-like baseline draws patch by patch, each fed as a one-token chunk over the
  KV cache: the same patches as a full forward pass per patch; inpainting keeps every
  unmasked pixel."""
  from dvlm_jax import variants
  from tests.conftest import build, image_batch, tiny_config
  config = variants.janus_like(tiny_config())
  _, params = build(config, image_batch(config))
  vlm = VLM.from_params(config, _perturbed(params))
  opts = generation.GenerationOptions(temperature=1.0, cfg_scale=3.0, steps=2, seed=5)
  fast = vlm._images.text_to_image(vlm.params, PROMPTS, opts, 'draw: ')
  slow = vlm._images.text_to_image(vlm.params, PROMPTS, opts, 'draw: ', reference=True)
  assert len(vlm.layout.scales) == 1 and len(fast[0].patches) == 1
  for f, s in zip(fast, slow):
    np.testing.assert_allclose(f.patches[0], s.patches[0], atol=1e-4)
    assert np.isnan(f.surprise).all() and f.tries == [1]
  # Every patch is drawn from its own condition: the prompt and the patches before it.
  assert np.abs(fast[0].patches[0] - fast[1].patches[0]).max() > 1e-2
  assert np.abs(np.diff(fast[0].patches[0], axis=0)).max() > 1e-2
  image, mask = random_image(2, 24, 24), np.zeros((24, 24), bool)
  mask[6:14, 3:20] = True
  out = vlm.inpaint([image], [mask], ['a star'], cfg_scale=2.0, steps=2, seed=1)[0]
  np.testing.assert_array_equal(out[~mask], image[~mask])
  assert np.mean(out[mask] != image[mask]) > 0.5


@pytest.mark.parametrize('target', ['pixels', 'residual'])
def test_a_residual_head_draws_over_the_coarser_scale(trained, target):
  """With the head's output zeroed and no starting noise the head draws exactly zero, so a
  scale comes out as its base: 0 for pixel targets, the coarser scale upsampled for
  residual ones. The coarsest scale is given (inpainting-style canvas), the rest drawn."""
  params = jax.tree.map(lambda x: x, trained.params)
  params['denoiser']['out'] = jax.tree.map(np.zeros_like, params['denoiser']['out'])
  config = trained.config.copy_and_resolve_references()
  config.diffusion.target = target
  vlm = VLM.from_params(config, params)
  cfg = vlm.layout
  item = sequence.image_item(random_image(3, 30, 30), cfg,
                             [np.arange(s * s) < 0 if k == 0 else np.ones(s * s, bool)
                              for k, s in enumerate(cfg.scales)])
  opts = generation.GenerationOptions(cfg_scale=1.0, steps=2, temperature=0.0)
  out = vlm._images.generate(params, [['draw: x', item]],
                             [generation.Canvas(item.patches, item.masks)], opts)[0]
  np.testing.assert_array_equal(out.patches[0], item.patches[0])
  for k in range(1, len(cfg.scales)):
    want = (np.clip(layout.upsample(out.patches[k - 1], cfg.patch_size, cfg.scales[k]), -1, 1)
            if target == 'residual' else np.zeros_like(out.patches[k]))
    np.testing.assert_allclose(out.patches[k], want, atol=1e-6)
  if target == 'residual':   # the base is not zero, so the two targets are told apart
    assert np.abs(out.patches[-1]).max() > 0.1


def test_flat_patches_are_not_surprising():
  rng = np.random.default_rng(0)
  pred = rng.normal(size=(2, 3, 12)).astype(np.float32)   # normalised predictions
  flat = np.full((2, 3, 12), 0.4, np.float32) + 1e-4 * rng.normal(size=(2, 3, 12))
  textured = rng.uniform(-1, 1, (2, 3, 12)).astype(np.float32)
  where = np.ones((2, 3), bool)
  surprise = lambda x, norm: np.asarray(generation.pixel_surprise(pred, x, where, norm))
  assert surprise(flat, True).max() < 1e-5 < 0.1 < surprise(textured, True).min()
  # In pixels: a prediction right up to the mean and spread the sample lends it is exact.
  exact = (textured - textured.mean(-1, keepdims=True)) / textured.std(-1, keepdims=True)
  assert np.asarray(generation.pixel_surprise(exact, textured, where, True)).max() < 1e-4
  assert surprise(textured, False).min() > 0.1


def _expected(surprises, threshold, max_tries):
  """The rule: draw again while the latest try is above the threshold; keep the minimum."""
  s = [surprises[0]]
  while s[-1] > threshold and len(s) < max_tries:
    s.append(surprises[len(s)])
  return len(s), min(s)


def test_self_correction_resamples_exactly_past_the_threshold(vlm, monkeypatch):
  draws = []
  original = generation._draw

  def spy(*args, **kwargs):
    x, s = original(*args, **kwargs)
    draws.append(np.asarray(s))
    return x, s
  monkeypatch.setattr(generation, '_draw', spy)
  kw = dict(cfg_scale=2.0, steps=4, seed=9, self_correct=True, surprise='pixel')

  always = vlm.generate_images(PROMPTS, threshold=-1.0, max_tries=3, **kw)
  assert [g.tries for g in always] == [[3, 3]] * 2
  assert len(draws) == 6
  first = [d for d in draws[:3]]          # scale 1: same conditions in every run below
  for r, g in enumerate(always):
    assert g.surprise[0] == pytest.approx(min(d[r] for d in first), abs=1e-6)

  draws.clear()
  never = vlm.generate_images(PROMPTS, threshold=float('inf'), max_tries=3, **kw)
  assert [g.tries for g in never] == [[1, 1]] * 2 and len(draws) == 2
  for r, g in enumerate(never):
    assert g.surprise[0] == pytest.approx(first[0][r], abs=1e-6)
  plain = vlm.generate_images(PROMPTS, cfg_scale=2.0, steps=4, seed=9)
  np.testing.assert_array_equal(plain[0].image, never[0].image)   # try 0 is the plain sample

  s0, s1 = first[0][0], first[1][0]
  threshold = (s0 + s1) / 2                # between row 0's first two tries
  draws.clear()
  between = vlm.generate_images(PROMPTS, threshold=threshold, max_tries=3, **kw)
  for r, g in enumerate(between):
    tries, best = _expected([d[r] for d in first], threshold, 3)
    assert g.tries[0] == tries, (r, [d[r] for d in first], threshold)
    assert g.surprise[0] == pytest.approx(best, abs=1e-6)
  assert between[0].tries[0] == (2 if s1 < s0 else 1)


def test_activation_surprise_over_the_cache_equals_the_reference_and_calibrates(vlm):
  """The seed's measure: the core output at M_k against U_k once the sample is fed. Each
  try is looked at over the KV cache (only the head re-draws); the full forward pass per
  try gives the same surprises, tries and samples. Calibration: per scale a percentile of
  real pictures' surprise."""
  opts = generation.GenerationOptions(cfg_scale=2.0, temperature=1.0, steps=2, seed=3,
                                      self_correct=True, surprise='activation', threshold=-1.0,
                                      max_tries=2)
  fast = vlm._images.text_to_image(vlm.params, PROMPTS, opts, 'draw: ')
  slow = vlm._images.text_to_image(vlm.params, PROMPTS, opts, 'draw: ', reference=True)
  for f, s in zip(fast, slow):
    assert f.tries == s.tries == [2, 2]
    np.testing.assert_allclose(f.surprise, s.surprise, atol=1e-5)
    assert all(0.0 < x < 2.0 for x in f.surprise)
    for a, b in zip(f.patches, s.patches):
      np.testing.assert_allclose(a, b, atol=1e-4)
  images = [random_image(i, 30, 30) for i in range(3)]
  low = vlm.calibrate_surprise(images, PROMPTS + ['x'], percentile=0.0)
  high = vlm.calibrate_surprise(images, PROMPTS + ['x'], percentile=100.0)
  assert len(low) == len(vlm.layout.scales) and all(0.0 <= a <= b for a, b in zip(low, high))
  assert any(a < b for a, b in zip(low, high))
  # A threshold per scale: above every calibrated surprise nothing is drawn again.
  never = vlm.generate_images(PROMPTS, cfg_scale=2.0, steps=2, seed=3, self_correct=True,
                              threshold=tuple(h + 1.0 for h in high), max_tries=2)
  assert [g.tries for g in never] == [[1, 1]] * 2


@pytest.mark.parametrize('shift', [0, 1])
def test_surprise_compares_expectation_and_sight_of_the_same_patch(shift):
  """With target_shift=1 M_k's position j decodes patch j + 1: the expecting position of
  patch j is the one whose training target is patch j, and the seeing position is where
  patch j itself is fed (U_k's j)."""
  cfg = layout_config(target_shift=shift, scales=(2, 4), patch_size=4)
  image = random_image(1, 16, 16)
  item = sequence.image_item(image, cfg, [np.ones(s * s, bool) for s in cfg.scales])
  doc = sequence.encode(['hi', item], cfg, tok.ByteTokenizer())
  start = int(np.flatnonzero(doc['tokens'] == tok.IMG)[0])
  batch = sequence.place([doc], cfg, start + cfg.image_tokens, [start], start)
  batch = {k: v for k, v in batch.items()}
  slots = sequence.image_slots(batch, shift)
  train = layout.encode_document(['hi', image], dataclasses.replace(
      cfg, share_unmasked=0.0, share_fully_masked=1.0, caption_dropout=0.0, prompted_fully_masked=1.0),
      tok.ByteTokenizer(), np.random.default_rng(0))
  for k in range(len(cfg.scales)):
    expecting, seeing = generation.surprise_positions(slots, k)
    train_at = expecting - start + int(np.flatnonzero(train['tokens'] == tok.IMG)[0])
    assert (train['image_weights'][train_at] > 0).all()
    np.testing.assert_allclose(train['image_targets'][train_at], batch['patches'][0, seeing])
    np.testing.assert_allclose(batch['patches'][0, seeing], item.patches[k])


def test_surprisal_reads_the_core_where_each_patch_is_expected_and_seen(vlm, monkeypatch):
  cfg = vlm.layout
  seen = []
  core_at = surprisal_lib.core_at
  monkeypatch.setattr(surprisal_lib, 'core_at',
                      lambda params, batch, positions, model: seen.append(np.asarray(positions))
                      or core_at(params, batch, positions, model=model))
  item = sequence.image_item(random_image(2, 30, 30), cfg,
                             [np.ones(s * s, bool) for s in cfg.scales])
  surprisal_lib.surprisal(vlm._images, vlm.params, [['a red circle', item]])
  batch = vlm._images.rows([['a red circle', item]])
  slots = sequence.image_slots(batch, cfg.target_shift)
  pairs = [generation.surprise_positions(slots, k) for k in range(len(cfg.scales))]
  assert cfg.target_shift == 1
  np.testing.assert_array_equal(seen[0], np.concatenate([e for e, _ in pairs] + [f for _, f in pairs]))
  assert pairs[0][0][0] == slots.markers[0]   # patch 0 of scale 1 is decoded at its marker


def test_inpainting_keeps_unmasked_pixels_bit_identical(vlm):
  image = random_image(4, 21, 33)          # odd size: not a multiple of any patch grid
  mask = np.zeros(image.shape[:2], bool)
  mask[4:13, 6:20] = True
  mask2 = np.zeros((30, 30), bool)
  mask2[0, 0] = True                       # one pixel: one patch per scale
  images, masks = [image, random_image(5, 30, 30)], [mask, mask2]
  opts = generation.GenerationOptions(temperature=1.0, cfg_scale=2.0, steps=4, seed=1)
  out, gen = inpainting.inpaint(vlm._images, vlm.params, images, masks, ['a star', 'x'], opts, 'draw: ')
  for img, m, o in zip(images, masks, out):
    assert o.shape == img.shape and o.dtype == np.uint8
    np.testing.assert_array_equal(o[~m], img[~m])
  assert np.mean(out[0][mask] != image[mask]) > 0.5      # the masked region was regenerated
  cfg = vlm.layout
  for m, img, g in zip(masks, images, gen):
    cells = inpainting.patch_masks(m, cfg)
    given = layout.resize_to_scales(img, cfg)
    for k in range(len(cfg.scales)):
      # Unmasked patches of U_k are the given image at that scale; masked ones were sampled.
      np.testing.assert_array_equal(g.patches[k][~cells[k]], given[k][~cells[k]])
      assert np.abs(g.patches[k][cells[k]] - given[k][cells[k]]).max() > 1e-3
  assert [c.sum() for c in inpainting.patch_masks(mask2, cfg)] == [1] * len(cfg.scales)
  api = vlm.inpaint(images, masks, ['a star', 'x'], cfg_scale=2.0, steps=4, seed=1)
  np.testing.assert_array_equal(api[0], out[0])
  with pytest.raises(ValueError, match='must match'):
    vlm.inpaint([image], [np.zeros((5, 5), bool)])


def test_patch_masks_cover_every_masked_pixel():
  cfg = layout_config(seq_len=256, patch_size=4, scales=(2, 4))
  rng = np.random.default_rng(0)
  for _ in range(20):
    h, w = rng.integers(5, 40, size=2)
    m = np.zeros((h, w), bool)
    y, x = rng.integers(0, h), rng.integers(0, w)
    m[y, x] = True
    for s, cells in zip(cfg.scales, inpainting.patch_masks(m, cfg)):
      hit = np.flatnonzero(cells)
      assert 1 <= hit.size <= 4
      assert (int(y * s // h) * s + int(x * s // w)) in hit


def test_reconstruct(vlm):
  res = vlm.reconstruct([random_image(6), random_image(7, 16, 16)], mask_ratio=0.5, seed=0)
  cfg = vlm.layout
  for r in res:
    for k, s in enumerate(cfg.scales):
      m = r['mask'][k]
      assert m.shape == (s, s) and m.sum() == round(0.5 * s * s)
      side = s * cfg.patch_size
      for key in ('masked', 'prediction', 'target'):
        assert r[key][k].shape == (side, side, 3) and r[key][k].dtype == np.uint8
      visible = np.kron(~m, np.ones((cfg.patch_size, cfg.patch_size), bool))
      np.testing.assert_array_equal(r['prediction'][k][visible], r['target'][k][visible])
      assert np.isfinite(r['psnr'][k]) and np.isfinite(r['mse'][k])


def test_single_copy_models_cannot_lose_the_sample(vlm):
  """dual_copy=False swaps the mask tokens of M_k for the sample and feeds M_k again."""
  from dvlm_jax import config as cfg_lib
  config = cfg_lib.ConfigDict(vlm.config)
  config.image.dual_copy = False
  single = VLM.from_params(config, vlm.params)   # the parameters do not depend on the copies
  assert single.layout.image_tokens < vlm.layout.image_tokens
  opts = generation.GenerationOptions(temperature=1.0, cfg_scale=1.0, steps=2, seed=0)
  fast = single._images.text_to_image(single.params, PROMPTS[:1], opts, 'draw: ')
  slow = single._images.text_to_image(single.params, PROMPTS[:1], opts, 'draw: ', reference=True)
  for a, b in zip(fast[0].patches, slow[0].patches):
    np.testing.assert_allclose(a, b, atol=1e-4)


# --------------------------------------------------------------------- loading and CLI

def test_from_workdir_restores_the_trained_step(workdir, trained):
  assert trained.step == 2
  assert tuple(trained.config.image.scales) == (2, 4)
  again = VLM.from_workdir(workdir, step=2)
  for a, b in zip(jax.tree.leaves(trained.params), jax.tree.leaves(again.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(FileNotFoundError, match='no such workdir'):
    VLM.from_workdir(os.path.join(workdir, 'nope'))
  with pytest.raises(FileNotFoundError, match='saved steps'):
    VLM.from_workdir(workdir, step=7)
  with pytest.raises(FileNotFoundError, match='no .ema.'):
    VLM.from_workdir(workdir, ema=True)
  empty = os.path.join(workdir, 'empty_run')
  os.makedirs(empty, exist_ok=True)
  with pytest.raises(FileNotFoundError, match='config.json'):
    VLM.from_workdir(empty)


def test_cli(workdir, tmp_path, capsys):
  out = str(tmp_path / 'img.png')
  assert generate.main(['--workdir', workdir, '--prompt', 'a red circle', '--out', out,
                        '--steps', '2', '--self_correct', '--threshold', '-1',
                        '--max_tries', '2']) == 0
  img = np.asarray(Image.open(out))
  assert img.shape == (16, 16, 3)
  strip = np.asarray(Image.open(str(tmp_path / 'img.scales.png')))
  assert strip.shape[0] == 16 and strip.shape[1] > 16
  assert 'tries 2 2' in capsys.readouterr().out

  photo = str(tmp_path / 'photo.png')
  Image.fromarray(random_image(8)).save(photo)
  assert generate.main(['--workdir', workdir, '--image', photo, '--question', 'what?',
                        '--max_new_tokens', '3']) == 0
  answer = VLM.from_workdir(workdir).describe([random_image(8)], ['what?'], max_new_tokens=3)
  assert capsys.readouterr().out == answer[0] + '\n'

  bad = str(tmp_path / 'bad.png')
  with open(bad, 'w') as f:
    f.write('not an image')
  assert generate.main(['--workdir', workdir, '--image', bad]) == 2
  assert 'cannot read image' in capsys.readouterr().err
  assert generate.main(['--workdir', str(tmp_path / 'missing'), '--text', 'hi']) == 2
  assert 'no such workdir' in capsys.readouterr().err
