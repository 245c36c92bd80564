"""The training objective: text CE + masked-patch MSE + diffusion, each over its own positions.

  total = text_weight * CE(next text token)      averaged over text_weights
        + imun_weight * MSE(masked patches)      averaged over image_weights (*)
        + imgen_weight * diffusion loss          averaged over image_weights (*)

        + moe_aux_weight * load-balancing loss   with MoE in the core (mean over layers)

(*) `loss.scale_weighting`: 'token' averages over every image target of the batch, so
a scale weighs by its token count (the finest dominates: 64 of 84 targets with scales
2, 4, 8); 'scale' averages each scale's targets first and then the scales, so the
coarse scales that carry the layout weigh as much as the fine ones.

`loss.detail_weight` d > 0: in the optimised total, an image target weighs 1 + d x the
standard deviation of its target pixels, so patches with edges (in the shapes world: the
shape, whose outline is its kind) count more than flat background. Logged losses stay
plain means over the targets, comparable across settings.

Image parts are also reported per scale (`imun/scale_k`, `imgen/scale_k`). The imun
target may be per-patch normalised (MAE); the diffusion target is raw pixels, or with
`diffusion.target='residual'` their difference from the batch's `image_base`. The heads
run only at their own positions (the model's `text_stream` / `image_stream`), so the
targets, weights and scales are read there too. With MoE,
`moe_aux` and `moe_dropped` (share of routed choices over capacity) are logged too.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from dvlm_jax.model.diffusion import DiffusionObjective
from dvlm_jax.model.dvlm import DreamVLM


@dataclasses.dataclass(frozen=True)
class LossConfig:
  text_weight: float
  imun_weight: float
  imgen_weight: float
  imun_norm_pix: bool
  num_scales: int
  objective: DiffusionObjective
  scale_weighting: str          # token | scale (see the module docstring)
  detail_weight: float          # see the module docstring
  moe: bool                     # the core has experts: collect their sown statistics
  moe_aux_weight: float

  @classmethod
  def from_config(cls, config) -> 'LossConfig':
    return cls(config.loss.text_weight, config.loss.imun_weight, config.loss.imgen_weight,
               config.model.imun_norm_pix, len(config.image.scales),
               DiffusionObjective.from_config(config),
               scale_weighting=config.loss.scale_weighting,
               detail_weight=config.loss.detail_weight,
               moe=config.model.moe_experts > 0,
               moe_aux_weight=config.loss.moe_aux_weight)


def weighted_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
  """Mean of `values` over positions with weight > 0 (0 when there are none)."""
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def normalize_patches(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """MAE target: each patch to zero mean and unit variance over its pixels."""
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.var(x, axis=-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps)


def _image_part(name, per_position, weights, scale, cfg, metrics, emphasis=None):
  """Logs the loss over all targets and per scale; returns the one `scale_weighting` asks,
  with each target's weight times `emphasis` (the detail weighting) where given."""
  metrics[name] = weighted_mean(per_position, weights)
  optimised = weights if emphasis is None else weights * emphasis
  per_scale, present = [], []
  for k in range(1, cfg.num_scales + 1):
    in_scale = weights * (scale == k)
    metrics[f'{name}/scale_{k}'] = weighted_mean(per_position, in_scale)
    per_scale.append(metrics[f'{name}/scale_{k}'] if emphasis is None else
                     weighted_mean(per_position, optimised * (scale == k)))
    present.append((jnp.sum(in_scale) > 0).astype(jnp.float32))
  if cfg.scale_weighting == 'token':
    return metrics[name] if emphasis is None else weighted_mean(per_position, optimised)
  # Scales with no target in this batch (e.g. no masked patch) do not dilute the others.
  present = jnp.stack(present)
  return jnp.sum(jnp.stack(per_scale) * present) / jnp.maximum(jnp.sum(present), 1.0)


def text_nll(out, batch):
  """(per-slot next-token NLL, targets, weights) at the text head's positions."""
  at = out['text_stream']
  targets = at.gather(batch['text_targets'], fill=0)
  logp = jax.nn.log_softmax(out['text_logits'].astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  return nll, targets, at.gather(batch['text_weights'], fill=0.0)


def sown_mean(intermediates, name: str) -> jax.Array:
  """Mean of every value sown under `name` (one per MoE layer; scanned layers are stacked)."""
  found = [jnp.ravel(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(intermediates)
           if any(getattr(k, 'key', None) == name for k in path)]
  if not found:
    raise ValueError(f'no {name!r} was sown: is model.moe_experts > 0 with core layers?')
  return jnp.mean(jnp.concatenate(found))


def image_losses(model: DreamVLM, params, out, batch, rng: jax.Array, cfg: LossConfig) -> dict:
  """{'imun' and/or 'imgen': (per-position loss, weights, scale)} at the image heads'
  positions of `out` (what the model variant has: no imun head, no 'imun')."""
  parts = {}
  if 'image_stream' not in out:
    return parts
  at = out['image_stream']
  targets = at.gather(batch['image_targets']).astype(jnp.float32)
  weights, scale = at.gather(batch['image_weights'], fill=0.0), at.gather(batch['scale'], fill=0)
  if 'patch_pred' in out:
    imun_target = normalize_patches(targets) if cfg.imun_norm_pix else targets
    parts['imun'] = (jnp.mean(jnp.square(out['patch_pred'] - imun_target), axis=-1), weights,
                     scale)
  if 'imgen_cond' in out:
    cond = out['imgen_cond']
    denoise = lambda x_t, t: model.apply({'params': params}, x_t, t, cond, method=DreamVLM.denoise)
    # Residual targets (diffusion.target='residual'): the head draws the difference from
    # the coarser scale upsampled; the imun head keeps the pixels.
    drawn = targets - at.gather(batch['image_base']) if 'image_base' in batch else targets
    parts['imgen'] = (cfg.objective.loss(denoise, drawn, rng), weights, scale)
  return parts


def compute_loss(model: DreamVLM, params, batch, rng: jax.Array, cfg: LossConfig):
  """Returns (total loss, metrics dict of scalars)."""
  metrics = {}
  if cfg.moe:
    out, state = model.apply({'params': params}, batch, mutable=['intermediates'])
    metrics['moe_aux'] = sown_mean(state['intermediates'], 'moe_aux')
    metrics['moe_dropped'] = sown_mean(state['intermediates'], 'moe_dropped')
  else:   # the dense path stays exactly as it was
    out = model.apply({'params': params}, batch)

  nll, text_targets, text_weights = text_nll(out, batch)
  text = weighted_mean(nll, text_weights)
  metrics['text'] = text
  metrics['text_accuracy'] = weighted_mean(
      (jnp.argmax(out['text_logits'], axis=-1) == text_targets).astype(jnp.float32), text_weights)
  total = cfg.text_weight * text

  parts = image_losses(model, params, out, batch, rng, cfg)
  emphasis = None
  if parts and cfg.detail_weight > 0:
    targets = out['image_stream'].gather(batch['image_targets']).astype(jnp.float32)
    emphasis = 1.0 + cfg.detail_weight * jnp.std(targets, axis=-1)
  for name, weight in (('imun', cfg.imun_weight), ('imgen', cfg.imgen_weight)):
    if name in parts:
      total = total + weight * _image_part(name, *parts[name], cfg, metrics, emphasis)

  if cfg.moe:
    total = total + cfg.moe_aux_weight * metrics['moe_aux']
  metrics['loss'] = total
  metrics['text_tokens'] = jnp.sum(batch['text_weights'])
  metrics['image_targets'] = jnp.sum(batch['image_weights'])
  return total, metrics
