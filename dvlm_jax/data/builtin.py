"""Built-in example documents from the shapes world, and packed batches of them.

This is the data source behind `config.data.source = 'builtin'`: it needs no files
and no download, so the train command, tests and smoke runs work anywhere. The
Grain/ArrayRecord pipeline replaces it for real data; both yield batches in the
same contract (see `layout.py` and docs/).

Document kinds (a document is a list of text spans and uint8 [H, W, 3] images):
  generation     ['draw: <caption>', image]   text conditions the image (imgen loss)
  understanding  [image, '<caption>']         image conditions the text (LM loss)
  text           ['<caption with a relation sentence>']
                 keeps the LM honest on plain text about the same world.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

from dvlm_jax.data import layout as layout_lib
from dvlm_jax.data import shapes
from dvlm_jax.data import sentencepiece_tokenizer

GENERATION_PROMPT = 'draw: '
_MAX_SKIPPED = 1000   # documents dropped in a row before seq_len is declared too short
_LOOKAHEAD = 8         # documents tried after the first misfit before a batch is closed


@dataclasses.dataclass(frozen=True)
class Mix:
  """Shares of document kinds; understanding gets what is left (config data.builtin_*,
  where the defaults live)."""
  generation: float
  text: float
  max_shapes: int
  scenes: int          # > 0: every image is one of this many fixed scenes (`fixed_scenes`)

  def __post_init__(self):
    if not (0 <= self.generation and 0 <= self.text and self.generation + self.text <= 1):
      raise ValueError(f'document mix shares must be >= 0 and sum to <= 1, got {self}')
    if self.scenes < 0:
      raise ValueError(f'data.builtin_scenes must be >= 0 (0 = fresh scenes), got {self.scenes}')

  @classmethod
  def from_config(cls, config) -> 'Mix':
    data = config.data
    return cls(generation=float(data.builtin_generation), text=float(data.builtin_text),
               max_shapes=int(data.builtin_max_shapes), scenes=int(data.builtin_scenes))


_FIXED_SCENES_SEED = 1234


def fixed_scenes(mix: Mix) -> list[shapes.Scene]:
  """The small fixed world of `data.builtin_scenes` (a memorisation check: training and
  the held-out probes see the same scenes); independent of data.seed."""
  rng = np.random.default_rng(_FIXED_SCENES_SEED)
  return [shapes.sample_scene(rng, max_shapes=mix.max_shapes) for _ in range(mix.scenes)]


def generation_document(scene: shapes.Scene, image_px: int) -> list:
  return [GENERATION_PROMPT + shapes.caption(scene), shapes.render(scene, image_px)]


def understanding_document(scene: shapes.Scene, image_px: int) -> list:
  return [shapes.render(scene, image_px), shapes.caption(scene)]


def text_document(rng: np.random.Generator) -> list:
  """A two-shape scene told in words only, always with its relation sentence."""
  scene = shapes.sample_scene(rng, max_shapes=2, min_shapes=2, relation_prob=1.0)
  return [shapes.caption(scene)]


def example_documents(rng: np.random.Generator, image_px: int, mix: Mix) -> Iterator[list]:
  """Endless stream of documents; deterministic given the generator's state."""
  fixed = fixed_scenes(mix)
  while True:
    u = rng.random()
    if u < mix.text:
      yield text_document(rng)
      continue
    if fixed:
      scene = fixed[rng.integers(len(fixed))]
    else:
      scene = shapes.sample_scene(rng, max_shapes=mix.max_shapes)
    if u < mix.text + mix.generation:
      yield generation_document(scene, image_px)
    else:
      yield understanding_document(scene, image_px)


def image_size(config) -> int:
  """Side of the rendered images: exactly the finest scale, so it is never resampled."""
  return int(config.image.scales[-1]) * int(config.image.patch_size)


def _streams(config, seed: int | None) -> tuple[np.random.Generator, np.random.Generator]:
  """Independent generators for document content and for layout (masks, caption dropout).

  Separate streams keep the documents the same when a layout setting (mask ratio,
  number of scales) changes how many random numbers the layout draws.
  """
  seed = int(config.data.seed if seed is None else seed)
  docs_seq, layout_seq = np.random.SeedSequence(seed).spawn(2)
  return np.random.default_rng(docs_seq), np.random.default_rng(layout_seq)


def batches(config, seed: int | None = None, tokenizer=None) -> Iterator[dict[str, np.ndarray]]:
  """Endless packed batches of `config.data.batch_size` rows in the batch contract.

  Every batch has the same shapes and dtypes (`layout.batch_spec`). Deterministic
  for a seed (default `config.data.seed`). The global batch: multi-process runs
  slice their rows from it. Text is encoded with `tokenizer` (default: `data.tokenizer`).
  """
  cfg = layout_lib.LayoutConfig.from_config(config)
  if tokenizer is None:
    tokenizer = sentencepiece_tokenizer.load(str(config.data.tokenizer))
  docs_rng, layout_rng = _streams(config, seed)
  packer = layout_lib.Packer(cfg, int(config.data.batch_size))
  pending = []  # documents that fitted no row of the current batch, oldest first
  for doc in example_documents(docs_rng, image_size(config), Mix.from_config(config)):
    encoded = layout_lib.encode_document(doc, cfg, tokenizer, layout_rng)
    if not packer.add(encoded):
      # Look a few documents ahead before closing the batch: a shorter one may
      # still fill a gap. Documents are i.i.d., so the reordering biases nothing.
      pending.append(encoded)
      if len(pending) >= _LOOKAHEAD:
        batch, _ = packer.finish()
        yield batch
        pending = [d for d in pending if not packer.add(d)]  # the first always fits
    elif packer.stats.documents == 0 and packer.stats.skipped >= _MAX_SKIPPED:
      # The packer drops image documents longer than a row; without this the
      # stream would spin forever on a seq_len that holds an image but no caption.
      raise ValueError(f'data.seq_len={cfg.seq_len} holds none of the last {_MAX_SKIPPED} '
                       f'built-in documents (an image takes {cfg.image_tokens} tokens plus '
                       'its caption); raise data.seq_len')


def fixed_batch(config, seed: int | None = None) -> dict[str, np.ndarray]:
  """The first batch of `batches(config, seed)`."""
  return next(batches(config, seed))
