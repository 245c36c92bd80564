"""Picture grids of what an evaluator saw and produced, rendered once for PNG and TensorBoard.

A `Grid` is rows of images with one line of text per row (a prompt, a caption
the model wrote, a PSNR). Images are upscaled with nearest-neighbour to one
cell size, so 8-px coarse scales and 64-px pictures sit side by side pixel-exact.
"""

from __future__ import annotations

import dataclasses
import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont

_CELL = 96          # px per image cell
_GAP = 4
_TEXT_WIDTH = 360   # px of the text column
_LINE = 12          # px per text line of PIL's built-in font
_BACKGROUND = (255, 255, 255)
_INK = (0, 0, 0)


@dataclasses.dataclass
class Grid:
  """`columns` names the image columns; each row is (text, images of that row)."""
  columns: tuple[str, ...]
  rows: list[tuple[str, list[np.ndarray]]] = dataclasses.field(default_factory=list)

  def add(self, text: str, images) -> None:
    self.rows.append((text, [np.asarray(i, np.uint8) for i in images]))


def _cell(image: np.ndarray) -> Image.Image:
  pil = Image.fromarray(np.asarray(image, np.uint8))
  return pil.resize((_CELL, _CELL), Image.Resampling.NEAREST)


def render(grid: Grid) -> np.ndarray:
  """uint8 [H, W, 3]: a header line of column names, then one row per entry."""
  font = ImageFont.load_default()
  n_cols = max([len(images) for _, images in grid.rows] + [len(grid.columns)])
  chars = max(8, _TEXT_WIDTH // 6)
  wrapped = [textwrap.wrap(text, chars) or [''] for text, _ in grid.rows]
  heights = [max(_CELL, _LINE * len(lines)) + _GAP for lines in wrapped]
  width = n_cols * (_CELL + _GAP) + _TEXT_WIDTH
  canvas = Image.new('RGB', (width, _LINE + _GAP + sum(heights)), _BACKGROUND)
  draw = ImageDraw.Draw(canvas)
  for c, name in enumerate(grid.columns):
    draw.text((c * (_CELL + _GAP), 0), name[:(_CELL // 6)], fill=_INK, font=font)
  y = _LINE + _GAP
  for (_, images), lines, height in zip(grid.rows, wrapped, heights):
    for c, image in enumerate(images):
      canvas.paste(_cell(image), (c * (_CELL + _GAP), y))
    draw.multiline_text((n_cols * (_CELL + _GAP), y), '\n'.join(lines), fill=_INK, font=font)
    y += height
  return np.asarray(canvas)


def save_png(picture: np.ndarray, path: str) -> None:
  """Writes a rendered grid (`render`'s uint8 [H, W, 3])."""
  Image.fromarray(picture).save(path)
