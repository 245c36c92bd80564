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
  4. kind: the shape's soft coverage of its cell (each pixel's share of the way
     from the background to the shape's colour) matched against each kind as
     the renderer draws it in that cell, at both sizes, sharp or blurred
     (Gaussian sigma up to 1 px at 30 px) and shifted by up to a pixel; the
     smallest squared difference wins. Generated pictures are soft-edged (on
     small.py's grids they are closest to the truth blurred by 0.5-0.75 px),
     and a hard palette mask of a blurred small triangle fills its box like a
     square: matching the soft picture reads what a reader sees;
  5. size: the bounding box side relative to the cell side (the renderer uses
     0.5 for small, 0.9 for large; the threshold sits in between).

Accuracy on rendered ground truth is measured by tests/test_evaluation.py and
reported in docs/evaluation.md.
"""

from __future__ import annotations

import functools

import numpy as np
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


# Blur levels of the kind templates (Gaussian sigma in pixels of a 30-px picture) and the
# largest shift tried (pixels of a 30-px picture): generated shapes are soft and may sit a
# pixel off the renderer's centre.
_TEMPLATE_BLURS = (0.0, 0.25, 0.5, 0.75, 1.0)
_TEMPLATE_SHIFT = 1
_REFERENCE_PX = 30


def colour_alpha(image: np.ndarray, colour: int) -> np.ndarray:
  """float [H, W] in [0, 1]: how far each pixel lies from the background towards palette
  colour `colour` (1-based), by projection onto the line between them."""
  background, target = _PALETTE[0], _PALETTE[colour]
  direction = target - background
  alpha = (np.asarray(image, np.float32) - background) @ direction / float(direction @ direction)
  return np.clip(alpha, 0.0, 1.0)


@functools.lru_cache(maxsize=64)
def _templates(size_px: int, row: int, col: int) -> np.ndarray:
  """float [len(KINDS), T, cell_h, cell_w]: each kind drawn alone in cell (row, col) at
  every size, blur and shift, as coverage maps of the cell."""
  edges = _cell_edges(size_px)
  y0, y1, x0, x1 = edges[row], edges[row + 1], edges[col], edges[col + 1]
  scale = size_px / _REFERENCE_PX
  shift = max(1, int(round(_TEMPLATE_SHIFT * scale)))
  white = 1 + shapes.COLOUR_NAMES.index('white')
  out = []
  for kind in shapes.KINDS:
    maps = []
    for size in shapes.SIZES:
      scene = shapes.Scene((shapes.Shape(kind, 'white', size, shapes.ROWS[row],
                                         shapes.COLS[col]),))
      drawn = colour_alpha(shapes.render(scene, size_px), white)
      for blur in _TEMPLATE_BLURS:
        soft = ndimage.gaussian_filter(drawn, blur * scale) if blur else drawn
        for dy in range(-shift, shift + 1):
          for dx in range(-shift, shift + 1):
            maps.append(np.roll(soft, (dy, dx), axis=(0, 1))[y0:y1, x0:x1])
    out.append(np.stack(maps))
  return np.stack(out)


def classify_kind(image: np.ndarray, colour: int, row: int, col: int) -> str:
  """The kind whose renderings in cell (row, col) best match the picture's coverage there
  by colour `colour` (1-based palette index)."""
  edges = _cell_edges(image.shape[0])
  seen = colour_alpha(image[edges[row]:edges[row + 1], edges[col]:edges[col + 1]], colour)
  distance = np.sum(np.square(_templates(image.shape[0], row, col) - seen), axis=(2, 3))
  return shapes.KINDS[int(np.argmin(distance.min(axis=1)))]


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
        kind=classify_kind(image, colour, row, col), colour=shapes.COLOUR_NAMES[colour - 1],
        size='large' if extent / side > _SIZE_THRESHOLD else 'small',
        row=shapes.ROWS[row], col=shapes.COLS[col]))
  return tuple(found)
