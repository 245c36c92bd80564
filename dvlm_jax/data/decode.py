"""Records -> documents, with the bad-input policy of the real-data pipeline.

A record (what a TFDS builder wrote, see docs/data.md) is a dict:

  id      str (or bytes)
  images  sequence of encoded image bytes (PNG, JPEG, ...; may be corrupt)
  texts   sequence of str or bytes (may be empty or not UTF-8)
  items   str over {'T', 'I'}: the document order, consuming texts and images in
          order; '' means a caption pair whose order the pipeline chooses
  labels  JSON str (not read here)

Real files are messy, so every record is either decoded into a valid document or
skipped, and every problem is reported as an `Issue` (a reason, the record id and
whether the record was skipped). The caller feeds the issues to a
`BadRecordCounter`, which logs the first few per reason, counts all, and stops
the run with `TooManyBadRecords` once the skipped fraction passes the limit.

Skip reasons (the record is dropped):
  empty_image        zero-byte image
  not_an_image       bytes that no image decoder recognises (text, HTML, ...)
  too_many_pixels    declared size above data.max_image_pixels (decompression bomb);
                     checked from the header, before any pixel is decoded
  corrupt_image      truncated or otherwise undecodable PNG/JPEG data
  unsupported_mode   a pixel format with no sound RGB meaning (float images)
  empty_caption      a caption pair whose caption is empty
  empty_document     nothing left after dropping empty text spans
  malformed_record   fields that break the record contract (items vs. counts)
  too_long_for_row   its images alone need more tokens than a row holds

Fix reasons (the record is kept, the problem counted):
  text_not_utf8      text bytes decoded with U+FFFD replacement characters
  text_truncated     text cut so the document fits one row
  empty_text_dropped an empty text span of an interleaved document dropped
"""

from __future__ import annotations

import collections
import dataclasses
import io
import logging
import warnings
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageOps

from dvlm_jax.data import layout
from dvlm_jax.data import tokenizer as tokenizer_lib

log = logging.getLogger(__name__)

# Our own size check (data.max_image_pixels, before decoding) replaces Pillow's
# warning; Pillow still refuses outright above 2 * Image.MAX_IMAGE_PIXELS, which
# is reported as too_many_pixels as well.
warnings.filterwarnings('ignore', category=Image.DecompressionBombWarning)

SKIP_REASONS = ('empty_image', 'not_an_image', 'too_many_pixels', 'corrupt_image',
                'unsupported_mode', 'empty_caption', 'empty_document', 'malformed_record',
                'too_long_for_row')
FIX_REASONS = ('text_not_utf8', 'text_truncated', 'empty_text_dropped')

# Errors Pillow (and the codecs under it) raise on broken data. Anything else is a
# bug in this code and must not be hidden as a "bad record".
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError,
                  MemoryError, Image.DecompressionBombError)


class BadRecord(Exception):
  """The record cannot become a document; `reason` is one of SKIP_REASONS."""

  def __init__(self, reason: str, detail: str = ''):
    super().__init__(f'{reason}: {detail}' if detail else reason)
    self.reason = reason
    self.detail = detail


class TooManyBadRecords(RuntimeError):
  """More than data.max_bad_fraction of the records read so far were skipped."""


@dataclasses.dataclass(frozen=True)
class Issue:
  """One problem of one record: skipped (the record is dropped) or fixed (kept)."""
  reason: str
  record_id: str
  skipped: bool
  detail: str = ''


# ---------------------------------------------------------------------------- images

def _to_uint8_16bit(a: np.ndarray) -> np.ndarray:
  """16-bit samples -> uint8 with rounding: 65535 maps to 255, nothing is clipped away."""
  a = np.clip(a.astype(np.int64), 0, 65535)
  return ((a * 255 + 32767) // 65535).astype(np.uint8)


def _to_rgb_array(im: Image.Image) -> np.ndarray:
  """A loaded Pillow image in any common mode -> uint8 [H, W, 3].

  Transparency is composited over white by `layout.to_rgb`, so a decoded file
  and an in-memory RGBA array give the same pixels.
  """
  mode = im.mode
  if mode == 'RGB':
    return np.asarray(im, dtype=np.uint8)
  if mode in ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I'):
    # 16-bit grayscale (PNG/TIFF); 'I' is how older decoders hand it over. A plain
    # convert('L') would clip everything above 255 to white.
    gray = _to_uint8_16bit(np.asarray(im))
    return layout.to_rgb(gray)
  if mode == 'F':
    raise BadRecord('unsupported_mode', 'floating-point image (mode F) has no fixed range')
  if mode in ('RGBA', 'LA', 'PA', 'RGBa', 'La') or (mode == 'P' and 'transparency' in im.info):
    return layout.to_rgb(np.asarray(im.convert('RGBA'), dtype=np.uint8))
  if mode == 'L':
    return layout.to_rgb(np.asarray(im, dtype=np.uint8))
  # P, 1, CMYK, YCbCr, LAB, HSV, RGBX: Pillow knows their RGB meaning.
  return np.asarray(im.convert('RGB'), dtype=np.uint8)


def decode_image(data: Any, *, max_pixels: int, draft_side: int | None = None) -> np.ndarray:
  """Encoded image bytes -> uint8 [H, W, 3]; raises BadRecord with the reason.

  Args:
    data: the encoded file (bytes-like), or the pixels already decoded (uint8 [H, W, 3]).
    max_pixels: largest accepted width * height, checked from the header before
      the pixels are decoded, so a decompression bomb costs nothing.
    draft_side: JPEGs larger than this are decoded at a reduced DCT scale (still
      at least this size): the layout shrinks them anyway, and it is much faster.
  """
  if isinstance(data, np.ndarray) and data.ndim == 0:
    data = data.item()
  if isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 3 \
      and data.shape[-1] == 3:   # decoded already (the built-in source, in-memory sources)
    if data.shape[0] * data.shape[1] > max_pixels:
      raise BadRecord('too_many_pixels', f'{data.shape[1]}x{data.shape[0]} > '
                      f'data.max_image_pixels={max_pixels}')
    return data
  if not isinstance(data, (bytes, bytearray, memoryview, np.bytes_)):
    raise BadRecord('malformed_record', f'image must be encoded bytes, got {type(data).__name__}')
  data = bytes(data)
  if not data:
    raise BadRecord('empty_image', 'zero bytes')
  try:
    im = Image.open(io.BytesIO(data))
  except Image.DecompressionBombError as e:
    raise BadRecord('too_many_pixels', str(e)) from None
  except Image.UnidentifiedImageError:
    raise BadRecord('not_an_image', f'{len(data)} bytes starting {data[:8]!r}') from None
  except _DECODE_ERRORS as e:
    raise BadRecord('corrupt_image', f'header: {e}') from None
  w, h = im.size
  if w <= 0 or h <= 0:
    raise BadRecord('empty_image', f'declared size {w}x{h}')
  if w * h > max_pixels:
    raise BadRecord('too_many_pixels', f'declared {w}x{h} > data.max_image_pixels={max_pixels}')
  try:
    if draft_side and im.format == 'JPEG' and min(w, h) >= 2 * draft_side:
      im.draft('RGB', (draft_side, draft_side))
    im.load()
    im = ImageOps.exif_transpose(im)   # phone photos store their rotation in EXIF
    rgb = _to_rgb_array(im)
  except BadRecord:
    raise
  except _DECODE_ERRORS as e:
    raise BadRecord('corrupt_image', f'{im.format} {w}x{h} {im.mode}: {e}') from None
  return rgb


# ------------------------------------------------------------------------------ text

def as_str(value: Any) -> tuple[str, bool]:
  """str / bytes / numpy scalar -> (text, replaced): invalid UTF-8 becomes U+FFFD."""
  if isinstance(value, np.ndarray) and value.ndim == 0:
    value = value.item()
  if isinstance(value, np.str_):
    value = str(value)
  if isinstance(value, str):
    return value, False
  if isinstance(value, (bytes, bytearray, memoryview, np.bytes_)):
    raw = bytes(value)
    try:
      return raw.decode('utf-8'), False
    except UnicodeDecodeError:
      return raw.decode('utf-8', errors='replace'), True
  raise BadRecord('malformed_record', f'expected text, got {type(value).__name__}')


def as_list(value: Any) -> list:
  """A record's sequence field (list, tuple, numpy array, None) -> list."""
  if value is None:
    return []
  if isinstance(value, np.ndarray):
    return list(value.reshape(-1)) if value.ndim else [value.item()]
  if isinstance(value, (list, tuple)):
    return list(value)
  if isinstance(value, (str, bytes)):
    return [value]
  raise BadRecord('malformed_record', f'expected a sequence, got {type(value).__name__}')


def record_id(record: Any, fallback: str) -> str:
  """The record's id as text (ids arrive as bytes from some sources); `fallback` if absent."""
  if isinstance(record, dict) and record.get('id') is not None:
    try:
      text, _ = as_str(record['id'])
      return text or fallback
    except BadRecord:
      pass
  return fallback


def truncate_text(text: str, tokenizer, max_tokens: int) -> str:
  """The longest prefix of `text` that encodes to at most `max_tokens` tokens."""
  if max_tokens <= 0:
    return ''
  if isinstance(tokenizer, tokenizer_lib.ByteTokenizer):
    # One token per UTF-8 byte: cut the bytes, drop a split trailing character.
    return text.encode('utf-8')[:max_tokens].decode('utf-8', errors='ignore')
  if len(tokenizer.encode(text)) <= max_tokens:
    return text
  lo, hi = 0, len(text)          # invariant: text[:lo] fits, text[:hi] does not
  while hi - lo > 1:
    mid = (lo + hi) // 2
    if len(tokenizer.encode(text[:mid])) <= max_tokens:
      lo = mid
    else:
      hi = mid
  return text[:lo]


def fit_to_row(doc: list, cfg: layout.LayoutConfig, tokenizer) -> tuple[list, bool]:
  """Cuts text items so the laid-out document fits one row; (doc, whether text was cut).

  Images are never cut (a block without its end would break the attention rule);
  text keeps its order and later spans give way first.
  """
  n_images = sum(isinstance(x, np.ndarray) for x in doc)
  budget = cfg.seq_len - 2 - n_images * cfg.image_tokens   # 2: <BOS>, <EOS>
  if budget < 0:
    raise BadRecord('too_long_for_row', f'{n_images} images need '
                    f'{n_images * cfg.image_tokens + 2} tokens > data.seq_len={cfg.seq_len}')
  lengths = [len(tokenizer.encode(x)) if isinstance(x, str) else 0 for x in doc]
  if sum(lengths) <= budget:
    return doc, False
  out, left = [], budget
  for item, n in zip(doc, lengths):
    if isinstance(item, str):
      item = truncate_text(item, tokenizer, left) if n > left else item
      left -= len(tokenizer.encode(item)) if item else 0
      if not item:
        continue
    out.append(item)
  return out, True


# --------------------------------------------------------------------------- records

@dataclasses.dataclass(frozen=True)
class DecodeOptions:
  """How records become documents (config.data.* and the layout's image size)."""
  max_image_pixels: int
  generation_share: float
  generation_prompt: str
  draft_side: int | None


def record_to_document(record: Any, rid: str, options: DecodeOptions,
                       rng: np.random.Generator) -> tuple[list, list[Issue]]:
  """A record -> (document of str / uint8 [H, W, 3] items, fixed issues).

  Raises BadRecord when the record must be skipped. Randomness (caption order,
  which caption of several) comes only from `rng`, so the caller decides how it
  is seeded.
  """
  if not isinstance(record, dict):
    raise BadRecord('malformed_record', f'expected a dict, got {type(record).__name__}')
  issues = []
  items, _ = as_str(record.get('items', '') or '')
  if set(items) - {'T', 'I'}:
    raise BadRecord('malformed_record', f"items {items[:40]!r} has letters other than 'T', 'I'")
  raw_images = as_list(record.get('images'))
  texts = []
  for value in as_list(record.get('texts')):
    text, replaced = as_str(value)
    if replaced:
      issues.append(Issue('text_not_utf8', rid, False))
    texts.append(text)

  if not items:   # a caption pair: one image, one caption (one of several, at random)
    if len(raw_images) != 1:
      raise BadRecord('malformed_record', f'caption pair with {len(raw_images)} images')
    captions = [t for t in texts if t.strip()]
    if not captions:
      raise BadRecord('empty_caption', f'{len(texts)} texts, none with content')
    caption = captions[int(rng.integers(len(captions)))] if len(captions) > 1 else captions[0]
    image = decode_image(raw_images[0], max_pixels=options.max_image_pixels,
                         draft_side=options.draft_side)
    if rng.random() < options.generation_share:
      # Generation style: the caption conditions the image (imgen loss).
      return [options.generation_prompt + caption, image], issues
    return [image, caption], issues    # understanding style: the image conditions the text

  if items.count('I') != len(raw_images) or items.count('T') != len(texts):
    raise BadRecord('malformed_record', f'items {items!r} vs {len(raw_images)} images, '
                    f'{len(texts)} texts')
  doc, it_images, it_texts = [], iter(raw_images), iter(texts)
  for kind in items:
    if kind == 'I':
      doc.append(decode_image(next(it_images), max_pixels=options.max_image_pixels,
                              draft_side=options.draft_side))
      continue
    text = next(it_texts)
    if text:
      doc.append(text)
    else:
      issues.append(Issue('empty_text_dropped', rid, False))
  if not doc:
    raise BadRecord('empty_document', 'no image and no non-empty text')
  return doc, issues


# ------------------------------------------------------------------------- counting

class BadRecordCounter:
  """Counts records seen, skipped and fixed per reason; stops the run past a bad fraction.

  The first `log_first` issues of every reason are logged with their record ids,
  the rest only counted, so a broken data set cannot flood the log. The check
  starts after `min_records` so that a few bad records at the very start do not
  trip a small fraction.
  """

  def __init__(self, max_bad_fraction: float, *, min_records: int = 100, log_first: int = 3,
               examples: int = 5, setting: str = 'data.max_bad_fraction'):
    self.max_bad_fraction = float(max_bad_fraction)
    self.setting = setting   # what the user raises to accept more (named in the error)
    self.min_records = int(min_records)
    self.log_first = int(log_first)
    self.n_examples = int(examples)
    self.seen = 0
    self.skipped: collections.Counter = collections.Counter()
    self.fixed: collections.Counter = collections.Counter()
    self.examples: dict[str, list[str]] = {}

  @property
  def total_skipped(self) -> int:
    return sum(self.skipped.values())

  def add(self, issues: Sequence[Issue]) -> None:
    """One record read, with its issues (at most one of them a skip)."""
    self.seen += 1
    for issue in issues:
      counts = self.skipped if issue.skipped else self.fixed
      counts[issue.reason] += 1
      ids = self.examples.setdefault(issue.reason, [])
      if len(ids) < self.n_examples:
        ids.append(issue.record_id)
      if counts[issue.reason] <= self.log_first:
        action = 'skipped' if issue.skipped else 'kept'
        more = ' (further ones counted, not logged)' if counts[issue.reason] == self.log_first else ''
        log.warning('record %s %s: %s%s%s', issue.record_id, action, issue.reason,
                    f' ({issue.detail})' if issue.detail else '', more)
    self.check()

  def check(self) -> None:
    """Raises TooManyBadRecords if the skipped fraction is past the limit."""
    if self.seen < self.min_records:
      return
    bad = self.total_skipped
    if bad / self.seen > self.max_bad_fraction:
      raise TooManyBadRecords(
          f'{bad} of {self.seen} records skipped ({bad / self.seen:.1%}), more than '
          f'{self.setting}={self.max_bad_fraction:g}: {self.describe()}. Fix or rebuild '
          f'the data set, or raise {self.setting}')

  def describe(self) -> str:
    """Per reason: count and example record ids."""
    parts = []
    for kind, counts in (('skipped', self.skipped), ('fixed', self.fixed)):
      for reason, n in sorted(counts.items()):
        parts.append(f'{reason} {n} {kind} (e.g. {", ".join(self.examples.get(reason, []))})')
    return '; '.join(parts) or 'no problems'

  def state(self) -> dict[str, Any]:
    """JSON-friendly counts, for the data iterator's checkpoint."""
    return {'seen': self.seen, 'skipped': dict(self.skipped), 'fixed': dict(self.fixed),
            'examples': {k: list(v) for k, v in self.examples.items()}}

  def restore(self, state: dict[str, Any]) -> None:
    self.seen = int(state['seen'])
    self.skipped = collections.Counter({k: int(v) for k, v in state['skipped'].items()})
    self.fixed = collections.Counter({k: int(v) for k, v in state['fixed'].items()})
    self.examples = {k: list(v) for k, v in state['examples'].items()}

