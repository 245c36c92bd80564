"""The Grain input pipeline: records -> packed batches in the batch contract.

The one data path of every run. Its records come from data.source:
  'tfds'     the built data sets of data.mixture (tfds.data_source over ArrayRecord files)
  'builtin'  the shapes world computed on demand (builtin.BuiltinSource, no files)

  records of each source
    -> this process's slice           source[process_index::process_count]
    -> shuffle (seeded), repeat       a new order every epoch
    -> weighted mixture               grain.MapDataset.mix(data.mixture)
    -> prepare (in data.worker_count processes, or in-process with 0):
         decode images and text with the bad-input policy (decode.py),
         choose the caption-pair order, fit the text to a row,
         encode_document: resize to every scale, patchify, mask, tokenise, lay out
    -> count bad records, pack documents into rows (layout.Packer), batch

Determinism: everything random about a record (caption order, masks, caption
dropout) comes from a generator seeded by (data.seed, process index, position
in the mixed stream), so the batches depend on the seed only, not on the number
of workers, and any record can be prepared again from its position alone.

Checkpointing: the iterator's state is the position of the next record to read,
the positions of the documents already placed in the open batch and of the
ones waiting for the next (packing lookahead), and the bad-record counts. It is
small and JSON-friendly; restoring re-prepares those few documents and re-opens
the stream at the position, so a restored iterator yields exactly the batches
the original would have (with any worker count).

  it = batches_for(config)              # data.source: 'builtin' (computed records) or 'tfds'
  batch = next(it)
  state = it.get_state(); ...; it.set_state(state)
"""

from __future__ import annotations

import difflib
import logging
from typing import Any, Mapping, Sequence

import grain
import numpy as np

from dvlm_jax.data.mixture import parse_mixture
from dvlm_jax import contract
from dvlm_jax.data import builtin
from dvlm_jax.data import decode
from dvlm_jax.data import layout as layout_lib
from dvlm_jax.data import sentencepiece_tokenizer

log = logging.getLogger(__name__)

# Records read in a row without a single usable document before the stream is
# declared broken (only reachable with a lenient data.max_bad_fraction).
_MAX_BAD_IN_A_ROW = 1000
_MIN_SHM_BYTES = 1 << 16
BUILTIN = 'builtin'   # the built-in source's name in the mixture, the records' ids and logs


class DataError(ValueError):
  """The data settings or the built data sets cannot produce batches; says why."""


# --------------------------------------------------------------------------- settings

def process_layout(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  """(index, count) of this process; defaults from jax (imported only when needed)."""
  if process_index is None or process_count is None:
    import jax
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise DataError(f'process_index {process_index} outside 0..{process_count - 1}')
  return int(process_index), int(process_count)


def local_batch_size(config, process_count: int) -> int:
  """Rows this process feeds: its share of the global data.batch_size."""
  batch_size = int(config.data.batch_size)
  if batch_size % process_count:
    raise DataError(f'data.batch_size={batch_size} is not divisible by the {process_count} '
                    'processes; every process must feed the same number of rows')
  return batch_size // process_count


def decode_options(config) -> decode.DecodeOptions:
  return decode.DecodeOptions(
      max_image_pixels=int(config.data.max_image_pixels),
      generation_share=float(config.data.generation_share),
      generation_prompt=builtin.GENERATION_PROMPT,
      draft_side=contract.image_side(config))


def load_tokenizer(config):
  """data.tokenizer, checked against model.vocab_size (an id past the table would be
  clamped silently by the embedding lookup, not reported)."""
  try:
    tokenizer = sentencepiece_tokenizer.load(str(config.data.tokenizer))
  except ValueError as e:
    raise DataError(str(e)) from e
  vocab = int(config.model.vocab_size)
  if tokenizer.vocab_size > vocab:
    raise DataError(f'data.tokenizer={config.data.tokenizer!r} has {tokenizer.vocab_size} ids but '
                    f'model.vocab_size={vocab}; set --config.model.vocab_size={tokenizer.vocab_size} '
                    '(or more, rounded up for sharding)')
  return tokenizer


# ---------------------------------------------------------------------------- sources

def open_source(name: str, config) -> Sequence:
  """The random-access records of one built data set split (TFDS ArrayRecord source).

  `name` is a builder name (`python -m dvlm_jax.build_data --list`: 'shapes',
  'twemoji', ...) or the --name of an ingested set (`python -m dvlm_jax.data.ingest`),
  read from data.data_dir.
  """
  from dvlm_jax.data import builders   # imports TFDS: only when real data is read
  data_dir, split = str(config.data.data_dir), str(config.data.split)
  if name not in builders.BUILDERS and not builders.is_built(data_dir, name):
    # A typo: suggest what exists, never a build that fails.
    close = difflib.get_close_matches(name, list(builders.BUILDERS), n=1)
    raise DataError(f'data.mixture: no data set {name!r}'
                    + (f"; did you mean '{close[0]}'?" if close else '')
                    + f' (builders: {", ".join(builders.BUILDERS)}; or a set ingested into '
                    f'{data_dir} by python -m dvlm_jax.data.ingest --name NAME)')
  build = f'python -m dvlm_jax.build_data {name} --data_dir {data_dir}'
  try:
    splits = builders.open_splits(data_dir, name)
  except (builders.base.SourceError, builders.base.OptionError) as e:
    raise DataError(f'data.mixture: data set {name!r} cannot be read ({e}); build it with: '
                    f'{build}') from e
  if split not in splits:
    raise DataError(f'data.split={split!r}: data set {name!r} in {data_dir} has only the splits '
                    f'{sorted(splits)}')
  return splits[split]


def source_dataset(records: Sequence, *, seed: int, shuffle: bool, process_index: int,
                   process_count: int) -> grain.MapDataset:
  """This process's slice of one source, shuffled anew every epoch, repeated forever.

  Slicing before shuffling gives each process a fixed, disjoint set of records
  (`records[process_index::process_count]`) that together cover the split.
  """
  ds = grain.MapDataset.source(records)[process_index::process_count]
  if len(ds) == 0:
    raise DataError(f'a data set has {len(records)} records: none for process {process_index} '
                    f'of {process_count}')
  if shuffle:
    ds = ds.shuffle(seed=seed)
  return ds.repeat()    # reseeds the shuffle every epoch


class _Tag:
  """record -> (source name, record); a class, so worker processes can unpickle it."""

  def __init__(self, name: str):
    self.name = name

  def __call__(self, record):
    return self.name, record


class PrepareRecord:
  """(position, (source, record)) -> a prepared element; runs in the data workers.

  The element is a dict: `index` (position in the mixed stream), `source`, `id`
  (source/record id), `doc` (the encoded document, or None when the record is
  skipped) and `issues`.
  Skipped records still produce an element, so every worker emits exactly one
  element per position and the stream's order does not depend on worker count.
  """

  def __init__(self, cfg: layout_lib.LayoutConfig, tokenizer, options: decode.DecodeOptions,
               seed: int, process_index: int):
    self.cfg, self.tokenizer, self.options = cfg, tokenizer, options
    self.seed, self.process_index = int(seed), int(process_index)

  def rng(self, index: int) -> np.random.Generator:
    """The record's own generator: a pure function of (seed, process, position)."""
    return np.random.default_rng((self.seed, self.process_index, int(index)))

  def __call__(self, index: int, tagged) -> dict[str, Any]:
    source, record = tagged
    rid = decode.record_id(record, f'#{index}')
    if not rid.startswith(f'{source}/'):    # builders already write '<builder>/<key>'
      rid = f'{source}/{rid}'
    rng = self.rng(index)
    try:
      doc, issues = decode.record_to_document(record, rid, self.options, rng)
      doc, cut = decode.fit_to_row(doc, self.cfg, self.tokenizer)
      if cut:
        issues.append(decode.Issue('text_truncated', rid, False))
      encoded = layout_lib.encode_document(doc, self.cfg, self.tokenizer, rng)
    except decode.BadRecord as e:
      return {'index': int(index), 'source': source, 'id': rid, 'doc': None,
              'issues': [decode.Issue(e.reason, rid, True, e.detail)]}
    return {'index': int(index), 'source': source, 'id': rid, 'doc': encoded, 'issues': issues}


def mixture_of(config) -> tuple[tuple[str, float], ...]:
  """What the pipeline mixes: data.mixture for data.source='tfds', the built-in source alone
  for 'builtin'."""
  if str(config.data.source) == 'builtin':
    return ((BUILTIN, 1.0),)
  return parse_mixture(config.data.mixture)


def prepared_dataset(config, sources: Mapping[str, Sequence], process_index: int,
                     process_count: int, tokenizer=None) -> grain.MapDataset:
  """The endless, mixed, prepared stream of one process, indexable by position."""
  tokenizer = tokenizer or load_tokenizer(config)
  mixture = mixture_of(config)
  missing = [n for n, _ in mixture if n not in sources]
  if missing:
    raise DataError(f'data.mixture names {missing} but only {sorted(sources)} were given')
  seed = int(config.data.seed)
  parts = []
  for k, (name, _) in enumerate(mixture):
    ds = source_dataset(sources[name], seed=seed * 1009 + k, shuffle=bool(config.data.shuffle),
                        process_index=process_index, process_count=process_count)
    parts.append(ds.map(_Tag(name)))
  mixed = parts[0] if len(parts) == 1 else grain.MapDataset.mix(parts, [w for _, w in mixture])
  cfg = layout_lib.LayoutConfig.from_config(config)
  prepare = PrepareRecord(cfg, tokenizer, decode_options(config), seed, process_index)
  return mixed.map_with_index(prepare)


# --------------------------------------------------------------------------- iterator

def _allow_grain_workers() -> None:
  """Grain's worker processes read absl flags; mark them parsed when no absl app ran."""
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


class PackedBatches(grain.DatasetIterator):
  """Prepared documents -> packed batches of `batch_size` rows; checkpointable.

  Packing is greedy first-fit (layout.Packer) with `lookahead`: a document that
  fits no row of the open batch waits, and the batch is closed once `lookahead`
  documents wait; they open the next batch. The mixture is i.i.d. enough that
  this reordering biases nothing, and it fills rows much better than closing a
  batch at the first misfit.
  """

  def __init__(self, prepared: grain.MapDataset, cfg: layout_lib.LayoutConfig,
               batch_size: int, *, lookahead: int, worker_count: int,
               counter: decode.BadRecordCounter):
    super().__init__()
    self._prepared = prepared
    self._cfg = cfg
    self._batch_size = batch_size
    self._lookahead = lookahead
    self._worker_count = worker_count
    self.counter = counter
    self.source_counts: dict[str, int] = {}   # documents taken per source (diagnostics)
    self._stream = None
    self._reset(0)

  # -- reading
  def _reset(self, next_index: int) -> None:
    """Empty packer; the record stream re-opened at position `next_index`."""
    self.close()
    self._next_index = int(next_index)
    self._packer = layout_lib.Packer(self._cfg, self._batch_size)
    self._packed: list[int] = []                        # positions in the open batch
    self._pending: list[tuple[int, dict]] = []          # (position, doc) waiting
    self._batches = 0
    self._stream = None

  def _open(self):
    ds = self._prepared[self._next_index:].to_iter_dataset(
        grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
    if self._worker_count > 0:
      _allow_grain_workers()
      # Small arrays travel pickled: a shared-memory block per array costs more than the copy.
      ds = grain.experimental.WithOptionsIterDataset(
          ds, grain.experimental.DatasetOptions(min_shm_size=_MIN_SHM_BYTES))
      ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self._worker_count,
                                                       per_worker_buffer_size=2))
    return iter(ds)

  def _next_document(self) -> tuple[int, dict]:
    """The next usable (position, document); counts every record read."""
    if self._stream is None:
      self._stream = self._open()
    for _ in range(_MAX_BAD_IN_A_ROW):
      element = next(self._stream)
      if element['index'] != self._next_index:
        raise RuntimeError(f'record stream out of order: position {element["index"]}, '
                           f'expected {self._next_index}')
      self._next_index += 1
      self.counter.add(element['issues'])
      if element['doc'] is not None:
        source = element['source']
        self.source_counts[source] = self.source_counts.get(source, 0) + 1
        return element['index'], element['doc']
    raise decode.TooManyBadRecords(
        f'{_MAX_BAD_IN_A_ROW} records in a row were skipped: {self.counter.describe()}')

  # -- packing
  def __next__(self) -> dict[str, np.ndarray]:
    while True:
      index, doc = self._next_document()
      if self._packer.add(doc):
        self._packed.append(index)
        continue
      self._pending.append((index, doc))
      if len(self._pending) >= self._lookahead:
        return self._close_batch()

  def _close_batch(self) -> dict[str, np.ndarray]:
    batch, _ = self._packer.finish()
    self._packed, waiting = [], []
    for index, doc in self._pending:    # the first always fits the empty packer
      if self._packer.add(doc):
        self._packed.append(index)
      else:
        waiting.append((index, doc))
    self._pending = waiting
    self._batches += 1
    return batch

  # -- checkpointing
  def get_state(self) -> dict[str, Any]:
    return {
        'next_index': self._next_index,
        'packed': list(self._packed),
        'pending': [i for i, _ in self._pending],
        'batches': self._batches,
        'bad_records': self.counter.state(),
        'source_counts': dict(self.source_counts),
    }

  def set_state(self, state: dict[str, Any]) -> None:
    """Restores a `get_state()`: re-prepares the open batch's documents, re-opens the stream."""
    missing = {'next_index', 'packed', 'pending', 'batches', 'bad_records'} - set(state)
    if missing:
      raise DataError(f'not a data iterator state of this pipeline (missing {sorted(missing)})')
    self._reset(int(state['next_index']))
    for index in state['packed']:
      if not self._packer.add(self._refetch(index)):
        raise DataError(f'data iterator state does not match this config: document at '
                        f'position {index} no longer fits the open batch')
    self._packed = [int(i) for i in state['packed']]
    self._pending = [(int(i), self._refetch(i)) for i in state['pending']]
    self._batches = int(state['batches'])
    self.counter.restore(state['bad_records'])
    self.source_counts = {k: int(v) for k, v in state.get('source_counts', {}).items()}

  def _refetch(self, index: int) -> dict:
    element = self._prepared[int(index)]
    if element['doc'] is None:
      raise DataError(f'data iterator state does not match the data: the record at position '
                      f'{index} is now skipped ({element["issues"]})')
    return element['doc']

  def close(self) -> None:
    stream = getattr(self, '_stream', None)
    if stream is not None and hasattr(stream, 'close'):
      stream.close()
    self._stream = None

  def __str__(self) -> str:
    return f'PackedBatches(batch_size={self._batch_size}, lookahead={self._lookahead})'


def batches_for(config, process_index: int | None = None, process_count: int | None = None,
                sources: Mapping[str, Sequence] | None = None) -> PackedBatches:
  """The train command's data: this process's batches of config.data.source.

  'builtin': the procedural shapes records (builtin.py, no files); 'tfds': data.mixture
  over the built data sets under data.data_dir. Batches of data.batch_size /
  process_count rows in `contract.batch_spec`, with get_state() / set_state().

  Args:
    config: the run config (data.*, image.*).
    process_index, process_count: this process's place; default jax's.
    sources: name -> random-access records, instead of the ones data.source names
      (tests, or any in-memory source).
  """
  process_index, process_count = process_layout(process_index, process_count)
  rows = local_batch_size(config, process_count)
  mixture = mixture_of(config)
  tokenizer = load_tokenizer(config)      # settings errors before any file is opened
  if sources is None:
    sources = ({BUILTIN: builtin.BuiltinSource(config)} if mixture == ((BUILTIN, 1.0),) else
               {name: open_source(name, config) for name, _ in mixture})
  prepared = prepared_dataset(config, sources, process_index, process_count, tokenizer)
  counter = decode.BadRecordCounter(float(config.data.max_bad_fraction))
  return PackedBatches(prepared, layout_lib.LayoutConfig.from_config(config), rows,
                       lookahead=int(config.data.pack_lookahead),
                       worker_count=int(config.data.worker_count), counter=counter)


def first_batch(config) -> dict[str, np.ndarray]:
  """The first global batch of config.data.source (one process's view of all rows):
  benchmarks, tests and inspect."""
  iterator = batches_for(config, process_index=0, process_count=1)
  try:
    return next(iterator)
  finally:
    iterator.close()
