"""A user's own image-text data: a JSONL file of documents, or a folder of pairs.

--source docs.jsonl   one document per line,
                      {"items": [{"text": "..."}, {"image": "a.png"}, ...], "labels": {...}}
                      in any order; image paths relative to the JSONL file's folder
                      or absolute; "labels" optional (stored as JSON).
--source dir/         NAME.png|jpg|jpeg|webp|gif|bmp|tif|tiff + NAME.txt, in any
                      subfolder; each pair is a caption pair (items '').

User data is messy, so nothing here is fatal for one bad input: a missing,
empty, oversized or non-file image, an empty or missing caption, an unparseable
line, an unknown item -- each is left out with a warning naming it and counted
(the item, when the rest of the document survives; the record otherwise).
Non-UTF-8 text is decoded with replacement characters and counted. Image bytes
are stored unchecked: decoding them costs as much as training on them, and the
pipeline counts what it cannot decode.
"""

from __future__ import annotations

import json
import os

from dvlm_jax.data import splits
from dvlm_jax.data.builders import base

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.webp', '.gif', '.bmp', '.tif', '.tiff')
# A single image file above this is almost surely not meant as training data
# (and a record must fit in memory in every data worker).
MAX_IMAGE_BYTES = 64 << 20


class Folder(base.DvlmBuilder):
  """Documents from a JSONL file or image+caption pairs from a folder."""

  BUILDER = 'folder'
  DESCRIPTION = ('User data: interleaved documents from a JSONL file, or NAME.<image> + '
                 'NAME.txt caption pairs from a folder. Split by hash of the id.')
  OPTIONS = {'source': base.REQUIRED, 'validation_fraction': 0.05, 'limit': 0}

  def check_options(self):
    base.check_positive(self.BUILDER, self.options, ['limit'])
    base.check_fraction(self.BUILDER, self.options['validation_fraction'])

  def check_source(self):
    source = self.options['source']
    if not (os.path.isfile(source) or os.path.isdir(source)):
      raise base.SourceError(f'folder: --source {source} is neither a JSONL file nor a folder')

  def _plan(self):
    source = self.options['source']
    documents = self._scan_jsonl(source) if os.path.isfile(source) else self._scan_pairs(source)
    plan = {'train': [], 'validation': []}
    for document in documents:
      plan[splits.split_by_hash(document[0], self.options['validation_fraction'])].append(document)
    return {split: base.take(work, self.options['limit']) for split, work in plan.items()}

  # -------------------------------------------------------------------- checks

  def _image_ok(self, path: str, what: str) -> bool:
    """Cheap checks only (no decoding); False means skipped and counted."""
    if not os.path.lexists(path):
      self.skips.skip('image file missing', what)
    elif not os.path.isfile(path):
      self.skips.skip('not a file (a directory or broken link named like an image)', what)
    elif os.path.getsize(path) == 0:
      self.skips.skip('empty file (0 bytes)', what)
    elif os.path.getsize(path) > MAX_IMAGE_BYTES:
      self.skips.skip(f'image larger than {MAX_IMAGE_BYTES >> 20} MiB', what)
    else:
      return True
    return False

  # --------------------------------------------------------------------- JSONL

  def _scan_jsonl(self, path: str) -> list:
    """[(id, parts, labels, is_pair)]; parts ('T', text) or ('I', image path, name)."""
    root = os.path.dirname(os.path.abspath(path))
    stem = os.path.splitext(os.path.basename(path))[0]
    with open(path, 'rb') as f:
      lines = f.read().split(b'\n')
    documents = []
    for number, raw in enumerate(lines, start=1):
      where = f'{os.path.basename(path)}:{number}'
      line = base.decode_text(raw, where, self.skips).strip()
      if not line:
        continue
      document = self._parse_line(line, where, root)
      if document is not None:
        documents.append((f'folder/{stem}/{number}', *document, False))
    return documents

  def _parse_line(self, line: str, where: str, root: str):
    """(parts, labels) of one JSONL line, or None (counted)."""
    try:
      doc = json.loads(line)
    except json.JSONDecodeError:
      self.skips.skip('line is not valid JSON', where)
      return None
    if not isinstance(doc, dict) or not isinstance(doc.get('items'), list):
      self.skips.skip('line has no "items" list', where)
      return None
    labels = doc.get('labels', {})
    if not isinstance(labels, dict):
      self.skips.repair('"labels" is not an object (dropped)', where)
      labels = {}
    parts = []
    for k, item in enumerate(doc['items']):
      part = self._parse_item(item, f'{where} item {k}', root)
      if part is not None:
        parts.append(part)
    if not parts:
      self.skips.skip('document has no usable items', where)
      return None
    return parts, labels

  def _parse_item(self, item, what: str, root: str):
    if not isinstance(item, dict) or len(item) != 1 or not set(item) <= {'text', 'image'}:
      self.skips.skip('item is neither {"text": ...} nor {"image": ...}', what)
      return None
    (key, value), = item.items()
    if not isinstance(value, str):
      self.skips.skip(f'"{key}" is not a string', what)
      return None
    if key == 'text':
      if not value.strip():
        self.skips.skip('empty text', what)
        return None
      return base.ITEM_TEXT, value
    path = os.path.join(root, value)   # an absolute value replaces root
    if not self._image_ok(path, f'{what} ({value})'):
      return None
    return base.ITEM_IMAGE, path, f'{what} ({value})'

  # --------------------------------------------------------------------- pairs

  def _scan_pairs(self, source: str) -> list:
    documents = []
    for directory, subdirs, files in os.walk(source):
      subdirs[:] = sorted(d for d in subdirs if not d.startswith('.'))
      entries = sorted(f for f in files if not f.startswith('.'))
      image_dirs = [d for d in subdirs if d.lower().endswith(IMAGE_EXTENSIONS)]
      for name in image_dirs:
        rel = os.path.relpath(os.path.join(directory, name), source)
        self.skips.skip('not a file (a directory named like an image)', rel)
      # Stems that have an image (or something named like one, already counted).
      stems = {os.path.splitext(f)[0] for f in entries + image_dirs
               if f.lower().endswith(IMAGE_EXTENSIONS)}
      for name in entries:
        stem, ext = os.path.splitext(name)
        rel = os.path.relpath(os.path.join(directory, name), source)
        if ext.lower() == '.txt' and stem not in stems:
          self.skips.skip('caption without an image', rel)
        if ext.lower() in IMAGE_EXTENSIONS:
          pair = self._pair(directory, name, rel)
          if pair is not None:
            documents.append(pair)
    return documents

  def _pair(self, directory: str, name: str, rel: str):
    """(id, parts, labels, is_pair) of one image+caption pair, or None (counted)."""
    image = os.path.join(directory, name)
    if not self._image_ok(image, rel):
      return None
    txt = os.path.join(directory, os.path.splitext(name)[0] + '.txt')
    if not os.path.isfile(txt):
      self.skips.skip('no caption file (.txt)', rel)
      return None
    data = base.read_file(txt, rel, self.skips)
    if data is None:
      return None
    caption = base.decode_text(data, rel, self.skips).lstrip('\ufeff').strip()
    if not caption:
      self.skips.skip('empty caption', rel)
      return None
    # Caption first in `parts` only for bookkeeping: items '' lets the pipeline order them.
    return f'folder/{rel}', [(base.ITEM_TEXT, caption), (base.ITEM_IMAGE, image, rel)], {}, True

  # ------------------------------------------------------------------- records

  def _record(self, work):
    record_id, parts, labels, is_pair = work
    images, texts, items = [], [], ''
    for part in parts:
      if part[0] == base.ITEM_TEXT:
        texts.append(part[1])
        items += base.ITEM_TEXT
        continue
      data = base.read_file(part[1], part[2], self.skips)
      if data is not None:
        images.append(data)
        items += base.ITEM_IMAGE
    if is_pair:   # survives only whole (its image is the point); read_file counted it
      return base.make_record(record_id, images, texts) if images else None
    if not items:
      self.skips.skip('document has no usable items', record_id)
      return None
    return base.make_record(record_id, images, texts, items, labels)
