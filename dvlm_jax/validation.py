"""Config validation: `validate(config)` raises `ConfigError` naming the first inconsistent key.

Names a key may choose among come from `dvlm_jax.names` (no kernel, head or evaluator is
imported to check them).
"""

from __future__ import annotations

import ml_collections

from dvlm_jax import contract, names
from dvlm_jax.data import mixture
from dvlm_jax.data import tokenizer as tok_lib  # the tokenizer knows its size
from dvlm_jax.errors import ConfigError

ConfigDict = ml_collections.ConfigDict


def _check(ok: bool, key: str, message: str) -> None:
  if not ok:
    raise ConfigError(f"config key '{key}': {message}")


def _validate_data(data: ConfigDict) -> None:
  _check(data.source in ('builtin', 'tfds'), 'data.source', f"builtin | tfds, got {data.source!r}")
  mixture.parse_mixture(data.mixture)
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
  _check(m.attention in names.ATTENTION_IMPLEMENTATIONS, 'model.attention',
         f'{" | ".join(names.ATTENTION_IMPLEMENTATIONS)}, got {m.attention!r}')

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

  _check(d.objective in names.DIFFUSION_OBJECTIVES, 'diffusion.objective',
         f'{" | ".join(names.DIFFUSION_OBJECTIVES)}, got {d.objective!r}')
  _check(d.schedule in ('cosine', 'linear'), 'diffusion.schedule', f'cosine | linear, got {d.schedule!r}')
  _check(d.sample_steps >= 1, 'diffusion.sample_steps', 'must be >= 1')
  _check(d.noise_samples >= 1, 'diffusion.noise_samples', 'must be >= 1')
  _check(d.time_shift > 0, 'diffusion.time_shift', f'must be > 0, got {d.time_shift}')
  _check(d.target in ('pixels', 'residual'), 'diffusion.target', f'pixels | residual, got {d.target!r}')

  image_tokens = contract.image_tokens(c.image.scales, c.image.dual_copy)
  _check(c.data.seq_len >= image_tokens + 8, 'data.seq_len',
         f'{c.data.seq_len} cannot hold one image ({image_tokens} tokens with markers)')
  _check(c.data.batch_size >= 1, 'data.batch_size', 'must be >= 1')
  _validate_data(c.data)
  _validate_capacities(c)
  for key in ('text_weight', 'imun_weight', 'imgen_weight', 'moe_aux_weight'):
    _check(c.loss[key] >= 0, f'loss.{key}', 'must be >= 0')
  _check(c.loss.scale_weighting in ('token', 'scale'), 'loss.scale_weighting',
         f'token | scale, got {c.loss.scale_weighting!r}')
  _check(c.loss.detail_weight >= 0, 'loss.detail_weight', f'>= 0, got {c.loss.detail_weight}')
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
  least = contract.Capacities(
      text_tokens=4 + len(c.image.scales),   # <BOS> <IMG> markers <IMG_END> <EOS>
      image_tokens=(2 if c.image.dual_copy else 1) * patches,
      text_targets=1, image_targets=patches)
  for key, minimum in zip(contract.CAPACITY_KEYS, least):
    value = c.data[key.split('.')[1]]
    _check(isinstance(value, int) and (value == 0 or value >= minimum), key,
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
  _check(e.every >= 0, 'eval.every', f'must be >= 0 (0 = off), got {e.every}')
  unknown = [n for n in e.evaluators if n not in names.EVALUATORS]
  _check(not unknown, 'eval.evaluators',
         f'unknown {unknown}; choose from {list(names.EVALUATORS)}')
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
