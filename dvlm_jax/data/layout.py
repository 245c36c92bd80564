"""Documents -> packed fixed-length rows in the batch contract (docs/batch.md).

Pure numpy, so it runs inside data-loader worker processes without touching
jax. Three steps:

  resize_to_scales  image -> one [s*s, patch_dim] patch array per scale
  encode_document   text spans and images -> 1-D per-token fields of one document
  Packer / pack     whole documents -> `batch_size` rows of `seq_len` tokens, each row
                    within the per-row capacities of the model's stages (`Capacities`)

A document is laid out as `<BOS> items... <EOS>`; an image item becomes

  <IMG> <scale_1> M_1 U_1 ... <scale_K> M_K U_K <IMG_END>

with M_k the masked copy and U_k the unmasked copy of scale k (U_k is left out
when `dual_copy=False`). Every token carries everything the model needs
(modality, copy, scale, 3-D rotary position, the last key it may see), so the
model never re-derives the layout.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
from PIL import Image

from dvlm_jax import contract
from dvlm_jax.contract import (CAPACITY_KEYS, COPY_MASKED, COPY_UNMASKED, MODALITY_IMAGE,
                               MODALITY_TEXT, Capacities)
from dvlm_jax.data import tokenizer as tok


Item = str | np.ndarray
Document = Sequence[Item]


class CapacityError(ValueError):
  """A batch row holds more positions of some kind than its capacity (names the key)."""


def position_kinds(fields: dict[str, np.ndarray]) -> np.ndarray:
  """[..., L, 4] bool: the `Capacities` kinds each position of contract fields counts in."""
  return np.stack([fields['modality'] == MODALITY_TEXT, fields['modality'] == MODALITY_IMAGE,
                   fields['text_weights'] > 0, fields['image_weights'] > 0], axis=-1)


def row_counts(fields: dict[str, np.ndarray]) -> np.ndarray:
  """[..., 4] count of each `Capacities` kind in rows of contract fields [..., L]."""
  return np.count_nonzero(position_kinds(fields), axis=-2)


@dataclasses.dataclass(frozen=True)
class LayoutConfig:
  """How documents become token rows: config.data.seq_len, config.image.* and the
  capacities, read by `from_config`. The defaults and the checks are the config's
  (`config.defaults`, `validation.validate`); tests vary one with `dataclasses.replace`."""
  seq_len: int
  patch_size: int
  scales: tuple[int, ...]          # patches per side, coarse to fine
  dual_copy: bool
  image_attention: str             # 'bidirectional' | 'causal'
  target_shift: int                # position t predicts the patch at t + shift
  image_targets: str               # 'masked' | 'next_patch'
  mask_ratio_min: float
  mask_ratio_max: float
  share_unmasked: float
  share_fully_masked: float
  prompted_fully_masked: float     # images after text: fully masked first with this probability
  caption_dropout: float
  prompt_text_weight: float        # text loss weight of text before an image (its prompt)
  imgen_residual: bool             # diffusion.target == 'residual' (`upsampled_base`)
  # Per-row bounds of each stage's stream (`Capacities`, `CAPACITY_KEYS`); 0 = the bound
  # the layout itself implies.
  max_text_tokens: int
  max_image_tokens: int
  max_text_targets: int
  max_image_targets: int

  def __post_init__(self):
    object.__setattr__(self, 'scales', tuple(int(s) for s in self.scales))

  @classmethod
  def from_config(cls, config) -> 'LayoutConfig':
    """Reads config.data.seq_len and config.image.* (see dvlm_jax/config.py)."""
    i = config.image
    return cls(
        seq_len=int(config.data.seq_len), patch_size=int(i.patch_size),
        scales=tuple(i.scales), dual_copy=bool(i.dual_copy),
        image_attention=str(i.attention), target_shift=int(i.target_shift),
        image_targets=str(i.targets), mask_ratio_min=float(i.mask_ratio_min),
        mask_ratio_max=float(i.mask_ratio_max), share_unmasked=float(i.share_unmasked),
        share_fully_masked=float(i.share_fully_masked),
        prompted_fully_masked=float(i.prompted_fully_masked),
        caption_dropout=float(i.caption_dropout),
        prompt_text_weight=float(config.data.prompt_text_weight),
        imgen_residual=config.diffusion.target == 'residual',
        **{f'max_{kind}': n
           for kind, n in contract.configured_capacities(config)._asdict().items()})

  @property
  def patch_dim(self) -> int:
    return self.patch_size ** 2 * 3

  @property
  def image_tokens(self) -> int:
    return contract.image_tokens(self.scales, self.dual_copy)

  def capacity_bounds(self) -> Capacities:
    """What a row can hold at most (`contract.capacity_bounds`)."""
    return contract.capacity_bounds(self.seq_len, self.scales, self.dual_copy)

  def capacities(self) -> Capacities:
    """The per-row capacities (`contract.capacities`): the configured `max_*` keys, at most
    the bound the layout implies."""
    return contract.capacities(self.seq_len, self.scales, self.dual_copy,
                               (self.max_text_tokens, self.max_image_tokens,
                                self.max_text_targets, self.max_image_targets))

  def batch_spec(self, batch_size: int) -> dict[str, tuple[tuple[int, ...], Any]]:
    """Field name -> (shape, dtype) of one packed batch (`contract.batch_spec`)."""
    return contract.batch_spec(batch_size, self.seq_len, self.patch_dim, self.imgen_residual)


def check_capacities(batch: dict[str, np.ndarray], cfg: LayoutConfig) -> None:
  """Raises CapacityError (one line naming the key) when a row exceeds a capacity: the
  model would drop those positions. Batches made by `Packer` never do."""
  counts = row_counts(batch)
  caps = np.asarray(cfg.capacities())
  over = np.argwhere(counts > caps)
  if over.size:
    row, kind = (int(x) for x in over[0])
    key = CAPACITY_KEYS[kind]
    raise CapacityError(
        f'batch row {row} holds {counts[row, kind]} {Capacities._fields[kind]} > '
        f'{key}={caps[kind]}: raise {key} (0 = the layout bound '
        f'{cfg.capacity_bounds()[kind]}) or build batches with layout.Packer')


# ---------------------------------------------------------------------------- images

def to_rgb(image: np.ndarray) -> np.ndarray:
  """uint8 [H, W], [H, W, 1], [H, W, 3] or [H, W, 4] -> uint8 [H, W, 3].

  RGBA is composited over white: the colour under fully transparent pixels is
  arbitrary in real files (emoji, clipart), and white is what a viewer shows.
  """
  a = np.asarray(image)
  if a.dtype != np.uint8:
    raise ValueError(f'images must be uint8 arrays, got dtype {a.dtype}')
  if a.ndim == 2:
    a = a[..., None]
  if a.ndim != 3 or a.shape[-1] not in (1, 3, 4):
    raise ValueError(f'images must be [H, W], [H, W, 3] (RGB) or [H, W, 4] (RGBA), '
                     f'got shape {a.shape}')
  if a.shape[0] == 0 or a.shape[1] == 0:
    raise ValueError(f'empty image of shape {a.shape}')
  if a.shape[-1] == 1:
    return np.repeat(a, 3, axis=-1)
  if a.shape[-1] == 4:
    alpha = a[..., 3:].astype(np.float32) / 255.0
    rgb = a[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
  return a


def patchify(pixels: np.ndarray, patch_size: int) -> np.ndarray:
  """[s*p, s*p, C] -> [s*s, p*p*C]: raster order over the grid, each patch as (py, px, c)."""
  side, _, c = pixels.shape
  s = side // patch_size
  x = pixels.reshape(s, patch_size, s, patch_size, c).transpose(0, 2, 1, 3, 4)
  return x.reshape(s * s, patch_size * patch_size * c)


def unpatchify(patches: np.ndarray, patch_size: int) -> np.ndarray:
  """Inverse of `patchify` for 3 channels: [s*s, p*p*3] -> [s*p, s*p, 3]."""
  s = int(round(np.sqrt(patches.shape[0])))
  x = patches.reshape(s, s, patch_size, patch_size, 3).transpose(0, 2, 1, 3, 4)
  return x.reshape(s * patch_size, s * patch_size, 3)


def resize_to_scales(image: np.ndarray, cfg: LayoutConfig) -> list[np.ndarray]:
  """Image -> per scale s a float32 [s*s, patch_dim] patch array with pixels in [-1, 1].

  The image is squashed to a square (no crop: cropping could cut away what
  the caption talks about). BOX (area average) when shrinking, so fine detail
  averages instead of aliasing; BICUBIC when enlarging.
  """
  rgb = to_rgb(image)
  h, w = rgb.shape[:2]
  pil = Image.fromarray(rgb)
  out = []
  for s in cfg.scales:
    side = s * cfg.patch_size
    shrink = side <= min(h, w)
    resample = Image.Resampling.BOX if shrink else Image.Resampling.BICUBIC
    # Patchify the uint8 pixels (a quarter of the bytes to shuffle), then scale in place.
    resized = np.asarray(pil.resize((side, side), resample=resample))
    patches = patchify(resized, cfg.patch_size).astype(np.float32)
    patches /= 127.5
    patches -= 1.0
    out.append(patches)
  return out


def upsampled_base(scale_patches: Sequence[np.ndarray], patch_size: int) -> list[np.ndarray]:
  """Per scale the base a residual diffusion target is drawn over: zero for the coarsest,
  scale k-1 upsampled (nearest pixel) to scale k's grid for the others, as [s*s, patch_dim].

  Nearest, not smooth: a box-shrunk picture upsampled by an integer factor gives back the
  flat regions exactly, so the residual of a flat shape or background is zero and the
  head only draws edges and detail; the colour comes from the coarser scale.
  """
  return [np.zeros_like(scale_patches[0])] + [
      upsample(coarse, patch_size, int(round(np.sqrt(fine.shape[0]))))
      for coarse, fine in zip(scale_patches, scale_patches[1:])]


def upsample(patches: np.ndarray, patch_size: int, side: int) -> np.ndarray:
  """[s*s, P] patches -> [side*side, P]: the picture upsampled to `side` patches a side
  (nearest pixel)."""
  pixels = unpatchify(np.asarray(patches), patch_size)
  index = np.arange(side * patch_size) * pixels.shape[0] // (side * patch_size)
  return patchify(pixels[index][:, index], patch_size).astype(np.asarray(patches).dtype)


def draw_masks(cfg: LayoutConfig, rng: np.random.Generator,
               prompted: bool = False) -> list[np.ndarray]:
  """Per scale a bool [s*s] mask of M_k (True = replaced by the mask token).

  A share of images is fully visible and a share masked as generation sees them, so
  that both extremes (understanding a clean image, generating from nothing) are in
  distribution; the rest masks a Uniform(min, max) ratio per scale. An image that
  follows text (`prompted`: generation's layout, caption then image) is first masked as
  generation sees it with probability `prompted_fully_masked`: generation learns from
  these documents while images read as they are (understanding) keep their own shares.
  Generation with two copies samples M_k with U_1..U_{k-1} visible: every M_k fully
  masked. With one copy the sample replaces the mask tokens, so generating scale k sees
  scales 1..k-1 whole and k..K masked: such an image masks the scales from a uniformly
  drawn k on.
  """
  sizes = [s * s for s in cfg.scales]
  if cfg.image_targets == 'next_patch':
    return [np.zeros(n, bool) for n in sizes]
  # Drawn only when the share is set, so that configs without it keep their random stream.
  as_generated = prompted and cfg.prompted_fully_masked > 0 and (
      rng.random() < cfg.prompted_fully_masked)
  u = rng.random()
  if as_generated or cfg.share_unmasked <= u < cfg.share_unmasked + cfg.share_fully_masked:
    first = 0 if cfg.dual_copy else int(rng.integers(len(sizes)))
    return [np.full(n, k >= first) for k, n in enumerate(sizes)]
  if u < cfg.share_unmasked:
    return [np.zeros(n, bool) for n in sizes]
  masks = []
  for n in sizes:
    ratio = rng.uniform(cfg.mask_ratio_min, cfg.mask_ratio_max)
    mask = np.zeros(n, bool)
    mask[rng.choice(n, size=int(np.rint(ratio * n)), replace=False)] = True
    masks.append(mask)
  return masks


def grid_positions(s: int, finest: int) -> np.ndarray:
  """float32 [s*s, 2] (y, x) of each cell centre of an s x s grid in the finest grid's frame.

  A cell (i, j) of the s-grid covers fine cells [i*S/s, (i+1)*S/s); its centre
  is (i + 0.5) * S/s - 0.5 in fine-cell units, so a coarse token sits exactly
  at the mean of the fine tokens it covers.
  """
  c = (np.arange(s, dtype=np.float64) + 0.5) * finest / s - 0.5
  y, x = np.meshgrid(c, c, indexing='ij')
  return np.stack([y.reshape(-1), x.reshape(-1)], axis=-1).astype(np.float32)


# ------------------------------------------------------------------------- documents

class _DocBuilder:
  """Appends spans of tokens with all their per-token fields; document-local indices."""

  def __init__(self, cfg: LayoutConfig):
    self.cfg = cfg
    self.spans: list[dict[str, np.ndarray]] = []
    self.length = 0       # tokens so far (row index of the next token, document-local)
    self.t = 0            # 1-D rotary position of the next text token
    self.images = 0
    self.prompt_end = 0

  def add(self, tokens, modality, positions, *, block=False, copy=0, scale=0,
          image_id=0, is_masked=None, patches=None, pixels=None, target=None, base=None):
    n = len(tokens)
    pd = self.cfg.patch_dim
    index = self.length + np.arange(n, dtype=np.int32)
    bidirectional = block and self.cfg.image_attention == 'bidirectional'
    span = {
        'tokens': np.asarray(tokens, np.int32),
        'modality': np.full(n, modality, np.int32),
        'is_masked': np.zeros(n, bool) if is_masked is None else is_masked,
        'copy': np.full(n, copy, np.int32),
        'scale': np.full(n, scale, np.int32),
        'image_id': np.full(n, image_id, np.int32),
        'positions': np.asarray(positions, np.float32).reshape(n, 3),
        # A block's tokens see up to the block's last token; everything else is causal.
        'attn_end': np.full(n, index[-1], np.int32) if bidirectional else index,
        'patches': np.zeros((n, pd), np.float32) if patches is None else patches,
        '_pixels': pixels,            # None: no target patches in this span
        '_target': np.zeros(n, bool) if target is None else target,
        '_base': base,                # residual targets: what each target is drawn over
    }
    self.spans.append(span)
    self.length += n

  def text(self, ids):
    """Text tokens (and markers) at consecutive 1-D positions (p, p, p)."""
    ids = np.asarray(ids, np.int32).reshape(-1)
    if ids.size == 0:
      return
    p = self.t + np.arange(ids.size, dtype=np.float32)
    self.add(ids, MODALITY_TEXT, np.repeat(p[:, None], 3, axis=1))
    self.t += ids.size

  def image(self, scale_patches: list[np.ndarray], masks: list[np.ndarray]):
    cfg = self.cfg
    self.prompt_end = self.length   # the text before here conditions an image
    self.text([tok.IMG])
    self.images += 1
    t0 = float(self.t)            # <IMG> sat at t0 - 1
    finest = cfg.scales[-1]
    bases = (upsampled_base(scale_patches, cfg.patch_size) if cfg.imgen_residual
             else [None] * len(cfg.scales))
    for k, (s, pix, mask, base) in enumerate(zip(cfg.scales, scale_patches, masks, bases),
                                             start=1):
      # The marker carries the scale: with target_shift=1 it predicts the first patch.
      self.add([tok.scale_token(k)], MODALITY_TEXT, [t0, t0, t0], scale=k)
      n = s * s
      yx = grid_positions(s, finest) + t0
      pos = np.concatenate([np.full((n, 1), t0, np.float32), yx], axis=1)
      if cfg.image_targets == 'masked':
        target = mask.copy()
      else:
        target = np.ones(n, bool)
      common = dict(block=True, scale=k, image_id=self.images, pixels=pix)
      # No defensive copies: finish() concatenates the spans into new arrays anyway.
      self.add(np.full(n, tok.PATCH), MODALITY_IMAGE, pos, copy=COPY_MASKED,
               is_masked=mask.copy(), patches=np.where(mask[:, None], np.float32(0.0), pix),
               target=target, base=base, **common)
      if cfg.dual_copy:
        self.add(np.full(n, tok.PATCH), MODALITY_IMAGE, pos, copy=COPY_UNMASKED,
                 patches=pix, **common)
    end = t0 + finest
    self.add([tok.IMG_END], MODALITY_TEXT, [end, end, end])
    self.t = int(end) + 1

  def finish(self) -> dict[str, np.ndarray]:
    doc = {k: np.concatenate([s[k] for s in self.spans]) for k in self.spans[0]
           if not k.startswith('_')}
    doc['segment_ids'] = np.ones(self.length, np.int32)
    doc['text_targets'], doc['text_weights'] = text_targets(doc['tokens'], doc['modality'])
    # A prompt's words are drawn independently of anything before them: predicting them
    # teaches only their marginal. Its loss weighs `prompt_text_weight`.
    doc['text_weights'][:self.prompt_end] *= self.cfg.prompt_text_weight
    doc['image_targets'], doc['image_weights'] = self._at_predicting('_pixels')
    if self.cfg.imgen_residual:
      doc['image_base'], _ = self._at_predicting('_base')
    return doc

  def _at_predicting(self, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Each target patch's row of span field `key` placed at its predicting position
    (patch j at j - target_shift), and the weights (1 there). Filled span by span, so no
    full-length pixel copy is concatenated first (the layout's biggest memory cost)."""
    shift = self.cfg.target_shift
    out = np.zeros((self.length, self.cfg.patch_dim), np.float32)
    weights = np.zeros(self.length, np.float32)
    offset = 0
    for span in self.spans:
      j = np.flatnonzero(span['_target'])
      if j.size:
        # A target patch always follows its scale marker, so offset + j - shift >= 0.
        out[offset + j - shift] = span[key][j]
        weights[offset + j - shift] = 1.0
      offset += len(span['tokens'])
    return out, weights


def text_targets(tokens: np.ndarray, modality: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Next-token targets of one document: t -> tokens[t+1] iff both are text and it isn't structural."""
  n = len(tokens)
  nxt = np.zeros(n, np.int32)
  nxt[:-1] = tokens[1:]
  nxt_text = np.zeros(n, bool)
  nxt_text[:-1] = modality[1:] == MODALITY_TEXT
  ok = (modality == MODALITY_TEXT) & nxt_text & ~tok.is_structural(nxt)
  return np.where(ok, nxt, 0).astype(np.int32), ok.astype(np.float32)


def encode_document(doc: Document, cfg: LayoutConfig, tokenizer: tok.ByteTokenizer,
                    rng: np.random.Generator) -> dict[str, np.ndarray]:
  """One document -> 1-D per-token fields (document-local indices, segment 1, images 1..).

  Raises ValueError for an item that is neither text nor a valid image.
  """
  items = list(doc)
  for item in items:
    if not isinstance(item, (str, np.ndarray)):
      raise ValueError(f'document items must be str or np.ndarray images, got {type(item).__name__}')
  has_image = any(isinstance(x, np.ndarray) for x in items)
  if has_image and rng.random() < cfg.caption_dropout:
    # Unconditional image documents teach the model p(image) for classifier-free guidance.
    items = [x for x in items if not isinstance(x, str)]
  b = _DocBuilder(cfg)
  b.text([tok.BOS])
  prompted = False   # some text came before: an image here is drawn from it (generation)
  for item in items:
    if isinstance(item, str):
      b.text(tokenizer.encode(item))
      prompted = prompted or bool(item)
    else:
      b.image(resize_to_scales(item, cfg), draw_masks(cfg, rng, prompted))
  b.text([tok.EOS])
  return b.finish()


# --------------------------------------------------------------------------- packing

@dataclasses.dataclass
class PackStats:
  """What one batch took in: packed documents (incl. truncated), skipped, real tokens."""
  documents: int = 0
  truncated: int = 0
  skipped: int = 0
  tokens: int = 0

  @property
  def consumed(self) -> int:
    """Input documents used up (packed or skipped): the caller's next document index."""
    return self.documents + self.skipped


class Packer:
  """Greedy first-fit of whole documents into `batch_size` rows of `seq_len` tokens,
  each row also within the per-row `cfg.capacities()` (a row is full when any is).

  Streaming use:

    packer = Packer(cfg, batch_size)
    for doc in docs:
      if not packer.add(doc):        # fits in no row: the batch is full
        yield packer.finish()
        packer.add(doc)              # always True on an empty packer

  `add` on an empty packer never returns False: a document either fits an empty
  row, is truncated (text only), or is skipped (an image that cannot fit a row or a
  capacity).
  """

  def __init__(self, cfg: LayoutConfig, batch_size: int):
    if batch_size < 1:
      raise ValueError(f'batch_size must be >= 1, got {batch_size}')
    self.cfg = cfg
    self.batch_size = batch_size
    # Per row: tokens, then the `Capacities` kinds; a document must fit all of them.
    self.limits = np.asarray((cfg.seq_len,) + tuple(cfg.capacities()))
    self._reset()

  def _reset(self):
    self.rows: list[list[dict[str, np.ndarray]]] = [[] for _ in range(self.batch_size)]
    self.used = np.zeros((self.batch_size, len(self.limits)), np.int64)
    self.stats = PackStats()

  def _sizes(self, doc: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([[len(doc['tokens'])], row_counts(doc)])

  def add(self, doc: dict[str, np.ndarray]) -> bool:
    """Places `doc` in the first row with room; False (doc not consumed) if none has room."""
    sizes = self._sizes(doc)
    if np.any(sizes > self.limits):
      if np.any(doc['modality'] == MODALITY_IMAGE):
        # Cutting an image would leave a block without its end: drop the document.
        self.stats.skipped += 1
        return True
      doc = truncate(doc, self._longest_prefix(doc))
      sizes = self._sizes(doc)
      self.stats.truncated += 1
    for r in range(self.batch_size):
      if np.all(self.used[r] + sizes <= self.limits):
        self.rows[r].append(doc)
        self.used[r] += sizes
        self.stats.documents += 1
        self.stats.tokens += int(sizes[0])
        return True
    return False

  def _longest_prefix(self, doc: dict[str, np.ndarray]) -> int:
    """Tokens of the longest prefix of a text-only document within an empty row's limits."""
    kinds = position_kinds(doc)
    per_token = np.concatenate([np.ones((len(kinds), 1), np.int64), kinds], axis=-1)
    counts = np.cumsum(per_token, axis=0)     # counts[m - 1]: of the first m tokens
    # ... whose last token loses its target when cut there (`truncate`).
    counts[:, 3] = np.concatenate([[0], counts[:-1, 3]])
    fits = np.all(counts <= self.limits, axis=-1)
    return int(np.argmin(fits)) if not fits.all() else len(fits)

  def empty(self) -> bool:
    return not self.used.any()

  def finish(self) -> tuple[dict[str, np.ndarray], PackStats]:
    """The packed batch (padding where rows are not full) and its stats; resets the packer."""
    batch = assemble(self.rows, self.cfg)
    stats = self.stats
    self._reset()
    return batch, stats


def truncate(doc: dict[str, np.ndarray], length: int) -> dict[str, np.ndarray]:
  """First `length` tokens of a text-only document; its last token loses its target."""
  out = {k: v[:length].copy() for k, v in doc.items()}
  # The cut-off next token is not in the row, so nothing there is to be predicted.
  out['text_targets'][-1] = 0
  out['text_weights'][-1] = 0.0
  return out


def assemble(rows: list[list[dict[str, np.ndarray]]], cfg: LayoutConfig) -> dict[str, np.ndarray]:
  """Concatenates each row's documents, renumbers segments/images per row, pads."""
  spec = cfg.batch_spec(len(rows))
  batch = {k: np.zeros(shape, dtype) for k, (shape, dtype) in spec.items()}
  # Padding attends only to itself (and its segment 0 masks even that out).
  batch['attn_end'][:] = np.arange(cfg.seq_len, dtype=np.int32)
  for r, docs in enumerate(rows):
    offset, images = 0, 0
    for d, doc in enumerate(docs, start=1):
      n = len(doc['tokens'])
      sl = slice(offset, offset + n)
      for k in spec:
        batch[k][r, sl] = doc[k]
      batch['segment_ids'][r, sl] = d
      batch['attn_end'][r, sl] = doc['attn_end'] + offset
      local = doc['image_id']
      batch['image_id'][r, sl] = np.where(local > 0, local + images, 0)
      images += int(local.max(initial=0))
      offset += n
  return batch


def pack(encoded_docs: Sequence[dict[str, np.ndarray]], cfg: LayoutConfig,
         batch_size: int) -> tuple[dict[str, np.ndarray], PackStats]:
  """Packs documents in order until the next one fits in no row.

  `encoded_docs[stats.consumed:]` are the documents left for the next batch
  (use `Packer` directly for a one-shot stream).
  """
  packer = Packer(cfg, batch_size)
  for doc in encoded_docs:
    if not packer.add(doc):
      break
  return packer.finish()


def make_batch(docs: Sequence[Document], cfg: LayoutConfig, tokenizer: tok.ByteTokenizer,
               rng: np.random.Generator, batch_size: int) -> tuple[dict[str, np.ndarray], PackStats]:
  """Encodes and packs raw documents; `docs[stats.consumed:]` were left for the next batch."""
  packer = Packer(cfg, batch_size)
  for doc in docs:
    if not packer.add(encode_document(doc, cfg, tokenizer, rng)):
      break
  return packer.finish()
