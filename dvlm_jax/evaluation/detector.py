"""A deterministic detector for pictures in the style of `shapes.render`.

It reads a picture back into shapes (kind, colour, size, cell) with classic
image processing only, so that generated images can be scored per attribute
without a learned judge whose own errors would be mixed into the score:

  1. every pixel -> the nearest entry of the palette (the 7 shape colours and
     the background): generated pixels are noisy, the palette is far apart;
  2. connected components (8-connected) of each colour; specks below a fraction
     of the smallest shape the renderer draws are dropped as noise;
  3. each component's centroid names its grid cell (the renderer keeps every
     shape inside its cell); in a cell, the colour covering the most pixels wins
     and its components there form the shape;
  4. kind: the shape's (fill ratio of its bounding box, top/bottom asymmetry)
     nearest to those of the three kinds rendered into a box of the same size
     (square ~1.0 and symmetric, circle ~0.78 and symmetric, triangle ~0.5
     and bottom-heavy), so the pixel grid of small shapes is accounted for;
  5. size: the bounding box side relative to the cell side (the renderer uses
     0.5 for small, 0.9 for large; the threshold sits in between).

Accuracy on rendered ground truth is measured by tests/test_evaluation.py and
reported in docs/evaluation.md.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from dvlm_jax.data import shapes

# Palette index 0 is the background; 1.. are shapes.COLOUR_NAMES in order.
_PALETTE = np.asarray([shapes.BACKGROUND] + [shapes.COLOURS[c] for c in shapes.COLOUR_NAMES],
                      np.float32)
_EIGHT_CONNECTED = np.ones((3, 3), bool)
# Bounding-box side / cell side between the renderer's small (0.5) and large (0.9).
_SIZE_THRESHOLD = 0.7
# Components smaller than this share of the smallest shape's box area are noise.
# A small triangle fills about half its box, so real shapes stay well above it.
_MIN_AREA_SHARE = 0.25


def palette_labels(image: np.ndarray) -> np.ndarray:
  """int [H, W]: 0 for background, 1 + index into shapes.COLOUR_NAMES otherwise."""
  pixels = np.asarray(image, np.float32)
  distance = np.sum(np.square(pixels[..., None, :] - _PALETTE), axis=-1)
  return np.argmin(distance, axis=-1)


def _cell_edges(size_px: int) -> np.ndarray:
  """Pixel edges of the 3x3 grid, identical to `shapes.cell_box`."""
  return np.asarray([round(size_px * i / 3) for i in range(4)])


def _min_area(size_px: int) -> int:
  edges = _cell_edges(size_px)
  side = int(np.min(np.diff(edges)))
  small = max(1, int(round(side * 0.5)))   # the renderer's small extent in the smallest cell
  return max(1, int(_MIN_AREA_SHARE * small * small))


def _features(mask: np.ndarray) -> np.ndarray:
  """(fill ratio of the bounding box, (bottom - top) / area) of a non-empty bool mask."""
  rows = np.flatnonzero(mask.any(axis=1))
  cols = np.flatnonzero(mask.any(axis=0))
  box = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
  h = box.shape[0]
  area = float(box.sum())
  top = float(box[:h // 2].sum())
  bottom = float(box[(h + 1) // 2:].sum())
  return np.asarray([area / box.size, (bottom - top) / area], np.float32)


@functools.lru_cache(maxsize=4096)
def _prototypes(height: int, width: int) -> np.ndarray:
  """float [len(KINDS), 2]: the features of each kind rendered into a height x width box."""
  out = []
  for kind in shapes.KINDS:
    canvas = Image.new('L', (width, height), 0)
    shapes.draw_shape(ImageDraw.Draw(canvas), kind, (0, 0, width - 1, height - 1), 255)
    drawn = np.asarray(canvas) > 0
    # A sliver of a box (noise in a generated image) may hold no triangle at all.
    out.append(_features(drawn) if drawn.any() else np.full(2, np.inf, np.float32))
  return np.stack(out)


def classify_kind(mask: np.ndarray) -> str:
  """The kind whose rendering in the same bounding box looks most like `mask`."""
  rows = np.flatnonzero(mask.any(axis=1))
  cols = np.flatnonzero(mask.any(axis=0))
  height, width = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
  distance = np.sum(np.square(_prototypes(height, width) - _features(mask)), axis=-1)
  return shapes.KINDS[int(np.argmin(distance))]


def detect(image: np.ndarray) -> tuple[shapes.Shape, ...]:
  """The shapes in a square RGB picture, in raster order of their cells (maybe none)."""
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[0] != image.shape[1] or image.shape[2] != 3:
    raise ValueError(f'expected a square RGB image [S, S, 3], got {image.shape}')
  size = image.shape[0]
  edges = _cell_edges(size)
  labels = palette_labels(image)
  min_area = _min_area(size)
  # (row, col) -> {palette label: bool mask of its components whose centroid is in the cell}
  cells: dict[tuple[int, int], dict[int, np.ndarray]] = {}
  for colour in np.unique(labels):
    if colour == 0:
      continue
    components, count = ndimage.label(labels == colour, structure=_EIGHT_CONNECTED)
    for index in range(1, count + 1):
      component = components == index
      if component.sum() < min_area:
        continue
      y, x = ndimage.center_of_mass(component)
      cell = (int(np.searchsorted(edges, y, side='right') - 1),
              int(np.searchsorted(edges, x, side='right') - 1))
      cell = (min(max(cell[0], 0), 2), min(max(cell[1], 0), 2))
      by_colour = cells.setdefault(cell, {})
      by_colour[int(colour)] = by_colour.get(int(colour), False) | component
  found = []
  for (row, col) in sorted(cells):
    colour, mask = max(cells[row, col].items(), key=lambda item: (int(item[1].sum()), -item[0]))
    # Noise pixels inside a generated shape read as another colour; the renderer
    # never draws holes, so filling them only removes noise.
    mask = ndimage.binary_fill_holes(mask)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    extent = max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)
    side = min(edges[row + 1] - edges[row], edges[col + 1] - edges[col])
    found.append(shapes.Shape(
        kind=classify_kind(mask), colour=shapes.COLOUR_NAMES[colour - 1],
        size='large' if extent / side > _SIZE_THRESHOLD else 'small',
        row=shapes.ROWS[row], col=shapes.COLS[col]))
  return tuple(found)
