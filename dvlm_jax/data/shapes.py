"""A procedural "shapes" world: coloured shapes on a 3x3 grid with exact captions.

Everything is a pure function of a `Scene`, and a scene is a pure function of a
numpy Generator, so the world is deterministic from a seed and needs no download.
The `Scene` is the label: `caption` turns it into English and `parse_caption`
turns that English back into the identical `Scene`, which is what makes the
world usable as an evaluation with exact answers (parse what the model wrote,
compare scenes, or check the rendered pixels of a generated image per cell).

The vocabularies below are ordered tuples on purpose: their indices are stable
class ids for a dataset builder (TFDS ClassLabel) and for per-attribute metrics.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

KINDS = ('circle', 'square', 'triangle')
# Far apart in RGB so a colour is recoverable from a rendered pixel by nearest match.
COLOURS = {
    'red': (230, 30, 30),
    'green': (30, 190, 60),
    'blue': (40, 80, 240),
    'yellow': (240, 230, 40),
    'purple': (150, 50, 200),
    'orange': (250, 140, 10),
    'white': (245, 245, 245),
}
COLOUR_NAMES = tuple(COLOURS)
SIZES = ('small', 'large')
ROWS = ('top', 'middle', 'bottom')
COLS = ('left', 'center', 'right')
# Relation of the first shape to the second.
RELATIONS = ('left of', 'right of', 'above', 'below')
BACKGROUND = (12, 12, 20)
# The built data sets of this world (data/builders/shapes.py): name -> most shapes a
# picture holds (by default; `shapes --max_shapes` changes it).
WORLDS = {'shapes': 3, 'shapes_single': 1}

# Fraction of a cell's side a shape's bounding box takes.
_SIZE_FRACTION = {'small': 0.5, 'large': 0.9}


@dataclasses.dataclass(frozen=True)
class Shape:
  kind: str     # KINDS
  colour: str   # COLOUR_NAMES
  size: str     # SIZES
  row: str      # ROWS
  col: str      # COLS

  def __post_init__(self):
    for value, allowed, name in ((self.kind, KINDS, 'kind'), (self.colour, COLOUR_NAMES, 'colour'),
                                 (self.size, SIZES, 'size'), (self.row, ROWS, 'row'),
                                 (self.col, COLS, 'col')):
      if value not in allowed:
        raise ValueError(f'shape {name} {value!r} is not one of {allowed}')

  @property
  def cell(self) -> tuple[int, int]:
    """(row, col) grid indices, 0..2 each."""
    return ROWS.index(self.row), COLS.index(self.col)


@dataclasses.dataclass(frozen=True)
class Scene:
  """Shapes in distinct cells, in caption order; `relation` relates shape 0 to shape 1."""
  shapes: tuple[Shape, ...]
  relation: str | None = None

  def __post_init__(self):
    object.__setattr__(self, 'shapes', tuple(self.shapes))
    cells = [s.cell for s in self.shapes]
    if not cells:
      raise ValueError('a scene needs at least one shape')
    if len(set(cells)) != len(cells):
      raise ValueError(f'two shapes share a cell: {cells}')
    if self.relation is not None:
      if len(self.shapes) != 2:
        raise ValueError('a relation needs exactly two shapes')
      if self.relation not in true_relations(self.shapes[0], self.shapes[1]):
        raise ValueError(f'relation {self.relation!r} does not hold between '
                         f'{self.shapes[0].cell} and {self.shapes[1].cell}')


def true_relations(a: Shape, b: Shape) -> tuple[str, ...]:
  """Every relation phrase that is true of `a` relative to `b` on the grid."""
  (ra, ca), (rb, cb) = a.cell, b.cell
  found = []
  if ca < cb:
    found.append('left of')
  if ca > cb:
    found.append('right of')
  if ra < rb:
    found.append('above')
  if ra > rb:
    found.append('below')
  return tuple(found)


# ------------------------------------------------------------------------- sampling

def sample_scene(rng: np.random.Generator, max_shapes: int = 2, *, min_shapes: int = 1,
                 relation_prob: float = 0.5) -> Scene:
  """A uniformly random scene of min..max shapes in distinct cells.

  With two shapes, a true relation phrase is added with probability `relation_prob`
  (when both axes differ, which one is named is random too).
  """
  if not 1 <= min_shapes <= max_shapes <= len(ROWS) * len(COLS):
    raise ValueError(f'need 1 <= min_shapes <= max_shapes <= 9, got {min_shapes}, {max_shapes}')
  n = int(rng.integers(min_shapes, max_shapes + 1))
  cells = rng.choice(len(ROWS) * len(COLS), size=n, replace=False)
  shapes = tuple(
      Shape(kind=KINDS[rng.integers(len(KINDS))],
            colour=COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))],
            size=SIZES[rng.integers(len(SIZES))],
            row=ROWS[cell // 3], col=COLS[cell % 3])
      for cell in cells)
  relation = None
  if n == 2 and rng.random() < relation_prob:
    options = true_relations(shapes[0], shapes[1])
    relation = options[rng.integers(len(options))]
  return Scene(shapes, relation)


# ------------------------------------------------------------------------ rendering

def cell_box(row: int, col: int, size_px: int) -> tuple[int, int, int, int]:
  """Pixel box (x0, y0, x1, y1) of a grid cell, half-open; cells tile the image exactly."""
  edges = [round(size_px * i / 3) for i in range(4)]
  return edges[col], edges[row], edges[col + 1], edges[row + 1]


def shape_box(shape: Shape, size_px: int) -> tuple[int, int, int, int]:
  """Inclusive pixel box of a shape, centred in its cell and never leaving it."""
  x0, y0, x1, y1 = cell_box(*shape.cell, size_px)
  side = min(x1 - x0, y1 - y0)
  extent = max(1, int(round(side * _SIZE_FRACTION[shape.size])))
  left = x0 + (x1 - x0 - extent) // 2
  top = y0 + (y1 - y0 - extent) // 2
  return left, top, left + extent - 1, top + extent - 1


def render(scene: Scene, size_px: int) -> np.ndarray:
  """uint8 [size_px, size_px, 3]: flat colours on a dark background, no anti-aliasing."""
  if size_px < 3:
    raise ValueError(f'size_px must be >= 3 (one pixel per cell), got {size_px}')
  image = Image.new('RGB', (size_px, size_px), BACKGROUND)
  draw = ImageDraw.Draw(image)
  for shape in scene.shapes:
    draw_shape(draw, shape.kind, shape_box(shape, size_px), COLOURS[shape.colour])
  return np.asarray(image, dtype=np.uint8)


def draw_shape(draw: ImageDraw.ImageDraw, kind: str, box: tuple[int, int, int, int],
               fill: tuple[int, int, int]) -> None:
  """Draws one flat shape filling the inclusive pixel `box`; shared with glyphs.py."""
  if kind == 'circle':
    draw.ellipse(box, fill=fill)
  elif kind == 'square':
    draw.rectangle(box, fill=fill)
  elif kind == 'triangle':  # apex up
    left, top, right, bottom = box
    draw.polygon([((left + right) / 2, top), (right, bottom), (left, bottom)], fill=fill)
  else:
    raise ValueError(f'shape kind {kind!r} is not one of {KINDS}')


# ------------------------------------------------------------------------ as labels

def scene_to_dict(scene: Scene) -> dict:
  """JSON-ready form of a scene (the `labels` of the shapes data set)."""
  return {'shapes': [dataclasses.asdict(s) for s in scene.shapes], 'relation': scene.relation}


def scene_from_dict(data: dict) -> Scene:
  """Inverts `scene_to_dict`; invalid content raises ValueError like `Scene` itself."""
  try:
    shapes = tuple(Shape(**s) for s in data['shapes'])
    relation = data.get('relation')
  except (KeyError, TypeError) as e:
    raise ValueError(f'not a scene dict: {data!r}') from e
  return Scene(shapes, relation)


# ------------------------------------------------------------------------- captions

# Position phrases: plain English ("at the top", "in the center") rather than a
# mechanical "middle center"; the table is a bijection so parsing stays exact.
POSITION_PHRASES = {
    ('top', 'left'): 'at the top left', ('top', 'center'): 'at the top',
    ('top', 'right'): 'at the top right', ('middle', 'left'): 'on the left',
    ('middle', 'center'): 'in the center', ('middle', 'right'): 'on the right',
    ('bottom', 'left'): 'at the bottom left', ('bottom', 'center'): 'at the bottom',
    ('bottom', 'right'): 'at the bottom right',
}
_POSITIONS_BY_PHRASE = {v: k for k, v in POSITION_PHRASES.items()}


def describe(shape: Shape) -> str:
  """'a large red circle at the top left'."""
  return f'a {shape.size} {shape.colour} {shape.kind} {POSITION_PHRASES[shape.row, shape.col]}'


def read_position(text: str) -> tuple[str, str] | None:
  """(row, col) of the position phrase `text` starts with (case and spacing free), else None."""
  m = _POSITION_RE.match(' '.join(text.lower().split()))
  return _POSITIONS_BY_PHRASE[m.group(1)] if m else None


def relation_sentence(a: Shape, relation: str, b: Shape) -> str:
  """'the red circle is left of the blue square.' (names colour and kind only)."""
  return f'the {a.colour} {a.kind} is {relation} the {b.colour} {b.kind}.'


def _join(parts: Sequence[str]) -> str:
  if len(parts) == 1:
    return parts[0]
  return ', '.join(parts[:-1]) + ' and ' + parts[-1]


def caption(scene: Scene) -> str:
  """Compositional English, lower case, ending in '.', e.g.

  'a large red circle at the top left and a small blue square at the bottom right.
  the red circle is above the blue square.' (the second sentence only with a relation)
  """
  text = _join([describe(s) for s in scene.shapes]) + '.'
  if scene.relation is not None:
    text += ' ' + relation_sentence(scene.shapes[0], scene.relation, scene.shapes[1])
  return text


def _alternation(words) -> str:
  # Longest first so 'at the top left' wins over 'at the top'.
  return '|'.join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_POSITION = _alternation(_POSITIONS_BY_PHRASE)
_POSITION_RE = re.compile(rf'({_POSITION})')
_SHAPE_RE = re.compile(
    rf'a ({_alternation(SIZES)}) ({_alternation(COLOUR_NAMES)}) ({_alternation(KINDS)}) '
    rf'({_POSITION})')
_RELATION_RE = re.compile(
    rf'the ({_alternation(COLOUR_NAMES)}) ({_alternation(KINDS)}) is ({_alternation(RELATIONS)}) '
    rf'the ({_alternation(COLOUR_NAMES)}) ({_alternation(KINDS)})\.')


def parse_caption(text: str) -> Scene:
  """Inverts `caption`: parse_caption(caption(s)) == s for every scene.

  Strict: anything that `caption` would not have written exactly (extra words,
  wrong punctuation, a false relation) raises ValueError, so an evaluation can
  count unparseable model output separately from wrong answers.
  """
  shape_text, sep, relation_text = text.partition('. ')
  if not sep:
    if not text.endswith('.'):
      raise ValueError(f'caption must end with ".": {text!r}')
    shape_text = text[:-1]
  shapes = tuple(
      Shape(kind=m.group(3), colour=m.group(2), size=m.group(1),
            row=_POSITIONS_BY_PHRASE[m.group(4)][0], col=_POSITIONS_BY_PHRASE[m.group(4)][1])
      for m in _SHAPE_RE.finditer(shape_text))
  if not shapes:
    raise ValueError(f'no shape in caption {text!r}')
  relation = None
  if sep:
    m = _RELATION_RE.fullmatch(relation_text)
    if m is None or len(shapes) != 2:
      raise ValueError(f'cannot read relation sentence {relation_text!r}')
    relation = m.group(3)
    named = ((m.group(1), m.group(2)), (m.group(4), m.group(5)))
    if named != tuple((s.colour, s.kind) for s in shapes):
      raise ValueError(f'relation sentence names other shapes: {relation_text!r}')
  try:
    scene = Scene(shapes, relation)
  except ValueError as e:
    raise ValueError(f'inconsistent caption {text!r}: {e}') from e
  # Regexes find shapes anywhere; regenerating pins down every other character.
  if caption(scene) != text:
    raise ValueError(f'not a caption of this grammar: {text!r}')
  return scene


@dataclasses.dataclass(frozen=True)
class Reading:
  """What a reader takes from a model's caption: the shapes it names and the relation it
  states about the first two (None when it states none or garbles it)."""
  shapes: tuple[Shape, ...]
  relation: str | None = None


_LIST_RE = re.compile(rf'{_SHAPE_RE.pattern}(?:(?:, | and ){_SHAPE_RE.pattern})*')


def read_caption(text: str) -> Reading | None:
  """Reads a model's caption as a reader would; None only when no shape list can be read.

  Tolerant of what does not change the meaning: case, runs of whitespace, a missing
  final period, text after the sentences. The shape sentence must still be a list of
  full shape phrases ('a SIZE COLOUR KIND POSITION', joined by ', ' or ' and ') from its
  first word: a list that breaks off mid-phrase or holds other words is unreadable. A
  relation sentence that cannot be read, or names other shapes than the first two,
  states no relation (a miss on the relation only). Shapes need not form a valid
  `Scene` (two in one cell is a wrong answer, not an unreadable one).
  """
  normal = ' '.join(text.lower().split())
  first, _, rest = normal.partition('.')
  shape_text = first.strip()
  if not _LIST_RE.fullmatch(shape_text):
    return None
  found = tuple(
      Shape(kind=m.group(3), colour=m.group(2), size=m.group(1),
            row=_POSITIONS_BY_PHRASE[m.group(4)][0], col=_POSITIONS_BY_PHRASE[m.group(4)][1])
      for m in _SHAPE_RE.finditer(shape_text))
  relation = None
  sentence = rest.strip().partition('.')[0].strip()
  m = _RELATION_RE.fullmatch(sentence + '.') if sentence else None
  if m is not None and len(found) >= 2:
    named = ((m.group(1), m.group(2)), (m.group(4), m.group(5)))
    if named == tuple((s.colour, s.kind) for s in found[:2]):
      relation = m.group(3)
  return Reading(found, relation)

