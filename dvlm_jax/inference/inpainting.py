"""Inpainting: regenerate the masked pixels of pictures, keep every other pixel.

  out, generated = inpaint(gen, params, images, masks, prompts, opts, prefix)

The masked patches of every scale (`patch_masks`) are sampled by next-scale generation
(`generation.ImageGenerator.generate`) with the rest of the picture given; the result
takes only the masked pixels from the sample.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from dvlm_jax.data import layout
from dvlm_jax.inference import sequence
from dvlm_jax.inference.generation import (Canvas, GeneratedImage, GenerationOptions,
                                           ImageGenerator)


def patch_masks(mask: np.ndarray, cfg: layout.LayoutConfig) -> list[np.ndarray]:
  """Pixel mask [H, W] -> per scale bool [s*s]: a patch is masked if any pixel it covers
  (after the image is squashed to the square scale grid) is masked."""
  mask = np.asarray(mask, bool)
  h, w = mask.shape
  integral = np.zeros((h + 1, w + 1), np.int64)
  integral[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0), axis=1)
  out = []
  for s in cfg.scales:
    y0 = np.floor(np.arange(s) * h / s).astype(int)
    y1 = np.ceil((np.arange(s) + 1) * h / s).astype(int)
    x0 = np.floor(np.arange(s) * w / s).astype(int)
    x1 = np.ceil((np.arange(s) + 1) * w / s).astype(int)
    count = (integral[y1][:, x1] - integral[y0][:, x1] - integral[y1][:, x0]
             + integral[y0][:, x0])
    out.append((count > 0).reshape(-1))
  return out


def inpaint(gen: ImageGenerator, params, images: Sequence[np.ndarray], masks: Sequence[np.ndarray],
            prompts: Sequence[str] | None, opts: GenerationOptions, prefix: str,
            reference: bool = False) -> tuple[list[np.ndarray], list[GeneratedImage]]:
  """Regenerates the masked pixels; every unmasked pixel of the result is the input's."""
  if len(masks) != len(images) or (prompts is not None and len(prompts) != len(images)):
    raise ValueError(f'inpaint: {len(images)} images, {len(masks)} masks, '
                     f'{"no" if prompts is None else len(prompts)} prompts')
  rgbs, pixel_masks, items = [], [], []
  for i, (image, mask) in enumerate(zip(images, masks)):
    rgb = layout.to_rgb(image)
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[-1] == 1:
      mask = mask[..., 0]
    if mask.shape != rgb.shape[:2]:
      raise ValueError(f'inpaint: mask {i} has shape {mask.shape}, its image is '
                       f'{rgb.shape[:2]}: they must match pixel for pixel')
    mask = mask.astype(bool)
    rgbs.append(rgb)
    pixel_masks.append(mask)
    items.append(sequence.image_item(rgb, gen.cfg, patch_masks(mask, gen.cfg)))
  canvases = [Canvas(it.patches, it.masks) for it in items]
  if prompts is None:
    docs, uncond = [[it] for it in items], None
  else:
    docs, uncond = [[prefix + p, it] for p, it in zip(prompts, items)], [[it] for it in items]
  generated = gen.generate(params, docs, canvases, opts, unconditional=uncond,
                            reference=reference)
  out = []
  for rgb, mask, g in zip(rgbs, pixel_masks, generated):
    h, w = mask.shape
    up = np.asarray(Image.fromarray(g.image).resize((w, h), Image.Resampling.BICUBIC))
    result = rgb.copy()
    result[mask] = up[mask]
    out.append(result)
  return out, generated
