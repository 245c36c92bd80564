"""Registry of the data set builders, and how to open what they wrote.

Build with `python -m dvlm_jax.build_data NAME --data_dir DIR` (see build.py).
A build lands in DIR/dvlm_NAME/1.0.0/ (ArrayRecord shards plus TFDS metadata);
read it back without any of this code through TFDS alone:

  tfds.builder_from_directory('DIR/dvlm_NAME/1.0.0').as_data_source()['train']

or with `open_splits(DIR, NAME)`. Either gives random-access sources that
`grain.MapDataset.source(...)` takes directly. Records follow docs/data.md.
"""

from __future__ import annotations

import os

import tensorflow_datasets as tfds

from dvlm_jax.data.builders import base
from dvlm_jax.data.builders.fashion_mnist import FashionMnist
from dvlm_jax.data.builders.folder import Folder
from dvlm_jax.data.builders.glyphs import Glyphs
from dvlm_jax.data.builders.shapes import Shapes, SingleShapes
from dvlm_jax.data.builders.text import Text
from dvlm_jax.data.builders.tuxpaint import Tuxpaint
from dvlm_jax.data.builders.twemoji import Twemoji

BUILDERS: dict[str, type[base.DvlmBuilder]] = {
    cls.BUILDER: cls
    for cls in (Twemoji, Tuxpaint, FashionMnist, Shapes, SingleShapes, Glyphs, Folder, Text)
}


def get(name: str) -> type[base.DvlmBuilder]:
  if name not in BUILDERS:
    raise base.OptionError(f'unknown data set {name!r}; builders: {", ".join(BUILDERS)}')
  return BUILDERS[name]


def tfds_name(name: str) -> str:
  """The TFDS name (and folder) of a builder: 'twemoji' -> 'dvlm_twemoji'."""
  return get(name).name


def dataset_dir(data_dir: str, name: str) -> str:
  """Where a build of `name` lives: DATA_DIR/dvlm_NAME/VERSION (a builder's, or a data set
  written by `python -m dvlm_jax.data.ingest --name NAME`)."""
  version = (BUILDERS[name] if name in BUILDERS else base.DvlmBuilder).VERSION
  return os.path.join(data_dir, base.TFDS_PREFIX + name, str(version))


def is_built(data_dir: str, name: str) -> bool:
  """True once TFDS has finished a build (it writes dataset_info.json last, atomically)."""
  return os.path.isfile(os.path.join(dataset_dir(data_dir, name), 'dataset_info.json'))


def open_splits(data_dir: str, name: str) -> dict:
  """{split: random-access source of record dicts} of a finished build.

  Values are TFDS ArrayRecord data sources: `len()`, `[i]` -> {'id': bytes,
  'images': [bytes], 'texts': [bytes], 'items': bytes, 'labels': bytes}.
  """
  path = dataset_dir(data_dir, name)
  if not is_built(data_dir, name):
    raise base.SourceError(f'{name} is not built in {data_dir} (no {path}); run '
                           f'python -m dvlm_jax.build_data {name} --data_dir {data_dir}')
  return dict(tfds.builder_from_directory(path).as_data_source())
