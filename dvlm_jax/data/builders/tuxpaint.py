"""Tux Paint stamps: clipart PNGs with one-line English captions (Debian package).

Layout of `tuxpaint-stamps-default` (checked with `dpkg -c`): under
/usr/share/tuxpaint/stamps/<category>/.../ every stamp NAME has NAME.png (or
only NAME.svg), NAME.txt whose FIRST line is the English description ('A frog.')
followed by `lang.utf8=...` translations, and sound/flag files we ignore
(NAME.ogg, NAME_desc*.ogg, NAME.dat). NAME_mirror.png is a hand-flipped copy of
NAME.png without its own caption: left out, since flipping is the pipeline's
business and a mirrored road sign or letter would be wrong. SVG-only stamps are
left out too (no SVG renderer is installed). The package ships 796 PNGs, 785
of them stamps in their own right.
"""

from __future__ import annotations

import os

from dvlm_jax.data import splits
from dvlm_jax.data.builders import base

DEFAULT_SOURCE = '/usr/share/tuxpaint/stamps'
PACKAGE = 'tuxpaint-stamps-default'
VALIDATION_FRACTION = 0.05
_MIRROR_SUFFIX = '_mirror'


def first_line(text: str) -> str:
  """The English caption: first line, whitespace collapsed."""
  return ' '.join(text.lstrip('\ufeff').split('\n', 1)[0].split())


class Tuxpaint(base.DvlmBuilder):
  """Clipart stamps captioned by their one-line English descriptions."""

  BUILDER = 'tuxpaint'
  DESCRIPTION = (f'Tux Paint stamps (Debian {PACKAGE}): clipart PNGs, caption = first line '
                 'of the sibling .txt. Deterministic 95/5 train/validation split by id.')
  OPTIONS = {'source_dir': DEFAULT_SOURCE, 'limit': 0}

  def check_options(self):
    base.check_positive(self.BUILDER, self.options, ['limit'])

  def check_source(self):
    source = self.options['source_dir']
    if not os.path.isdir(source):
      raise base.SourceError(
          f'tuxpaint: no stamps at {source}: install the Debian package {PACKAGE} '
          f'(sudo apt-get install {PACKAGE}) or pass --source_dir')

  def _plan(self):
    source = self.options['source_dir']
    plan = {'train': [], 'validation': []}
    for directory, subdirs, files in os.walk(source):
      subdirs.sort()
      names = set(files)
      for filename in sorted(files):
        stem, ext = os.path.splitext(filename)
        rel = os.path.relpath(os.path.join(directory, stem), source)
        if ext == '.svg' and stem + '.png' not in names:
          self.skips.skip('SVG-only stamp (no PNG)', rel)
        if ext != '.png':
          continue
        if stem.endswith(_MIRROR_SUFFIX):
          self.skips.skip('mirrored copy of another stamp', rel)
          continue
        work = self._work(directory, stem, rel)
        if work is not None:
          plan[splits.split_by_hash(work[0], VALIDATION_FRACTION)].append(work)
    return {split: base.take(work, self.options['limit']) for split, work in plan.items()}

  def _work(self, directory: str, stem: str, rel: str):
    """(id, png path, caption) for one stamp, or None (counted)."""
    png = os.path.join(directory, stem + '.png')
    if not os.path.isfile(png) or os.path.getsize(png) == 0:
      self.skips.skip('empty or not a file', rel + '.png')
      return None
    txt = os.path.join(directory, stem + '.txt')
    if not os.path.isfile(txt):
      self.skips.skip('no caption file (.txt)', rel + '.png')
      return None
    data = base.read_file(txt, rel + '.txt', self.skips)
    if data is None:
      return None
    caption = first_line(base.decode_text(data, rel + '.txt', self.skips))
    if not caption:
      self.skips.skip('empty caption', rel + '.txt')
      return None
    return f'tuxpaint/{rel}', png, caption

  def _record(self, work):
    record_id, path, caption = work
    data = base.read_file(path, record_id, self.skips)
    return None if data is None else base.make_record(record_id, [data], [caption])
