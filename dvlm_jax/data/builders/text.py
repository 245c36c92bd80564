"""A text-only corpus from .txt files: one document per paragraph, or per file.

Paragraphs are separated by blank lines (whitespace-only lines count as blank).
Records have no images and items 'T'. Splitting is by hash of the record id
('text/<relative path>#<paragraph>'), so adding files moves nothing already there.
The plan keeps only (file, paragraph number), not the text, so a corpus larger
than memory still builds; each file is re-read once per split.
"""

from __future__ import annotations

import os
import re

from dvlm_jax.data import splits
from dvlm_jax.data.builders import base

_BLANK_LINE = re.compile(r'\n[ \t\f\v]*\n')


def paragraphs(text: str) -> list[str]:
  """Non-empty paragraphs, stripped; Windows line ends normalised first."""
  text = text.replace('\r\n', '\n').replace('\r', '\n').lstrip('\ufeff')
  return [p.strip() for p in _BLANK_LINE.split(text) if p.strip()]


class Text(base.DvlmBuilder):
  """Plain-text documents (no images)."""

  BUILDER = 'text'
  DESCRIPTION = ('Text-only corpus from .txt files, one document per paragraph (or per file '
                 'with --per_file). Split by hash of the id.')
  OPTIONS = {'source': base.REQUIRED, 'per_file': False, 'validation_fraction': 0.05,
             'limit': 0}

  def check_options(self):
    base.check_positive(self.BUILDER, self.options, ['limit'])
    base.check_fraction(self.BUILDER, self.options['validation_fraction'])

  def _files(self) -> list[tuple[str, str]]:
    """[(path, id stem)] of the corpus, sorted."""
    source = self.options['source']
    if os.path.isfile(source):
      return [(source, os.path.basename(source))]
    found = []
    for directory, subdirs, files in os.walk(source):
      subdirs[:] = sorted(d for d in subdirs if not d.startswith('.'))
      for name in sorted(files):
        if name.lower().endswith('.txt') and not name.startswith('.'):
          path = os.path.join(directory, name)
          found.append((path, os.path.relpath(path, source)))
    return found

  def check_source(self):
    source = self.options['source']
    if not (os.path.isfile(source) or os.path.isdir(source)):
      raise base.SourceError(f'text: --source {source} is neither a file nor a folder')
    if not self._files():
      raise base.SourceError(f'text: no .txt files under {source}')

  def _documents(self, path: str, rel: str, count: bool) -> list[str] | None:
    """The documents of one file; problems are counted only when `count` (the plan pass)."""
    skips = self.skips if count else base.SkipLog(self.BUILDER, max_logged=0)
    data = base.read_file(path, rel, skips)
    if data is None:
      return None
    text = base.decode_text(data, rel, skips)
    if self.options['per_file']:
      text = text.replace('\r\n', '\n').lstrip('\ufeff').strip()
      docs = [text] if text else []
    else:
      docs = paragraphs(text)
    if not docs and count:
      self.skips.skip('no text (whitespace only)', rel)
    return docs

  def _plan(self):
    plan = {'train': [], 'validation': []}
    for path, rel in self._files():
      for k, _ in enumerate(self._documents(path, rel, count=True) or ()):
        record_id = f'text/{rel}' if self.options['per_file'] else f'text/{rel}#{k}'
        split = splits.split_by_hash(record_id, self.options['validation_fraction'])
        plan[split].append((record_id, path, rel, k))
    self._cache = (None, None)
    return {split: base.take(work, self.options['limit']) for split, work in plan.items()}

  def _record(self, work):
    record_id, path, rel, k = work
    # Work items come file by file, so a one-file cache reads each file once per split.
    if self._cache[0] != path:
      self._cache = (path, self._documents(path, rel, count=False) or [])
    docs = self._cache[1]
    if k >= len(docs):   # the file changed since the plan
      self.skips.skip('file changed during the build', record_id)
      return None
    return base.make_record(record_id, [], [docs[k]], items=base.ITEM_TEXT)
