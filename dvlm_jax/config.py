"""Configs: every key with its default, and loading `experiments/NAME.py[:arg]`.

An experiment file defines `get_config(arg=None) -> ConfigDict`, usually by calling
`defaults()` and changing what differs (sizes, ablations and the Janus-like baseline:
`dvlm_jax/variants.py`). On the command line:

  --config experiments/tiny.py[:arg] --config.model.core_layers=4 --config.image.scales=2,4

Overrides are read by `dvlm_jax/overrides.py`, the result checked by `dvlm_jax/validation.py`;
unknown keys and inconsistent values fail at start with `ConfigError` naming the key.
"""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Any, Sequence

import ml_collections

from dvlm_jax.data import limits
from dvlm_jax.errors import ConfigError
from dvlm_jax.overrides import apply_overrides, set_key

ConfigDict = ml_collections.ConfigDict


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
                                # AUTO), dense XLA on CPU; or names.ATTENTION_IMPLEMENTATIONS
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
  c.data.data_dir = 'data'      # where `python -m dvlm_jax.build_data NAME --data_dir DIR` wrote
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
  c.data.max_bad_fraction = limits.MAX_BAD_FRACTION   # skipped records above it stop the run
  c.data.max_image_pixels = limits.MAX_IMAGE_PIXELS   # larger declared sizes are skipped
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
  c.loss.detail_weight = 0.0    # > 0: an image target weighs 1 + this x its pixels' std in
                                # the optimised loss (flat background counts less than edges)
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
  t.tensorboard = True          # scalars and eval grids as TensorBoard events (training/sinks.py)
  t.wandb_project = ''          # also to this Weights & Biases project (needs wandb); '' = off

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
  if config.distributed.to_dict() != defaults().distributed.to_dict():
    raise ConfigError(f'{path}: distributed.* are launch settings, not the experiment\'s: '
                      'give them as --config.distributed.* or in the environment (launch/)')
  apply_overrides(config, overrides)
  return config


def launch_settings(overrides: Sequence[str] = ()) -> ConfigDict:
  """The `distributed` section: its defaults and the command line's distributed.*
  overrides, read before the experiment. The processes must join before anything starts
  JAX's backends, and loading an experiment may (an ablation counts its parameters)."""
  config = defaults()
  for item in overrides:
    key, sep, value = item.partition('=')
    if sep and key.startswith('distributed.'):
      set_key(config, key, value)
  return config.distributed


def to_json(c: ConfigDict) -> str:
  return json.dumps(c.to_dict(), indent=2, sort_keys=True, default=str)
