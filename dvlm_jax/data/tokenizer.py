"""Byte-level tokenizer with the special tokens of the VLM sequence layout.

Ids 0..15 are special, 16..271 are the 256 byte values. A byte vocabulary needs
no trained merges and no files, so every process tokenizes identically offline,
and any unicode text round-trips.

  id   token        meaning
  0    PAD          padding (segment 0)
  1    BOS          start of a document
  2    EOS          end of a document (a text target: the model learns to stop)
  3    IMG          "an image comes now" (a text target: the model can start an image)
  4    IMG_END      end of an image
  5    PATCH        placeholder id at image-patch positions (pixels come in `patches`)
  6-7  (reserved)
  8-15 scale k     marker before scale k = 1..MAX_SCALES of an image
  16+b byte b
"""

from __future__ import annotations

import numpy as np

PAD = 0
BOS = 1
EOS = 2
IMG = 3
IMG_END = 4
PATCH = 5
SCALE_BASE = 8
MAX_SCALES = 8
BYTE_OFFSET = 16
VOCAB_SIZE = BYTE_OFFSET + 256


def scale_token(k: int) -> int:
  """Id of the marker that opens scale k (1-based, 1..MAX_SCALES)."""
  if not 1 <= k <= MAX_SCALES:
    raise ValueError(f'scale index must lie in 1..{MAX_SCALES}, got {k}')
  return SCALE_BASE + k - 1


def is_structural(ids) -> np.ndarray:
  """Bool array: ids that the layout fixes, so they are never text-loss targets.

  PAD, BOS, PATCH, the scale markers and IMG_END follow deterministically from
  the layout (an image always continues `<IMG> <scale_1> ...`), so predicting
  them teaches nothing and would dilute the text loss. EOS and IMG are real
  choices of the writer and stay targets.
  """
  ids = np.asarray(ids)
  scale = (ids >= SCALE_BASE) & (ids < SCALE_BASE + MAX_SCALES)
  return (ids == PAD) | (ids == BOS) | (ids == PATCH) | (ids == IMG_END) | scale


class ByteTokenizer:
  """UTF-8 bytes <-> token ids; special tokens are added by the layout, not here."""

  @property
  def vocab_size(self) -> int:
    return VOCAB_SIZE

  def encode(self, text: str) -> np.ndarray:
    """Text -> int32 ids of its UTF-8 bytes (no BOS/EOS)."""
    data = np.frombuffer(text.encode('utf-8'), dtype=np.uint8)
    return data.astype(np.int32) + BYTE_OFFSET

  def decode(self, ids) -> str:
    """Ids -> text; special and out-of-range ids are skipped, bad UTF-8 is replaced."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    ids = ids[(ids >= BYTE_OFFSET) & (ids < VOCAB_SIZE)]
    return (ids - BYTE_OFFSET).astype(np.uint8).tobytes().decode('utf-8', errors='replace')

  def scale_token(self, k: int) -> int:
    return scale_token(k)
