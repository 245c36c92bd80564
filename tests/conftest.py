"""Shared fixtures: the tiny config, a hand-laid batch with one image, a compiled forward.

Also one persistent XLA compilation cache for the whole suite: the pytest workers and
the train / eval commands they start compile the same programs (the tiny train step,
the evaluators' functions) many times over; with the cache each compiles once. Set
before JAX is imported; the commands inherit it through the environment. The size limit
turns on JAX's file lock, so concurrent processes never read a half-written entry.
"""

import dataclasses
import os
import tempfile

os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.path.join(tempfile.gettempdir(), 'dvlm_jax_test_xla_cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_COMPILATION_CACHE_MAX_SIZE', str(4 << 30))

import jax  # noqa: E402  (after the cache settings)
import numpy as np
import pytest

from dvlm_jax import config as cfg_lib
from dvlm_jax.validation import validate
from dvlm_jax.data import layout, tokenizer
from dvlm_jax.model.dvlm import DreamVLM
from dvlm_jax.model.layers import ModelConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def layout_config(**fields) -> layout.LayoutConfig:
  """The default config's layout with `fields` changed."""
  return dataclasses.replace(layout.LayoutConfig.from_config(cfg_lib.defaults()), **fields)


def tiny_config(arg=None, **overrides):
  c = cfg_lib.load(os.path.join(ROOT, 'experiments', 'tiny.py') + (f':{arg}' if arg else ''))
  for key, value in overrides.items():
    section, leaf = key.split('__')
    c[section][leaf] = value
  validate(c)
  return c


def image_batch(config, seed=0):
  """Rows: [text, image, text] and a text-only document; every image partially masked."""
  config = cfg_lib.ConfigDict(config)
  config.image.share_unmasked = 0.0
  config.image.share_fully_masked = 0.0
  config.image.caption_dropout = 0.0
  rng = np.random.default_rng(seed)
  px = config.image.scales[-1] * config.image.patch_size
  docs = [['draw: a red circle', (rng.random((px, px, 3)) * 255).astype(np.uint8), ' done.'],
          ['just some text about shapes.']]
  batch, stats = layout.make_batch(docs, layout.LayoutConfig.from_config(config),
                                   tokenizer.ByteTokenizer(), rng, 2)
  assert stats.skipped == 0
  return batch


def build(config, batch):
  model = DreamVLM(ModelConfig.from_config(config))
  params = jax.jit(model.init)(jax.random.key(0), batch)['params']
  return model, params


@pytest.fixture(scope='session')
def tiny():
  return tiny_config()
