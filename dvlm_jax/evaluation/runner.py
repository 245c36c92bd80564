"""Runs the configured evaluators and records what they found.

  metrics = evaluate(vlm, config, step, workdir)

writes (process 0 only; every process runs the evaluators, since with a sharded
model every process takes part in each computation):

  WORKDIR/eval/STEP.json    {'step', 'metrics', 'chance', 'not_applicable', 'seconds',
                            'grids'}
  WORKDIR/eval/STEP/*.png   picture grids (generations with their prompts,
                            reconstructions per scale, inpaintings, captions)
  WORKDIR/tensorboard/      every metric as the scalar 'eval/NAME' and every grid as the
                            image 'eval/GRID' at STEP, next to the training loss curves
                            (when train.tensorboard; and to W&B with train.wandb_project)

and returns the metrics. Evaluators are deterministic for `eval.seed`, so an
evaluation of a restored checkpoint (`python -m dvlm_jax.eval`) reproduces the
numbers logged at that step during training. `seconds` (wall time per
evaluator) is the only thing in STEP.json that is not. What a model variant cannot do
(an ablation without the diffusion head cannot generate; `inference.generation.Unsupported`)
is recorded under `not_applicable` ({evaluator or metric group: reason}), not raised.

An evaluator is a small class: `__init__(config)`, `run(vlm, step) ->
{metric: float}`, and after `run` the attributes `chance` ({metric: chance
level}), `grids` ({name: grid.Grid}) and `not_applicable` ({metric group: reason}).
"""

from __future__ import annotations

import json
import math
import os
import time

import jax

from dvlm_jax import evaluation
from dvlm_jax.evaluation import grid as grid_lib
from dvlm_jax.inference.generation import Unsupported
from dvlm_jax.training import sinks as sinks_lib

# The numbers of the one-line summary during training; everything is in the record.
HEADLINE = ('text/perplexity', 'recon/psnr', 'shapes/caption/scene', 'shapes/generation/scene',
            'shapes/glyphs/both', 'inpaint/psnr')


def eval_dir(workdir: str) -> str:
  return os.path.join(workdir, 'eval')


def record_path(workdir: str, step: int, tag: str = '') -> str:
  return os.path.join(eval_dir(workdir), f'{step}{tag}.json')


def _write(workdir: str, step: int, tag: str, metrics, chance, not_applicable, seconds,
           grids, config) -> dict:
  """The JSON record, the PNG grids, and the sinks' scalars and images of one evaluation."""
  directory = os.path.join(eval_dir(workdir), f'{step}{tag}')
  os.makedirs(directory, exist_ok=True)
  paths, pictures = {}, {}
  for name, grid in grids.items():
    paths[name] = os.path.join(directory, f'{name}.png')
    pictures[name] = grid_lib.render(grid)
    grid_lib.save_png(pictures[name], paths[name])
  record = {'step': int(step), 'metrics': metrics, 'chance': chance,
            'not_applicable': not_applicable, 'seconds': seconds, 'grids': paths}
  # Written to a temporary name and renamed: a reader never sees half a file.
  path = record_path(workdir, step, tag)
  with open(path + '.tmp', 'w') as f:
    json.dump(record, f, indent=2, sort_keys=True)
  os.replace(path + '.tmp', path)
  sinks = sinks_lib.Sinks(workdir, config)   # next to the training scalars
  sinks.write(step, {f'eval{tag}/{name}': value for name, value in metrics.items()},
              {f'eval{tag}/{name}': picture for name, picture in pictures.items()})
  sinks.close()
  return record


def evaluate(vlm, config, step: int, workdir: str, *, tag: str = '') -> dict[str, float]:
  """Runs `config.eval.evaluators` on `vlm`; writes the records (see the module docstring).

  `tag` keeps evaluations of other parameters of the same step apart: '_ema' writes
  eval/STEP_ema.json, eval/STEP_ema/ and the scalars and images 'eval_ema/NAME'.
  """
  metrics, chance, not_applicable, seconds, grids = {}, {}, {}, {}, {}
  for name in config.eval.evaluators:   # names checked by validation.validate
    start = time.perf_counter()
    evaluator = evaluation.evaluator_class(name)(config)
    try:
      found = evaluator.run(vlm, step)
    except Unsupported as e:   # this variant cannot be asked for any of its metrics
      not_applicable[name] = str(e)
      continue
    not_applicable.update(evaluator.not_applicable)
    seconds[name] = time.perf_counter() - start
    metrics.update({k: float(v) for k, v in found.items()})
    chance.update(evaluator.chance)
    grids.update({f'{name}_{g}': grid for g, grid in evaluator.grids.items()})
  if jax.process_index() == 0:
    _write(workdir, step, tag, metrics, chance, not_applicable, seconds, grids, config)
  return metrics


def due(config, step: int) -> bool:
  """True at the steps where training evaluates: every eval.every, and the last with at_end."""
  every = int(config.eval.every)
  return (every > 0 and step % every == 0) or (
      bool(config.eval.at_end) and step == int(config.train.steps))


def maybe_evaluate(config, state_params, step: int, workdir: str,
                   context) -> dict[str, float] | None:
  """The training loop's hook: evaluates the current parameters when `due`, else None.

  Call it after the train step of `step` (the parameters the checkpoint of that step
  holds), with the training `sharding.Context` (the model is evaluated sharded as it
  trains). Every process must call it. Prints one line with the headline numbers.
  """
  if not config.eval.evaluators or not due(config, step):
    return None
  from dvlm_jax.inference.api import VLM  # only when evaluating: keeps training imports light
  start = time.perf_counter()
  vlm = VLM.from_params(config, state_params, step=step, context=context)
  metrics = evaluate(vlm, config, step, workdir)
  if jax.process_index() == 0:
    shown = ' | '.join(f'{k} {_number(metrics[k])}' for k in HEADLINE if k in metrics)
    print(f'eval step {step}: {shown} ({time.perf_counter() - start:.0f}s; all in '
          f'{record_path(workdir, step)})', flush=True)
  return metrics


def summary_table(metrics: dict[str, float], chance: dict[str, float] | None = None,
                  not_applicable: dict[str, str] | None = None) -> str:
  """A console table: metric, value, chance (blank where a metric has none); then one
  'n/a' row per metric group the model cannot be asked for, with the reason."""
  chance, not_applicable = chance or {}, not_applicable or {}
  width = max([len('metric')] + [len(k) for k in [*metrics, *not_applicable]])
  lines = [f'{"metric":<{width}}  {"value":>10}  {"chance":>10}', '-' * (width + 24)]
  for name in sorted(metrics):
    level = chance.get(name)
    lines.append(f'{name:<{width}}  {_number(metrics[name]):>10}  '
                 f'{"" if level is None else _number(level):>10}')
  for name in sorted(not_applicable):
    lines.append(f'{name:<{width}}  {"n/a":>10}  ({not_applicable[name]})')
  return '\n'.join(lines)


def _number(value: float) -> str:
  if math.isnan(value) or math.isinf(value):
    return str(value)
  return f'{value:.4g}' if abs(value) >= 1e4 or (value != 0 and abs(value) < 1e-3) else f'{value:.4f}'
