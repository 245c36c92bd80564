"""The Python API of a trained dream VLM: text, understanding, generation, inpainting.

  vlm = VLM.from_workdir('runs/small')                 # or VLM.from_params(config, params)
  vlm.generate_text(['a red circle'], max_new_tokens=32)
  vlm.describe([image], questions=['what colour is it?'], mode='surprisal')
  out = vlm.generate_images(['a red circle above a blue square'], cfg_scale=1.5)
  vlm.inpaint([image], [mask], prompts=['a green star'])
  vlm.reconstruct([image], mask_ratio=0.5)

Every method takes lists and runs them as one batch (one compiled program per shape).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np

from dvlm_jax import sharding
from dvlm_jax.data import builtin, layout, pipeline
from dvlm_jax.inference import inpainting, loading, reconstruction, sequence, surprisal
from dvlm_jax.inference import text as text_lib
from dvlm_jax.inference.generation import (GeneratedImage, GenerationOptions, ImageGenerator,
                                           Unsupported)

__all__ = ['VLM', 'GeneratedImage']

MODES = ('clean', 'surprisal')


class VLM:
  """A model and its parameters, with batched inference methods."""

  def __init__(self, config, model, params, step: int = 0,
               context: sharding.Context | None = None):
    """`params` sharded by `context` (None: placed over `loading.inference_context`)."""
    self.config = config
    self.model = model
    if context is None:
      context = loading.inference_context(config)
      abstract = loading.abstract_params(model, config, context)
      params = jax.device_put(params, jax.tree.map(lambda a: a.sharding, abstract))
    self.context = context
    self.params = params
    self.step = int(step)
    self.tokenizer = pipeline.load_tokenizer(config)
    self.layout = layout.LayoutConfig.from_config(config)
    self._text = text_lib.TextDecoder(model, self.layout, self.tokenizer, context)
    self._images = ImageGenerator(model, config, self.tokenizer, context)

  @classmethod
  def from_workdir(cls, workdir: str, step: int | None = None, ema: bool = False) -> 'VLM':
    """The newest (or `step`'s) checkpoint of a run directory; `ema` for the EMA params."""
    loaded = loading.load(workdir, step=step, ema=ema)
    return cls(loaded.config, loaded.model, loaded.params, loaded.step, loaded.context)

  @classmethod
  def from_params(cls, config, params, step: int = 0,
                  context: sharding.Context | None = None) -> 'VLM':
    """Wraps live parameters: evaluation during training passes the training context,
    whose mesh and rules the params are sharded by."""
    return cls(config, loading.build_model(config), params, step, context)

  # ----------------------------------------------------------------------------- text
  def generate_text(self, prompts: list[str], max_new_tokens: int = 64, temperature: float = 0.0,
                    top_k: int = 0, top_p: float = 1.0, seed: int = 0) -> list[str]:
    """Continues each prompt (a document `<BOS> prompt`) until `<EOS>` or max_new_tokens."""
    _check_texts(prompts, 'prompts')
    sampling = text_lib.Sampling(temperature, top_k, top_p, seed)
    return self._text.decode(self.params, [[p] for p in prompts], max_new_tokens, sampling).texts

  def describe(self, images: list[np.ndarray], questions: list[str] | None = None,
               mode: str = 'clean', max_new_tokens: int = 64, seed: int = 0,
               mask_ratio: float | tuple[float, float] = (0.25, 0.75),
               with_surprise: bool = False, **sampling) -> list:
    """Text after each image (a caption), or after the image and its question (an answer).
    In surprisal mode with `with_surprise`, (text, surprise per scale) pairs (`surprise`).

    mode 'clean': every M_k unmasked. 'surprisal' (the seed): M_k masked at a ratio drawn
    per scale from `mask_ratio` (a float or a (min, max) range; masks seeded by `seed`),
    U_k unmasked, so the model states what it expects and then sees what is there.
    `sampling`: temperature, top_k, top_p (greedy by default).
    """
    if mode not in MODES:
      raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
    if questions is not None and len(questions) != len(images):
      raise ValueError(f'{len(images)} images but {len(questions)} questions')
    if questions is not None:
      _check_texts(questions, 'questions')
    docs = []
    for i, image in enumerate(images):
      masks = None if mode == 'clean' else self._surprisal_masks(mask_ratio, seed, i)
      doc = [sequence.image_item(image, self.layout, masks)]
      if questions is not None and questions[i]:
        doc.append(questions[i])
      docs.append(doc)
    options = text_lib.Sampling(seed=seed, **sampling)
    texts = self._text.decode(self.params, docs, max_new_tokens, options).texts
    if mode == 'surprisal' and with_surprise:
      surprise = surprisal.surprisal(self._images, self.params, [d[:1] for d in docs])
      return [(t, [float(x) for x in s]) for t, s in zip(texts, surprise)]
    return texts

  def surprise(self, images: list[np.ndarray], prompts: list[str] | None = None,
               mask_ratio: float | tuple[float, float] = (0.25, 0.75), seed: int = 0
               ) -> np.ndarray:
    """[N, K]: how much each picture surprises the model, per scale (surprisal mode's masks,
    the same for a given `seed` and index): the core output where M_k is masked against U_k
    (`surprisal.surprisal`). With `prompts`, each picture follows its text
    (`prompt` then the image), so a picture that contradicts its text reads as surprising."""
    if prompts is not None:
      _check_texts(prompts, 'prompts')
      if len(prompts) != len(images):
        raise ValueError(f'{len(images)} images but {len(prompts)} prompts')
    docs = []
    for i, image in enumerate(images):
      item = sequence.image_item(image, self.layout, self._surprisal_masks(mask_ratio, seed, i))
      docs.append([item] if prompts is None else [prompts[i], item])
    return surprisal.surprisal(self._images, self.params, docs)

  def _surprisal_masks(self, mask_ratio, seed: int, index: int) -> list[np.ndarray]:
    if not self.model.cfg.mask_token:
      raise Unsupported("surprisal mode needs mask tokens; this model was trained "
                                   "without (image.targets='next_patch')")
    low, high = (mask_ratio, mask_ratio) if np.isscalar(mask_ratio) else mask_ratio
    # The training layout's own mask drawing, with every image partially masked.
    draw_cfg = dataclasses.replace(self.layout, share_unmasked=0.0, share_fully_masked=0.0,
                                   mask_ratio_min=float(low), mask_ratio_max=float(high))
    return layout.draw_masks(draw_cfg, np.random.default_rng([seed, index]))

  # --------------------------------------------------------------------------- images
  def generate_images(self, prompts: list[str], **options) -> list[GeneratedImage]:
    """One image per prompt, next-scale (patch by patch for the Janus-like baseline), from
    `'draw: ' + prompt` (the training layout).

    `options` (`generation.GenerationOptions`): cfg_scale and temperature (default: the run's
    eval.cfg_scale and eval.temperature), cfg_schedule ('constant' | 'linear'), steps
    (default: diffusion.sample_steps), seed, and self-correction: with `self_correct`, a
    scale whose `surprise` ('activation' | 'pixel') is above `threshold` (one, or one per
    scale: `calibrate_surprise`) is drawn again, up to `max_tries` times.
    """
    _check_texts(prompts, 'prompts')
    return self._images.text_to_image(self.params, prompts, self._generation_options(options),
                                      builtin.GENERATION_PROMPT)

  def _generation_options(self, options: dict) -> GenerationOptions:
    """`options` over the run's defaults of guidance and starting noise (config.eval)."""
    defaults = {'cfg_scale': float(self.config.eval.cfg_scale),
                'temperature': float(self.config.eval.temperature)}
    return GenerationOptions(**{**defaults, **options})

  def calibrate_surprise(self, images: list[np.ndarray], prompts: list[str],
                         surprise: str = 'activation', percentile: float = 90.0
                         ) -> tuple[float, ...]:
    """Per scale the `percentile` of the surprise of real (image, caption) pairs: a
    self-correction threshold from the training distribution (`generate_images(...,
    threshold=vlm.calibrate_surprise(images, captions))`)."""
    _check_texts(prompts, 'prompts')
    return surprisal.calibrate(self._images, self.params, images, prompts,
                               builtin.GENERATION_PROMPT, surprise, percentile)

  def inpaint(self, images: list[np.ndarray], masks: list[np.ndarray],
              prompts: list[str] | None = None, **options) -> list[np.ndarray]:
    """Regenerates the pixels where mask is True (any size; [H, W] bool per image).

    Unmasked pixels of the result are the input's, bit for bit. `options`: those of
    generate_images (cfg_scale, cfg_schedule, steps, temperature, seed, self_correct,
    threshold, max_tries, surprise); guidance needs prompts (the unconditional row drops them).
    """
    if prompts is not None:
      _check_texts(prompts, 'prompts')
    out, _ = inpainting.inpaint(self._images, self.params, images, masks, prompts,
                                  self._generation_options(options), builtin.GENERATION_PROMPT)
    return out

  def reconstruct(self, images: list[np.ndarray], mask_ratio: float = 0.5,
                  seed: int = 0) -> list[dict]:
    """Masked reconstruction by the imun head (see ImageGenerator.reconstruct)."""
    return reconstruction.reconstruct(self._images, self.params, images, mask_ratio, seed)


def _check_texts(texts: Sequence, name: str) -> None:
  if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
    raise ValueError(f'{name} must be a list of strings')
