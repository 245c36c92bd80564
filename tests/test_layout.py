"""Tests of the token layout and the batch contract (dvlm_jax/data/layout.py).

The attention test compares the model's mask, built from the layout's
`segment_ids` and `attn_end`, with an oracle that knows only the SPEC's rule
and re-derives documents and blocks from the token ids alone.
"""

import dataclasses

import numpy as np
import pytest

from dvlm_jax import contract
from dvlm_jax.data import layout
from dvlm_jax.data import tokenizer as tk
from tests.conftest import layout_config

TOK = tk.ByteTokenizer()


def make_cfg(**kw):
  base = dict(seq_len=128, patch_size=2, scales=(1, 2, 4), caption_dropout=0.0)
  base.update(kw)
  return layout_config(**base)


def random_image(rng, max_side=20):
  h, w = rng.integers(1, max_side + 1, size=2)
  kind = rng.integers(3)
  shape = [(h, w), (h, w, 3), (h, w, 4)][kind]
  return rng.integers(0, 256, size=shape, dtype=np.uint8)


def random_text(rng, max_len=12):
  alphabet = list('abcdefghij klmnop,.!?') + ['é', 'ß', '猫', '🙂']
  return ''.join(rng.choice(alphabet, size=rng.integers(0, max_len + 1)))


def random_doc(rng):
  doc = []
  for _ in range(rng.integers(0, 4)):
    doc.append(random_text(rng))
    doc.append(random_image(rng))
  doc.append(random_text(rng))
  return doc


def random_cfg(rng):
  n_scales = int(rng.integers(1, 5))
  scales = tuple(sorted(rng.choice(np.arange(1, 7), size=n_scales, replace=False).tolist()))
  cfg = layout_config(
      seq_len=1, patch_size=int(rng.integers(1, 4)), scales=scales,
      dual_copy=bool(rng.integers(2)),
      image_attention=['bidirectional', 'causal'][rng.integers(2)],
      target_shift=int(rng.integers(2)), caption_dropout=0.2)
  # Room for at least one image, sometimes for several documents.
  seq_len = cfg.image_tokens + int(rng.integers(2, 3 * cfg.image_tokens + 40))
  return layout.LayoutConfig(**{**cfg.__dict__, 'seq_len': seq_len})


def pack_all(docs, cfg, rng, batch_size):
  """All batches needed for `docs` (documents left over go into the next batch)."""
  batches = []
  while docs:
    batch, stats = layout.make_batch(docs, cfg, TOK, rng, batch_size)
    assert stats.consumed > 0
    docs = docs[stats.consumed:]
    batches.append(batch)
  return batches


# --------------------------------------------------------------------------- oracle

def parse_row(tokens, cfg):
  """From token ids and cfg alone: per token its document (0 = pad) and block.

  A block is (image number, scale, copy) for image tokens and None otherwise.
  """
  n = len(tokens)
  doc = np.zeros(n, int)
  block = [None] * n
  copies = (1, 2) if cfg.dual_copy else (1,)
  i, d, img = 0, 0, 0
  while i < n:
    t = tokens[i]
    if t == tk.PAD:
      i += 1
      continue
    if t == tk.BOS:
      d += 1
    doc[i] = d
    i += 1
    if t != tk.IMG:
      continue
    img += 1
    for k, s in enumerate(cfg.scales, start=1):
      assert tokens[i] == tk.SCALE_BASE + k - 1
      doc[i] = d
      i += 1
      for c in copies:
        for _ in range(s * s):
          assert tokens[i] == tk.PATCH
          doc[i], block[i] = d, (img, k, c)
          i += 1
    assert tokens[i] == tk.IMG_END
    doc[i] = d
    i += 1
  return doc, block


def oracle_mask(tokens, cfg):
  """SPEC: q sees k iff same document and (k <= q, or both in the same image block)."""
  doc, block = parse_row(tokens, cfg)
  n = len(tokens)
  bidi = cfg.image_attention == 'bidirectional'
  m = np.zeros((n, n), bool)
  for q in range(n):
    for k in range(n):
      if doc[q] == 0 or doc[q] != doc[k]:
        continue
      same_block = block[q] is not None and block[q] == block[k]
      m[q, k] = k <= q or (bidi and same_block)
  return m, doc, block


def model_mask(batch):
  seg, end = batch['segment_ids'], batch['attn_end']
  return np.asarray(contract.make_mask(seg, seg, end))


# ------------------------------------------------------------------ the attention rule

def test_attention_rule_matches_oracle_on_random_layouts():
  rng = np.random.default_rng(1234)
  checked = 0
  for trial in range(24):
    cfg = random_cfg(rng)
    docs = [random_doc(rng) for _ in range(int(rng.integers(1, 6)))]
    for batch in pack_all(docs, cfg, rng, batch_size=2):
      mask = model_mask(batch)
      for r in range(batch['tokens'].shape[0]):
        want, doc, block = oracle_mask(batch['tokens'][r], cfg)
        assert np.array_equal(mask[r], want), (trial, r, cfg)
        # Structure agrees with the fields the model reads.
        assert np.array_equal(doc > 0, batch['segment_ids'][r] > 0)
        for i, b in enumerate(block):
          assert (b is not None) == (batch['modality'][r, i] == contract.MODALITY_IMAGE)
          if b is not None:
            assert (batch['scale'][r, i], batch['copy'][r, i]) == b[1:]
            assert batch['image_id'][r, i] == b[0]
        # Nothing sees the future outside its own block.
        for q, k in zip(*np.nonzero(np.triu(mask[r], 1))):
          assert block[q] is not None and block[q] == block[k]
        checked += 1
  assert checked >= 24


def test_attention_consequences():
  cfg = make_cfg(scales=(1, 2, 3), share_unmasked=0.0, share_fully_masked=0.0)
  img = np.random.default_rng(0).integers(0, 256, (9, 9, 3), dtype=np.uint8)
  batch, _ = layout.make_batch([['a', img, 'bc']], cfg, TOK, np.random.default_rng(0), 1)
  mask = model_mask(batch)[0]
  copy, scale = batch['copy'][0], batch['scale'][0]
  idx = lambda k, c: np.flatnonzero((scale == k) & (copy == c))
  text_after = np.flatnonzero(batch['tokens'][0] == TOK.encode('b')[0])
  for k in (1, 2, 3):
    m, u = idx(k, 1), idx(k, 2)
    sees = mask[np.ix_(m, np.arange(mask.shape[1]))]
    assert sees[:, m].all()                               # M_k sees itself (bidirectional)
    assert not sees[:, u].any()                           # ...never its own U_k
    for j in range(1, k):                                 # ...and every earlier scale
      assert sees[:, idx(j, 1)].all() and sees[:, idx(j, 2)].all()
    for j in range(k + 1, 4):                             # ...but no later scale
      assert not sees[:, idx(j, 1)].any() and not sees[:, idx(j, 2)].any()
    assert mask[np.ix_(u, m)].all()                       # U_k sees M_k
    assert mask[np.ix_(u, u)].all()
    assert mask[np.ix_(text_after, m)].all()              # later text sees M_k
  pad = batch['segment_ids'][0] == 0
  assert pad.any() and not mask[pad].any() and not mask[:, pad].any()

  causal = layout.LayoutConfig(**{**cfg.__dict__, 'image_attention': 'causal'})
  batch, _ = layout.make_batch([['a', img]], causal, TOK, np.random.default_rng(0), 1)
  assert not np.triu(model_mask(batch)[0], 1).any()


# ------------------------------------------------------------------------- fields

def test_contract_shapes_and_dtypes():
  cfg = make_cfg()
  rng = np.random.default_rng(2)
  batch, stats = layout.make_batch([random_doc(rng) for _ in range(4)], cfg, TOK, rng, 3)
  b, l, p = 3, cfg.seq_len, cfg.patch_dim
  want = {
      'tokens': ((b, l), np.int32), 'patches': ((b, l, p), np.float32),
      'modality': ((b, l), np.int32), 'is_masked': ((b, l), np.bool_),
      'copy': ((b, l), np.int32), 'scale': ((b, l), np.int32),
      'image_id': ((b, l), np.int32), 'segment_ids': ((b, l), np.int32),
      'positions': ((b, l, 3), np.float32), 'attn_end': ((b, l), np.int32),
      'text_targets': ((b, l), np.int32), 'text_weights': ((b, l), np.float32),
      'image_targets': ((b, l, p), np.float32), 'image_weights': ((b, l), np.float32)}
  assert set(batch) == set(want)
  for k, (shape, dtype) in want.items():
    assert batch[k].shape == shape and batch[k].dtype == dtype, k
  pad = batch['segment_ids'] == 0
  assert stats.tokens == (~pad).sum()
  for k, v in batch.items():
    if k != 'attn_end':
      assert not v[pad].any(), k
  assert np.array_equal(batch['attn_end'][pad], np.nonzero(pad)[1])
  assert np.all(np.abs(batch['patches']) <= 1.0)
  # Markers are text; only PATCH tokens are image.
  assert np.array_equal(batch['modality'] == 2, batch['tokens'] == tk.PATCH)


def test_from_config_reads_defaults():
  from dvlm_jax import config as config_lib
  c = config_lib.defaults()
  cfg = layout.LayoutConfig.from_config(c)
  assert cfg.seq_len == c.data.seq_len and cfg.scales == tuple(c.image.scales)
  assert cfg.patch_dim == c.image.patch_size ** 2 * 3
  assert cfg.image_tokens == 2 + sum(1 + 2 * s * s for s in c.image.scales)   # dual copy


def test_patchify_order_and_identity_resize():
  cfg = make_cfg(patch_size=3, scales=(1, 2))
  rng = np.random.default_rng(3)
  img = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
  coarse, fine = layout.resize_to_scales(img, cfg)
  assert coarse.shape == (1, 27) and fine.shape == (4, 27)
  assert coarse.dtype == np.float32 and fine.dtype == np.float32
  pix = img.astype(np.float32) / 127.5 - 1.0
  for i in range(2):
    for j in range(2):
      want = pix[3 * i:3 * i + 3, 3 * j:3 * j + 3, :].reshape(-1)   # (py, px, c)
      np.testing.assert_allclose(fine[2 * i + j], want, atol=1e-6)
  # A flat colour stays flat at every scale, upsampled or downsampled.
  flat = np.full((5, 11, 3), (0, 128, 255), np.uint8)
  for patches in layout.resize_to_scales(flat, make_cfg(patch_size=2, scales=(1, 4))):
    np.testing.assert_allclose(patches.reshape(-1, 3), [[-1.0, 128 / 127.5 - 1, 1.0]] * (patches.size // 3), atol=1e-6)


def test_grayscale_and_rgba_accepted_bad_shapes_raise():
  cfg = make_cfg(scales=(2,))
  gray = np.full((4, 4), 200, np.uint8)
  np.testing.assert_allclose(layout.resize_to_scales(gray, cfg)[0], 200 / 127.5 - 1, atol=1e-6)
  rgba = np.zeros((4, 4, 4), np.uint8)
  rgba[..., 0] = 255
  rgba[:, :, 3] = 255
  rgba[0, 0, 3] = 0                      # transparent pixel: white
  out = layout.to_rgb(rgba)
  assert out.shape == (4, 4, 3) and tuple(out[0, 0]) == (255, 255, 255)
  assert tuple(out[1, 1]) == (255, 0, 0)
  batch, _ = layout.make_batch([['x', gray, rgba]], cfg, TOK, np.random.default_rng(0), 1)
  assert batch['image_id'].max() == 2
  for bad in (np.zeros((4, 4, 2), np.uint8), np.zeros((4, 4, 3, 1), np.uint8),
              np.zeros((4,), np.uint8), np.zeros((0, 4, 3), np.uint8),
              np.zeros((4, 4, 3), np.float32)):
    with pytest.raises(ValueError):
      layout.encode_document(['x', bad], cfg, TOK, np.random.default_rng(0))
  with pytest.raises(ValueError):
    layout.encode_document(['x', 3], cfg, TOK, np.random.default_rng(0))


def image_doc_batch(cfg, seed=0, n_images=2, text='a cat'):
  rng = np.random.default_rng(seed)
  docs = [[text, rng.integers(0, 256, (13, 9, 3), dtype=np.uint8)] for _ in range(n_images)]
  batch, stats = layout.make_batch(docs, cfg, TOK, rng, 1)
  assert stats.documents == n_images
  return batch


@pytest.mark.parametrize('shift', [0, 1])
@pytest.mark.parametrize('dual', [True, False])
def test_masking_and_image_targets(shift, dual):
  cfg = make_cfg(seq_len=256, target_shift=shift, dual_copy=dual,
                 share_unmasked=0.0, share_fully_masked=0.0)
  b = {k: v[0] for k, v in image_doc_batch(cfg).items()}
  masked = b['is_masked']
  assert masked.any() and not masked[b['copy'] != 1].any()
  assert not b['patches'][masked].any()                  # masked content cannot leak
  assert b['patches'][(b['copy'] == 1) & ~masked].any()
  # Targets sit exactly `shift` before each masked patch.
  want_w = np.roll(masked, -shift).astype(np.float32)
  np.testing.assert_array_equal(b['image_weights'], want_w)
  # Targets are the original pixels: recompute from the image, via the unmasked copy or directly.
  if dual:
    for img_id in (1, 2):
      for k in (1, 2, 3):
        m = np.flatnonzero((b['image_id'] == img_id) & (b['scale'] == k) & (b['copy'] == 1))
        u = np.flatnonzero((b['image_id'] == img_id) & (b['scale'] == k) & (b['copy'] == 2))
        sel = masked[m]
        # U_k is the whole image: the targets of masked M_k cells, the inputs of the rest.
        np.testing.assert_array_equal(b['image_targets'][m[sel] - shift], b['patches'][u[sel]])
        np.testing.assert_array_equal(b['patches'][m[~sel]], b['patches'][u[~sel]])
        np.testing.assert_array_equal(b['positions'][m], b['positions'][u])
  rng = np.random.default_rng(0)
  first_img = rng.integers(0, 256, (13, 9, 3), dtype=np.uint8)
  originals = np.concatenate(layout.resize_to_scales(first_img, cfg))
  m = np.flatnonzero((b['image_id'] == 1) & (b['copy'] == 1))
  sel = masked[m]
  np.testing.assert_array_equal(b['image_targets'][m[sel] - shift], originals[sel])
  assert not b['image_targets'][b['image_weights'] == 0].any()
  if shift == 1:
    # The first patch of a scale is predicted by its marker, which carries the scale.
    for k in (1, 2, 3):
      first = np.flatnonzero((b['scale'] == k) & (b['copy'] == 1))[0]
      assert b['tokens'][first - 1] == tk.SCALE_BASE + k - 1 and b['scale'][first - 1] == k
      assert b['image_weights'][first - 1] == masked[first]


@pytest.mark.parametrize('shift', [0, 1])
def test_residual_targets_carry_the_coarser_scale_upsampled(shift):
  cfg = make_cfg(seq_len=256, target_shift=shift, share_unmasked=0.0, share_fully_masked=1.0,
                 imgen_residual=True)
  assert 'image_base' in cfg.batch_spec(1)
  assert 'image_base' not in dataclasses.replace(cfg, imgen_residual=False).batch_spec(1)
  b = {k: v[0] for k, v in image_doc_batch(cfg, n_images=1).items()}
  rng = np.random.default_rng(0)
  scales = layout.resize_to_scales(rng.integers(0, 256, (13, 9, 3), dtype=np.uint8), cfg)
  for k in (1, 2, 3):
    m = np.flatnonzero((b['scale'] == k) & (b['copy'] == 1))
    base = b['image_base'][m - shift]
    if k == 1:
      assert not base.any()
    else:   # every pixel of scale k's base is its nearest pixel of scale k-1
      fine = layout.unpatchify(base, cfg.patch_size)
      coarse = layout.unpatchify(scales[k - 2], cfg.patch_size)
      ratio = fine.shape[0] // coarse.shape[0]
      np.testing.assert_array_equal(fine, np.repeat(np.repeat(coarse, ratio, 0), ratio, 1))
  assert not b['image_base'][b['image_weights'] == 0].any()
  # A flat picture leaves nothing to draw past the coarsest scale.
  flat = np.full((12, 12, 3), 77, np.uint8)
  flat_batch, _ = layout.make_batch([['x', flat]], cfg, TOK, np.random.default_rng(1), 1)
  fine = (flat_batch['scale'][0] > 1) & (flat_batch['image_weights'][0] > 0)
  residual = flat_batch['image_targets'][0] - flat_batch['image_base'][0]
  assert fine.any() and np.abs(residual[fine]).max() < 1e-6


def test_mask_ratio_bounds():
  cfg = make_cfg(seq_len=1024, scales=(4, 8), mask_ratio_min=0.3, mask_ratio_max=0.6,
                 share_unmasked=0.0, share_fully_masked=0.0)
  b = image_doc_batch(cfg, n_images=3)
  for img_id in (1, 2, 3):
    for k, s in ((1, 4), (2, 8)):
      m = (b['image_id'] == img_id) & (b['scale'] == k) & (b['copy'] == 1)
      n = b['is_masked'][m].sum()
      assert np.rint(0.3 * s * s) <= n <= np.rint(0.6 * s * s)


def test_share_unmasked_and_fully_masked():
  b = image_doc_batch(make_cfg(share_unmasked=1.0, share_fully_masked=0.0))
  assert not b['is_masked'].any() and not b['image_weights'].any()
  b = image_doc_batch(make_cfg(share_unmasked=0.0, share_fully_masked=1.0))
  assert np.array_equal(b['is_masked'], b['copy'] == 1)
  assert not b['patches'][b['copy'] == 1].any()
  assert b['image_weights'].sum() == 2 * (1 + 4 + 16)


def test_prompted_images_are_masked_as_generation_sees_them():
  """An image after text (caption-first: generation's layout) is fully masked with
  probability prompted_fully_masked; an image read first (understanding) keeps the shares."""
  cfg = make_cfg(share_unmasked=1.0, share_fully_masked=0.0, prompted_fully_masked=1.0)
  b = image_doc_batch(cfg)                                      # ['a cat', image]
  assert np.array_equal(b['is_masked'], b['copy'] == 1)
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (13, 9, 3), dtype=np.uint8)
  batch, _ = layout.make_batch([[image, 'a cat']], cfg, TOK, rng, 1)   # image first
  assert not batch['is_masked'].any()
  # Off (0, the default): a prompted image is drawn as any other, from the same random
  # stream, so configs without the share keep their masks.
  base = make_cfg(share_unmasked=0.2, share_fully_masked=0.3, prompted_fully_masked=0.0)
  for seed in range(20):
    a = layout.draw_masks(base, np.random.default_rng(seed), prompted=True)
    b = layout.draw_masks(base, np.random.default_rng(seed), prompted=False)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_prompt_text_weight_scales_the_loss_of_text_before_an_image():
  """The text before a document's last image (its prompt) weighs prompt_text_weight in the
  text loss; text after it (a caption read from the image) keeps weight 1."""
  image = np.random.default_rng(0).integers(0, 256, (13, 9, 3), dtype=np.uint8)
  doc = ['a cat', image, 'a dog', image, 'the end']
  encode = lambda cfg: layout.encode_document(doc, cfg, TOK, np.random.default_rng(0))
  full, half = encode(make_cfg()), encode(make_cfg(prompt_text_weight=0.5))
  last_image = np.flatnonzero(full['tokens'] == tk.IMG)[-1]
  before = np.arange(len(full['tokens'])) < last_image
  assert full['text_weights'][before].sum() >= len('a cat') + len('a dog')  # bytes: one each
  np.testing.assert_array_equal(half['text_weights'][before], 0.5 * full['text_weights'][before])
  np.testing.assert_array_equal(half['text_weights'][~before], full['text_weights'][~before])
  assert full['text_weights'][~before].sum() >= len('the end')
  for key in full:                                  # nothing else changes
    if key != 'text_weights':
      np.testing.assert_array_equal(half[key], full[key])


def test_single_copy_generation_share_masks_the_scales_from_a_random_one_on():
  """One copy: generating scale k sees scales < k whole (the samples replaced the mask
  tokens) and k.. masked, so that is what the generation share of training draws."""
  cfg = make_cfg(dual_copy=False, share_unmasked=0.0, share_fully_masked=1.0)
  firsts = set()
  rng = np.random.default_rng(0)
  for _ in range(40):
    masks = layout.draw_masks(cfg, rng)
    flags = [bool(m.all()) for m in masks]
    assert all(m.all() or not m.any() for m in masks)          # each scale whole or masked
    assert flags == sorted(flags)                               # visible, then masked
    firsts.add(flags.index(True) if any(flags) else len(flags))
  assert firsts == {0, 1, 2}                                    # every scale gets generated
  dual = make_cfg(share_unmasked=0.0, share_fully_masked=1.0)   # two copies: all M_k masked
  assert all(m.all() for m in layout.draw_masks(dual, rng))


def test_next_patch_targets_every_patch():
  cfg = make_cfg(image_targets='next_patch', image_attention='causal', dual_copy=False,
                 target_shift=1, share_fully_masked=1.0, share_unmasked=0.0)
  b = {k: v[0] for k, v in image_doc_batch(cfg).items()}
  assert not b['is_masked'].any() and not (b['copy'] == 2).any()
  image = b['modality'] == 2
  np.testing.assert_array_equal(b['image_weights'] > 0, np.roll(image, -1))
  j = np.flatnonzero(image)
  np.testing.assert_array_equal(b['image_targets'][j - 1], b['patches'][j])


def test_positions_share_one_frame():
  cfg = make_cfg(seq_len=256, scales=(1, 2, 4, 8))
  b = {k: v[0] for k, v in image_doc_batch(cfg, n_images=1, text='ab').items()}
  pos, scale, copy = b['positions'], b['scale'], b['copy']
  img_open = np.flatnonzero(b['tokens'] == tk.IMG)[0]
  t0 = img_open + 1
  np.testing.assert_array_equal(pos[:img_open + 1], np.repeat(np.arange(img_open + 1)[:, None], 3, 1))
  fine = pos[(scale == 4) & (copy == 1)].reshape(8, 8, 3)
  assert np.all(fine[..., 0] == t0)
  np.testing.assert_array_equal(fine[..., 1] - t0, np.repeat(np.arange(8)[:, None], 8, 1))
  np.testing.assert_array_equal(fine[..., 2] - t0, np.repeat(np.arange(8)[None, :], 8, 0))
  for k, s in ((1, 1), (2, 2), (3, 4)):
    coarse = pos[(scale == k) & (copy == 1)].reshape(s, s, 3)
    np.testing.assert_array_equal(coarse, pos[(scale == k) & (copy == 2)].reshape(s, s, 3))
    f = 8 // s
    for i in range(s):
      for j in range(s):
        covered = fine[i * f:(i + 1) * f, j * f:(j + 1) * f].reshape(-1, 3)
        np.testing.assert_allclose(coarse[i, j], covered.mean(0), atol=1e-5)
  markers = (b['tokens'] >= tk.SCALE_BASE) & (b['tokens'] < tk.SCALE_BASE + tk.MAX_SCALES)
  assert np.all(pos[markers] == t0)
  end = np.flatnonzero(b['tokens'] == tk.IMG_END)[0]
  np.testing.assert_array_equal(pos[end], [t0 + 8] * 3)
  np.testing.assert_array_equal(pos[end + 1], [t0 + 9] * 3)   # text continues after the image


def test_text_targets():
  cfg = make_cfg(seq_len=512, share_unmasked=0.0, share_fully_masked=0.0)
  rng = np.random.default_rng(5)
  docs = [random_doc(rng) for _ in range(8)]
  batch, _ = layout.make_batch(docs, cfg, TOK, rng, 2)
  for r in range(2):
    t, w, tok_ids = batch['text_targets'][r], batch['text_weights'][r], batch['tokens'][r]
    seg, mod = batch['segment_ids'][r], batch['modality'][r]
    for i in range(len(t) - 1):
      want = (mod[i] == 1 and mod[i + 1] == 1 and seg[i] == seg[i + 1] > 0
              and not tk.is_structural(tok_ids[i + 1]))
      assert w[i] == float(want), i
      assert t[i] == (tok_ids[i + 1] if want else 0)
    assert not tk.is_structural(t[w > 0]).any()
    # <IMG> and <EOS> are predicted; <IMG> -> <scale_1> and last patch -> <IMG_END> are not.
    assert w[np.flatnonzero(tok_ids == tk.IMG) - 1].all()
    assert w[np.flatnonzero(tok_ids == tk.EOS) - 1].all()
    assert not w[tok_ids == tk.IMG].any() and not w[tok_ids == tk.EOS].any()


def test_structural_tokens():
  s = tk.is_structural(np.arange(tk.VOCAB_SIZE))
  assert set(np.flatnonzero(s)) == {tk.PAD, tk.BOS, tk.PATCH, tk.IMG_END, *range(8, 16)}
  assert TOK.vocab_size == 272 and TOK.scale_token(1) == 8 and TOK.scale_token(8) == 15
  with pytest.raises(ValueError):
    TOK.scale_token(9)


def test_caption_dropout_removes_text():
  cfg = make_cfg(caption_dropout=1.0)
  rng = np.random.default_rng(0)
  img = rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)
  batch, _ = layout.make_batch([['cap', img, 'tion'], ['text only']], cfg, TOK, rng, 1)
  seg = batch['segment_ids'][0]
  assert not (batch['tokens'][0][seg == 1] >= tk.BYTE_OFFSET).any()
  assert TOK.decode(batch['tokens'][0][seg == 2]) == 'text only'


def test_packing_renumbers_and_round_trips():
  cfg = make_cfg(seq_len=160, scales=(1, 2), share_unmasked=0.0)
  rng = np.random.default_rng(7)
  texts = [f'doc {i}: ' + 'x' * int(rng.integers(0, 30)) for i in range(12)]
  docs = [[t, rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), '.'] for t in texts]
  batch, stats = layout.make_batch(docs, cfg, TOK, rng, 2)
  assert 2 < stats.documents < 12 and stats.consumed == stats.documents
  seen = []
  for r in range(2):
    seg, img = batch['segment_ids'][r], batch['image_id'][r]
    used = seg > 0
    assert np.all(np.diff(seg[used]) >= 0) and not used[np.argmin(used):].any()
    ids = np.unique(seg[used])
    np.testing.assert_array_equal(ids, np.arange(1, len(ids) + 1))
    np.testing.assert_array_equal(np.unique(img[img > 0]), ids)  # one image per doc here
    for d in ids:
      seen.append(TOK.decode(batch['tokens'][r][seg == d]))
      start = np.flatnonzero(seg == d)[0]
      assert batch['positions'][r, start, 0] == 0       # positions restart per document
  assert sorted(seen) == sorted(t + '.' for t in texts[:stats.documents])
  # The rest goes into the next batch.
  batch2, stats2 = layout.make_batch(docs[stats.consumed:], cfg, TOK, rng, 2)
  assert stats2.documents > 0 and batch2['segment_ids'][0, 0] == 1


def test_first_fit_stops_without_consuming():
  cfg = make_cfg(seq_len=20, scales=(1,))
  enc = [layout.encode_document(['a' * n], cfg, TOK, np.random.default_rng(0)) for n in (10, 10, 3, 10)]
  batch, stats = layout.pack(enc, cfg, 2)
  # 12 + 12 tokens fill both rows past 8 free; the 5-token doc fits row 0; the last fits nowhere.
  assert stats.documents == 3 and stats.consumed == 3 and stats.tokens == 29
  assert list(batch['segment_ids'][0, 10:19]) == [1] * 2 + [2] * 5 + [0] * 2
  packer = layout.Packer(cfg, 1)
  assert packer.add(enc[0]) and not packer.add(enc[1])
  _, s = packer.finish()
  assert s.documents == 1 and packer.add(enc[1])


def test_long_text_truncated_big_image_skipped():
  cfg = make_cfg(seq_len=40, scales=(1, 2))
  rng = np.random.default_rng(0)
  big = layout.LayoutConfig(**{**cfg.__dict__, 'scales': (1, 2, 8)})
  img = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
  long_text = 'hello world ' * 10
  enc = [layout.encode_document(['a', img], big, TOK, rng),
         layout.encode_document([long_text], cfg, TOK, rng)]
  batch, stats = layout.pack(enc, cfg, 1)
  assert stats.skipped == 1 and stats.truncated == 1 and stats.documents == 1
  assert stats.consumed == 2 and stats.tokens == 40
  assert batch['tokens'][0, 0] == tk.BOS and TOK.decode(batch['tokens'][0]) == long_text[:39]
  assert batch['text_weights'][0, -1] == 0 and batch['text_weights'][0, -2] == 1
  # An image document longer than a row is skipped by make_batch too, never a crash.
  batch, stats = layout.make_batch([['a', img, 'b' * 30], ['ok']], cfg, TOK, rng, 1)
  assert stats.skipped == 1 and stats.documents == 1
  assert TOK.decode(batch['tokens'][0]) == 'ok'


def test_rows_stay_within_capacities_and_batches_past_them_are_named():
  # 2 scales: an image is 14 tokens (10 image tokens, up to 5 targets); 5 fit a row of 80.
  cfg = make_cfg(seq_len=80, scales=(1, 2), share_unmasked=0.0, share_fully_masked=1.0)
  assert cfg.capacity_bounds() == contract.Capacities(80, 50, 79, 25)
  tight = layout.LayoutConfig(**{**cfg.__dict__, 'max_text_tokens': 40,
                                 'max_image_targets': 5})
  rng = np.random.default_rng(0)
  img = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
  docs = [['ab', img]] * 4 + [['a long text-only document ' * 3]]
  enc = [layout.encode_document(d, tight, TOK, rng) for d in docs]
  batch, stats = layout.pack(enc, tight, 4)
  counts = layout.row_counts(batch)
  # One fully masked image fills a row's 5 image targets: one image document per row,
  # though two would fit its 80 tokens; the long text is cut to the 40 text tokens.
  assert counts[:, 3].tolist() == [5, 5, 5, 5] and stats.documents == 4
  batch, stats = layout.pack(enc[-1:], tight, 1)
  assert stats.truncated == 1 and layout.row_counts(batch)[0, 0] == 40
  layout.check_capacities(batch, tight)
  # The same documents packed without the capacities overflow them: one line names the key.
  loose, _ = layout.pack(enc[:4], cfg, 2)
  with pytest.raises(layout.CapacityError, match=r'data.max_image_targets=5: raise '):
    layout.check_capacities(loose, tight)
