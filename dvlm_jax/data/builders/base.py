"""What every data set builder shares: the record format, options, skips, splits.

Builders are TFDS `GeneratorBasedBuilder`s that write ArrayRecord files with no
TensorFlow installed: the features below are the ones TFDS encodes and decodes
in pure numpy (`Text`, `Tensor(dtype=object)` for bytes, `Sequence` of those),
and `DatasetInfo` is built by hand instead of from a TF-backed template.

The record format (docs/data.md, "Record format") is the contract with the Grain
pipeline that reads these files; `make_record` enforces it for every builder.
"""

from __future__ import annotations

import collections
import inspect
import io
import json
import logging
import os
from typing import Any, ClassVar, Iterable, Iterator, Sequence
from unittest import mock

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image
from tensorflow_datasets.core import example_serializer
from tensorflow_datasets.core import split_builder

from dvlm_jax.data import splits

log = logging.getLogger('dvlm_jax.data.build')

# Every TFDS name gets this prefix so it can never collide with a data set that
# ships with TFDS (there is a built-in `fashion_mnist`, and looking a name up
# by string would pick it instead of ours).
TFDS_PREFIX = 'dvlm_'
ITEM_TEXT, ITEM_IMAGE = 'T', 'I'
REQUIRED = object()   # option default meaning "the user must give it"
PATH_OPTIONS = ('source', 'source_dir')


class SourceError(Exception):
  """The raw data a builder reads is missing or unusable; the message says how to fix it."""


class OptionError(ValueError):
  """An option is unknown to the builder, missing, or out of range."""


def record_features() -> tfds.features.FeaturesDict:
  """The record format, identical for every builder and split."""
  return tfds.features.FeaturesDict({
      # Stable id, '<builder>/<source-specific key>'.
      'id': tfds.features.Text(),
      # Encoded image files (PNG/JPEG/... bytes as found in the source); decoding
      # and bad-image handling belong to the pipeline.
      'images': tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.object_)),
      'texts': tfds.features.Sequence(tfds.features.Text()),
      # Order of the document over {'T', 'I'}; '' = a caption pair (one image and
      # one caption) whose order the pipeline chooses.
      'items': tfds.features.Text(),
      'labels': tfds.features.Text(),   # JSON object
  })


def make_record(record_id: str, images: Sequence[bytes], texts: Sequence[str],
                items: str = '', labels: dict | None = None) -> dict[str, Any]:
  """One record in the contract; a builder bug (not bad input) raises ValueError."""
  images, texts = list(images), list(texts)
  if any(not isinstance(b, bytes) or not b for b in images):
    raise ValueError(f'{record_id}: images must be non-empty bytes')
  if any(not isinstance(t, str) or not t.strip() for t in texts):
    raise ValueError(f'{record_id}: texts must be non-empty strings')
  if items:
    if set(items) - {ITEM_TEXT, ITEM_IMAGE}:
      raise ValueError(f'{record_id}: items {items!r} may only contain T and I')
    if items.count(ITEM_TEXT) != len(texts) or items.count(ITEM_IMAGE) != len(images):
      raise ValueError(f'{record_id}: items {items!r} do not match {len(texts)} texts '
                       f'and {len(images)} images')
  elif len(images) != 1 or len(texts) != 1:
    raise ValueError(f'{record_id}: a caption pair (items "") needs one image and one text, '
                     f'got {len(images)} and {len(texts)}')
  return {'id': record_id, 'images': images, 'texts': texts, 'items': items,
          'labels': json.dumps(labels or {}, sort_keys=True, ensure_ascii=False)}


def encode_png(pixels: np.ndarray) -> bytes:
  """PNG bytes of a uint8 [H, W] or [H, W, 3] array (for sources that are arrays)."""
  buffer = io.BytesIO()
  Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(buffer, format='PNG')
  return buffer.getvalue()


def read_file(path: str, what: str, skips: 'SkipLog') -> bytes | None:
  """A file's bytes, or None (counted) when it cannot be read or is empty.

  The content is not checked: a corrupt image is stored as it is and left to
  the pipeline, which decodes anyway and counts what it cannot.
  """
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except OSError as e:
    skips.skip(f'cannot read file ({e.strerror or e})', what)
    return None
  if not data:
    skips.skip('empty file (0 bytes)', what)
    return None
  return data


def procedural_plan(options: dict) -> dict[str, list[tuple[str, int]]]:
  """(split, index) work items of a procedural world: `{split}_size` records per split,
  each a pure function of (seed, split, index) (`data/splits.py`)."""
  return {split: [(split, i) for i in range(options[f'{split}_size'])] for split in splits.SPLITS}


def decode_text(data: bytes, what: str, skips: 'SkipLog') -> str:
  """UTF-8 text; invalid bytes become U+FFFD and are counted rather than fatal."""
  try:
    return data.decode('utf-8')
  except UnicodeDecodeError:
    skips.repair('text is not valid UTF-8 (decoded with replacement characters)', what)
    return data.decode('utf-8', errors='replace')


class SkipLog:
  """Counts what a build left out (or repaired) by reason; logs the first few by name.

  Logging every skip would flood the console on a large folder with one
  systematic problem, so after `max_logged` per reason only the count grows.
  """

  def __init__(self, dataset: str, max_logged: int = 20):
    self.dataset = dataset
    self.max_logged = max_logged
    self.skipped: collections.Counter = collections.Counter()
    self.repaired: collections.Counter = collections.Counter()

  def skip(self, reason: str, what: str) -> None:
    self._count(self.skipped, 'skipped', reason, what)

  def repair(self, reason: str, what: str) -> None:
    self._count(self.repaired, 'repaired', reason, what)

  def _count(self, counter, verb, reason, what):
    counter[reason] += 1
    if counter[reason] <= self.max_logged:
      log.warning('%s: %s %s: %s', self.dataset, verb, what, reason)
    elif counter[reason] == self.max_logged + 1:
      log.warning('%s: more "%s" (%s); counting only', self.dataset, reason, verb)


def resolve_options(builder: str, defaults: dict[str, Any], given: dict[str, Any]
                    ) -> dict[str, Any]:
  """Defaults overridden by `given`; unknown or missing options raise OptionError."""
  unknown = sorted(set(given) - set(defaults))
  if unknown:
    takes = ', '.join(f'--{k}' for k in defaults) or 'no options'
    raise OptionError(f'{builder} does not take {", ".join("--" + k for k in unknown)} '
                      f'(it takes {takes})')
  options = {**defaults, **given}
  missing = sorted(k for k, v in options.items() if v is REQUIRED)
  if missing:
    raise OptionError(f'{builder} needs {", ".join("--" + k for k in missing)}')
  for key, value in options.items():
    default = defaults[key]
    if default is not REQUIRED and default is not None and not isinstance(value, type(default)):
      if isinstance(default, float) and isinstance(value, int):
        options[key] = float(value)
      else:
        raise OptionError(f'{builder} --{key}: expected {type(default).__name__}, '
                          f'got {value!r}')
  return options


def check_positive(builder: str, options: dict, keys: Iterable[str], minimum: int = 0) -> None:
  for key in keys:
    if options[key] < minimum:
      raise OptionError(f'{builder} --{key} must be >= {minimum}, got {options[key]}')


def check_fraction(builder: str, value: float, key: str = 'validation_fraction') -> None:
  if not 0.0 <= value < 1.0:
    raise OptionError(f'{builder} --{key} must lie in [0, 1), got {value}')


def take(items: Sequence, limit: int) -> Sequence:
  """The first `limit` items (all when limit is 0)."""
  return items[:limit] if limit > 0 else items


class DeterministicSerializer(example_serializer.ExampleSerializer):
  """TFDS's record serializer, with the feature map written in key order.

  Protobuf writes a map in an order that changes from process to process, so the
  same records would give other bytes on every build; sorted, a build is
  byte-identical when its inputs are.
  """

  def serialize_example(self, example) -> bytes:
    return self.get_tf_example(example).SerializeToString(deterministic=True)


class DvlmBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of every dvlm_jax builder.

  Subclasses set `BUILDER` (the CLI name), `DESCRIPTION`, `OPTIONS` ({name:
  default}, `REQUIRED` for mandatory ones) and implement:

    check_source()      raise SourceError when the raw data is not there
    _plan()             {split: sequence of work items} (cheap: paths, indices)
    _record(work)       one record via `make_record`, or None (skipped, counted)

  Builders are not registered with TFDS by name (`skip_registration`): records
  are read back from their directory, which needs none of this code.
  Options are saved in the build's metadata.json, so a rebuild can tell
  whether it would produce the same data.
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release of the dvlm_jax record format.'}
  BUILDER: ClassVar[str] = ''
  DESCRIPTION: ClassVar[str] = ''
  OPTIONS: ClassVar[dict[str, Any]] = {}

  def __init_subclass__(cls, **kwargs):
    if cls.__dict__.get('BUILDER'):
      cls.name = TFDS_PREFIX + cls.BUILDER
    super().__init_subclass__(skip_registration=True, **kwargs)

  def __init__(self, *, data_dir: str, **options):
    self.options = resolve_options(self.BUILDER, self.OPTIONS, options)
    for key in PATH_OPTIONS:
      # Absolute, so that the options saved with a build mean the same from any folder.
      if self.options.get(key):
        self.options[key] = os.path.abspath(self.options[key])
    self.check_options()
    self.skips = SkipLog(self.BUILDER)
    super().__init__(data_dir=data_dir, file_format='array_record')

  # ----------------------------------------------------------------- subclass API

  def check_options(self) -> None:
    """Range checks beyond types; raise OptionError."""

  def check_source(self) -> None:
    """Raise SourceError with a fix when the raw data is missing."""

  def _plan(self) -> dict[str, Sequence]:
    raise NotImplementedError

  def _record(self, work) -> dict[str, Any] | None:
    raise NotImplementedError

  # ------------------------------------------------------------------ TFDS hooks

  def download_and_prepare(self, **kwargs):
    """TFDS's build, with the byte-reproducible serializer (TFDS has no option for it)."""
    with mock.patch.object(split_builder.example_serializer, 'ExampleSerializer',
                           DeterministicSerializer):
      return super().download_and_prepare(**kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    """This builder's source file.

    TFDS's own lookup goes through `importlib_resources` for builders that live
    in a package, which is not installed (and not needed): without this the
    build fails before it starts. TFDS only uses the path to look for a
    download checksums file, which builders that download nothing do not have.
    """
    return epath.Path(inspect.getfile(cls))


  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=self.DESCRIPTION, features=record_features(),
        metadata=tfds.core.MetadataDict(options=dict(self.options)))

  def _split_generators(self, dl_manager) -> dict[str, Iterator]:
    del dl_manager  # nothing is downloaded
    self.check_source()
    # Live counters: TFDS writes the metadata after every split is generated, so
    # the build's metadata.json ends up with the final counts.
    self.info.metadata['skipped'] = self.skips.skipped
    self.info.metadata['repaired'] = self.skips.repaired
    generators = {}
    for split, work in self._plan().items():
      if len(work) == 0:
        # TFDS cannot write an empty split; leaving it out is what a reader of
        # info.splits expects, and the count says why it is missing.
        self.skips.skip('split has no records (not written)', split)
        continue
      generators[split] = self._generate_examples(work)
    if not generators:
      raise SourceError(f'{self.BUILDER}: no usable records in the source '
                        f'({self._skip_summary()})')
    return generators

  def _generate_examples(self, work: Sequence) -> Iterator[tuple[str, dict]]:
    for item in work:
      record = self._record(item)
      if record is not None:
        yield record['id'], record

  def _skip_summary(self) -> str:
    summary = '; '.join(f'{reason}: {n}' for reason, n in self.skips.skipped.items())
    return summary or 'nothing found'
