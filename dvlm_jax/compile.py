"""Ahead-of-time compile of the train step: per-device memory and FLOPs, nothing run.

  python -m dvlm_jax.compile --config experiments/b1.py[:arg] [--config.a.b=v ...]
      [--memory_budget_gib N]

Builds the configured mesh over the visible devices (on a CPU, fake ones:
XLA_FLAGS=--xla_force_host_platform_device_count=8), compiles the train step the train
command runs (`step.configured_train_step`) from abstract shapes (jax.ShapeDtypeStruct:
no parameter is materialised) and prints per device the memory of the compiled step
(arguments, outputs, temporaries, minus donated buffers reused as outputs) and the FLOPs
XLA counts, next to docs/flops.md's formula for the same step. With --memory_budget_gib
it exits 2 with one line when a device would need more than the budget.
"""

from __future__ import annotations

import sys

import jax

from dvlm_jax import cli
from dvlm_jax import config as cfg_lib

GIB = 1 << 30


def parse_args(argv):
  parser = cli.parser('python -m dvlm_jax.compile', __doc__)
  parser.add_argument('--config', required=True, help=cli.CONFIG_HELP)
  parser.add_argument('--memory_budget_gib', type=float, default=None,
                      help='fail (exit 2) when a device needs more than this')
  return cli.parse(parser, argv)


def compile_train_step(config):
  """(the compiled train step of `config`, its mesh over the visible devices)."""
  from dvlm_jax import sharding
  from dvlm_jax.data import layout
  from dvlm_jax.model.dvlm import DreamVLM
  from dvlm_jax.model.layers import ModelConfig
  from dvlm_jax.training import optimizer as optim_lib
  from dvlm_jax.training import step as step_lib
  sharding.check(config, jax.device_count(), jax.process_count())
  ctx = sharding.Context.from_config(config)
  model = DreamVLM(ModelConfig.from_config(config))
  optimizer = optim_lib.make_optimizer(config)
  spec = layout.LayoutConfig.from_config(config).batch_spec(config.data.batch_size)
  batch = {k: jax.ShapeDtypeStruct(shape, dtype, sharding=ctx.batch_sharding)
           for k, (shape, dtype) in spec.items()}
  rng = jax.random.key(config.train.seed)
  state, shardings = step_lib.abstract_state(model, optimizer, batch, rng, ctx,
                                             ema=config.optim.ema_decay > 0)
  train_step = step_lib.configured_train_step(config, model, optimizer, shardings, ctx)
  return train_step.lower(state, batch, jax.eval_shape(lambda: rng)).compile(), ctx.mesh


def report(compiled, config, budget_gib: float | None) -> tuple[list[str], str | None]:
  """(lines to print, the error line when over the budget) of a compiled train step."""
  from dvlm_jax.training import flops
  m = compiled.memory_analysis()
  total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
           - m.alias_size_in_bytes)
  cost = compiled.cost_analysis()
  counted = float((cost[0] if isinstance(cost, list) else cost).get('flops', 0.0))
  formula = (flops.TRAIN_FACTOR * sum(flops.implemented_stage_flops(
      config, config.data.batch_size).values()) / jax.device_count())
  gib = lambda n: f'{n / GIB:.3f} GiB'
  lines = [
      f'per device ({jax.device_count()} x {jax.devices()[0].device_kind}):',
      f'  arguments     {gib(m.argument_size_in_bytes)}',
      f'  outputs       {gib(m.output_size_in_bytes)}',
      f'  temporaries   {gib(m.temp_size_in_bytes)}',
      f'  donated       {gib(m.alias_size_in_bytes)} (outputs written into arguments)',
      f'  total         {gib(total)}',
      f'  FLOPs (XLA)   {counted / 1e9:.4g} GFLOP per step'
      + (' (a scanned layer stack is counted once)' if config.model.scan_layers else ''),
      f'  FLOPs (docs/flops.md, as implemented) {formula / 1e9:.4g} GFLOP per step']
  error = None
  if budget_gib is not None and total > budget_gib * GIB:
    error = (f'the train step needs {gib(total)} per device > --memory_budget_gib '
             f'{budget_gib:g}: lower data.batch_size, set model.remat=full, or add devices')
  return lines, error


def run(args, overrides) -> int:
  config = cfg_lib.load(args.config, overrides)
  compiled, mesh = compile_train_step(config)   # ConfigError: sharding.check's mesh lines
  lines, error = report(compiled, config, args.memory_budget_gib)
  print(f'{args.config}: {config.data.batch_size} x {config.data.seq_len} tokens per step, '
        f'mesh {dict(mesh.shape)}')
  print('\n'.join(lines))
  return cli.fail(error) if error else 0


def main(argv=None) -> int:
  args, overrides = parse_args(argv)
  return cli.guarded(lambda: run(args, overrides))


if __name__ == '__main__':
  sys.exit(main())
