"""Configs: defaults, loading `experiments/NAME.py:arg`, command-line overrides, validation.

An experiment file defines `get_config(arg=None) -> ConfigDict`, usually by calling
`defaults()` and changing what differs. On the command line:

  --config experiments/tiny.py[:arg] --config.model.core_layers=4 --config.image.scales=2,4

Unknown keys and inconsistent values fail at start with `ConfigError` naming the key.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import os
from typing import Any, Sequence

import ml_collections

from dvlm_jax.data import layout  # the layout knows an image's length
from dvlm_jax.data import tokenizer as tok_lib  # and the tokenizer its size

ConfigDict = ml_collections.ConfigDict


class ConfigError(ValueError):
  """A config key is unknown or its value is inconsistent; the message names the key."""


def defaults() -> ConfigDict:
  """Every key the framework reads, with the 'dream VLM' defaults. Experiments override."""
  c = ConfigDict()

  c.model = m = ConfigDict()
  m.vocab_size = 384            # >= tokenizer size (272 for the byte tokenizer), padded for sharding
  m.d_model = 256
  m.n_heads = 4
  m.n_kv_heads = 4              # < n_heads gives grouped-query attention
  m.head_dim = 64
  m.mlp_dim = 1024
  m.core_layers = 4
  # Late merge / early split: modality-specific transformer blocks. 0 = shared (Janus-like).
  m.text_in_layers = 1
  m.image_in_layers = 1
  m.text_out_layers = 1
  m.imun_out_layers = 1
  m.imgen_out_layers = 1
  m.imun_head = True            # masked image modelling loss (decode masked patches)
  m.imun_norm_pix = True        # MAE-style per-patch normalised imun target
  m.diffusion_head = True       # per-position diffusion head for generation
  m.rope_theta = 10_000.0
  m.rope_axes = 'ttyx'          # axis (t, y, x) of each rotary frequency pair, cycled from
                                # the highest frequency (layers.rope_sections)
  m.image_pos_embed = False     # add a learned map of each image cell's place in its picture
                                # (dvlm.cell_features) to its patch embedding
  m.norm_eps = 1e-6
  m.tie_embeddings = False
  m.dtype = 'float32'           # activation dtype: float32 | bfloat16
  m.param_dtype = 'float32'
  m.remat = 'none'              # none | full | dots (checkpoint policy of each block)
  m.scan_layers = True          # scan the core layers: one compile per block shape
  m.attention = 'auto'          # auto: the fastest kernel for the backend (model/attention.py
                                # AUTO), dense XLA on CPU; or xla | tokamax | pallas_gpu | splash
  m.init_std = 0.02
  m.embed_init_std = 0.02       # text embedding table; larger keeps each word's identity
                                # strong in the residual stream (T5: 1.0)
  # Mixture of experts in the core stack (modality blocks stay dense); docs/architecture.md.
  m.moe_experts = 0             # 0 = dense SwiGLU MLP; > 0 = experts per core layer
  m.moe_top_k = 2               # experts each token is sent to (gates renormalised over them)
  m.moe_capacity_factor = 1.25  # slots per expert and group = ceil(G * k / E * factor)
  m.moe_group_size = 512        # tokens compete for capacity within groups of G positions
  m.moe_mlp_dim = 0             # hidden width of each expert; 0 = model.mlp_dim

  c.diffusion = d = ConfigDict()
  d.width = 256                 # MLP width of the denoiser
  d.depth = 3                   # residual adaLN blocks
  d.objective = 'flow'          # flow (rectified flow, predict v = eps - x0) | flow_x0
                                # (the same flow, predict x0, loss on v) | flow_x0_mse
                                # (predict x0, loss on x0) | eps | v
  d.schedule = 'cosine'         # for eps/v: cosine | linear ; flow uses t in [0, 1]
  d.sample_steps = 32
  d.noise_samples = 1           # noise draws per position per step (MAR uses 4)
  d.time_shift = 1.0            # > 1: more of training and sampling at high noise (SD3's shift)
  d.target = 'pixels'           # pixels | residual: scale k > 1 drawn as its difference from
                                # scale k-1 upsampled (colour and layout carry over by default)

  c.image = i = ConfigDict()
  i.patch_size = 4              # pixels per patch side; patch_dim = patch_size**2 * 3
  i.scales = (2, 4, 8)          # patches per side at each scale, coarse to fine
  i.dual_copy = True            # masked copy M_k followed by unmasked copy U_k
  i.attention = 'bidirectional' # inside an image block: bidirectional | causal
  i.target_shift = 1            # position t predicts the patch at t + shift (0 or 1)
  i.targets = 'masked'          # masked (MIM) | next_patch (Janus-like autoregressive)
  i.mask_ratio_min = 0.25
  i.mask_ratio_max = 0.75
  i.share_unmasked = 0.1        # share of images fully visible (0 % masked)
  i.prompted_fully_masked = 0.0 # images that follow text (a prompt: generation's layout)
                                # masked as generation sees them with this probability, before
                                # the shares below (which draw the rest and every other image)
  i.share_fully_masked = 0.1    # share of images masked as generation sees them (100 %;
                                # single copy: the scales from a random k on)
  i.caption_dropout = 0.1       # drop the text of an image document (for CFG)

  c.data = ConfigDict()
  # ---- data (owned by the data pipeline: dvlm_jax/data/)
  c.data.source = 'builtin'     # builtin (procedural, no files) | tfds (built ArrayRecord sets)
  c.data.seq_len = 512
  c.data.batch_size = 8         # global batch (rows)
  c.data.seed = 0
  # Both sources go through one Grain pipeline (dvlm_jax/data/pipeline.py).
  c.data.builtin_text = 0.1          # builtin: share of text-only records
  c.data.builtin_max_shapes = 2
  c.data.builtin_scenes = 0          # > 0: a fixed set of this many scenes (memorisation check)
  c.data.data_dir = 'data'      # where `python -m dvlm_jax.data.build NAME --data_dir DIR` wrote
  c.data.split = 'train'
  # (tfds name, weight) pairs; on the command line e.g. --config.data.mixture=shapes:1,twemoji:2
  c.data.mixture = (('shapes', 1.0), ('twemoji', 1.0))
  c.data.shuffle = True         # seeded (data.seed) shuffle of every source, new order per epoch
  c.data.worker_count = 0       # decode/layout processes; 0 = in the training process
  c.data.generation_share = 0.5 # caption pairs laid out caption-first ('draw: ...', image)
  c.data.prompt_text_weight = 1.0  # text loss weight of the text before an image (its prompt);
                                   # 0 = prompts only condition, as in text-to-image training
  c.data.pack_lookahead = 8     # documents that may wait for the next batch while packing
  c.data.tokenizer = 'byte'     # byte | path of a SentencePiece .model (sentencepiece_tokenizer.py)
  c.data.max_bad_fraction = 0.01      # skipped records above this share stop the run
  c.data.max_image_pixels = 64_000_000  # larger declared sizes are skipped (decompression bombs)
  # Per-row capacities of the streams each model stage runs on (docs/architecture.md):
  # the packer fills a row only up to them, the model gathers into them. 0 = the bound
  # the layout implies (no saving for that stream); smaller = less padded work.
  c.data.max_text_tokens = 0    # text-in
  c.data.max_image_tokens = 0   # image-in, patch embedding
  c.data.max_text_targets = 0   # text-out, LM head
  c.data.max_image_targets = 0  # imun-out, imgen-out, patch and diffusion heads
  # ---- end data

  c.loss = ConfigDict()
  c.loss.text_weight = 1.0
  c.loss.imun_weight = 1.0
  c.loss.imgen_weight = 1.0
  c.loss.scale_weighting = 'token'   # token | scale: how image losses average over scales
  c.loss.moe_aux_weight = 0.01  # Switch load-balancing loss (used when model.moe_experts > 0)

  c.optim = o = ConfigDict()
  o.lr = 3e-4
  o.min_lr_ratio = 0.1
  o.warmup_steps = 100
  o.schedule = 'cosine'         # cosine | constant | rsqrt
  o.b1 = 0.9
  o.b2 = 0.95
  o.eps = 1e-8
  o.weight_decay = 0.1
  o.clip_norm = 1.0
  o.ema_decay = 0.0             # > 0 keeps an EMA of the parameters (used by evaluation)

  c.mesh = ConfigDict()
  c.mesh.data = 1
  c.mesh.fsdp = -1              # -1 = all remaining devices
  c.mesh.expert = 1             # experts (model.moe_experts) are split over it; rows too
  c.mesh.tensor = 1
  c.sharding = ConfigDict()
  c.sharding.rules = default_logical_rules()

  c.train = t = ConfigDict()
  t.steps = 1000
  t.log_every = 10
  t.seed = 0
  t.grad_accum_steps = 1        # micro-batches per step (the batch is split along rows)
  t.max_bad_steps = 10          # non-finite loss/grad steps in a row before the run stops
  t.profile_steps = ()          # (first, last): jax.profiler trace of those steps
  t.tensorboard = True

  # Evaluation (dvlm_jax/evaluation/, docs/evaluation.md): during training every
  # `every` steps and at the end; `python -m dvlm_jax.eval` on a checkpoint. Every
  # evaluator is deterministic for `seed`, so both give the same numbers.
  c.eval = e = ConfigDict()
  e.every = 0                   # evaluate every N training steps (0 = off)
  e.at_end = True               # and at the last training step
  e.evaluators = ('text_perplexity', 'heldout_loss', 'masked_patch_psnr', 'shapes', 'glyphs',
                  'inpainting', 'surprisal')
  e.num_examples = 16           # held-out examples per evaluator (and per probe)
  e.batch_size = 16             # examples per inference call
  e.max_new_tokens = 160        # caption decode length (a 2-shape caption is ~120 bytes)
  e.cfg_scale = 3.0             # classifier-free guidance of generation and inpainting
  e.temperature = 1.0           # starting-noise scale of image sampling (generation, inpainting)
  e.sample_steps = 8            # diffusion steps per scale (0 = diffusion.sample_steps)
  e.seed = 0                    # masks, noise and the built-in held-out scenes
  e.split = 'validation'        # held-out split of every evaluator: validation chooses recipes;
                                # test is read by the study's final table alone (docs/study.md)
  # One evaluator's own settings, in a section named as the evaluator.
  e.shapes = ConfigDict()
  e.shapes.self_correct = False        # also generate with self-correction (generation_sc/*)
  e.shapes.surprise_percentile = 90.0  # its per-scale thresholds: this percentile of
                                       # training pictures' surprise
  e.masked_patch_psnr = ConfigDict()
  e.masked_patch_psnr.mask_ratio = 0.5  # masked share of patches

  c.checkpoint = k = ConfigDict()
  k.every = 500                 # save every N steps (and at the end, and on SIGTERM)
  k.keep = 3                    # keep the last K
  k.keep_period = 0             # also keep every M-th step forever (0 = off)
  k.async_save = True
  k.restore = 'full'            # full | params_only: resume a run whose config changed from its
                                # newest weights, with a new optimizer and data stream

  c.distributed = ConfigDict()  # multi-host; empty = auto-detect (SLURM, TPU pod) or single
  c.distributed.coordinator = ''
  c.distributed.num_processes = 0
  c.distributed.process_id = -1

  c.debug = ConfigDict()        # fault injection, used by tests
  c.debug.nan_at_steps = ()     # make the loss NaN at these steps
  c.debug.crash_at_step = 0     # hard-exit the process after this step (simulates a kill)
  c.debug.save_error_at_step = 0  # the save of this step fails like a full disk (ENOSPC)
  return c


def default_logical_rules() -> tuple[tuple[str, Any], ...]:
  """Logical axis name -> mesh axes. FSDP shards weights on 'embed'; tensor on heads/mlp;
  expert on the expert dimension of MoE weights. Rows ('batch') are also split over
  'expert' when the mesh has one (`sharding.rules`), so each expert group sees its own tokens."""
  return (
      ('batch', ('data', 'fsdp')),
      ('length', None),
      ('embed', 'fsdp'),
      ('act_embed', None),
      ('heads', 'tensor'),
      ('kv_heads', 'tensor'),
      ('head_dim', None),
      ('mlp', 'tensor'),
      ('act_mlp', 'tensor'),
      ('act_heads', 'tensor'),
      ('vocab', 'tensor'),
      ('patch', None),
      ('layers', None),
      ('diff_width', 'tensor'),
      ('diff_in', None),
      ('table', None),
      ('cell', None),
      ('exp', 'expert'),
      # Tokens dispatched to experts: the expert axis now holds experts, not rows.
      ('exp_batch', ('data', 'fsdp')),
  )


# ----------------------------------------------------------------------------- loading

def load_experiment(path: str):
  """The module of an experiment file (`get_config(arg)`, optionally `get_sweep(arg)`)."""
  if not os.path.isfile(path):
    raise ConfigError(f'--config: no such experiment file {path!r}')
  name = '_experiment_' + os.path.splitext(os.path.basename(path))[0]
  module_spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def load(spec: str, overrides: Sequence[str] = ()) -> ConfigDict:
  """Loads `path.py[:arg]`, applies `a.b=value` overrides, validates."""
  path, _, arg = spec.partition(':')
  module = load_experiment(path)
  if not hasattr(module, 'get_config'):
    raise ConfigError(f'--config: {path} defines no get_config(arg)')
  config = module.get_config(arg or None)
  apply_overrides(config, overrides)
  return config


def apply_overrides(config: ConfigDict, overrides: Sequence[str], *, only: str = '') -> None:
  """Applies 'a.b=value' items (typed like the existing values), then validates.

  `only`: a key prefix the overrides must have (e.g. 'eval.' when evaluating a run,
  whose model and data are fixed).
  """
  for item in overrides:
    key, sep, value = item.partition('=')
    if not sep:
      raise ConfigError(f'override {item!r} must look like key=value')
    if only and not key.startswith(only):
      raise ConfigError(f'--config.{key}: only {only}* keys can be changed here')
    set_key(config, key, value)
  validate(config)


def set_key(config: ConfigDict, dotted: str, text: str) -> None:
  """Sets config[dotted] from its command-line text, typed like the existing value."""
  *parents, leaf = dotted.split('.')
  node, walked = config, []
  for name in parents + [leaf]:
    keys = list(node.keys()) if isinstance(node, ConfigDict) else []
    if name not in keys:
      where = '.'.join(walked) or '<top>'
      hint = difflib.get_close_matches(name, keys, n=1)
      hint = f"; did you mean '{'.'.join(walked + hint)}'?" if hint else ''
      raise ConfigError(f"unknown config key '{dotted}' (no '{name}' under {where}){hint}")
    walked.append(name)
    if name != leaf:
      node = node[name]
  node[leaf] = _parse_like(node[leaf], text, dotted)


def _parse_tuple(current, text: str) -> tuple:
  """A tuple from the forms people type: a Python literal ('(1, 2)', "'a:1','b:2'"), or
  bare comma-separated words ('shapes', 'shapes,glyphs', 'shapes:1,glyphs:2'). Items of
  a tuple of (name, weight) pairs may be written 'name:weight'."""
  text = text.strip()
  try:
    value = ast.literal_eval(text if text.startswith(('(', '[')) else f'({text},)')
  except (ValueError, SyntaxError):
    value = tuple(w.strip() for w in text.split(',') if w.strip())
  value = tuple(value)
  pairs = bool(current) and all(isinstance(x, (tuple, list)) and len(x) == 2 for x in current)
  if pairs and all(isinstance(x, str) for x in value):   # 'name:weight' -> (name, weight)
    out = []
    for item in value:
      name, sep, weight = item.partition(':')
      out.append((name, float(weight) if sep else 1.0))
    return tuple(out)
  return value


def _parse_like(current: Any, text: str, key: str) -> Any:
  try:
    if isinstance(current, bool):
      if text.lower() in ('1', 'true', 'yes'):
        return True
      if text.lower() in ('0', 'false', 'no'):
        return False
      raise ValueError(text)
    if isinstance(current, int):
      return int(text)
    if isinstance(current, float):
      return float(text)
    if isinstance(current, (tuple, list)):
      return _parse_tuple(current, text)
    if current is None:
      try:
        return ast.literal_eval(text)
      except (ValueError, SyntaxError):
        return text
    return type(current)(text)
  except (ValueError, SyntaxError) as e:
    example = (" (a tuple: --config.KEY=a,b or --config.KEY=\"'a','b'\")"
               if isinstance(current, (tuple, list)) else '')
    raise ConfigError(f"config key '{key}': cannot read {text!r} as "
                      f'{type(current).__name__}{example}') from e


# -------------------------------------------------------------------------- validation

def _check(ok: bool, key: str, message: str) -> None:
  if not ok:
    raise ConfigError(f"config key '{key}': {message}")


def parse_mixture(value: Any) -> tuple[tuple[str, float], ...]:
  """data.mixture -> ((name, weight), ...).

  Accepts pairs (('shapes', 1.0), ('twemoji', 2.0)), bare names ('shapes',
  'twemoji') with weight 1, 'name:weight' strings, or one string
  'shapes:1,twemoji:2' (the command-line friendly forms).
  """
  if isinstance(value, str):
    value = [v for v in value.split(',') if v.strip()]
  out = []
  for entry in value or ():
    if isinstance(entry, str):
      name, _, weight = entry.strip().partition(':')
      entry = (name, float(weight) if weight else 1.0)
    if not (isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[0], str)):
      raise ConfigError(f"data.mixture: entries are (name, weight) or 'name:weight', got {entry!r}")
    name, weight = entry[0].strip(), float(entry[1])
    if not name or not weight > 0:
      raise ConfigError(f'data.mixture: {entry!r} needs a name and a weight > 0')
    out.append((name, weight))
  if not out:
    raise ConfigError('data.mixture is empty: name at least one built data set')
  if len({n for n, _ in out}) != len(out):
    raise ConfigError(f'data.mixture names a data set twice: {value!r}')
  return tuple(out)


def _validate_data(data: ConfigDict) -> None:
  _check(data.source in ('builtin', 'tfds'), 'data.source', f"builtin | tfds, got {data.source!r}")
  parse_mixture(data.mixture)
  for key in ('builtin_text', 'generation_share'):
    _check(0.0 <= data[key] <= 1.0, f'data.{key}', f'must lie in [0, 1], got {data[key]}')
  _check(data.prompt_text_weight >= 0.0, 'data.prompt_text_weight',
         f'must be >= 0 (0 = prompts carry no text loss), got {data.prompt_text_weight}')
  _check(1 <= data.builtin_max_shapes <= 9, 'data.builtin_max_shapes',
         f'must lie in 1..9 (cells of the grid), got {data.builtin_max_shapes}')
  _check(data.builtin_scenes >= 0, 'data.builtin_scenes',
         f'must be >= 0 (0 = fresh scenes), got {data.builtin_scenes}')
  _check(data.pack_lookahead >= 1, 'data.pack_lookahead', f'must be >= 1, got {data.pack_lookahead}')
  _check(data.worker_count >= 0, 'data.worker_count', f'must be >= 0, got {data.worker_count}')
  _check(data.max_image_pixels >= 1, 'data.max_image_pixels',
         f'must be >= 1, got {data.max_image_pixels}')
  _check(0.0 <= data.max_bad_fraction <= 1.0, 'data.max_bad_fraction',
         f'must lie in [0, 1], got {data.max_bad_fraction}')


def validate(c: ConfigDict) -> None:
  """Raises ConfigError naming the first inconsistent key."""
  m, i, d = c.model, c.image, c.diffusion
  for key in ('d_model', 'n_heads', 'n_kv_heads', 'head_dim', 'mlp_dim', 'core_layers',
              'vocab_size'):
    _check(isinstance(m[key], int) and m[key] > 0, f'model.{key}', f'must be a positive int, got {m[key]!r}')
  for key in ('text_in_layers', 'image_in_layers', 'text_out_layers', 'imun_out_layers',
              'imgen_out_layers'):
    _check(m[key] >= 0, f'model.{key}', f'must be >= 0, got {m[key]}')
  _check(m.n_heads % m.n_kv_heads == 0, 'model.n_kv_heads',
         f'n_heads={m.n_heads} must be a multiple of n_kv_heads={m.n_kv_heads}')
  _check(m.head_dim % 8 == 0, 'model.head_dim',
         f'must be a multiple of 8 (rotary pairs split over t, y, x), got {m.head_dim}')
  _check(isinstance(m.rope_axes, str) and set(m.rope_axes) <= set('tyx')
         and {'y', 'x'} <= set(m.rope_axes), 'model.rope_axes',
         f"letters t, y, x with both y and x (e.g. 'ttyx', 'yxt', 'yx'), got {m.rope_axes!r}")
  if c.data.tokenizer == 'byte':  # a SentencePiece model is checked when loaded
    _check(m.vocab_size >= tok_lib.ByteTokenizer().vocab_size, 'model.vocab_size',
           f'{m.vocab_size} < byte tokenizer size {tok_lib.ByteTokenizer().vocab_size}')
  for key in ('dtype', 'param_dtype'):
    _check(m[key] in ('float32', 'bfloat16'), f'model.{key}', f'float32 | bfloat16, got {m[key]!r}')
  _check(m.remat in ('none', 'full', 'dots'), 'model.remat', f'none | full | dots, got {m.remat!r}')
  from dvlm_jax.model import attention as attention_lib   # the implementations live there
  _check(m.attention in attention_lib.IMPLEMENTATIONS, 'model.attention',
         f'{" | ".join(attention_lib.IMPLEMENTATIONS)}, got {m.attention!r}')

  scales = tuple(i.scales)
  _check(len(scales) >= 1, 'image.scales', 'needs at least one scale')
  _check(all(isinstance(s, int) and s > 0 for s in scales), 'image.scales',
         f'must be positive ints (patches per side), got {scales}')
  _check(all(a < b for a, b in zip(scales, scales[1:])), 'image.scales',
         f'must be strictly increasing (coarse to fine), got {scales}')
  _check(len(scales) <= tok_lib.MAX_SCALES, 'image.scales',
         f'at most {tok_lib.MAX_SCALES} scales (scale marker tokens), got {len(scales)}')
  _check(i.patch_size > 0, 'image.patch_size', f'must be positive, got {i.patch_size}')
  _check(i.attention in ('bidirectional', 'causal'), 'image.attention',
         f'bidirectional | causal, got {i.attention!r}')
  _check(i.target_shift in (0, 1), 'image.target_shift', f'0 or 1, got {i.target_shift}')
  _check(i.targets in ('masked', 'next_patch'), 'image.targets',
         f'masked | next_patch, got {i.targets!r}')
  _check(0.0 <= i.mask_ratio_min <= i.mask_ratio_max <= 1.0, 'image.mask_ratio_min',
         f'need 0 <= mask_ratio_min <= mask_ratio_max <= 1, got {i.mask_ratio_min}, {i.mask_ratio_max}')
  _check(0.0 <= i.prompted_fully_masked <= 1.0, 'image.prompted_fully_masked',
         f'must lie in [0, 1], got {i.prompted_fully_masked}')
  _check(i.share_unmasked >= 0 and i.share_fully_masked >= 0
         and i.share_unmasked + i.share_fully_masked <= 1.0, 'image.share_fully_masked',
         'share_unmasked + share_fully_masked must lie in [0, 1]')
  _check(0.0 <= i.caption_dropout <= 1.0, 'image.caption_dropout', 'must lie in [0, 1]')
  if i.targets == 'next_patch':
    # Next-patch prediction decodes the patch after each position: only sound when that
    # patch is invisible (causal), shifted, and no second copy reveals it.
    _check(i.attention == 'causal', 'image.attention', "targets='next_patch' needs causal image attention")
    _check(i.target_shift == 1, 'image.target_shift', "targets='next_patch' needs target_shift=1")
    _check(not i.dual_copy, 'image.dual_copy', "targets='next_patch' needs dual_copy=False")

  from dvlm_jax.model import diffusion as diffusion_lib
  _check(d.objective in diffusion_lib.OBJECTIVES, 'diffusion.objective',
         f'{" | ".join(diffusion_lib.OBJECTIVES)}, got {d.objective!r}')
  _check(d.schedule in ('cosine', 'linear'), 'diffusion.schedule', f'cosine | linear, got {d.schedule!r}')
  _check(d.sample_steps >= 1, 'diffusion.sample_steps', 'must be >= 1')
  _check(d.noise_samples >= 1, 'diffusion.noise_samples', 'must be >= 1')
  _check(d.time_shift > 0, 'diffusion.time_shift', f'must be > 0, got {d.time_shift}')
  _check(d.target in ('pixels', 'residual'), 'diffusion.target', f'pixels | residual, got {d.target!r}')

  image_tokens = layout.image_tokens(c.image.scales, c.image.dual_copy)
  _check(c.data.seq_len >= image_tokens + 8, 'data.seq_len',
         f'{c.data.seq_len} cannot hold one image ({image_tokens} tokens with markers)')
  _check(c.data.batch_size >= 1, 'data.batch_size', 'must be >= 1')
  _validate_data(c.data)
  _validate_capacities(c)
  for key in ('text_weight', 'imun_weight', 'imgen_weight', 'moe_aux_weight'):
    _check(c.loss[key] >= 0, f'loss.{key}', 'must be >= 0')
  _check(c.loss.scale_weighting in ('token', 'scale'), 'loss.scale_weighting',
         f'token | scale, got {c.loss.scale_weighting!r}')
  _validate_moe(c)
  _check(c.optim.schedule in ('cosine', 'constant', 'rsqrt'), 'optim.schedule',
         f'cosine | constant | rsqrt, got {c.optim.schedule!r}')
  _check(c.optim.warmup_steps >= 0, 'optim.warmup_steps', 'must be >= 0')
  _check(c.train.steps >= 1, 'train.steps', 'must be >= 1')
  _check(c.train.grad_accum_steps >= 1 and c.data.batch_size % c.train.grad_accum_steps == 0,
         'train.grad_accum_steps', f'must divide data.batch_size={c.data.batch_size}')
  _check(c.train.max_bad_steps >= 1, 'train.max_bad_steps', 'must be >= 1')
  _check(len(c.train.profile_steps) in (0, 2), 'train.profile_steps', 'empty or (first, last)')
  _check(0.0 <= c.optim.ema_decay < 1.0, 'optim.ema_decay', 'must lie in [0, 1)')
  _check(c.checkpoint.every >= 1, 'checkpoint.every', 'must be >= 1')
  _check(c.checkpoint.keep >= 1, 'checkpoint.keep', 'must be >= 1')
  _check(c.checkpoint.restore in ('full', 'params_only'), 'checkpoint.restore',
         f'full | params_only, got {c.checkpoint.restore!r}')
  _validate_eval(c.eval)


def _validate_capacities(c: ConfigDict) -> None:
  """Each capacity is 0 (the layout's bound) or holds at least one image document."""
  patches = sum(s * s for s in c.image.scales)
  least = {'max_text_tokens': 4 + len(c.image.scales),   # <BOS> <IMG> markers <IMG_END> <EOS>
           'max_image_tokens': (2 if c.image.dual_copy else 1) * patches,
           'max_text_targets': 1, 'max_image_targets': patches}
  for key, minimum in least.items():
    value = c.data[key]
    _check(isinstance(value, int) and (value == 0 or value >= minimum), f'data.{key}',
           f'must be 0 (the layout bound) or >= {minimum} (one image document), got {value!r}')


def _validate_moe(c: ConfigDict) -> None:
  """MoE keys (checked only when MoE is on); experts % mesh.expert is checked at mesh creation."""
  m = c.model
  _check(isinstance(m.moe_experts, int) and m.moe_experts >= 0, 'model.moe_experts',
         f'must be an int >= 0 (0 = dense), got {m.moe_experts!r}')
  _check(c.mesh.expert == -1 or c.mesh.expert >= 1, 'mesh.expert',
         f'must be >= 1 or -1 (the remaining devices), got {c.mesh.expert}')
  if m.moe_experts == 0:
    return
  _check(1 <= m.moe_top_k <= m.moe_experts, 'model.moe_top_k',
         f'must lie in [1, moe_experts={m.moe_experts}], got {m.moe_top_k}')
  _check(m.moe_capacity_factor > 0, 'model.moe_capacity_factor',
         f'must be > 0, got {m.moe_capacity_factor}')
  _check(m.moe_mlp_dim >= 0, 'model.moe_mlp_dim', f'must be >= 0 (0 = mlp_dim), got {m.moe_mlp_dim}')
  g, seq = m.moe_group_size, c.data.seq_len
  _check(isinstance(g, int) and g >= 1 and (g >= seq or seq % g == 0), 'model.moe_group_size',
         f'must divide data.seq_len={seq} (or be >= it: one group per row), got {g!r}')


def _validate_eval(e: ConfigDict) -> None:
  from dvlm_jax import evaluation  # the evaluator names, without importing jax
  _check(e.every >= 0, 'eval.every', f'must be >= 0 (0 = off), got {e.every}')
  unknown = [n for n in e.evaluators if n not in evaluation.EVALUATORS]
  _check(not unknown, 'eval.evaluators',
         f'unknown {unknown}; choose from {list(evaluation.EVALUATORS)}')
  for key in ('num_examples', 'batch_size', 'max_new_tokens'):
    _check(isinstance(e[key], int) and e[key] >= 1, f'eval.{key}', f'must be an int >= 1, got {e[key]!r}')
  _check(0.0 <= e.shapes.surprise_percentile <= 100.0, 'eval.shapes.surprise_percentile',
         f'must lie in [0, 100], got {e.shapes.surprise_percentile}')
  _check(e.sample_steps >= 0, 'eval.sample_steps', 'must be >= 0 (0 = diffusion.sample_steps)')
  _check(e.cfg_scale >= 0, 'eval.cfg_scale', 'must be >= 0')
  _check(e.temperature >= 0, 'eval.temperature', 'must be >= 0')
  ratio = e.masked_patch_psnr.mask_ratio
  _check(0.0 < ratio < 1.0, 'eval.masked_patch_psnr.mask_ratio', f'must lie in (0, 1), got {ratio}')
  _check(e.split in ('validation', 'test'), 'eval.split', f'validation | test, got {e.split!r}')


def to_json(c: ConfigDict) -> str:
  return json.dumps(c.to_dict(), indent=2, sort_keys=True, default=str)


# ------------------------------------------------------------------ sizes and ablations

# Model (and matching data) sizes shared by the experiment files. Parameter counts are
# printed at start by the train command; base and b1 land near 300M and 1B.
SIZES = {
    'tiny': dict(d_model=64, n_heads=2, n_kv_heads=2, head_dim=32, mlp_dim=128, core_layers=2),
    'small': dict(d_model=128, n_heads=4, n_kv_heads=4, head_dim=32, mlp_dim=384, core_layers=4),
    'base': dict(d_model=1024, n_heads=16, n_kv_heads=16, head_dim=64, mlp_dim=4096,
                 core_layers=12),
    'b1': dict(d_model=2048, n_heads=16, n_kv_heads=8, head_dim=128, mlp_dim=5632,
               core_layers=15),
}


def apply_size(c: ConfigDict, size: str) -> ConfigDict:
  if size not in SIZES:
    raise ConfigError(f"unknown size {size!r}; choose one of {sorted(SIZES)}")
  c.model.update(SIZES[size])
  return c


# Each claim of the seed essay, as the overrides that switch it off in the dream config.
ABLATIONS = {
    'no_modality_blocks': {'model.text_in_layers': 0, 'model.image_in_layers': 0,
                           'model.text_out_layers': 0, 'model.imun_out_layers': 0,
                           'model.imgen_out_layers': 0},
    'no_in_blocks': {'model.text_in_layers': 0, 'model.image_in_layers': 0},
    'no_out_blocks': {'model.text_out_layers': 0, 'model.imun_out_layers': 0,
                      'model.imgen_out_layers': 0},
    'causal_images': {'image.attention': 'causal'},
    'no_masked_modelling': {'model.imun_head': False},
    'single_scale': {'image.scales': None},       # None: keep only the finest scale
    'single_copy': {'image.dual_copy': False},
    'no_diffusion': {'model.diffusion_head': False},
    'no_target_shift': {'image.target_shift': 0},
}


def apply_ablation(c: ConfigDict, name: str) -> ConfigDict:
  """Flips one seed claim off (see ABLATIONS and docs/configs.md)."""
  if name not in ABLATIONS:
    raise ConfigError(f"unknown ablation {name!r}; choose one of {sorted(ABLATIONS)}")
  for key, value in ABLATIONS[name].items():
    section, leaf = key.split('.')
    if key == 'image.scales':
      value = (c.image.scales[-1],)
    c[section][leaf] = value
  return c


def product(**axes) -> list[dict[str, Any]]:
  """Sweep points: the cartesian product of `key=[values]` (use '__' for '.' in keys)."""
  import itertools
  keys = [k.replace('__', '.') for k in axes]
  return [dict(zip(keys, values)) for values in itertools.product(*axes.values())]


def modality_depth(m: ConfigDict) -> int:
  """Modality blocks a token passes outside the core (config.model): in, then out."""
  return (max(m.text_in_layers, m.image_in_layers)
          + max(m.text_out_layers, m.imun_out_layers, m.imgen_out_layers))


def janus_like(c: ConfigDict) -> ConfigDict:
  """The Janus-like baseline: one shared stack, causal single-scale images, no MIM,
  next-patch generation through the diffusion head (continuous-token autoregression).

  The core gets the layers the modality blocks had, so every token passes through as
  many blocks as in the dream model of the same size (compare at equal depth).
  """
  m = c.model
  m.core_layers += modality_depth(m)
  apply_ablation(c, 'no_modality_blocks')
  c.model.imun_head = False
  c.image.attention = 'causal'
  c.image.scales = (c.image.scales[-1],)
  c.image.dual_copy = False
  c.image.targets = 'next_patch'
  c.image.target_shift = 1
  c.image.share_unmasked = 1.0
  c.image.share_fully_masked = 0.0
  return c
