"""Large glyphs drawn out of many small shapes: one picture, two true answers.

A letter or digit of a 5x7 bitmap font is drawn on an 8x8 grid of cells; every
"on" cell holds one small shape (all of one kind and colour, from the shapes
world). Seen coarsely (one pixel or patch per cell) the picture is the letter;
seen finely it is circles, squares or triangles. A model reads both only if it
looks at more than one scale, which is what the multi-scale image layout is for.

The grid is aligned to powers of two on purpose: at 64 px with 8 px patches
each 8x8-scale patch is exactly one glyph cell.

Everything is a pure function, and `read` inverts `render` on clean images, so
an evaluation can score generated pictures (glyph, kind and colour separately)
and the data set builder and its tests use the same code.
"""

from __future__ import annotations

import dataclasses
import functools
import re

import numpy as np
from PIL import Image, ImageDraw

from dvlm_jax.data import shapes

GLYPHS = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789'
GRID = 8                   # cells per side of the picture
GLYPH_ROWS, GLYPH_COLS = 7, 5
ORIGIN = (0, 1)            # (row, col) of the glyph's top-left cell on the grid
MIN_SIZE_PX = 3 * GRID     # 3 px per cell: below that a shape is a dot
# Side of a shape's box relative to its cell, leaving a gap between neighbours
# so the small shapes stay separate at high resolution.
_SHAPE_FRACTION = 0.75
# A cell is "on" when its mean colour is this far (max over channels, 0..255)
# from the background; the faintest cell (a small dark triangle) is ~50 away.
_ON_THRESHOLD = 20.0
# A pixel is painted when it is this far from the background.
_PAINT_THRESHOLD = 40

# 5x7 font, '#' = on. Every glyph differs from every other in at least one cell
# (O and 0 by the slash), checked in the tests.
_FONT_ROWS = {
    'A': ('.###.', '#...#', '#...#', '#####', '#...#', '#...#', '#...#'),
    'B': ('####.', '#...#', '#...#', '####.', '#...#', '#...#', '####.'),
    'C': ('.###.', '#...#', '#....', '#....', '#....', '#...#', '.###.'),
    'D': ('###..', '#..#.', '#...#', '#...#', '#...#', '#..#.', '###..'),
    'E': ('#####', '#....', '#....', '####.', '#....', '#....', '#####'),
    'F': ('#####', '#....', '#....', '####.', '#....', '#....', '#....'),
    'G': ('.###.', '#...#', '#....', '#.###', '#...#', '#...#', '.####'),
    'H': ('#...#', '#...#', '#...#', '#####', '#...#', '#...#', '#...#'),
    'I': ('.###.', '..#..', '..#..', '..#..', '..#..', '..#..', '.###.'),
    'J': ('..###', '...#.', '...#.', '...#.', '...#.', '#..#.', '.##..'),
    'K': ('#...#', '#..#.', '#.#..', '##...', '#.#..', '#..#.', '#...#'),
    'L': ('#....', '#....', '#....', '#....', '#....', '#....', '#####'),
    'M': ('#...#', '##.##', '#.#.#', '#.#.#', '#...#', '#...#', '#...#'),
    'N': ('#...#', '#...#', '##..#', '#.#.#', '#..##', '#...#', '#...#'),
    'O': ('.###.', '#...#', '#...#', '#...#', '#...#', '#...#', '.###.'),
    'P': ('####.', '#...#', '#...#', '####.', '#....', '#....', '#....'),
    'Q': ('.###.', '#...#', '#...#', '#...#', '#.#.#', '#..#.', '.##.#'),
    'R': ('####.', '#...#', '#...#', '####.', '#.#..', '#..#.', '#...#'),
    'S': ('.####', '#....', '#....', '.###.', '....#', '....#', '####.'),
    'T': ('#####', '..#..', '..#..', '..#..', '..#..', '..#..', '..#..'),
    'U': ('#...#', '#...#', '#...#', '#...#', '#...#', '#...#', '.###.'),
    'V': ('#...#', '#...#', '#...#', '#...#', '#...#', '.#.#.', '..#..'),
    'W': ('#...#', '#...#', '#...#', '#.#.#', '#.#.#', '#.#.#', '.#.#.'),
    'X': ('#...#', '#...#', '.#.#.', '..#..', '.#.#.', '#...#', '#...#'),
    'Y': ('#...#', '#...#', '.#.#.', '..#..', '..#..', '..#..', '..#..'),
    'Z': ('#####', '....#', '...#.', '..#..', '.#...', '#....', '#####'),
    '0': ('.###.', '#...#', '#..##', '#.#.#', '##..#', '#...#', '.###.'),
    '1': ('..#..', '.##..', '..#..', '..#..', '..#..', '..#..', '.###.'),
    '2': ('.###.', '#...#', '....#', '...#.', '..#..', '.#...', '#####'),
    '3': ('#####', '...#.', '..#..', '...#.', '....#', '#...#', '.###.'),
    '4': ('...#.', '..##.', '.#.#.', '#..#.', '#####', '...#.', '...#.'),
    '5': ('#####', '#....', '####.', '....#', '....#', '#...#', '.###.'),
    '6': ('..##.', '.#...', '#....', '####.', '#...#', '#...#', '.###.'),
    '7': ('#####', '....#', '...#.', '..#..', '.#...', '.#...', '.#...'),
    '8': ('.###.', '#...#', '#...#', '.###.', '#...#', '#...#', '.###.'),
    '9': ('.###.', '#...#', '#...#', '.####', '....#', '...#.', '.##..'),
}


def bitmap(glyph: str) -> np.ndarray:
  """bool [7, 5] font bitmap of one glyph."""
  if glyph not in _FONT_ROWS:
    raise ValueError(f'glyph {glyph!r} is not one of {GLYPHS}')
  return np.array([[c == '#' for c in row] for row in _FONT_ROWS[glyph]], dtype=bool)


def grid_bitmap(glyph: str) -> np.ndarray:
  """bool [GRID, GRID]: which cells of the picture hold a shape."""
  grid = np.zeros((GRID, GRID), dtype=bool)
  r, c = ORIGIN
  grid[r:r + GLYPH_ROWS, c:c + GLYPH_COLS] = bitmap(glyph)
  return grid


@dataclasses.dataclass(frozen=True)
class Glyph:
  """The label: which character, drawn with which small shape in which colour."""
  glyph: str    # GLYPHS
  kind: str     # shapes.KINDS
  colour: str   # shapes.COLOUR_NAMES

  def __post_init__(self):
    for value, allowed, name in ((self.glyph, GLYPHS, 'glyph'), (self.kind, shapes.KINDS, 'kind'),
                                 (self.colour, shapes.COLOUR_NAMES, 'colour')):
      if value not in allowed:
        raise ValueError(f'{name} {value!r} is not one of {tuple(allowed)}')


def all_glyphs() -> tuple[Glyph, ...]:
  """Every (glyph, kind, colour) combination in a fixed order."""
  return tuple(Glyph(g, k, c) for g in GLYPHS for k in shapes.KINDS for c in shapes.COLOUR_NAMES)


# ------------------------------------------------------------------------ rendering

def _cell_px(size_px: int) -> tuple[int, int]:
  """(cell side, margin): cells are whole pixels, the remainder is split around the grid."""
  if size_px < MIN_SIZE_PX:
    raise ValueError(f'glyph images need size_px >= {MIN_SIZE_PX}, got {size_px}')
  cell = size_px // GRID
  return cell, (size_px - cell * GRID) // 2


def cell_box(row: int, col: int, size_px: int) -> tuple[int, int, int, int]:
  """Half-open pixel box (x0, y0, x1, y1) of grid cell (row, col)."""
  cell, margin = _cell_px(size_px)
  x0, y0 = margin + col * cell, margin + row * cell
  return x0, y0, x0 + cell, y0 + cell


def _shape_box(row: int, col: int, size_px: int) -> tuple[int, int, int, int]:
  """Inclusive box of the small shape, centred in its cell."""
  x0, y0, x1, _ = cell_box(row, col, size_px)
  cell = x1 - x0
  extent = max(1, int(round(cell * _SHAPE_FRACTION)))
  left, top = x0 + (cell - extent) // 2, y0 + (cell - extent) // 2
  return left, top, left + extent - 1, top + extent - 1


def render(glyph: Glyph, size_px: int) -> np.ndarray:
  """uint8 [size_px, size_px, 3] on the shapes world's background, no anti-aliasing."""
  image = Image.new('RGB', (size_px, size_px), shapes.BACKGROUND)
  draw = ImageDraw.Draw(image)
  fill = shapes.COLOURS[glyph.colour]
  for row, col in zip(*np.nonzero(grid_bitmap(glyph.glyph))):
    shapes.draw_shape(draw, glyph.kind, _shape_box(int(row), int(col), size_px), fill)
  return np.asarray(image, dtype=np.uint8)


# ------------------------------------------------------------------------- captions

def _noun(glyph: str) -> str:
  return 'digit' if glyph.isdigit() else 'letter'


def caption(glyph: Glyph) -> str:
  """'the letter A made of small red circles' (both answers in one sentence)."""
  return f'the {_noun(glyph.glyph)} {glyph.glyph} made of small {glyph.colour} {glyph.kind}s'


_CAPTION_RE = re.compile(r'the (letter|digit) (\S) made of small (\S+) (\S+)s')


def parse_caption(text: str) -> Glyph:
  """Inverts `caption`; anything `caption` would not write raises ValueError."""
  m = _CAPTION_RE.fullmatch(text)
  if m is None:
    raise ValueError(f'not a glyph caption: {text!r}')
  glyph = Glyph(glyph=m.group(2), kind=m.group(4), colour=m.group(3))
  if caption(glyph) != text:  # e.g. 'the digit A'
    raise ValueError(f'not a glyph caption: {text!r}')
  return glyph


def to_dict(glyph: Glyph) -> dict:
  """The `labels` of the glyphs data set: {'glyph': 'A', 'kind': 'circle', 'colour': 'red'}."""
  return dataclasses.asdict(glyph)


def from_dict(data: dict) -> Glyph:
  try:
    return Glyph(**data)
  except TypeError as e:
    raise ValueError(f'not a glyph dict: {data!r}') from e


# -------------------------------------------------------------------------- reading

@dataclasses.dataclass(frozen=True)
class Reading:
  """What a picture shows, read coarse (glyph) and fine (kind, colour) separately.

  `glyph` is the nearest font bitmap and `bitmap_errors` the number of cells
  where the picture disagrees with it (0 on a clean render); `kind`/`colour`
  are None when no cell is on.
  """
  glyph: str
  bitmap_errors: int
  kind: str | None
  colour: str | None


def _grid_crop(image: np.ndarray) -> np.ndarray:
  """The GRID x GRID cell area of a square render (drops the margin)."""
  if image.ndim != 3 or image.shape[0] != image.shape[1] or image.shape[2] != 3:
    raise ValueError(f'expected a square RGB image [S, S, 3], got {image.shape}')
  size = image.shape[0]
  if size <= GRID:  # already at (or below) one pixel per cell: nothing to crop
    return image
  cell, margin = _cell_px(size)
  return image[margin:margin + cell * GRID, margin:margin + cell * GRID]


def read_bitmap(image: np.ndarray) -> np.ndarray:
  """bool [GRID, GRID]: cells whose average colour differs from the background.

  Works at any resolution down to one pixel per cell (an [8, 8, 3] image), which
  is the coarse view in which the glyph, but not the shapes, can be read.
  """
  crop = _grid_crop(np.asarray(image, dtype=np.uint8))
  coarse = crop if crop.shape[0] == GRID else np.asarray(
      Image.fromarray(crop).resize((GRID, GRID), Image.Resampling.BOX))
  distance = np.abs(coarse.astype(np.float32) - np.asarray(shapes.BACKGROUND, np.float32))
  return distance.max(axis=-1) > _ON_THRESHOLD


def nearest_glyph(grid: np.ndarray) -> tuple[str, int]:
  """(glyph, cells that differ) for the font bitmap closest to a [GRID, GRID] grid."""
  errors = {g: int(np.sum(grid_bitmap(g) != grid)) for g in GLYPHS}
  best = min(GLYPHS, key=errors.__getitem__)
  return best, errors[best]


@functools.cache
def _fill_fractions(size_px: int) -> dict[str, float]:
  """Share of its shape box each kind paints at this size (the fine-scale signature)."""
  box = _shape_box(0, 0, size_px)
  side = box[2] - box[0] + 1
  fractions = {}
  for kind in shapes.KINDS:
    image = Image.new('L', (size_px, size_px), 0)
    shapes.draw_shape(ImageDraw.Draw(image), kind, box, 255)
    fractions[kind] = float(np.count_nonzero(np.asarray(image))) / side**2
  return fractions


def read(image: np.ndarray) -> Reading:
  """Reads glyph (coarse), shape kind and colour (fine) from a picture.

  Kind is the shape whose painted share of a cell's shape box is closest to what
  the on-cells show; colour is the palette entry nearest the painted pixels.
  Both need about >= 8 px per cell to be meaningful (64 px pictures).
  """
  image = np.asarray(image, dtype=np.uint8)
  grid = read_bitmap(image)
  glyph, errors = nearest_glyph(grid)
  size = image.shape[0]
  painted_share, pixels = [], []
  for row, col in zip(*np.nonzero(grid)):
    x0, y0, x1, y1 = _shape_box(int(row), int(col), size)
    patch = image[y0:y1 + 1, x0:x1 + 1].reshape(-1, 3).astype(np.int32)
    painted = np.abs(patch - np.asarray(shapes.BACKGROUND)).max(axis=-1) > _PAINT_THRESHOLD
    painted_share.append(painted.mean())
    pixels.append(patch[painted])
  if not painted_share or not np.concatenate(pixels).size:
    return Reading(glyph, errors, None, None)
  share = float(np.mean(painted_share))
  fractions = _fill_fractions(size)
  kind = min(shapes.KINDS, key=lambda k: abs(fractions[k] - share))
  mean_rgb = np.median(np.concatenate(pixels), axis=0)
  colour = min(shapes.COLOUR_NAMES,
               key=lambda c: float(np.sum((np.asarray(shapes.COLOURS[c]) - mean_rgb) ** 2)))
  return Reading(glyph, errors, kind, colour)
