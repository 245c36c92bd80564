"""Full-length sequence arrays for inference, laid out by the training layout's own code.

Inference never re-derives the layout. A document is encoded once, up front, by
`layout`'s document builder (the code that lays out every training document), with
*slots* for what decoding will produce:

  text slots   text tokens whose ids are not known yet (PAD until decoded): their
               positions, attn_end and modality are fixed by the layout already,
               because they do not depend on which token is sampled;
  image slots  an image whose M_k is 100 % masked and whose U_k pixels are zero until
               the diffusion head has sampled scale k.

So the arrays the model sees at every decoding step are exactly the arrays training
would build for the finished document (`tests/test_inference.py` checks this), and
decoding only writes token ids and pixels into them.

Rows of a batch hold one document each, left-padded so that the index decoding
works at (the end of the prompt, or the `<IMG>` of the image to generate) is the same
in every row: one chunk start serves the whole batch and shapes stay static.
Positions are document-local, so the padding changes nothing the model computes.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from dvlm_jax import contract
from dvlm_jax.data import layout
from dvlm_jax.data import tokenizer as tok


@dataclasses.dataclass(frozen=True)
class ImageItem:
  """An image of a document: per scale its patches [s*s, patch_dim] in [-1, 1] and the
  mask of M_k (True = mask token). U_k holds `patches` whole."""
  patches: tuple[np.ndarray, ...]
  masks: tuple[np.ndarray, ...]


def image_item(image: np.ndarray, cfg: layout.LayoutConfig,
               masks: Sequence[np.ndarray] | None = None) -> ImageItem:
  """A uint8 image resized to every scale exactly as in training; `masks` None = clean."""
  patches = layout.resize_to_scales(image, cfg)
  if masks is None:
    masks = [np.zeros(len(p), bool) for p in patches]
  masks = tuple(np.asarray(m, bool).reshape(-1) for m in masks)
  for s, m in zip(cfg.scales, masks):
    if m.shape != (s * s,):
      raise ValueError(f'a mask of scale {s} needs {s * s} cells, got {m.shape}')
  return ImageItem(tuple(patches), masks)


def blank_image(cfg: layout.LayoutConfig) -> ImageItem:
  """The image slot of generation: every M_k fully masked, U_k zero until sampled."""
  return ImageItem(tuple(np.zeros((s * s, cfg.patch_dim), np.float32) for s in cfg.scales),
                   tuple(np.ones(s * s, bool) for s in cfg.scales))


def encode(items: Sequence[str | ImageItem], cfg: layout.LayoutConfig, tokenizer,
           text_slots: int = 0) -> dict[str, np.ndarray]:
  """`<BOS> items... [text_slots]` as 1-D fields of one document (no `<EOS>`: it is open).

  Built by the training layout's document builder, so positions, attn_end, copies,
  scales and masks are the training layout by construction.
  """
  builder = layout._DocBuilder(cfg)  # pylint: disable=protected-access  (the one layout)
  builder.text([tok.BOS])
  for item in items:
    if isinstance(item, str):
      builder.text(tokenizer.encode(item))
    elif isinstance(item, ImageItem):
      builder.image(list(item.patches), list(item.masks))
    else:
      raise ValueError(f'document items must be str or ImageItem, got {type(item).__name__}')
  # Slots: the layout of text tokens does not depend on their ids.
  builder.text(np.full(text_slots, tok.PAD, np.int32))
  return builder.finish()


def bucket(n: int, quantum: int) -> int:
  """n rounded up to a multiple of `quantum`: fewer distinct shapes, fewer compiles."""
  return max(quantum, -(-n // quantum) * quantum)


def place(docs: Sequence[dict[str, np.ndarray]], cfg: layout.LayoutConfig, length: int,
          anchors: Sequence[int], anchor: int) -> dict[str, np.ndarray]:
  """One document per row, shifted so that each doc's index `anchors[r]` lands on `anchor`.

  Padding (before and after) is segment 0 with attn_end = own index, as `layout.assemble`
  pads; the document's attn_end is shifted by its offset like packing shifts it.
  """
  spec = dataclasses.replace(cfg, seq_len=length).batch_spec(len(docs))
  batch = {k: np.zeros(shape, dtype) for k, (shape, dtype) in spec.items()}
  batch['attn_end'][:] = np.arange(length, dtype=np.int32)
  for r, (doc, a) in enumerate(zip(docs, anchors)):
    offset = anchor - a
    n = len(doc['tokens'])
    if offset < 0 or offset + n > length:
      raise ValueError(f'document of {n} tokens anchored at {a} does not fit a row of '
                       f'{length} at {anchor}')
    sl = slice(offset, offset + n)
    for k in spec:
      batch[k][r, sl] = doc[k]
    batch['attn_end'][r, sl] = doc['attn_end'] + offset
  return batch


@dataclasses.dataclass(frozen=True)
class ImageSlots:
  """Where one image's blocks sit in every row of a placed batch (row indices).

  markers[k] is `<scale_{k+1}>`, masked[k] / unmasked[k] the first index of M / U of
  scale k+1 (unmasked is None for single-copy layouts), sizes[k] = s*s, end `<IMG_END>`.
  """
  markers: tuple[int, ...]
  masked: tuple[int, ...]
  unmasked: tuple[int, ...] | None
  sizes: tuple[int, ...]
  end: int
  shift: int

  def predicting(self, k: int) -> int:
    """First predicting position of scale k (0-based): patch j is decoded at j - shift,
    so with shift 1 the first patch comes from the `<scale_k>` marker (as the training
    layout places `image_targets`)."""
    return self.masked[k] - self.shift

  def fed(self, k: int) -> int:
    """First index of the block that carries scale k's sample into the sequence:
    U_k, or M_k itself re-fed with the sample in a single-copy layout."""
    return self.unmasked[k] if self.unmasked is not None else self.masked[k]

  def passes(self) -> list[tuple[int, int]]:
    """The K+1 chunks (start, n) of next-scale generation.

    pass 0: everything up to M_1 (prompt, <IMG>, <scale_1>, M_1);
    pass k: U_k, <scale_{k+1}>, M_{k+1} in one forward pass;
    pass K: U_K, <IMG_END>.
    """
    out = [(0, self.masked[0] + self.sizes[0])]
    for k in range(1, len(self.sizes)):
      start = self.fed(k - 1)
      out.append((start, self.masked[k] + self.sizes[k] - start))
    start = self.fed(len(self.sizes) - 1)
    out.append((start, self.end + 1 - start))
    return out


def image_slots(batch: dict[str, np.ndarray], shift: int, image_id: int = 1) -> ImageSlots:
  """Reads the blocks of image `image_id` from the layout's fields; every row must agree."""
  found = None
  for r in range(batch['tokens'].shape[0]):
    row = {k: batch[k][r] for k in ('tokens', 'copy', 'scale', 'image_id')}
    slots = _row_slots(row, shift, image_id)
    if found is None:
      found = slots
    elif slots != found:
      raise ValueError(f'row {r} places image {image_id} elsewhere than row 0: rows must be '
                       'aligned on the image')
  if found is None:
    raise ValueError('empty batch')
  return found


def _row_slots(row, shift, image_id) -> ImageSlots:
  ours = row['image_id'] == image_id
  if not ours.any():
    raise ValueError(f'no image {image_id} in the row')
  markers, masked, unmasked, sizes = [], [], [], []
  k = 1
  while True:
    m = np.flatnonzero(ours & (row['copy'] == contract.COPY_MASKED) & (row['scale'] == k))
    if m.size == 0:
      break
    assert np.all(np.diff(m) == 1) and row['tokens'][m[0] - 1] == tok.scale_token(k), 'layout'
    u = np.flatnonzero(ours & (row['copy'] == contract.COPY_UNMASKED) & (row['scale'] == k))
    markers.append(int(m[0] - 1))
    masked.append(int(m[0]))
    sizes.append(int(m.size))
    if u.size:
      unmasked.append(int(u[0]))
    k += 1
  last = unmasked[-1] if unmasked else masked[-1]
  end = last + sizes[-1]
  assert row['tokens'][end] == tok.IMG_END, 'layout'
  return ImageSlots(tuple(markers), tuple(masked), tuple(unmasked) if unmasked else None,
                    tuple(sizes), end, shift)
