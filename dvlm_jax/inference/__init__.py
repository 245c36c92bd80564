"""Inference from a restored checkpoint: text, understanding, generation, inpainting.

  from dvlm_jax.inference import VLM
  vlm = VLM.from_workdir('runs/small')

Modules: loading (workdir -> config, model, params), sequence (inference rows laid out by
the training layout), text (KV-cache decoding), generation (next-scale image generation,
self-correction), inpainting, surprisal (self-correction thresholds, surprise of
documents), reconstruction (the imun head on masked patches), api (the VLM class). See docs/inference.md.
"""

from dvlm_jax.inference.api import VLM
from dvlm_jax.inference.generation import GeneratedImage, GenerationOptions
from dvlm_jax.inference.loading import Loaded, load

__all__ = ['VLM', 'GeneratedImage', 'GenerationOptions', 'Loaded', 'load']
