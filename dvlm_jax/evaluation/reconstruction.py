"""MaskedPatchPSNR: how well the imun head fills in masked patches, per scale.

Held-out pictures (`eval.split`) go through `VLM.reconstruct` with every scale
masked at `eval.masked_patch_psnr.mask_ratio` (masks drawn by the training layout's own code, seeded
by `eval.seed`); the head's prediction at the masked patches is compared with the
true pixels. Per scale k:

  recon/psnr/scale_k        dB, pixels in [0, 1], masked patches only (a prediction
                            in MAE-normalised space is shown with the true patch's
                            mean and std, as MAE does)
  recon/mse/scale_k         the same error as a pixel MSE in [0, 1] units
  recon/imun_loss/scale_k   MSE in the head's own target space: the training
                            metric `imun/scale_k`, on held-out pictures

and `recon/psnr`, the mean over scales. Chance: every masked patch painted with
the mean colour of the visible patches of its scale.
"""

from __future__ import annotations


import numpy as np

from dvlm_jax.evaluation.grid import Grid
from dvlm_jax.evaluation.base import Evaluator, psnr

_GRID_ROWS = 8


def _mean_fill_mse(target: np.ndarray, mask: np.ndarray) -> float:
  """Pixel MSE in [0, 1] of painting the masked cells with the visible cells' mean colour."""
  cell = target.shape[0] // mask.shape[0]
  pixel_mask = np.repeat(np.repeat(mask, cell, axis=0), cell, axis=1)
  pixels = target.astype(np.float64) / 255.0
  fill = pixels[~pixel_mask].mean(axis=0)
  return float(np.mean(np.square(pixels[pixel_mask] - fill)))


class MaskedPatchPSNR(Evaluator):
  """Reconstruction PSNR, pixel MSE and imun loss of masked patches, per scale."""

  def __init__(self, config):
    super().__init__(config)
    self.mask_ratio = float(config.eval.masked_patch_psnr.mask_ratio)
    self.num_scales = len(config.image.scales)

  def run(self, vlm, step: int) -> dict[str, float]:
    del step
    images = [image for _, image in self.heldout.scenes(self.split, self.n)]
    results = []
    for index, start in enumerate(range(0, self.n, self.batch_size)):
      results += vlm.reconstruct(images[start:start + self.batch_size],
                                 mask_ratio=self.mask_ratio, seed=self.seed + index)
    metrics, chance = {}, {}
    for k in range(self.num_scales):
      name = f'scale_{k + 1}'
      # mask_ratio in (0, 1) masks at least one patch per scale, except where a scale
      # has so few patches that round(ratio * s * s) is 0: those images are left out.
      psnrs = [r['psnr'][k] for r in results if r['mask'][k].any()]
      if not psnrs:
        continue
      metrics[f'recon/psnr/{name}'] = float(np.mean(psnrs))
      metrics[f'recon/mse/{name}'] = float(np.mean([10 ** (-p / 10) for p in psnrs]))
      metrics[f'recon/imun_loss/{name}'] = float(np.mean(
          [r['mse'][k] for r in results if r['mask'][k].any()]))
      baseline = [_mean_fill_mse(r['target'][k], r['mask'][k]) for r in results
                  if r['mask'][k].any()]
      chance[f'recon/psnr/{name}'] = float(np.mean([psnr(m) for m in baseline]))
      chance[f'recon/mse/{name}'] = float(np.mean(baseline))
    per_scale = [v for k, v in metrics.items() if k.startswith('recon/psnr/')]
    metrics['recon/psnr'] = float(np.mean(per_scale))
    chance['recon/psnr'] = float(np.mean([v for k, v in chance.items()
                                          if k.startswith('recon/psnr/')]))
    grid = Grid(tuple(f's{k + 1} {what}' for k in range(self.num_scales)
                      for what in ('masked', 'pred', 'target')))
    for r in results[:_GRID_ROWS]:
      grid.add('psnr ' + ' '.join(f'{p:.1f}' for p in r['psnr']) + ' dB',
               [r[what][k] for k in range(self.num_scales)
                for what in ('masked', 'prediction', 'target')])
    self.chance, self.grids = chance, {'scales': grid}
    return metrics
