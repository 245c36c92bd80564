"""Pretraining command.

  python -m dvlm_jax.train --config experiments/tiny.py[:arg] --workdir DIR [--config.a.b=v ...]

Reads top to bottom: config, mesh, model, data, state, loop. The resolved config is
written to DIR/config.json before anything is compiled; metrics go to DIR/metrics.jsonl.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np

from dvlm_jax import config as cfg_lib
from dvlm_jax import sharding
from dvlm_jax.data import builtin
from dvlm_jax.model.dvlm import DreamVLM
from dvlm_jax.model.layers import ModelConfig
from dvlm_jax.training import losses, metrics as metrics_lib, optimizer as optim_lib
from dvlm_jax.training import step as step_lib


def parse_args(argv):
  """--config PATH[:ARG], --workdir DIR, and any number of --config.KEY=VALUE overrides."""
  overrides, rest = [], []
  for arg in argv:
    if arg.startswith('--config.'):
      overrides.append(arg[len('--config.'):])
    else:
      rest.append(arg)
  parser = argparse.ArgumentParser(prog='python -m dvlm_jax.train', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', required=True, help='experiments/NAME.py[:arg]')
  parser.add_argument('--workdir', required=True, help='run directory (created)')
  args = parser.parse_args(rest)
  # `--config.a.b v` (space-separated) is accepted as well as `--config.a.b=v`.
  joined = []
  for item in overrides:
    joined.append(item)
  return args, joined


def train(config, workdir: str) -> dict[str, float]:
  """Trains `config.train.steps` steps; returns the last logged metrics."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(cfg_lib.to_json(config))

  mesh = sharding.make_mesh(config)
  axis_rules = sharding.rules(config)
  model = DreamVLM(ModelConfig.from_config(config))
  data = builtin.batches(config)
  first_batch = next(data)

  optimizer = optim_lib.make_optimizer(config)
  schedule = optim_lib.learning_rate_schedule(config)
  rng = jax.random.key(config.train.seed)
  init_rng, step_rng = jax.random.split(rng)
  state, state_shardings = step_lib.init_state(model, optimizer, first_batch, init_rng, mesh,
                                               axis_rules)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  print(f'model: {n_params / 1e6:.2f}M parameters; mesh {dict(mesh.shape)}; '
        f'{config.data.batch_size} x {config.data.seq_len} tokens per step', flush=True)

  train_step = step_lib.jit_train_step(
      step_lib.make_train_step(model, optimizer, losses.LossConfig.from_config(config), schedule),
      state_shardings, mesh, axis_rules)
  logger = metrics_lib.MetricsLogger(workdir, config.train.steps)
  start, last = time.perf_counter(), {}
  batch = first_batch
  for step in range(1, config.train.steps + 1):
    state, metrics = train_step(state, batch, step_rng)
    logger.count_tokens(np.count_nonzero(batch['segment_ids']))
    if step % config.train.log_every == 0 or step == config.train.steps:
      last = logger.log(step, jax.device_get(metrics))
    if step < config.train.steps:
      batch = next(data)
  logger.close()
  print(f'done: {config.train.steps} steps in {time.perf_counter() - start:.1f}s', flush=True)
  return last


def main(argv=None) -> int:
  args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    config = cfg_lib.load(args.config, overrides)
  except cfg_lib.ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  train(config, args.workdir)
  return 0


if __name__ == '__main__':
  sys.exit(main())
