"""Draws and summarises one packed batch: the library under `python -m
dvlm_jax.inspect_data`.

The picture is the quickest way to check the layout by eye:
  (a) a strip with one cell per token, coloured by modality/copy, with a dark
      tick where a scale, copy or image starts and a white tick at each new document;
  (b) the row's attention mask (white = may attend), computed like
      `dvlm_jax.contract.make_mask` from segment_ids and attn_end;
  (c) the first image of the row, per scale: the masked copy M_k as the model
      sees it (masked patches in grey-red) next to the unmasked copy U_k.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dvlm_jax import contract
from dvlm_jax.data import layout as layout_lib
from dvlm_jax.data import tokenizer as tokenizer_lib

# Token classes of the strip, in legend order: (name, RGB).
PAD, TEXT, MARKER, MASKED, VISIBLE, UNMASKED = range(6)
CLASS_STYLE = (
    ('pad', (45, 45, 45)),
    ('text', (110, 160, 230)),
    ('image marker', (235, 205, 60)),
    ('M_k masked', (220, 45, 45)),
    ('M_k visible', (245, 165, 165)),
    ('U_k', (60, 185, 95)),
)
MASKED_PATCH_RGB = (150, 70, 70)
TOKENS_PER_LINE = 128
CELL_W, CELL_H = 6, 12
MASK_MAX_TOKENS = 1024
IMAGE_VIEW_PX = 96
BG = (255, 255, 255)
INK = (0, 0, 0)


# ------------------------------------------------------------------------ per token

def token_classes(row: dict[str, np.ndarray]) -> np.ndarray:
  """int [L]: the strip class of every token of one row."""
  modality, copy, tokens = row['modality'], row['copy'], row['tokens']
  marker = ((tokens == tokenizer_lib.IMG) | (tokens == tokenizer_lib.IMG_END)
            | ((tokens >= tokenizer_lib.SCALE_BASE)
               & (tokens < tokenizer_lib.SCALE_BASE + tokenizer_lib.MAX_SCALES)))
  classes = np.full(modality.shape, PAD, np.int32)
  text, image = modality == contract.MODALITY_TEXT, modality == contract.MODALITY_IMAGE
  masked_copy = image & (copy == contract.COPY_MASKED)
  classes[text] = TEXT
  classes[text & marker] = MARKER
  classes[masked_copy & row['is_masked']] = MASKED
  classes[masked_copy & ~row['is_masked']] = VISIBLE
  classes[image & (copy == contract.COPY_UNMASKED)] = UNMASKED
  return classes


def attention_mask(segment_ids: np.ndarray, attn_end: np.ndarray) -> np.ndarray:
  """bool [L, L] for one row: the core's rule (`contract.make_mask`)."""
  return contract.make_mask(segment_ids[None], segment_ids[None], attn_end[None])[0]


# ------------------------------------------------------------------------- drawing

def draw_strip(row: dict[str, np.ndarray]) -> Image.Image:
  """One cell per token, wrapped at TOKENS_PER_LINE; ticks mark block starts."""
  classes = token_classes(row)
  length = classes.shape[0]
  lines = -(-length // TOKENS_PER_LINE)
  strip = Image.new('RGB', (TOKENS_PER_LINE * CELL_W, lines * (CELL_H + 2)), BG)
  draw = ImageDraw.Draw(strip)
  block = np.stack([row['segment_ids'], row['image_id'], row['scale'], row['copy']], -1)
  starts_block = np.r_[True, np.any(block[1:] != block[:-1], axis=-1)]
  starts_doc = np.r_[True, row['segment_ids'][1:] != row['segment_ids'][:-1]]
  for i in range(length):
    x = (i % TOKENS_PER_LINE) * CELL_W
    y = (i // TOKENS_PER_LINE) * (CELL_H + 2)
    draw.rectangle([x, y, x + CELL_W - 1, y + CELL_H - 1], fill=CLASS_STYLE[classes[i]][1])
    if starts_doc[i]:
      draw.line([x, y, x, y + CELL_H - 1], fill=BG)
    elif starts_block[i]:
      draw.line([x, y, x, y + CELL_H - 1], fill=INK)
  return strip


def draw_mask(segment_ids: np.ndarray, attn_end: np.ndarray) -> Image.Image:
  """The attention mask of the first MASK_MAX_TOKENS tokens, enlarged to >= 256 px."""
  n = min(segment_ids.shape[0], MASK_MAX_TOKENS)
  mask = attention_mask(segment_ids[:n], attn_end[:n])
  picture = Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode='L')
  factor = max(1, 256 // n)
  return picture.resize((n * factor, n * factor), Image.NEAREST).convert('RGB')


def patches_to_image(patches: np.ndarray, positions: np.ndarray, patch_size: int) -> np.ndarray:
  """uint8 [s*p, s*p, 3] from [s*s, p*p*3] patches in [-1, 1] at (t, y, x) positions.

  Patches are placed by their (y, x) positions, not by their order in the row,
  so the picture is right however the layout orders a scale.
  """
  order = np.lexsort((positions[:, 2], positions[:, 1]))
  pixels = layout_lib.unpatchify(patches[order], patch_size)
  return np.clip(np.round((pixels + 1.0) * 127.5), 0, 255).astype(np.uint8)


def image_views(row: dict[str, np.ndarray], patch_size: int
                ) -> list[tuple[str, Image.Image]]:
  """(label, picture) for M_k and U_k of every scale of the row's first image."""
  ids = row['image_id'][(row['image_id'] > 0) & (row['modality'] == 2)]
  if ids.size == 0:
    return []
  first = ids.min()
  views = []
  for k in np.unique(row['scale'][row['image_id'] == first]):
    if k <= 0:
      continue
    for copy, name in ((1, 'M'), (2, 'U')):
      sel = (row['image_id'] == first) & (row['scale'] == k) & (row['copy'] == copy) \
          & (row['modality'] == 2)
      count = int(sel.sum())
      side = int(round(count ** 0.5))
      if count == 0 or side * side != count:
        continue
      patches = row['patches'][sel].astype(np.float32)
      if copy == 1:
        grey = np.float32(np.array(MASKED_PATCH_RGB) / 127.5 - 1.0)
        patches = patches.reshape(count, -1, 3)
        patches[row['is_masked'][sel]] = grey
        patches = patches.reshape(count, -1)
      pixels = patches_to_image(patches, row['positions'][sel], patch_size)
      big = Image.fromarray(pixels).resize((IMAGE_VIEW_PX, IMAGE_VIEW_PX), Image.NEAREST)
      views.append((f'{name}{k} ({side}x{side})', big))
  return views


def draw_row(batch: dict[str, np.ndarray], row_index: int, patch_size: int) -> Image.Image:
  """The whole picture for one row: legend, strip, mask, image views."""
  row = {k: v[row_index] for k, v in batch.items()}
  font = ImageFont.load_default()
  strip = draw_strip(row)
  mask = draw_mask(row['segment_ids'], row['attn_end'])
  views = image_views(row, patch_size)
  shown = min(row['segment_ids'].shape[0], MASK_MAX_TOKENS)
  lines = [
      f'row {row_index}: {row["tokens"].shape[0]} tokens; ' + ', '.join(
          f'{name}' for name, _ in CLASS_STYLE) + ' (swatches below)',
      f'attention mask of the first {shown} tokens (white = may attend); '
      'then the first image: M_k (masked patches grey-red) and U_k per scale',
  ]
  line_h = 16
  pad = 8
  views_h = (IMAGE_VIEW_PX + line_h) if views else line_h
  width = max(strip.width, mask.width, len(views) * (IMAGE_VIEW_PX + pad), 760) + 2 * pad
  height = (pad + len(lines) * line_h + line_h + pad + strip.height + pad + mask.height + pad
            + views_h + pad)
  canvas = Image.new('RGB', (width, height), BG)
  draw = ImageDraw.Draw(canvas)
  y = pad
  for text in lines:
    draw.text((pad, y), text, fill=INK, font=font)
    y += line_h
  x = pad
  for name, rgb in CLASS_STYLE:  # swatch legend
    draw.rectangle([x, y + 2, x + 10, y + 12], fill=rgb, outline=INK)
    draw.text((x + 14, y), name, fill=INK, font=font)
    x += 24 + int(draw.textlength(name, font=font))
  y += line_h + pad
  canvas.paste(strip, (pad, y))
  y += strip.height + pad
  canvas.paste(mask, (pad, y))
  y += mask.height + pad
  if not views:
    draw.text((pad, y), 'no image in this row', fill=INK, font=font)
  for i, (label, picture) in enumerate(views):
    x = pad + i * (IMAGE_VIEW_PX + pad)
    canvas.paste(picture, (x, y))
    draw.text((x, y + IMAGE_VIEW_PX + 2), label, fill=INK, font=font)
  return canvas


# ------------------------------------------------------------------------- summary

def summary(batch: dict[str, np.ndarray]) -> str:
  """Fields with shapes/dtypes, tokens per modality, masked fraction of M_k patches.

  Image ids and segment ids are numbered 1.. per row, so per-row maxima count them.
  """
  out = ['fields:']
  for name in sorted(batch):
    out.append(f'  {name:14s} {str(batch[name].shape):18s} {batch[name].dtype}')
  modality = batch['modality']
  total = modality.size
  counts = {name: int((modality == m).sum()) for m, name in ((0, 'pad'), (1, 'text'), (2, 'image'))}
  out.append('tokens: ' + ', '.join(f'{k} {v} ({v / total:.1%})' for k, v in counts.items()))
  masked_copy = (modality == 2) & (batch['copy'] == 1)
  masked = int((batch['is_masked'] & masked_copy).sum())
  out.append(f'masked: {masked} of {int(masked_copy.sum())} M_k patches '
             f'({masked / max(int(masked_copy.sum()), 1):.1%}); '
             f'images: {int(batch["image_id"].max(axis=1).sum())} in '
             f'{batch["image_id"].shape[0]} rows; '
             f'documents: {int(batch["segment_ids"].max(axis=1).sum())}; '
             f'text targets: {int((batch["text_weights"] > 0).sum())}, '
             f'image targets: {int((batch["image_weights"] > 0).sum())}')
  return '\n'.join(out)
