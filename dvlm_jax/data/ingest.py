"""Ingests a lab's own web-scale image-text data with Apache Beam into a built data set.

  python -m dvlm_jax.data.ingest --format webdataset --input 'shards/*.tar' \\
      --data_dir data --name web [--workers 2] [--runner DirectRunner] [Beam options ...]

Formats (--input is a file pattern, local or any file system Beam knows):
  webdataset   tar shards as img2dataset writes them: KEY.jpg|png|... + KEY.txt (the
               caption) and/or KEY.json (its "caption"; the whole object is kept as labels)
  parquet      one image-caption pair per row, LAION / DataComp style: an image column of
               bytes (or a {"bytes": ...} struct) and a caption column; found by name
               (--image_column / --caption_column / --key_column pick others)
  interleaved  documents, OBELICS style: parquet rows with list columns `texts` and `images`
               of equal length, position i holding a text or an image (the other null);
               the document is that order

Every record goes through the pipeline's bad-input policy (`decode.py`: corrupt, empty
or huge images, odd modes, broken text). Bad records never stop the pipeline: each is
counted by reason and written with its key to DATA_DIR/dvlm_NAME.ingest/bad_records.jsonl;
only a skipped share above --max_bad_fraction fails the ingest (one line, exit 2, nothing
written). Images are stored as RGB, at most --max_side pixels on the longest side;
exact duplicates (same stored images and texts) are dropped; train / validation / test
split by hash of the key. The result is DATA_DIR/dvlm_NAME/1.0.0/, ArrayRecord shards in
the builders' record format that `tfds.data_source` and `--config.data.mixture=NAME` read.

--workers N runs the local DirectRunner with N processes; any other runner (Dataflow,
Flink, Spark) by --runner and its own Beam options, passed through as given.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import logging
import os
import re
import sys
import tarfile
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import tensorflow_datasets as tfds
from PIL import Image
from webdataset import tariterators

from dvlm_jax import cli

try:   # the optional 'ingest' extra
  # Beam warns at import about Google Cloud client libraries that only its GCP IO needs.
  logging.disable(logging.WARNING)
  import apache_beam as beam
  from apache_beam.io import fileio
  from apache_beam.io.filesystems import FileSystems
  from apache_beam.options.pipeline_options import PipelineOptions
except ImportError:
  print("error: apache-beam is not installed; pip install -e '.[ingest]'", file=sys.stderr)
  raise SystemExit(cli.EXIT_USAGE) from None
finally:
  logging.disable(logging.NOTSET)

from dvlm_jax.data import build as build_lib
from dvlm_jax.data import builders
from dvlm_jax.data import decode
from dvlm_jax.data import limits
from dvlm_jax.data import splits
from dvlm_jax.data.builders import base
from dvlm_jax.data.builders import folder

FORMATS = ('webdataset', 'parquet', 'interleaved')
IMAGE_SUFFIXES = tuple(ext.lstrip('.') for ext in folder.IMAGE_EXTENSIONS)
# Column names tried in order when the option is not given (img2dataset writes `jpg`,
# `caption`, `key`; Hugging Face image sets `image` as a {"bytes", "path"} struct).
IMAGE_COLUMNS = ('jpg', 'png', 'webp', 'image', 'img', 'image_bytes')
CAPTION_COLUMNS = ('caption', 'txt', 'text')
KEY_COLUMNS = ('key', 'id')
INTERLEAVED_COLUMNS = ('texts', 'images')
# Beyond the pipeline's reasons (decode.SKIP_REASONS): a shard that cannot be read to its
# end (the samples completed before the break are kept, the file is counted once).
UNREADABLE_SHARD = 'unreadable_shard'
DUPLICATE = 'duplicate'          # not bad: counted and listed, never skipped as bad
IMAGE_FORMATS = ('jpeg', 'png')
_PREFLIGHT_MEMBERS = 64          # tar members read to tell a WebDataset tar from another
_EXAMPLES = 5                    # example keys kept per reason in the counts
_NAME = re.compile(r'^[a-z][a-z0-9_]*$')
# TFDS's refusal to write an empty split, as it reaches us through the runner.
_EMPTY_SPLIT = re.compile(r'generated examples is 0 for split (\w+)')


class IngestError(base.SourceError):
  """The input cannot be ingested as asked; the message says what to change."""


# ------------------------------------------------------------------------- raw records

def _bad(key: str, source: str, reason: str, detail: str = '') -> dict:
  return {'bad': True, 'key': key, 'source': source, 'reason': reason, 'detail': detail}


def _raw(key: str, source: str, images: list, texts: list, items: str = '',
         labels: dict | None = None) -> dict:
  """A record as read, before any check: `key` is unique in the input and splits it."""
  return {'bad': False, 'key': key, 'source': source, 'images': images, 'texts': texts,
          'items': items, 'labels': labels or {}}


def _stem(path: str) -> str:
  name = os.path.basename(path)
  return name.split('.', 1)[0] or name


def webdataset_sample(sample: dict, source: str) -> dict:
  """A webdataset sample ({'__key__', suffix: bytes}) -> raw record (or a bad one)."""
  key = f'{_stem(source)}/{sample["__key__"]}'
  images = [sample[s] for s in IMAGE_SUFFIXES if s in sample]
  if not images:
    return _bad(key, source, 'malformed_record', f'no image file ({", ".join(IMAGE_SUFFIXES)})')
  if len(images) > 1:
    return _bad(key, source, 'malformed_record', f'{len(images)} image files for one key')
  labels, caption = {}, sample.get('txt')
  if 'json' in sample:
    try:
      meta = json.loads(sample['json'])
    except (ValueError, UnicodeDecodeError):
      meta = None
    if isinstance(meta, dict):
      labels = meta
      if caption is None and meta.get('caption') is not None:
        caption = str(meta['caption'])
    elif caption is None:
      return _bad(key, source, 'malformed_record', '.json is not a JSON object, and no .txt')
  if caption is None:
    return _bad(key, source, 'empty_caption', 'no .txt and no "caption" in .json')
  return _raw(key, source, images, [caption], labels=labels)


def _image_value(value: Any) -> Any:
  """An image cell: bytes, or a Hugging Face {"bytes": ..., "path": ...} struct."""
  if isinstance(value, dict):
    return value.get('bytes')
  return value


def parquet_row(row: dict, index: int, source: str, columns: 'Columns') -> dict:
  key = (str(row[columns.key]) if columns.key and row.get(columns.key) is not None
         else str(index))
  key = f'{_stem(source)}/{key}'
  image = _image_value(row.get(columns.image))
  if image is None:
    return _bad(key, source, 'empty_image', f'{columns.image} is null')
  caption = row.get(columns.caption)
  return _raw(key, source, [image], ['' if caption is None else caption])


def interleaved_row(row: dict, index: int, source: str, columns: 'Columns') -> dict:
  key = (str(row[columns.key]) if columns.key and row.get(columns.key) is not None
         else str(index))
  key = f'{_stem(source)}/{key}'
  texts, images = row.get('texts') or [], row.get('images') or []
  if len(texts) != len(images):
    return _bad(key, source, 'malformed_record',
                f'texts ({len(texts)}) and images ({len(images)}) differ in length')
  items, kept_texts, kept_images = '', [], []
  for position, (text, image) in enumerate(zip(texts, images)):
    image = _image_value(image)
    if (text is None) == (image is None):
      return _bad(key, source, 'malformed_record',
                  f'position {position} must hold a text or an image, not both or neither')
    if image is None:
      items += base.ITEM_TEXT
      kept_texts.append(text)
    else:
      items += base.ITEM_IMAGE
      kept_images.append(image)
  if not items:
    return _bad(key, source, 'empty_document', 'no texts and no images')
  return _raw(key, source, kept_images, kept_texts, items)


@dataclasses.dataclass(frozen=True)
class Columns:
  """The parquet columns read: image / caption (pairs) or texts / images (interleaved)."""
  image: str = ''
  caption: str = ''
  key: str = ''

  def names(self, fmt: str) -> list[str]:
    wanted = list(INTERLEAVED_COLUMNS) if fmt == 'interleaved' else [self.image, self.caption]
    return wanted + ([self.key] if self.key else [])


# ----------------------------------------------------------------------- checks, images

@dataclasses.dataclass(frozen=True)
class StoreOptions:
  """How a checked document's images are stored."""
  max_side: int
  image_format: str
  jpeg_quality: int
  max_image_pixels: int


def encode_image(pixels: np.ndarray, options: StoreOptions) -> bytes:
  """RGB uint8 [H, W, 3] -> the stored file, at most max_side px on the longest side."""
  im = Image.fromarray(pixels)
  if max(im.size) > options.max_side:
    scale = options.max_side / max(im.size)
    size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
    im = im.resize(size, Image.Resampling.LANCZOS)
  buffer = io.BytesIO()
  if options.image_format == 'jpeg':
    im.save(buffer, format='JPEG', quality=options.jpeg_quality)
  else:
    im.save(buffer, format='PNG')
  return buffer.getvalue()


def content_hash(record: dict) -> str:
  """sha256 of what a record stores (order, images, texts): equal for exact duplicates."""
  h = hashlib.sha256(record['items'].encode())
  for part in [*record['images'], *(t.encode('utf-8') for t in record['texts'])]:
    h.update(len(part).to_bytes(8, 'big'))
    h.update(part)
  return h.hexdigest()


def check_record(raw: dict, name: str, options: StoreOptions
                 ) -> tuple[dict | None, list[decode.Issue]]:
  """A raw record -> (the stored record, or None when skipped; its issues).

  The checks are the pipeline's (`decode.record_to_document`), so what is ingested is
  what training accepts; a caption pair keeps the image-first order (the pipeline picks
  the order of a pair again at training time).
  """
  rid = f'{name}/{raw["key"]}'
  if raw['bad']:
    return None, [decode.Issue(raw['reason'], rid, True, raw['detail'])]
  decode_options = decode.DecodeOptions(max_image_pixels=options.max_image_pixels,
                                        generation_share=0.0, generation_prompt='',
                                        draft_side=options.max_side)
  record = {'images': raw['images'], 'texts': raw['texts'], 'items': raw['items']}
  try:
    doc, issues = decode.record_to_document(record, rid, decode_options,
                                            np.random.default_rng(0))
    kept = []
    for item in doc:
      if isinstance(item, str) and not item.strip():   # whitespace only: as an empty span
        issues.append(decode.Issue('empty_text_dropped', rid, False))
      else:
        kept.append(item)
    if not kept:
      raise decode.BadRecord('empty_document', 'no image and no non-blank text')
    if not raw['items'] and len(kept) != 2:
      raise decode.BadRecord('empty_caption', 'the caption is blank')
  except decode.BadRecord as e:
    return None, [decode.Issue(e.reason, rid, True, e.detail)]
  images = [encode_image(x, options) for x in kept if not isinstance(x, str)]
  texts = [x for x in kept if isinstance(x, str)]
  items = '' if not raw['items'] else ''.join(
      base.ITEM_TEXT if isinstance(x, str) else base.ITEM_IMAGE for x in kept)
  return base.make_record(rid, images, texts, items, raw['labels']), issues


# ------------------------------------------------------------------------- Beam stages
# Module-level classes and functions: Beam pickles them into its worker processes.

_COUNTS, _BAD = 'counts', 'bad'


def _issue_events(issues: list[decode.Issue]) -> list[tuple[str, str, str]]:
  """(kind, reason, id) events for the counts: one 'read' per record, one per issue."""
  return [('read', '', '')] + [('skipped' if i.skipped else 'fixed', i.reason, i.record_id)
                               for i in issues]


class CountIssues(beam.CombineFn):
  """CombineFn over (kind, reason, id) events -> {kind: {reason: count}} + examples.

  Examples are the smallest ids per reason, so the summary does not depend on the
  order in which workers finish.
  """

  def create_accumulator(self):
    return {'counts': {}, 'examples': {}}

  def add_input(self, acc, event):
    kind, reason, rid = event
    counts = acc['counts'].setdefault(kind, {})
    counts[reason] = counts.get(reason, 0) + 1
    if kind != 'read':
      examples = acc['examples'].setdefault(reason, [])
      examples.append(rid)
      examples.sort()
      del examples[_EXAMPLES:]
    return acc

  def merge_accumulators(self, accumulators):
    out = self.create_accumulator()
    for acc in accumulators:
      for kind, counts in acc['counts'].items():
        mine = out['counts'].setdefault(kind, {})
        for reason, n in counts.items():
          mine[reason] = mine.get(reason, 0) + n
      for reason, ids in acc['examples'].items():
        out['examples'][reason] = sorted(out['examples'].get(reason, []) + ids)[:_EXAMPLES]
    return out

  def extract_output(self, acc):
    return acc

  def compact(self, acc):
    return acc


_TAR_ERRORS = (tarfile.TarError, OSError, EOFError)


def _until_broken(files, errors: list):
  """The files of a tar stream up to a break (truncation, damage); the error goes to `errors`,
  so webdataset's grouping still hands over the last sample completed before it."""
  try:
    yield from files
  except _TAR_ERRORS as e:
    errors.append(e)


class ReadWebDataset(beam.DoFn):
  """A tar shard (fileio.ReadableFile) -> raw records, grouped by webdataset's own rules."""

  def process(self, readable):
    source = readable.metadata.path
    errors, n = [], 0
    try:
      with readable.open() as stream:
        files = _until_broken(tariterators.tar_file_iterator(stream), errors)
        for sample in tariterators.group_by_keys({**f, '__url__': source} for f in files):
          n += 1
          yield webdataset_sample(sample, source)
    except _TAR_ERRORS + (ValueError,) as e:   # ValueError: a file name twice for one key
      errors.append(e)
    if errors:
      yield _bad(_stem(source), source, UNREADABLE_SHARD,
                 f'after {n} samples: {type(errors[0]).__name__}: {errors[0]}')
    elif n == 0:
      yield _bad(_stem(source), source, UNREADABLE_SHARD, 'a tar without any file')


class ReadParquet(beam.DoFn):
  """A parquet file -> raw records, batch by batch with pyarrow (rows keep their index)."""

  def __init__(self, fmt: str, columns: Columns):
    self.fmt, self.columns = fmt, columns

  def process(self, readable):
    source = readable.metadata.path
    to_record = interleaved_row if self.fmt == 'interleaved' else parquet_row
    index = 0
    try:
      with readable.open() as f:
        for batch in pq.ParquetFile(f).iter_batches(columns=self.columns.names(self.fmt),
                                                    batch_size=256):
          for row in batch.to_pylist():
            yield to_record(row, index, source, self.columns)
            index += 1
    except (OSError, ValueError) as e:   # pyarrow.ArrowException subclasses both
      yield _bad(f'{_stem(source)}/{index}', source, UNREADABLE_SHARD,
                 f'{type(e).__name__}: {e}')


class Check(beam.DoFn):
  """Raw record -> (content hash, record); bad ones and the counts to side outputs."""

  def __init__(self, name: str, options: StoreOptions):
    self.name, self.options = name, options

  def process(self, raw):
    record, issues = check_record(raw, self.name, self.options)
    for event in _issue_events(issues):
      yield beam.pvalue.TaggedOutput(_COUNTS, event)
    if record is None:
      issue = issues[0]
      yield beam.pvalue.TaggedOutput(_BAD, {'id': issue.record_id, 'source': raw['source'],
                                            'reason': issue.reason, 'detail': issue.detail})
      return
    yield content_hash(record), record


class Deduplicate(beam.DoFn):
  """(hash, [records]) -> the record with the smallest id; the others as duplicates."""

  def process(self, element):
    _, records = element
    records = sorted(records, key=lambda r: r['id'])
    yield records[0]['id'], records[0]
    for other in records[1:]:
      yield beam.pvalue.TaggedOutput(_COUNTS, (DUPLICATE, DUPLICATE, other['id']))
      yield beam.pvalue.TaggedOutput(_BAD, {'id': other['id'], 'source': '',
                                            'reason': DUPLICATE,
                                            'detail': f'same content as {records[0]["id"]}'})


class SplitOf:
  """(id, record) -> index into splits.SPLITS, by hash of the key (the id less the name)."""

  def __init__(self, name: str, validation_fraction: float, test_fraction: float):
    self.prefix = f'{name}/'
    self.fractions = (validation_fraction, test_fraction)

  def __call__(self, element, n_partitions):
    key = element[0][len(self.prefix):]
    return splits.SPLITS.index(splits.split_by_hash(key, *self.fractions))


def _bad_line(bad: dict) -> str:
  return json.dumps(bad, sort_keys=True, ensure_ascii=False)


# ---------------------------------------------------------------------------- preflight

def match(pattern: str) -> list[str]:
  """The files of --input (Beam's file systems: local, gs://, ...), sorted."""
  try:
    results = FileSystems.match([pattern])
  except Exception as e:   # Beam raises BeamIOError for a bad pattern or scheme
    raise IngestError(f'--input {pattern}: {e}') from None
  paths = sorted(m.path for r in results for m in r.metadata_list)
  if not paths:
    raise IngestError(f'--input {pattern} matches no file')
  return paths


def _open(path: str):
  return FileSystems.open(path, compression_type='uncompressed')


def check_webdataset(path: str) -> None:
  """The first shard must be a tar holding KEY.<image> + KEY.txt|json pairs."""
  try:
    with _open(path) as stream:
      files = []
      for f in tariterators.tar_file_iterator(stream):
        files.append(f)
        if len(files) >= _PREFLIGHT_MEMBERS:
          break
  except _TAR_ERRORS as e:
    raise IngestError(f'--format webdataset: {path} is not a tar file ({e}); WebDataset shards '
                      'are tars of KEY.jpg|png + KEY.txt|json') from None
  for sample in tariterators.group_by_keys({**f, '__url__': path} for f in files):
    if set(sample) & set(IMAGE_SUFFIXES) and set(sample) & {'txt', 'json'}:
      return
  names = ', '.join(f['fname'] for f in files[:3]) or 'no files'
  raise IngestError(f'--format webdataset: {path} is a tar but not a WebDataset shard (no '
                    f'KEY.<image> with KEY.txt or KEY.json in its first {len(files)} files: '
                    f'{names}); pass --format parquet|interleaved for other data')


def resolve_columns(path: str, fmt: str, options: dict) -> Columns:
  """The columns to read, checked against the first file's schema."""
  try:
    with _open(path) as f:
      schema = pq.ParquetFile(f).schema_arrow
  except (OSError, ValueError) as e:
    raise IngestError(f'--format {fmt}: {path} is not a parquet file ({e})') from None
  names = list(schema.names)

  def pick(option: str, candidates: tuple[str, ...], what: str) -> str:
    given = options[option]
    if given:
      if given not in names:
        raise IngestError(f'--{option} {given}: {path} has no such column (columns: '
                          f'{", ".join(names)})')
      return given
    found = [c for c in candidates if c in names]
    if not found and what:
      raise IngestError(f'--format {fmt}: {path} has no {what} column (looked for '
                        f'{", ".join(candidates)}; columns: {", ".join(names)}); name it with '
                        f'--{option}')
    return found[0] if found else ''

  key = pick('key_column', KEY_COLUMNS, '')
  if fmt == 'interleaved':
    missing = [c for c in INTERLEAVED_COLUMNS if c not in names]
    if missing:
      raise IngestError(f'--format interleaved: {path} has no {" / ".join(missing)} column '
                        f'(needs list columns texts and images; columns: {", ".join(names)})')
    return Columns(key=key)
  return Columns(image=pick('image_column', IMAGE_COLUMNS, 'image'),
                 caption=pick('caption_column', CAPTION_COLUMNS, 'caption'), key=key)


# ------------------------------------------------------------------------------ builder

class Ingest(base.DvlmBuilder):
  """A Beam-generated data set; `ingest_class` names it (BUILDER = --name)."""

  DESCRIPTION = ('Ingested with python -m dvlm_jax.data.ingest (Apache Beam): image-caption '
                 'pairs or interleaved documents, checked, resized, deduplicated, split by '
                 'hash of the key.')
  OPTIONS = {
      'format': base.REQUIRED, 'input': base.REQUIRED,
      'max_side': 512, 'image_format': 'jpeg', 'jpeg_quality': 90,
      'validation_fraction': 0.05, 'test_fraction': 0.05,
      'max_bad_fraction': limits.MAX_BAD_FRACTION,
      'max_image_pixels': limits.MAX_IMAGE_PIXELS,
      'image_column': '', 'caption_column': '', 'key_column': '', 'num_shards': 0,
  }
  BEAM_ARGS: tuple[str, ...] = ()   # Beam pipeline options (runner, workers): not the data's
  REPORT_DIR = ''                   # where bad_records.jsonl and counts.json go

  def check_options(self):
    o = self.options
    if o['format'] not in FORMATS:
      raise base.OptionError(f'--format {o["format"]}: one of {", ".join(FORMATS)}')
    if o['image_format'] not in IMAGE_FORMATS:
      raise base.OptionError(f'--image_format {o["image_format"]}: one of '
                             f'{", ".join(IMAGE_FORMATS)}')
    base.check_positive(self.BUILDER, o, ['max_side', 'jpeg_quality', 'max_image_pixels'], 1)
    base.check_positive(self.BUILDER, o, ['num_shards'])
    base.check_fraction(self.BUILDER, o['validation_fraction'])
    base.check_fraction(self.BUILDER, o['test_fraction'], 'test_fraction')
    if o['validation_fraction'] + o['test_fraction'] >= 1.0:
      raise base.OptionError('--validation_fraction + --test_fraction must leave some train')
    if not 0.0 <= o['max_bad_fraction'] <= 1.0:
      raise base.OptionError(f'--max_bad_fraction must lie in [0, 1], got {o["max_bad_fraction"]}')
    if '://' not in o['input']:   # local: absolute, so the saved options mean one thing
      self.options['input'] = os.path.abspath(o['input'])

  def check_source(self):
    files = match(self.options['input'])
    if self.options['format'] == 'webdataset':
      check_webdataset(files[0])
      self.columns = Columns()
    else:
      self.columns = resolve_columns(files[0], self.options['format'], self.options)

  @property
  def store_options(self) -> StoreOptions:
    o = self.options
    return StoreOptions(o['max_side'], o['image_format'], o['jpeg_quality'],
                        o['max_image_pixels'])

  def download_and_prepare(self, **kwargs):
    """TFDS runs the Beam pipeline of `_split_generators` with these options."""
    kwargs['download_config'] = tfds.download.DownloadConfig(
        beam_options=PipelineOptions(list(self.BEAM_ARGS)),
        num_shards=self.options['num_shards'] or None)
    return super().download_and_prepare(**kwargs)

  def _split_generators(self, dl_manager, pipeline):
    del dl_manager
    self.check_source()   # again: this may be a fresh builder (build_with's --overwrite path)
    o, name = self.options, self.BUILDER
    reader = (ReadWebDataset() if o['format'] == 'webdataset'
              else ReadParquet(o['format'], self.columns))
    raw = (pipeline
           | 'Match' >> fileio.MatchFiles(o['input'])
           | 'Open' >> fileio.ReadMatches()
           | 'SpreadFiles' >> beam.Reshuffle()
           | 'Read' >> beam.ParDo(reader)
           | 'SpreadRecords' >> beam.Reshuffle())
    checked = raw | 'Check' >> beam.ParDo(Check(name, self.store_options)).with_outputs(
        _COUNTS, _BAD, main='good')
    unique = (checked.good
              | 'GroupByContent' >> beam.GroupByKey()
              | 'Deduplicate' >> beam.ParDo(Deduplicate()).with_outputs(_COUNTS, _BAD,
                                                                        main='kept'))
    if '://' not in self.REPORT_DIR:
      os.makedirs(self.REPORT_DIR, exist_ok=True)
    _ = ((checked[_BAD], unique[_BAD])
         | 'AllBad' >> beam.Flatten()
         | 'BadLines' >> beam.Map(_bad_line)
         | 'WriteBad' >> beam.io.WriteToText(self._report('bad_records.jsonl'),
                                             shard_name_template='', num_shards=1))
    _ = ((checked[_COUNTS], unique[_COUNTS])
         | 'AllEvents' >> beam.Flatten()
         | 'Count' >> beam.CombineGlobally(CountIssues())
         | 'CountsJson' >> beam.Map(json.dumps, sort_keys=True)
         | 'WriteCounts' >> beam.io.WriteToText(self._report('counts.json'),
                                                shard_name_template='', num_shards=1))
    parts = unique.kept | 'Split' >> beam.Partition(
        SplitOf(name, o['validation_fraction'], o['test_fraction']), len(splits.SPLITS))
    fractions = {'train': 1.0, 'validation': o['validation_fraction'],
                 'test': o['test_fraction']}
    return {split: parts[k] for k, split in enumerate(splits.SPLITS) if fractions[split] > 0}

  def _report(self, filename: str) -> str:
    return os.path.join(self.REPORT_DIR, filename)

  def _process_pipeline_result(self, pipeline_result):
    """Reads the counts the pipeline wrote; too many skipped records fail the ingest here,
    before TFDS moves the shards into place."""
    with FileSystems.open(self._report('counts.json')) as f:
      summary = json.loads(f.read().decode())
    counts = summary['counts']
    read = sum(counts.get('read', {}).values())
    self.skips.skipped.update(counts.get('skipped', {}))
    self.skips.repaired.update(counts.get('fixed', {}))
    self.info.metadata['skipped'] = dict(self.skips.skipped)
    self.info.metadata['repaired'] = dict(self.skips.repaired)
    self.info.metadata['records_read'] = read
    self.info.metadata['duplicates'] = counts.get(DUPLICATE, {}).get(DUPLICATE, 0)
    self.info.metadata['bad_records_file'] = self._report('bad_records.jsonl')
    counter = decode.BadRecordCounter(self.options['max_bad_fraction'], min_records=1,
                                      setting='--max_bad_fraction')
    counter.restore({'seen': read, 'skipped': counts.get('skipped', {}),
                     'fixed': counts.get('fixed', {}), 'examples': summary['examples']})
    counter.check()


def ingest_class(name: str, beam_args: list[str], report_dir: str) -> type[Ingest]:
  """The builder class of data set `name` (TFDS name dvlm_NAME)."""
  if not _NAME.match(name):
    raise base.OptionError(f'--name {name!r}: lower-case letters, digits and _, starting with '
                           'a letter')
  if name in builders.BUILDERS:
    raise base.OptionError(f'--name {name}: that is a builder\'s data set; choose another name')
  return type(f'Ingest_{name}', (Ingest,), {
      'BUILDER': name, '__module__': 'dvlm_jax.data.ingest', 'BEAM_ARGS': tuple(beam_args),
      'REPORT_DIR': report_dir})


def report_dir(data_dir: str, name: str) -> str:
  """Where an ingest's bad records and counts go: beside the data set, outside it (a
  failed ingest writes no data set, but its bad records are what the user needs)."""
  local = '://' not in data_dir
  return os.path.join(os.path.abspath(data_dir) if local else data_dir,
                      f'{base.TFDS_PREFIX}{name}.ingest')


# ----------------------------------------------------------------------------- command

def beam_args(workers: int, runner: str, passed: list[str]) -> list[str]:
  """Pipeline options: the runner, DirectRunner's N worker processes, the rest as given."""
  args = [f'--runner={runner}']
  if runner == 'DirectRunner':
    if workers > 1:
      args += [f'--direct_num_workers={workers}', '--direct_running_mode=multi_processing']
    else:
      args += ['--direct_num_workers=1', '--direct_running_mode=in_memory']
  if not any(a.startswith('--default_sdk_harness_log_level') for a in passed):
    # Workers log every step at INFO, and warn about DirectRunner-only options they do not know.
    args.append('--default_sdk_harness_log_level=ERROR')
  return args + passed


def ingest(fmt: str, input_pattern: str, data_dir: str, name: str, *, workers: int = 1,
           runner: str = 'DirectRunner', pipeline_args: list[str] = (), overwrite: bool = False,
           **options) -> build_lib.BuildResult:
  """Runs the ingest pipeline; see the module docstring."""
  cls = ingest_class(name, beam_args(workers, runner, list(pipeline_args)),
                     report_dir(data_dir, name))
  try:
    return build_lib.build_with(cls, data_dir, overwrite=overwrite, format=fmt,
                                input=input_pattern, **options)
  except Exception as e:   # raised in a worker, re-raised by the runner in its own type
    empty = _EMPTY_SPLIT.search(str(e))
    if not empty:
      raise
    split = empty.group(1)
    raise IngestError(f'no record fell into the {split} split (too few records for '
                      f'--{split}_fraction); lower it, or pass --{split}_fraction 0 to leave '
                      'the split out') from None


OPTION_HELP = {
    'max_side': 'longest side of a stored image in pixels (larger ones are scaled down)',
    'image_format': 'how stored images are encoded: jpeg or png',
    'jpeg_quality': 'JPEG quality of stored images',
    'validation_fraction': 'share of the keys (by hash) in the validation split; 0 = none',
    'test_fraction': 'share of the keys (by hash) in the test split; 0 = none',
    'max_bad_fraction': 'skipped share of the records read above which the ingest fails',
    'max_image_pixels': 'larger declared images are skipped unread (decompression bombs)',
    'image_column': 'parquet: the image column (default: the first of '
                    + ' '.join(IMAGE_COLUMNS) + ')',
    'caption_column': 'parquet: the caption column (default: the first of '
                      + ' '.join(CAPTION_COLUMNS) + ')',
    'key_column': 'parquet: the key column (default: ' + ' or '.join(KEY_COLUMNS)
                  + ' if there, else the row number)',
    'num_shards': 'ArrayRecord shards per split; 0 = by size (TFDS)',
}


def make_parser() -> argparse.ArgumentParser:
  parser = cli.parser('python -m dvlm_jax.data.ingest', __doc__.split('\n\n')[0])
  parser.add_argument('--format', required=True, choices=FORMATS)
  parser.add_argument('--input', required=True, help='file pattern of the shards')
  parser.add_argument('--data_dir', required=True, help='where DATA_DIR/dvlm_NAME goes')
  parser.add_argument('--name', required=True, help='the data set name (data.mixture NAME)')
  parser.add_argument('--workers', type=int, default=1,
                      help='DirectRunner worker processes (other runners: their own options)')
  parser.add_argument('--runner', default='DirectRunner',
                      help='DirectRunner (tested), DataflowRunner, FlinkRunner, SparkRunner')
  parser.add_argument('--overwrite', action='store_true',
                      help='replace an existing data set made with other options')
  for key, default in Ingest.OPTIONS.items():
    if key in ('format', 'input'):
      continue
    shown = f' (default {default})' if default != '' else ''
    parser.add_argument(f'--{key}', type=type(default), default=default,
                        help=OPTION_HELP[key] + shown)
  return parser


def main(argv: list[str] | None = None) -> int:
  parser = make_parser()
  args, passed = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
  if args.workers < 1:
    parser.error('--workers must be >= 1')
  if args.workers > 1 and args.runner != 'DirectRunner':
    parser.error(f'--workers is the DirectRunner\'s; give {args.runner} its own options '
                 '(Dataflow --num_workers / --max_num_workers, Flink --parallelism)')
  logging.basicConfig(level=logging.WARNING, format='%(levelname)s: %(message)s')
  # The runner logs a failing step's traceback before it re-raises the error, which
  # either becomes one line below or propagates with its traceback anyway.
  logging.getLogger('apache_beam.runners.common').setLevel(logging.CRITICAL)
  options = {k: getattr(args, k) for k in Ingest.OPTIONS if k not in ('format', 'input')}
  try:
    result = ingest(args.format, args.input, args.data_dir, args.name, workers=args.workers,
                    runner=args.runner, pipeline_args=passed, overwrite=args.overwrite,
                    **options)
  except decode.TooManyBadRecords as e:
    return cli.fail(f'{e}; nothing written; the bad records are listed in '
                    f'{report_dir(args.data_dir, args.name)}/bad_records.jsonl')
  except (base.SourceError, base.OptionError, build_lib.AlreadyBuiltError) as e:
    return cli.fail(str(e))
  print(build_lib.report(result), flush=True)
  return 0


if __name__ == '__main__':
  # Through the imported module, so that Beam's workers unpickle its classes by name.
  from dvlm_jax.data import ingest as _module
  sys.exit(_module.main())
