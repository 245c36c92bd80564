"""A trained model back from its run directory: config.json, the model, restored params.

  loaded = load('runs/small')                 # newest checkpoint
  loaded = load('runs/small', step=300, ema=True)

Parameters are restored only through `checkpoints.restore_params`, sharded as they
trained: over the run's mesh by the run's logical rules (`inference_context`), so a model
too large for one device is evaluated sharded and every process of a multi-host job
holds its own shards. Nothing else of the train state (optimizer, data iterator) is read.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax

from dvlm_jax import config as cfg_lib
from dvlm_jax.validation import validate
from dvlm_jax import sharding
from dvlm_jax.data import layout
from dvlm_jax.model.dvlm import DreamVLM
from dvlm_jax.model.layers import ModelConfig
from dvlm_jax.training import checkpoints


@dataclasses.dataclass(frozen=True)
class Loaded:
  config: cfg_lib.ConfigDict
  model: DreamVLM
  params: Any
  step: int
  context: sharding.Context   # the mesh and rules the params are sharded by


def _tuples(value):
  """JSON lists back to tuples, recursively: configs hold every sequence as a tuple
  (image.scales, sharding rules, the data mixture), and code hashes or compares them."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def _overlay(base: cfg_lib.ConfigDict, saved: dict) -> None:
  """Writes the saved values over the defaults, recursively. Keys added to the framework
  after the run was saved keep their defaults, so older run directories stay loadable."""
  for key, value in saved.items():
    if isinstance(value, dict) and key in base and isinstance(base[key], cfg_lib.ConfigDict):
      _overlay(base[key], value)
    else:
      base[key] = value


def read_config(workdir: str) -> cfg_lib.ConfigDict:
  """WORKDIR/config.json (written by the train command) as a validated ConfigDict."""
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f'no such workdir: {workdir!r}')
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{workdir!r} is not a run directory: it has no config.json '
                            '(written by python -m dvlm_jax.train)')
  with open(path) as f:
    try:
      raw = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f'{path}: not valid JSON ({e})') from e
  config = cfg_lib.defaults()
  _overlay(config, _tuples(raw))
  validate(config)
  return config


def build_model(config) -> DreamVLM:
  return DreamVLM(ModelConfig.from_config(config))


def inference_context(config) -> sharding.Context:
  """The run's mesh (config.mesh) over this job's devices when it fits them; otherwise
  every device on the fsdp axis (a run trained on 64 chips, evaluated on one). The run's
  logical rules either way."""
  try:
    return sharding.Context.from_config(config)
  except ValueError:
    fallback = cfg_lib.ConfigDict(config.to_dict())
    fallback.mesh.update(data=1, fsdp=-1, expert=1, tensor=1)
    return sharding.Context.from_config(fallback)


def abstract_params(model: DreamVLM, config, ctx: sharding.Context):
  """ShapeDtypeStructs of the params, sharded over the context's mesh by its logical rules
  (as in training); allocates nothing.

  Parameter shapes do not depend on the sequence length (rotary positions, no table),
  so a one-token-row batch of the contract is enough to trace init.
  """
  cfg = dataclasses.replace(layout.LayoutConfig.from_config(config), seq_len=1)
  spec = cfg.batch_spec(1)
  batch = {k: jax.ShapeDtypeStruct(shape, dtype) for k, (shape, dtype) in spec.items()}
  structs, _ = ctx.abstract_sharded(lambda rng, b: model.init(rng, b)['params'],
                                    jax.random.key(0), batch)
  return structs


def load(workdir: str, step: int | None = None, ema: bool = False) -> Loaded:
  """Config, model and params (or their EMA) of `step` (None = newest) of a run."""
  config = read_config(workdir)
  steps = checkpoints.complete_steps(os.path.join(workdir, 'checkpoints'))
  if not steps:
    raise FileNotFoundError(f'no checkpoint in {os.path.join(workdir, "checkpoints")!r}')
  if step is not None and step not in steps:
    raise FileNotFoundError(f'no checkpoint of step {step} in {workdir!r}; saved steps: {steps}')
  chosen = steps[-1] if step is None else step
  item = 'ema' if ema else 'params'
  if not os.path.isdir(os.path.join(workdir, 'checkpoints', str(chosen), item)):
    hint = ' (the run kept no EMA: optim.ema_decay was 0)' if ema else ''
    raise FileNotFoundError(f'checkpoint {chosen} of {workdir!r} has no {item!r}{hint}')
  model = build_model(config)
  # step None: the newest step that restores (a damaged one is skipped with a warning).
  ctx = inference_context(config)
  abstract = abstract_params(model, config, ctx)
  params, restored = checkpoints.restore_params(workdir, abstract, step=step, ema=ema)
  return Loaded(config, model, params, int(restored), ctx)
