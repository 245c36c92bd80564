"""Next-scale image generation with classifier-free guidance and self-correction.

The other image jobs build on the `ImageGenerator` here: `inpainting.py` (regenerate masked
pixels), `surprisal.py` (self-correction thresholds, surprisal of documents) and
`reconstruction.py` (the imun head on masked patches).

Generation document (what training's generation documents look like, caption first):

  <BOS> draw: CAPTION <IMG> <scale_1> M_1 U_1 <scale_2> M_2 U_2 ... <scale_K> M_K U_K <IMG_END>

laid out whole by the training layout (`sequence.blank_image`: every M_k 100 % masked,
U_k zero until sampled). K + 1 forward passes over a KV cache (`ImageSlots.passes`):

  pass 0   prompt <IMG> <scale_1> M_1          -> conditions of scale 1
  pass k   U_k <scale_{k+1}> M_{k+1}           -> scale k's sample goes in, scale k+1's
                                                  conditions come out, in one pass
  pass K   U_K <IMG_END>                       -> the cache holds the whole image

After a pass, the diffusion head samples every patch of the scale at once from
`imgen_cond` at the *predicting* positions (patch j from position j - target_shift, as
the training layout places `image_targets`), and the sample becomes U_k.

Classifier-free guidance: the unconditional row is the same document without its text
(`<BOS> <IMG> ...`, exactly what caption dropout trains), in the same batch; both rows
receive the same (guided) sample, and the head's prediction is u + g (c - u) with g per
scale (constant, or linear from 1 at the coarsest to `cfg_scale` at the finest).

Self-correction (`self_correct`): after a scale is drawn, its surprise is measured; above
the threshold (one, or one per scale from `surprisal.calibrate`: a percentile of real pictures'
surprise), only the diffusion head runs again on the same cached conditions with new
noise, up to `max_tries` samples; the least surprising one is kept. `surprise`:
  activation  the seed's: 1 - cosine between the core output where each patch of scale k
              is decoded (M_k's position j - target_shift, before the sample) and at that
              patch's U_k position with the sample fed, averaged over the scale
              (`surprise_positions`: both at the same patch); each try's U_k is fed over
              the cache and only looked at (`_probe`)
  pixel       the imun head's prediction at M_k against the sample, mean squared
              difference in pixels (a per-patch normalised prediction is given the
              sample's mean and spread first, so flat patches are not surprising)

Single-copy layouts (dual_copy=False) have no U_k: the sample replaces M_k's mask tokens
and M_k is fed again (the seed's "swap the mask tokens for the image"), so pass k starts
at M_k instead of U_k; the cache rows of M_k are overwritten.

Next-patch generation (`image.targets='next_patch'`, the Janus-like baseline, one copy):
each scale's patches are drawn one at a time in raster order, patch j from the condition
at the position before it (the `<scale_k>` marker for the first), and fed as a one-token
chunk over the KV cache before patch j + 1 is drawn (`_next_patches`, one program per
scale; guidance as above).

`reference=True` recomputes the whole prefix with a full, cache-free forward pass at every
scale (every patch, for next-patch generation) instead: the slow path the tests compare
the cached passes against.
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
from dvlm_jax.inference import text as text_lib
from dvlm_jax.inference.text import empty_cache
from dvlm_jax.model.diffusion import DiffusionObjective
from dvlm_jax.model.dvlm import DreamVLM
from dvlm_jax.training import losses

PREFIX_QUANTUM = 16     # text before the image is padded to a multiple of this (fewer shapes)
SURPRISES = ('activation', 'pixel')


class Unsupported(ValueError):
  """The model variant cannot do what was asked: it was trained without the part that
  does it (evaluation records such a metric as n/a, with this message as the reason)."""


@dataclasses.dataclass(frozen=True)
class GenerationOptions:
  """How to sample; `VLM.generate_images` fills cfg_scale and temperature from the run's
  config (eval.cfg_scale, eval.temperature) when not given."""
  cfg_scale: float
  temperature: float                 # scales the starting noise
  cfg_schedule: str = 'constant'     # constant | linear (1 at the coarsest scale -> cfg_scale)
  steps: int | None = None           # diffusion steps; None = config.diffusion.sample_steps
  seed: int = 0
  self_correct: bool = False
  surprise: str = 'activation'       # activation | pixel (what self-correction measures)
  threshold: float | tuple[float, ...] = 0.5   # one, or one per scale (`surprisal.calibrate`)
  max_tries: int = 3

  def __post_init__(self):
    if self.cfg_schedule not in ('constant', 'linear'):
      raise ValueError(f"cfg_schedule: 'constant' | 'linear', got {self.cfg_schedule!r}")
    if self.steps is not None and self.steps < 1:
      raise ValueError(f'steps must be >= 1, got {self.steps}')
    if self.temperature < 0:
      raise ValueError(f'temperature must be >= 0, got {self.temperature}')
    if self.max_tries < 1:
      raise ValueError(f'max_tries must be >= 1, got {self.max_tries}')
    if self.surprise not in SURPRISES:
      raise ValueError(f'surprise: one of {SURPRISES}, got {self.surprise!r}')

  def threshold_at(self, k: int) -> float:
    """The self-correction threshold of scale k (0-based)."""
    if isinstance(self.threshold, (tuple, list)):
      return float(self.threshold[k])
    return float(self.threshold)

  def guidance(self, k: int, num_scales: int) -> float:
    """Guidance scale of scale k (0-based)."""
    if self.cfg_schedule == 'constant' or num_scales == 1:
      return float(self.cfg_scale)
    return 1.0 + (self.cfg_scale - 1.0) * k / (num_scales - 1)

  def guided(self, num_scales: int) -> bool:
    """Whether any scale needs the unconditional rows (g = 1 is the conditional alone)."""
    return any(self.guidance(k, num_scales) != 1.0 for k in range(num_scales))


@dataclasses.dataclass
class GeneratedImage:
  image: np.ndarray              # uint8 [S, S, 3], the finest scale
  scales: list[np.ndarray]       # uint8 image of every scale, coarse to fine
  surprise: list[float]          # per scale, of the kept sample (nan without an imun head)
  tries: list[int]               # samples drawn per scale
  patches: list[np.ndarray] = dataclasses.field(default_factory=list)
  # per scale the float samples [s*s, patch_dim] in [-1, 1], exactly what the model saw


@dataclasses.dataclass(frozen=True)
class Canvas:
  """What one row samples: per scale the known pixels [n, P] and where to sample (bool [n]).
  Generation samples everything; inpainting only the masked patches."""
  given: tuple[np.ndarray, ...]
  sample: tuple[np.ndarray, ...]


def to_uint8(patches: np.ndarray, patch_size: int) -> np.ndarray:
  """[s*s, P] pixels in [-1, 1] -> uint8 image [s*p, s*p, 3]."""
  pixels = layout.unpatchify(np.asarray(patches, np.float32), patch_size)
  return np.clip(np.rint((pixels + 1.0) * 127.5), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------- jitted pieces

# Module-level programs with the (hashable) model static: every generator of an equal
# model shares them, e.g. evaluation building a new VLM from live params at every eval.

def head_positions(rows: int, positions) -> dict:
  """The image heads read at `positions` (of the call) in every row; none when empty."""
  positions = jnp.asarray(positions, jnp.int32)
  return {'image': jnp.broadcast_to(positions, (rows, positions.size))} if positions.size else {}


def _conditions(out):
  """Diffusion conditions and imun predictions (None without the imun head)."""
  return out['imgen_cond'], out.get('patch_pred')


@functools.partial(jax.jit, static_argnames=('model', 'start', 'n', 'pred_at', 'size'),
                   donate_argnames=('cache',))
def _chunk(params, cache, batch, *, model: DreamVLM, start: int, n: int, pred_at: int,
           size: int):
  """One cached pass over [start, start + n) (cache None: a new one, for pass 0); returns
  the conditions and imun predictions at the next scale's predicting positions, the core
  output there (what the model expects of each patch of the scale that comes next: patch
  j at `pred_at + j`, `surprise_positions`) and the cache."""
  if cache is None:
    cache = empty_cache(model, batch)
  heads = head_positions(batch['tokens'].shape[0], pred_at - start + np.arange(size))
  out, state = model.apply({'params': params, 'cache': cache}, batch, chunk=(start, n),
                           heads=heads, mutable=['cache'], return_hidden=True)
  if size == 0:
    return None, None, None, state['cache']
  cond, pred = _conditions(out)
  at = pred_at - start
  return cond, pred, out['hidden']['core'][:, at:at + size], state['cache']


@functools.partial(jax.jit, static_argnames=('model', 'start', 'n'))
def _probe(params, cache, batch, *, model: DreamVLM, start: int, n: int):
  """The core output [B, n, D] of [start, start + n) fed over the cache; the cache itself
  is left as it was (not donated): the rows are only looked at, not kept."""
  out, _ = model.apply({'params': params, 'cache': cache}, batch, chunk=(start, n), heads={},
                       mutable=['cache'], return_hidden=True)
  return out['hidden']['core']


@functools.partial(jax.jit, static_argnames=('model',))
def core_at(params, batch, positions, *, model: DreamVLM):
  """The slow reference of the two above: the core output [B, n, D] at `positions` of a
  full forward pass, no cache."""
  out = model.apply({'params': params}, batch, heads={}, return_hidden=True)
  return jnp.take(out['hidden']['core'], positions, axis=1)


def activation_surprise(before, after, where) -> jax.Array:
  """[B]: how much feeding a scale's sample moved the model: 1 - cosine between the core
  output at each M_k position (before the sample exists) and at its U_k position (the
  sample fed), averaged over the sampled patches (where [B, n]). The seed's measure: the
  prediction at M_k against what the model makes of the actual image at U_k, patch by
  patch (`surprise_positions`)."""
  before, after = before.astype(jnp.float32), after.astype(jnp.float32)
  cos = jnp.sum(before * after, -1) * jax.lax.rsqrt(
      jnp.sum(before * before, -1) * jnp.sum(after * after, -1) + 1e-12)
  w = jnp.asarray(where, jnp.float32)
  return jnp.sum((1.0 - cos) * w, axis=-1) / jnp.maximum(jnp.sum(w, axis=-1), 1.0)


def surprise_positions(slots: sequence.ImageSlots, k: int) -> tuple[np.ndarray, np.ndarray]:
  """(expecting, seeing) [n] of scale k (0-based), both indexed by patch j: the position
  whose output decodes patch j (M_k's j - target_shift: with target_shift=1 the marker
  decodes patch 0 and M_k's position j patch j + 1) and U_k's position j, where patch j
  is fed (M_k itself in a single-copy layout). The activation surprise compares the two,
  so it compares what the model expected of a patch with what it makes of that patch."""
  j = np.arange(slots.sizes[k], dtype=np.int32)
  return slots.predicting(k) + j, slots.fed(k) + j


@functools.partial(jax.jit, static_argnames=('model',))
def full_pass(params, batch, positions, *, model: DreamVLM):
  """The slow reference: the whole row through the model, no cache; the conditions at
  `positions` (an array, so that every position shares one program)."""
  heads = {'image': jnp.broadcast_to(positions, (batch['tokens'].shape[0], positions.size))}
  return _conditions(model.apply({'params': params}, batch, heads=heads))


@functools.partial(jax.jit, static_argnames=('model', 'objective', 'norm_pix', 'steps',
                                             'guided'))
def _draw(params, cond, pred, given, where, base, key, guidance, temperature, *,
          model: DreamVLM, objective: DiffusionObjective, norm_pix: bool, steps: int,
          guided: bool):
  """One sample of a scale for every image, and its surprise.

  cond [R, n, D] (R = 2B with guidance: conditional rows, then unconditional rows),
  pred [B, n, P] imun predictions or None, given [B, n, P] / where [B, n]: known pixels
  and what to sample, base [B, n, P]: what the head's draw is added to (the coarser scale
  upsampled for residual targets, else 0). Noise comes from one key per image (fold_in of its row index), so
  an image's sample does not depend on the batch it is in. Returns ([B, n, P], [B]).
  """
  b = given.shape[0]
  pairs = jnp.stack([cond[:b], cond[b:]], axis=1) if guided else cond[:b, None]
  keys = jax.vmap(lambda r: jax.random.fold_in(key, r))(jnp.arange(b))

  def one(c, k):
    def denoise(x, t):
      xx = jnp.broadcast_to(x, (c.shape[0],) + x.shape)
      tt = jnp.broadcast_to(t, (c.shape[0],) + t.shape)
      out = model.apply({'params': params}, xx, tt, c, method=DreamVLM.denoise)
      return out[1] + guidance * (out[0] - out[1]) if guided else out[0]
    return objective.sample(denoise, (c.shape[1], model.cfg.patch_dim), k, temperature, steps)

  x = jax.vmap(one)(pairs, keys)
  x = jnp.where(where[..., None], jnp.clip(x + base, -1.0, 1.0), given)
  if pred is None:
    return x, jnp.full((b,), jnp.nan, jnp.float32)
  return x, pixel_surprise(pred, x, where, norm_pix)


def pixel_surprise(pred, x, where, norm_pix: bool):
  """[B]: mean squared difference in pixels between the imun prediction pred [B, n, P]
  and the sample x over the sampled patches (where [B, n]).

  A normalised prediction (norm_pix) has no colour or contrast of its own: it is given the
  sample's, and the error measured in pixels. A flat patch (background) then reads as
  unsurprising, where normalising it would blow its tiny noise up to unit variance.
  """
  if norm_pix:
    err = jnp.mean(jnp.square(pred - losses.normalize_patches(x)), axis=-1) * (
        jnp.var(x, axis=-1) + 1e-6)
  else:
    err = jnp.mean(jnp.square(pred - x), axis=-1)
  w = where.astype(jnp.float32)
  return jnp.sum(err * w, axis=-1) / jnp.maximum(jnp.sum(w, axis=-1), 1.0)


@functools.partial(jax.jit, static_argnames=('model', 'objective', 'start', 'first', 'size',
                                             'steps', 'guided'), donate_argnames=('cache',))
def _next_patches(params, cache, batch, given, where, base, key, guidance, temperature, *,
                  model: DreamVLM, objective: DiffusionObjective, start: int, first: int,
                  size: int, steps: int, guided: bool):
  """One scale of next-patch generation (the Janus-like baseline) over a KV cache.

  The cache holds the rows before `start` (None: nothing yet). One chunk takes it up to the
  scale's marker at `first - 1`, whose condition draws patch 0; then every drawn patch j is
  written into the rows at `first + j` and fed alone (a 1-token chunk), and its condition
  draws patch j + 1. given / where / base [B, size, P] / [B, size] / [B, size, P] as in
  `_draw`. Returns the
  patches [B, size, P], the rows' `patches` with them written in, and the cache.
  """
  rows = batch['tokens'].shape[0]
  b = given.shape[0]
  if cache is None:
    cache = empty_cache(model, batch)
  at_last = lambda i: {'image': jnp.full((rows, 1), i, jnp.int32)}
  out, state = model.apply({'params': params, 'cache': cache}, batch,
                           chunk=(start, first - start), heads=at_last(first - 1 - start),
                           mutable=['cache'])
  draw = functools.partial(_draw, params, model=model, objective=objective, norm_pix=False,
                           steps=steps, guided=guided)

  def body(j, carry):
    patches, cache, cond, drawn = carry
    at_j = lambda a: jax.lax.dynamic_slice_in_dim(a, j, 1, axis=1)
    x, _ = draw(cond, None, at_j(given), at_j(where), at_j(base), jax.random.fold_in(key, j),
                guidance, temperature)
    patches = jax.lax.dynamic_update_slice(
        patches, jnp.concatenate([x] * (rows // b)).astype(patches.dtype), (0, first + j, 0))
    out, state = model.apply({'params': params, 'cache': cache}, dict(batch, patches=patches),
                             chunk=(first + j, 1), heads=at_last(0), mutable=['cache'])
    return patches, state['cache'], out['imgen_cond'], drawn.at[:, j].set(x[:, 0])

  carry = (batch['patches'], state['cache'], out['imgen_cond'],
           jnp.zeros(given.shape, jnp.float32))
  patches, cache, _, drawn = jax.lax.fori_loop(0, size, body, carry)
  return drawn, patches, cache


# ------------------------------------------------------------------------- generation

def in_context(method):
  """Runs an ImageGenerator entry point under its sharding context (mesh and logical
  rules): every program it calls is traced with the model's constraints, rows split."""
  @functools.wraps(method)
  def run(self, *args, **kwargs):
    with self.ctx.scope():
      return method(self, *args, **kwargs)
  return run


class ImageGenerator:
  """Batched next-scale (or next-patch) generation for one model; the rows, checks and
  cached programs the other image jobs (inpainting, surprisal, reconstruction) share."""

  def __init__(self, model: DreamVLM, config, tokenizer, ctx: sharding.Context):
    self.model = model
    self.ctx = ctx
    self.config = config
    self.cfg = layout.LayoutConfig.from_config(config)
    self.tokenizer = tokenizer
    self.objective = DiffusionObjective.from_config(config)
    self.norm_pix = bool(config.model.imun_norm_pix)

  # -- checks
  def check_can_generate(self, opts: GenerationOptions):
    if not self.model.cfg.diffusion_head:
      raise Unsupported('this model has no diffusion head (model.diffusion_head=False): it '
                        'cannot generate images')
    if self.cfg.image_targets == 'next_patch' and self.cfg.dual_copy:
      raise Unsupported("next-patch generation (image.targets='next_patch') feeds each patch "
                        'once: it needs image.dual_copy=False')
    if opts.self_correct and opts.surprise == 'pixel' and not self.model.cfg.imun_head:
      raise Unsupported("surprise='pixel' needs the imun head (model.imun_head=True): it is "
                        "the imun prediction at M_k against the sample")
    if opts.self_correct and self.cfg.image_targets == 'next_patch':
      raise Unsupported('self-correction re-draws a whole scale; next-patch generation draws '
                        'one patch at a time')

  # -- rows
  def rows(self, documents: Sequence[Sequence]) -> dict[str, np.ndarray]:
    """Each document ends with the image to sample; rows aligned on its <IMG>."""
    docs = [sequence.encode(d, self.cfg, self.tokenizer) for d in documents]
    starts = [int(np.flatnonzero(d['tokens'] == tok.IMG)[-1]) for d in docs]
    anchor = sequence.bucket(max(starts), PREFIX_QUANTUM)
    return sequence.place(docs, self.cfg, anchor + self.cfg.image_tokens, starts, anchor)

  @in_context
  def generate(self, params, documents: Sequence[Sequence], canvases: Sequence[Canvas],
               opts: GenerationOptions, unconditional: Sequence[Sequence] | None = None,
               reference: bool = False) -> list[GeneratedImage]:
    """Samples the last image of every document (an ImageItem whose M_k masks mark what
    to sample, matching `canvases`); `unconditional` documents for guidance, row by row."""
    self.check_can_generate(opts)
    b = len(documents)
    if b == 0:
      return []
    if len(canvases) != b or (unconditional is not None and len(unconditional) != b):
      raise ValueError('one canvas (and unconditional document) per document')
    padded = text_lib.row_bucket(b, self.ctx)   # padding rows repeat the last image (dropped)
    documents, canvases = text_lib.pad_rows(documents, padded), text_lib.pad_rows(canvases, padded)
    num_scales = len(self.cfg.scales)
    guided = unconditional is not None and opts.guided(num_scales)
    copies = 2 if guided else 1
    batch = self.rows(documents + (text_lib.pad_rows(unconditional, padded) if guided else []))
    slots = sequence.image_slots(batch, self.cfg.target_shift)
    steps = opts.steps or self.objective.sample_steps
    for k in range(num_scales):   # nothing to be sampled is visible before it is sampled
      at = slice(slots.fed(k), slots.fed(k) + slots.sizes[k])
      todo = np.stack([c.sample[k] for c in canvases] * copies)
      batch['patches'][:, at] = np.where(todo[..., None], 0.0, batch['patches'][:, at])

    key = jax.random.key(opts.seed)
    run = self._next_patch if self.cfg.image_targets == 'next_patch' else self._next_scale
    scales, surprises, tries = run(params, batch, slots, canvases, copies, guided, steps, key,
                                   opts, reference)
    out = []
    for r in range(b):
      images = [to_uint8(x[r], self.cfg.patch_size) for x in scales]
      out.append(GeneratedImage(images[-1], images, [float(s[r]) for s in surprises],
                                [int(t[r]) for t in tries], [x[r] for x in scales]))
    return out

  def _base(self, scales: list[np.ndarray], k: int, rows: int) -> np.ndarray:
    """[rows, s_k^2, P]: what the head's draws of scale k are added to: the scale drawn
    before it upsampled for residual targets (`diffusion.target`), else 0."""
    if self.cfg.imgen_residual and k:
      return np.stack([layout.upsample(x, self.cfg.patch_size, self.cfg.scales[k])
                       for x in scales[-1]])
    return np.zeros((rows, self.cfg.scales[k] ** 2, self.cfg.patch_dim), np.float32)

  def _next_patch(self, params, batch, slots, canvases, copies, guided, steps, key, opts,
                  reference):
    """Every scale patch by patch in raster order (`image.targets='next_patch'`): patch j
    from the position before it, fed before patch j + 1 is drawn. Per scale ([B', n, P]
    samples of the padded rows, nan surprise, one try)."""
    batch['is_masked'][:] = False    # a next-patch layout never masks: patches are fed as drawn
    rows_b = len(canvases)
    scales, start, cache = [], 0, None
    for k, size in enumerate(slots.sizes):
      first = slots.masked[k]
      given = np.stack([c.given[k] for c in canvases])
      where = np.stack([c.sample[k] for c in canvases])
      guidance = jnp.float32(opts.guidance(k, len(slots.sizes)))
      scale_key = jax.random.fold_in(key, k)
      base = self._base(scales, k, len(canvases))
      if reference:   # a full forward pass per patch, no cache
        x = np.zeros(given.shape, np.float32)
        for j in range(size):
          cond, _ = full_pass(params, self.ctx.put_rows(batch),
                          np.asarray([first + j - 1], np.int32), model=self.model)
          xj, _ = _draw(params, cond, None, given[:, j:j + 1], where[:, j:j + 1],
                        base[:, j:j + 1], jax.random.fold_in(scale_key, j),
                        guidance, jnp.float32(opts.temperature), model=self.model,
                        objective=self.objective, norm_pix=False, steps=steps, guided=guided)
          x[:, j] = self.ctx.to_host(xj)[:, 0]
          batch['patches'][:, first + j] = np.concatenate([x[:, j]] * copies)
      else:
        x, patches, cache = _next_patches(
            params, cache, batch, given, where, base, scale_key, guidance,
            jnp.float32(opts.temperature), model=self.model, objective=self.objective,
            start=start, first=first, size=size, steps=steps, guided=guided)
        x, batch['patches'] = self.ctx.to_host((x, patches))
      start = first + size
      scales.append(x)
    nan = np.full(rows_b, np.nan, np.float32)
    return scales, [nan] * len(scales), [np.ones(rows_b, np.int32)] * len(scales)

  def _next_scale(self, params, batch, slots, canvases, copies, guided, steps, key, opts,
                  reference):
    """Every scale at once from its masked copy, K + 1 passes (the module docstring).
    Per scale ([B', n, P] samples of the padded rows, surprise [B'], tries [B'])."""
    num_scales = len(slots.sizes)
    padded = len(canvases)
    passes = slots.passes()
    cache = None
    scales, surprises, tries = [], [], []
    for k in range(num_scales):
      pred_at, size = slots.predicting(k), slots.sizes[k]
      base = self._base(scales, k, padded)
      expecting, fed = surprise_positions(slots, k)
      if reference:
        cond, pred = full_pass(params, self.ctx.put_rows(batch), expecting, model=self.model)
        before = core_at(params, self.ctx.put_rows(batch), expecting, model=self.model)
      else:
        start, n = passes[k]
        cond, pred, before, cache = _chunk(params, cache, self.ctx.put_rows(batch),
                                           model=self.model, start=start,
                                           n=n, pred_at=pred_at, size=size)
      where = np.stack([c.sample[k] for c in canvases])

      def activation(x, k=k, fed=fed, before=before, cache=cache):
        """The activation surprise of sample x: its U_k fed over the cache (only looked at)."""
        rows = self.fed(batch, fed, x, copies)
        after = (core_at(params, self.ctx.put_rows(rows), fed, model=self.model) if reference else
                 _probe(params, cache, self.ctx.put_rows(rows), model=self.model,
                        start=int(fed[0]), n=len(fed)))
        return self.ctx.to_host(activation_surprise(before[:padded], after[:padded], where))

      measure = activation if opts.self_correct and opts.surprise == 'activation' else None
      x, s, t = self._sample_scale(
          params, cond, None if pred is None else pred[:padded],
          np.stack([c.given[k] for c in canvases]), where, base, jax.random.fold_in(key, k),
          opts.guidance(k, num_scales), guided, steps, opts, opts.threshold_at(k), measure)
      batch.update(self.fed(batch, fed, x, copies))
      scales.append(x)
      surprises.append(s)
      tries.append(t)
    if not reference:   # pass K: U_K <IMG_END>, the cache then holds the whole image
      start, n = passes[-1]
      _chunk(params, cache, self.ctx.put_rows(batch), model=self.model, start=start, n=n,
             pred_at=0, size=0)
    return scales, surprises, tries

  def fed(self, batch, fed, x, copies) -> dict[str, np.ndarray]:
    """The rows with sample x [B', n, P] written where it is fed (U_k, or M_k itself in a
    single-copy layout, whose mask tokens it replaces); `batch` is not changed."""
    rows = {'patches': batch['patches'].copy(), 'is_masked': batch['is_masked'].copy()}
    rows['patches'][:, fed] = np.concatenate([x] * copies)
    if not self.cfg.dual_copy:
      rows['is_masked'][:, fed] = False
    return dict(batch, **rows)

  def _sample_scale(self, params, cond, pred, given, where, base, key, guidance, guided, steps,
                    opts, threshold, measure=None):
    """One scale's sample [B, n, P] (with self-correction), its surprise [B] and tries [B].

    Try t draws with fold_in(key, t): try 0 is the sample without self-correction. A row
    draws again while its latest try is above the threshold (and tries are left), and
    keeps its least surprising sample. `measure(x) -> [B]` is the activation surprise
    (None: the pixel surprise `_draw` returns).
    """
    def draw(t):
      x, s = _draw(params, cond, pred, given, where, base, jax.random.fold_in(key, t),
                   jnp.float32(guidance), jnp.float32(opts.temperature), model=self.model,
                   objective=self.objective, norm_pix=self.norm_pix, steps=steps, guided=guided)
      x, s = self.ctx.to_host((x, s))
      return x, s if measure is None else measure(x)

    best, best_s = draw(0)
    has_work = where.any(axis=-1)
    tries = has_work.astype(np.int32)
    if not opts.self_correct:
      return best, best_s, tries
    active = has_work & (best_s > threshold)
    for t in range(1, opts.max_tries):
      if not active.any():
        break
      x, s = draw(t)
      tries += active
      better = active & (s < best_s)
      best = np.where(better[:, None, None], x, best)
      best_s = np.where(better, s, best_s)
      active &= s > threshold
    return best, best_s, tries

  def text_to_image(self, params, prompts: Sequence[str], opts: GenerationOptions,
                    prefix: str, reference: bool = False) -> list[GeneratedImage]:
    blank = sequence.blank_image(self.cfg)
    docs = [[prefix + p, blank] for p in prompts]
    canvas = Canvas(blank.patches, blank.masks)
    return self.generate(params, docs, [canvas] * len(docs), opts,
                         unconditional=[[blank]] * len(docs), reference=reference)
