"""Where the FLOPs of a training step go: useful work against what the model computes.

  python benchmarks/flops_audit.py [--config experiments/b1.py] [--rows 2] [--no-xla]
      [--config.KEY=VALUE ...]
  python benchmarks/flops_audit.py --smoke     # experiments/tiny.py (CPU check, seconds)

On packed rows of the config's layout (built-in documents, as benchmarks/attention.py),
per stage (text-in, image-in, core, the out stacks, embeddings and heads):

  useful       docs/flops.md: each stage over the tokens it serves, attention over the
               pairs its mask lets through (`flops.stage_flops`; what MFU counts)
  full row     before each stage ran on its own positions: every stage and head over
               every position, attention over the range kernel's tiles of the row
  dense        what the model computes with model.attention='xla': each stage over its
               stream's slots (`contract.Capacities`, config data.max_*), the core over the
               row, attention over every (query slot, key slot) pair
  kernel       the same with the block-sparse range kernel: attention over the tiles it
               visits on each stage's stream (64 x 64 forward tiles), which XLA cannot
               see inside a custom call

and `kernel / useful`: paid-for FLOPs per useful FLOP (1.0 = nothing thrown away).
With --xla (default) the dense count is checked against XLA's own cost analysis of the
compiled train step (layers unrolled, attention 'xla'; compile only, nothing runs):
XLA also counts norms, softmax and rotary and the backward's exact shape, so a ratio
near 1.0 says the formulas describe the program. b1 compiles in a few minutes on CPU.
"""

from __future__ import annotations

import argparse
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dvlm_jax import cli  # noqa: E402
from dvlm_jax import config as cfg_lib  # noqa: E402
from dvlm_jax import contract  # noqa: E402
from dvlm_jax.data import layout, pipeline  # noqa: E402
from dvlm_jax.model import dvlm  # noqa: E402
from dvlm_jax.model.dvlm import DreamVLM  # noqa: E402
from dvlm_jax.model.kernels import range_attention as ra  # noqa: E402
from dvlm_jax.model.layers import ModelConfig  # noqa: E402
from dvlm_jax.training import flops, losses  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
  argv, overrides = cli.split_overrides(sys.argv[1:] if argv is None else argv)
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--config', default=os.path.join(ROOT, 'experiments', 'b1.py'))
  p.add_argument('--rows', type=int, default=2, help='rows of the batch (data.batch_size)')
  p.add_argument('--xla', action=argparse.BooleanOptionalAction, default=True,
                 help="check the dense count against XLA's cost analysis of the train step")
  p.add_argument('--smoke', action='store_true', help='experiments/tiny.py (CPU check)')
  args = p.parse_args(argv)
  args.overrides = overrides
  if args.smoke:
    args.config = os.path.join(ROOT, 'experiments', 'tiny.py')
  return args


def _tiles(q_scope, k_scope, q_end, blocks: ra.BlockSizes) -> float:
  """(query, key) pairs inside the tiles the range kernel's forward visits."""
  schedule = ra.block_schedule(q_scope, k_scope, q_end, blocks.block_q, blocks.block_k)
  return float(sum(len(visited) for row in schedule for visited, _ in row)
               * blocks.block_q * blocks.block_k)


def kernel_pairs(config, batch, blocks: ra.BlockSizes) -> dict[str, float]:
  """Per stage, the kernel's visited pairs on the stage's own stream (the model's rules)."""
  rules = dvlm.stage_rules(jax.tree.map(jnp.asarray, batch), ModelConfig.from_config(config))
  return {stage: _tiles(r.q_scope, r.k_scope, r.q_end, blocks) for stage, r in rules.items()}


def full_row_pairs(batch, blocks: ra.BlockSizes) -> dict[str, float]:
  """The same before compaction: every stage's queries and keys at every position."""
  return {stage: _tiles(s.scope, s.scope, s.end, blocks)
          for stage, s in contract.stage_scopes(batch).items()}


def xla_train_step_flops(config, batch) -> float:
  """XLA's count of the compiled forward + backward of the loss (dense attention)."""
  config = cfg_lib.ConfigDict(config)
  config.model.attention, config.model.scan_layers, config.model.remat = 'xla', False, 'none'
  model = DreamVLM(ModelConfig.from_config(config))
  params = nn.unbox(jax.eval_shape(lambda b: model.init(jax.random.key(0), b), batch))['params']
  loss_cfg = losses.LossConfig.from_config(config)
  grad = jax.grad(lambda p, b, r: losses.compute_loss(model, p, b, r, loss_cfg)[0])
  cost = jax.jit(grad).lower(params, batch, jax.random.key(0)).compile().cost_analysis()
  return float((cost[0] if isinstance(cost, list) else cost)['flops'])


def main(argv=None) -> int:
  args = parse_args(argv)
  config = cfg_lib.load(args.config, [f'data.batch_size={args.rows}'] + args.overrides)
  batch = pipeline.first_batch(config)
  rows, length = batch['segment_ids'].shape
  blocks = ra.BlockSizes().clipped(length, length)
  useful = flops.stage_flops(config, batch)
  whole_rows = contract.Capacities(*(length,) * 4)
  columns = {'useful': useful,
             'full row': flops.implemented_stage_flops(config, rows, full_row_pairs(batch, blocks),
                                                       whole_rows),
             'dense': flops.implemented_stage_flops(config, rows),
             'kernel': flops.implemented_stage_flops(config, rows,
                                                     kernel_pairs(config, batch, blocks))}
  caps = layout.LayoutConfig.from_config(config).capacities()
  f = flops.TRAIN_FACTOR / 1e9
  print(f'{os.path.relpath(args.config, ROOT)}: {rows} rows x {length}, '
        f'{np.count_nonzero(batch["segment_ids"]) / (rows * length):.1%} non-padding; '
        f'capacities per row {dict(caps._asdict())}; train-step GFLOP (3 x forward); '
        f'kernel tiles {blocks.block_q} x {blocks.block_k}')
  print(f'  {"stage":15s}' + ''.join(f'{name:>10s}' for name in columns)
        + f'{"full/useful":>13s}{"kernel/useful":>15s}')
  ratio = lambda a, b: f'{a / b:.3f}' if b else 'n/a'
  for stage in flops.STAGES + ('total',):
    v = {name: sum(x.values()) if stage == 'total' else x[stage] for name, x in columns.items()}
    print(f'  {stage:15s}' + ''.join(f'{x * f:10.4g}' for x in v.values())
          + f'{ratio(v["full row"], v["useful"]):>13s}{ratio(v["kernel"], v["useful"]):>15s}')
  total = {name: sum(x.values()) for name, x in columns.items()}
  for name in ('full row', 'dense', 'kernel'):
    print(f'{name}: implemented / useful = {total[name] / total["useful"]:.3f} '
          f'({1 - total["useful"] / total[name]:.1%} of it discarded)')
  dense = columns['dense']
  if args.xla:
    counted = xla_train_step_flops(config, jax.tree.map(jnp.asarray, batch))
    print(f"XLA cost analysis of the compiled train step (dense): {counted / 1e9:.1f} GFLOP = "
          f"{counted / (flops.TRAIN_FACTOR * sum(dense.values())):.3f} x the dense count")
  return 0


if __name__ == '__main__':
  sys.exit(main())
