"""Optional SentencePiece tokenizer with the byte tokenizer's special ids, and its trainer.

The layout only needs `encode`, `decode`, `vocab_size` and the special ids of
`tokenizer.py` (0..15: PAD, BOS, EOS, IMG, IMG_END, PATCH, scale markers). A
SentencePiece model keeps those ids reserved by shifting every piece id up by
`tokenizer.BYTE_OFFSET`, so `layout.py` and `tokenizer.is_structural` work
unchanged. Byte fallback keeps every unicode string encodable.

Train one offline on the texts of built data sets:

  python -m dvlm_jax.data.sentencepiece_tokenizer --data_dir data --out data/tok.model \
      [--datasets shapes,twemoji] [--vocab_size 1008] [--model_type unigram|bpe]

and select it with `--config.data.tokenizer=data/tok.model`; `model.vocab_size`
must then be at least the printed tokenizer size (pieces + 16).
"""

from __future__ import annotations

import io
import os
import sys
from typing import Iterable, Iterator

import numpy as np

from dvlm_jax import cli
from dvlm_jax.data import tokenizer as tok

OFFSET = tok.BYTE_OFFSET   # ids below are the layout's special tokens


class SentencePieceTokenizer:
  """Text <-> ids through a SentencePiece model; piece p has id OFFSET + p."""

  def __init__(self, model_proto: bytes, name: str = '<in memory>'):
    self.name = name
    self._proto = bytes(model_proto)
    self._load()

  def _load(self):
    import sentencepiece as spm  # only needed when this tokenizer is chosen
    self._sp = spm.SentencePieceProcessor(model_proto=self._proto)

  @classmethod
  def from_file(cls, path: str) -> 'SentencePieceTokenizer':
    with open(path, 'rb') as f:
      return cls(f.read(), name=path)

  # Data workers receive the tokenizer by pickling: ship the model bytes, not the C++ object.
  def __getstate__(self):
    return {'proto': self._proto, 'name': self.name}

  def __setstate__(self, state):
    self._proto, self.name = state['proto'], state['name']
    self._load()

  @property
  def vocab_size(self) -> int:
    return OFFSET + self._sp.get_piece_size()

  def encode(self, text: str) -> np.ndarray:
    """Text -> int32 ids (no BOS/EOS: the layout adds those)."""
    return np.asarray(self._sp.encode(text), dtype=np.int32) + OFFSET

  def decode(self, ids) -> str:
    """Ids -> text; special and out-of-range ids are skipped."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    ids = ids[(ids >= OFFSET) & (ids < self.vocab_size)]
    return self._sp.decode([int(i) - OFFSET for i in ids])

  def scale_token(self, k: int) -> int:
    return tok.scale_token(k)


def load(spec: str):
  """config.data.tokenizer -> tokenizer: 'byte' or the path of a SentencePiece .model."""
  if spec == 'byte':
    return tok.ByteTokenizer()
  if not os.path.isfile(spec):
    raise ValueError(f"data.tokenizer: 'byte' or the path of a SentencePiece .model file, got "
                     f'{spec!r} (no such file; train one with '
                     'python -m dvlm_jax.data.sentencepiece_tokenizer)')
  return SentencePieceTokenizer.from_file(spec)


MODEL_TYPES = ('unigram', 'bpe')


def train(texts: Iterable[str], vocab_size: int, max_texts: int = 1_000_000,
          model_type: str = 'unigram') -> bytes:
  """Trains a unigram or BPE model on `texts`; returns the serialized model.

  On a small closed vocabulary (the shapes world's ~40 words) BPE spends its pieces on
  whole words, where unigram stops early with many words split into pieces.

  Identity normalisation and kept whitespace make decode(encode(x)) == x, which
  the captions' exact wording (the shapes evaluation parses them) relies on.
  `vocab_size` is an upper bound: a small corpus yields fewer pieces.
  """
  import sentencepiece as spm
  if model_type not in MODEL_TYPES:
    raise ValueError(f'--model_type: one of {MODEL_TYPES}, got {model_type!r}')
  texts = list(texts)
  # Every byte gets a fallback piece and every character seen a piece of its own.
  needed = 256 + len(set(''.join(texts))) + 1
  if vocab_size < needed:
    raise ValueError(f'--vocab_size {vocab_size} is too small for these texts: byte fallback and '
                     f'their characters need at least {needed} pieces')
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size,
      model_type=model_type, byte_fallback=True, character_coverage=1.0,
      hard_vocab_limit=False, normalization_rule_name='identity',
      remove_extra_whitespaces=False, split_digits=True, input_sentence_size=max_texts,
      shuffle_input_sentence=True, unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,
      minloglevel=2)
  return model.getvalue()


def built_datasets(data_dir: str) -> list[str]:
  """Builder names ('shapes', 'twemoji', ...) with a finished build under `data_dir`."""
  from dvlm_jax.data import builders
  return [name for name in builders.BUILDERS if builders.is_built(data_dir, name)]


def dataset_texts(data_dir: str, names: Iterable[str], split: str) -> Iterator[str]:
  """Every non-empty text of every record of the named built data sets."""
  from dvlm_jax.data import builders, decode
  for name in names:
    splits = builders.open_splits(data_dir, name)
    if split not in splits:
      raise ValueError(f'data set {name!r} has no split {split!r} (it has {sorted(splits)})')
    source = splits[split]
    for i in range(len(source)):
      for value in decode.as_list(source[i].get('texts')):
        text, _ = decode.as_str(value)
        if text.strip():
          yield text


def main(argv=None) -> int:
  parser = cli.parser('python -m dvlm_jax.data.sentencepiece_tokenizer', __doc__)
  parser.add_argument('--data_dir', required=True, help='where the data sets were built')
  parser.add_argument('--out', required=True, help='the .model file to write')
  parser.add_argument('--datasets', default='',
                      help='comma-separated builder names, e.g. shapes,twemoji (default: all built)')
  parser.add_argument('--split', default='train')
  parser.add_argument('--vocab_size', type=int, default=1008,
                      help='SentencePiece pieces (upper bound); the tokenizer adds 16 special ids')
  parser.add_argument('--max_texts', type=int, default=1_000_000)
  parser.add_argument('--model_type', choices=MODEL_TYPES, default='unigram')
  args = parser.parse_args(argv)
  names = [n for n in args.datasets.split(',') if n] or built_datasets(args.data_dir)
  if not names:
    return cli.fail(f'no built data sets in {args.data_dir!r} '
                    '(build some with python -m dvlm_jax.build_data NAME --data_dir DIR)')
  try:
    texts = list(dataset_texts(args.data_dir, names, args.split))
  except Exception as e:  # a missing build or split: one line, not a traceback
    return cli.fail(str(e))
  if not texts:
    return cli.fail(f'the data sets {names} hold no text')
  try:
    proto = train(texts, args.vocab_size, args.max_texts, args.model_type)
  except ValueError as e:
    return cli.fail(str(e))
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, 'wb') as f:
    f.write(proto)
  size = SentencePieceTokenizer(proto).vocab_size
  print(f'wrote {args.out}: trained on {len(texts)} texts of {", ".join(names)}; tokenizer size '
        f'{size} (set model.vocab_size >= {size})')
  return 0


if __name__ == '__main__':
  sys.exit(main())
