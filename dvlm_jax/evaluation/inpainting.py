"""InpaintingError: regenerate one shape's cell of held-out pictures and measure it.

Each held-out scene (`eval.split`) is rendered at the model's resolution; the
grid cell of its first shape is masked (True = regenerate) and the picture is
inpainted with its own caption as the prompt. Reported:

  inpaint/mse, inpaint/psnr   inside the mask against the original, pixels in
                              [0, 1]; PSNR = 10 log10(1 / MSE) per picture, averaged
  inpaint/shape_recovered     share of pictures where the detector reads the
                              masked shape back exactly (kind, colour, size, cell)
  inpaint/outside_changed     pixels outside the mask that differ from the input,
                              summed over all pictures: inpainting must keep them
                              bit-identical, so anything but 0 is a bug

Chance: filling the mask with the mean colour of the unmasked pixels.
"""

from __future__ import annotations


import numpy as np

from dvlm_jax import contract
from dvlm_jax.data import shapes
from dvlm_jax.evaluation import detector
from dvlm_jax.evaluation.grid import Grid
from dvlm_jax.evaluation.base import Evaluator, psnr

_GRID_ROWS = 16


def cell_mask(shape: shapes.Shape, size_px: int) -> np.ndarray:
  """bool [S, S]: the grid cell of `shape` (where the renderer may draw it)."""
  x0, y0, x1, y1 = shapes.cell_box(*shape.cell, size_px)
  mask = np.zeros((size_px, size_px), bool)
  mask[y0:y1, x0:x1] = True
  return mask


def masked_mse(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
  """Mean squared error over the masked pixels of two uint8 pictures, in [0, 1] units."""
  diff = (a.astype(np.float64) - b.astype(np.float64)) / 255.0
  return float(np.mean(np.square(diff[mask])))


class InpaintingError(Evaluator):
  """MSE/PSNR inside an inpainted cell, the shape read back, unchanged pixels outside."""

  def __init__(self, config):
    super().__init__(config)
    self.image_px = contract.image_side(config)

  def run(self, vlm, step: int) -> dict[str, float]:
    del step
    scenes = [scene for scene, _ in self.heldout.scenes(self.split, self.n)]
    images = [shapes.render(scene, self.image_px) for scene in scenes]
    masks = [cell_mask(scene.shapes[0], self.image_px) for scene in scenes]
    prompts = [shapes.caption(scene) for scene in scenes]
    outputs = []
    for index, start in enumerate(range(0, self.n, self.batch_size)):
      chunk = slice(start, start + self.batch_size)
      outputs += vlm.inpaint(images[chunk], masks[chunk], prompts=prompts[chunk],
                             cfg_scale=self.cfg_scale, steps=self.steps,
                             temperature=self.temperature, seed=self.seed + index)
    mses, baseline, recovered, changed = [], [], [], 0
    grid = Grid(('original', 'masked', 'inpainted'))
    for i, (scene, image, mask, out) in enumerate(zip(scenes, images, masks, outputs)):
      out = np.asarray(out)
      mses.append(masked_mse(out, image, mask))
      changed += int(np.count_nonzero(np.any(out[~mask] != image[~mask], axis=-1)))
      target = scene.shapes[0]
      recovered.append(any(s == target for s in detector.detect(out)))
      fill = image.copy()
      fill[mask] = np.rint(image[~mask].reshape(-1, 3).mean(axis=0)).astype(np.uint8)
      baseline.append(masked_mse(fill, image, mask))
      if i < _GRID_ROWS:
        shown = image.copy()
        shown[mask] = 128
        grid.add(f'prompt: {prompts[i]}  cell: {target.row} {target.col}  '
                 f'psnr {psnr(mses[-1]):.2f} dB', [image, shown, out])
    self.grids = {'cells': grid}
    self.chance = {'inpaint/mse': float(np.mean(baseline)),
                   'inpaint/psnr': float(np.mean([psnr(m) for m in baseline]))}
    return {'inpaint/mse': float(np.mean(mses)),
            'inpaint/psnr': float(np.mean([psnr(m) for m in mses])),
            'inpaint/shape_recovered': float(np.mean(recovered)),
            'inpaint/outside_changed': float(changed)}
