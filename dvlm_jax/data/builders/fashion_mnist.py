"""Fashion-MNIST from the Debian package `dataset-fashion-mnist`.

The package (checked with `dpkg -c`) ships the four original IDX files gzipped
under /usr/share/datasets/fashion-mnist/: {train,t10k}-images-idx3-ubyte.gz and
{train,t10k}-labels-idx1-ubyte.gz (60,000 + 10,000 28x28 grayscale images).
Images are arrays, so each is encoded as a grayscale PNG; the caption comes
from the class ('a photo of an ankle boot'); labels hold class id and name.
"""

from __future__ import annotations

import gzip
import os

import numpy as np

from dvlm_jax.data.builders import base

DEFAULT_SOURCE = '/usr/share/datasets/fashion-mnist'
PACKAGE = 'dataset-fashion-mnist'
# Class names as published with the data set, and captions in plain English.
CLASS_NAMES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt',
               'Sneaker', 'Bag', 'Ankle boot')
CAPTIONS = ('a photo of a t-shirt', 'a photo of a pair of trousers', 'a photo of a pullover',
            'a photo of a dress', 'a photo of a coat', 'a photo of a sandal',
            'a photo of a shirt', 'a photo of a sneaker', 'a photo of a bag',
            'a photo of an ankle boot')
SPLIT_FILES = {'train': 'train', 'test': 't10k'}   # split -> IDX file prefix
_IDX_MAGIC = {1: 0x00000801, 3: 0x00000803}        # unsigned bytes, by number of dims


def _open(path_without_gz: str):
  """The IDX file, gzipped as Debian ships it or already unpacked."""
  if os.path.exists(path_without_gz + '.gz'):
    return gzip.open(path_without_gz + '.gz', 'rb')
  return open(path_without_gz, 'rb')


def read_idx(path_without_gz: str, ndim: int) -> np.ndarray:
  """uint8 array of an IDX file; SourceError when the header does not match its size."""
  with _open(path_without_gz) as f:
    data = f.read()
  if len(data) < 4 + 4 * ndim:
    raise base.SourceError(f'fashion_mnist: {path_without_gz} is too short for an IDX file')
  magic = int.from_bytes(data[:4], 'big')
  dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim)]
  body = data[4 + 4 * ndim:]
  if magic != _IDX_MAGIC[ndim] or len(body) != int(np.prod(dims)):
    raise base.SourceError(f'fashion_mnist: {path_without_gz} is not a {ndim}-d uint8 IDX file '
                           f'(magic {magic:#x}, dims {dims}, {len(body)} data bytes)')
  return np.frombuffer(body, dtype=np.uint8).reshape(dims)


class FashionMnist(base.DvlmBuilder):
  """Clothing pictures captioned by class."""

  BUILDER = 'fashion_mnist'
  DESCRIPTION = (f'Fashion-MNIST (Debian {PACKAGE}): 28x28 grayscale PNGs, caption from '
                 'the class, labels {"label": id, "name": class name}; train/test splits '
                 'as published.')
  OPTIONS = {'source_dir': DEFAULT_SOURCE, 'limit': 0}

  def check_options(self):
    base.check_positive(self.BUILDER, self.options, ['limit'])

  def _path(self, split: str, kind: str) -> str:
    ndim = 'idx3' if kind == 'images' else 'idx1'
    return os.path.join(self.options['source_dir'], f'{SPLIT_FILES[split]}-{kind}-{ndim}-ubyte')

  def check_source(self):
    missing = [p for split in SPLIT_FILES for kind in ('images', 'labels')
               for p in [self._path(split, kind)]
               if not (os.path.exists(p + '.gz') or os.path.exists(p))]
    if missing:
      raise base.SourceError(
          f'fashion_mnist: no data at {self.options["source_dir"]} (missing '
          f'{os.path.basename(missing[0])}.gz): install the Debian package {PACKAGE} '
          f'(sudo apt-get install {PACKAGE}) or pass --source_dir')

  def _plan(self):
    self._arrays = {}
    plan = {}
    for split in SPLIT_FILES:
      images = read_idx(self._path(split, 'images'), 3)
      labels = read_idx(self._path(split, 'labels'), 1)
      if len(images) != len(labels) or images.shape[1:] != (28, 28):
        raise base.SourceError(f'fashion_mnist: {split} has {len(images)} images of '
                               f'{images.shape[1:]} and {len(labels)} labels')
      self._arrays[split] = (images, labels)
      plan[split] = [(split, i) for i in base.take(range(len(images)), self.options['limit'])]
    return plan

  def _record(self, work):
    split, index = work
    images, labels = self._arrays[split]
    label = int(labels[index])
    if label >= len(CLASS_NAMES):
      self.skips.skip(f'label {label} out of range', f'{split}/{index}')
      return None
    return base.make_record(f'fashion_mnist/{split}/{index:05d}', [base.encode_png(images[index])],
                            [CAPTIONS[label]], labels={'label': label, 'name': CLASS_NAMES[label]})
