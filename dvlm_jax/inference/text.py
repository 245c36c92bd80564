"""Text decoding with a KV cache: prefill the prompt in one chunk, then token by token.

  rows   one open document per row (`sequence.encode(..., text_slots=max_new_tokens)`),
         left-padded so that every prompt ends at the same index P;
  cache  per layer [B, L, kv_heads, head_dim], the full row length from the start;
  run    one jitted program per (rows, L, P): prefill chunk (0, P) fills the cache (an
         image in the prompt is inside it whole, so its bidirectional blocks are intact),
         then a while loop feeds one sampled token at a time (chunk (P + i, 1)) until
         every row has stopped or max_new_tokens is reached.

The arrays are the training layout of the finished document (text slots), so only token
ids are written while decoding. Sampling: greedy (temperature 0), temperature, top-k,
top-p; ids the layout fixes (PAD, BOS, PATCH, markers, `<IMG_END>`) and ids past the
tokenizer are never sampled. `<EOS>` ends a row; so does `<IMG>` ("an image comes now"),
because a text decoder cannot continue into an image.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dvlm_jax import sharding
from dvlm_jax.data import layout
from dvlm_jax.data import tokenizer as tok
from dvlm_jax.inference import sequence
from dvlm_jax.model.dvlm import DreamVLM

STOP_IDS = (tok.EOS, tok.IMG)
PROMPT_QUANTUM = 32     # prompt ends are rounded up to this: fewer distinct shapes
LENGTH_QUANTUM = 64     # row lengths likewise


@dataclasses.dataclass(frozen=True)
class Sampling:
  """temperature 0 = greedy; top_k 0 = off; top_p 1 = off."""
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0
  seed: int = 0

  def __post_init__(self):
    if self.temperature < 0:
      raise ValueError(f'temperature must be >= 0, got {self.temperature}')
    if self.top_k < 0:
      raise ValueError(f'top_k must be >= 0, got {self.top_k}')
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f'top_p must lie in (0, 1], got {self.top_p}')


def allowed_ids(vocab_size: int, tokenizer_size: int) -> np.ndarray:
  """Bool [vocab_size]: ids the decoder may emit (real text, `<EOS>`, `<IMG>`)."""
  ids = np.arange(vocab_size)
  return (ids < tokenizer_size) & ~tok.is_structural(ids) & (ids != 6) & (ids != 7)


def sample_logits(logits: jax.Array, key: jax.Array, allowed: jax.Array, temperature,
                  top_k, top_p) -> jax.Array:
  """[B, V] logits -> [B] ids. All knobs may be traced: one program for every setting."""
  neg = jnp.finfo(jnp.float32).min
  logits = jnp.where(allowed, logits.astype(jnp.float32), neg)
  greedy = jnp.argmax(logits, axis=-1)
  scaled = logits / jnp.maximum(temperature, 1e-6)
  v = logits.shape[-1]
  # top-k: keep logits at least as large as the k-th largest.
  desc = -jnp.sort(-scaled, axis=-1)
  kth = jnp.take(desc, jnp.clip(top_k - 1, 0, v - 1), axis=-1)[:, None]
  scaled = jnp.where((top_k > 0) & (scaled < kth), neg, scaled)
  # top-p: the smallest set of most likely ids whose probability reaches p.
  desc = -jnp.sort(-scaled, axis=-1)
  probs = jax.nn.softmax(desc, axis=-1)
  keep = (jnp.cumsum(probs, axis=-1) - probs) < top_p
  cutoff = jnp.min(jnp.where(keep, desc, jnp.inf), axis=-1, keepdims=True)
  scaled = jnp.where((top_p < 1.0) & (scaled < cutoff), neg, scaled)
  sampled = jax.random.categorical(key, scaled, axis=-1)
  return jnp.where(temperature > 0, sampled, greedy).astype(jnp.int32)


def empty_cache(model: DreamVLM, batch) -> dict:
  """Zero KV caches over the whole row (shapes from an abstract init, nothing computed)."""
  shapes = jax.eval_shape(functools.partial(model.init, chunk=(0, 1), heads={}),
                          jax.random.key(0), batch)
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes['cache'])


@functools.partial(jax.jit, static_argnames=('model', 'tokenizer_size', 'prompt_end',
                                             'keep_logits'))
def _decode(params, batch, rng, max_new, temperature, top_k, top_p, *, model: DreamVLM,
            tokenizer_size: int, prompt_end: int, keep_logits: bool):
  """The whole decode, traced once per shape: prefill, then a while loop of 1-token chunks.

  Module-level with the (hashable) model static: every decoder of an equal model shares
  the compiled programs, e.g. evaluation building a new VLM from live params each time.
  """
  rows, length = batch['tokens'].shape
  slots = length - prompt_end
  allowed = jnp.asarray(allowed_ids(model.cfg.vocab_size, tokenizer_size))
  # The LM head is read at one position per chunk: the prompt's last, then the new token.
  last = lambda at: {'text': jnp.full((rows, 1), at, jnp.int32)}
  out, state = model.apply({'params': params, 'cache': empty_cache(model, batch)}, batch,
                           chunk=(0, prompt_end), heads=last(prompt_end - 1), mutable=['cache'])
  logits = out['text_logits'][:, 0]
  ids = jnp.zeros((rows, slots), jnp.int32)
  all_logits = jnp.zeros((rows, slots if keep_logits else 0, logits.shape[-1]), jnp.float32)
  stop = jnp.asarray(STOP_IDS, jnp.int32)
  row_index = jnp.arange(rows)

  def cond(carry):
    i, _, _, _, done, _, _ = carry
    return (i < max_new) & ~jnp.all(done)

  def body(carry):
    i, tokens, cache, logits, done, ids, all_logits = carry
    if keep_logits:
      all_logits = jax.lax.dynamic_update_slice(all_logits, logits[:, None], (0, i, 0))
    # One key per row and step: a row's text does not depend on the rows beside it.
    keys = jax.vmap(lambda r: jax.random.fold_in(jax.random.fold_in(rng, i), r))(row_index)
    nxt = jax.vmap(lambda l, k: sample_logits(l[None], k, allowed, temperature, top_k,
                                              top_p)[0])(logits, keys)
    nxt = jnp.where(done, tok.PAD, nxt)
    ids = jax.lax.dynamic_update_slice(ids, nxt[:, None], (0, i))
    done = done | jnp.isin(nxt, stop)
    at = prompt_end + i
    tokens = jax.lax.dynamic_update_slice(tokens, nxt[:, None], (0, at))
    out, state = model.apply({'params': params, 'cache': cache}, dict(batch, tokens=tokens),
                             chunk=(at, 1), heads=last(0), mutable=['cache'])
    return i + 1, tokens, state['cache'], out['text_logits'][:, 0], done, ids, all_logits

  carry = (jnp.int32(0), batch['tokens'], state['cache'], logits, jnp.zeros(rows, bool), ids,
           all_logits)
  n, tokens, _, _, _, ids, all_logits = jax.lax.while_loop(cond, body, carry)
  return ids, n, tokens, all_logits


def row_bucket(n: int, ctx: sharding.Context) -> int:
  """Rows a batch of n documents is padded to (1, 2, 4, 8, then multiples of 8, at least a
  multiple of the context's row shards): callers with varying batch sizes (a last, smaller
  batch) reuse a few compiled programs, and the rows split evenly over the devices."""
  bucket = 1 << max(0, (n - 1).bit_length()) if n <= 8 else sequence.bucket(n, 8)
  return ctx.rows_for(bucket)


def pad_rows(items: Sequence, n: int) -> list:
  """`items` padded to n by repeating the last (its results are dropped)."""
  items = list(items)
  return items + [items[-1]] * (n - len(items))


@dataclasses.dataclass
class Decoded:
  """Per row: the text, the emitted ids (stop id included), and the decoded rows."""
  texts: list[str]
  ids: list[np.ndarray]
  batch: dict[str, np.ndarray]       # the rows as finally decoded (tokens written in)
  prompt_end: int
  logits: np.ndarray | None = None   # [B, steps, V] logits each token was sampled from


class TextDecoder:
  """Batched KV-cache decoding for one model (rows padded to `row_bucket`)."""

  def __init__(self, model: DreamVLM, cfg: layout.LayoutConfig, tokenizer,
               ctx: sharding.Context):
    self.model = model
    self.cfg = cfg
    self.tokenizer = tokenizer
    self.ctx = ctx

  def rows(self, documents: Sequence[Sequence[str | sequence.ImageItem]],
           max_new_tokens: int) -> tuple[dict[str, np.ndarray], int]:
    """Placed rows (each prompt ending at the same index P) and P."""
    docs = [sequence.encode(d, self.cfg, self.tokenizer, text_slots=max_new_tokens)
            for d in documents]
    ends = [len(d['tokens']) - max_new_tokens for d in docs]
    prompt_end = sequence.bucket(max(ends), PROMPT_QUANTUM)
    length = sequence.bucket(prompt_end + max_new_tokens, LENGTH_QUANTUM)
    return sequence.place(docs, self.cfg, length, ends, prompt_end), prompt_end

  def decode(self, params, documents: Sequence[Sequence[str | sequence.ImageItem]],
             max_new_tokens: int = 64, sampling: Sampling = Sampling(),
             keep_logits: bool = False) -> Decoded:
    """Continues every open document (items after `<BOS>`) by up to max_new_tokens."""
    if not documents:
      return Decoded([], [], {}, 0)
    if max_new_tokens < 1:
      raise ValueError(f'max_new_tokens must be >= 1, got {max_new_tokens}')
    b = len(documents)
    batch, prompt_end = self.rows(pad_rows(documents, row_bucket(b, self.ctx)), max_new_tokens)
    with self.ctx.scope():
      out = _decode(
          params, self.ctx.put_rows(batch), jax.random.key(sampling.seed),
          np.int32(max_new_tokens), np.float32(sampling.temperature), np.int32(sampling.top_k),
          np.float32(sampling.top_p), model=self.model,
          tokenizer_size=self.tokenizer.vocab_size, prompt_end=prompt_end,
          keep_logits=keep_logits)
    ids, n, tokens, logits = self.ctx.to_host(out)
    n = int(n)
    ids = ids[:b, :n]
    texts, kept = [], []
    for row in ids:
      stops = np.flatnonzero(np.isin(row, STOP_IDS))
      row = row[:stops[0] + 1] if stops.size else row
      kept.append(row)
      texts.append(self.tokenizer.decode(row[~np.isin(row, STOP_IDS)]))
    batch = {k: v[:b] for k, v in dict(batch, tokens=tokens).items()}
    return Decoded(texts, kept, batch, prompt_end, logits[:b, :n] if keep_logits else None)
