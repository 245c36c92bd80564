"""Where the FLOPs of a training step go: useful work against what the model computes.

  python benchmarks/flops_audit.py [--config experiments/b1.py] [--rows 2] [--no-xla]
  python benchmarks/flops_audit.py --smoke     # experiments/tiny.py (CPU check, seconds)

On packed rows of the config's layout (built-in documents, as benchmarks/attention.py),
per stage (text-in, image-in, core, the out stacks, embeddings and heads):

  useful       docs/flops.md: each stage over the tokens it serves, attention over the
               pairs its mask lets through (`flops.stage_flops`; what MFU counts)
  dense        what the model computes today with model.attention='xla': every stage
               and head over every position, attention over all L x L pairs
  kernel       the same with the block-sparse range kernel: attention over the tiles it
               visits (64 x 64 forward tiles), which XLA cannot see inside a custom call

and `useful / implemented`: the share of paid-for FLOPs that is not thrown away.
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

from dvlm_jax import config as cfg_lib  # noqa: E402
from dvlm_jax.data import builtin  # noqa: E402
from dvlm_jax.model.dvlm import DreamVLM  # noqa: E402
from dvlm_jax.model.kernels import range_attention as ra  # noqa: E402
from dvlm_jax.model.layers import ModelConfig  # noqa: E402
from dvlm_jax.training import flops, losses  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--config', default=os.path.join(ROOT, 'experiments', 'b1.py'))
  p.add_argument('--rows', type=int, default=2, help='rows of the batch (data.batch_size)')
  p.add_argument('--xla', action=argparse.BooleanOptionalAction, default=True,
                 help="check the dense count against XLA's cost analysis of the train step")
  p.add_argument('--smoke', action='store_true', help='experiments/tiny.py (CPU check)')
  args = p.parse_args(argv)
  if args.smoke:
    args.config = os.path.join(ROOT, 'experiments', 'tiny.py')
  return args


def kernel_pairs(batch, blocks: ra.BlockSizes) -> dict[str, float]:
  """Per stage, the (query, key) pairs inside the tiles the range kernel's forward visits."""
  seg, end = batch['segment_ids'], batch['attn_end']
  own = np.broadcast_to(np.arange(seg.shape[1], dtype=np.int32), seg.shape)
  scopes = {'text_in': (np.where(batch['modality'] == flops.TEXT, seg, 0), own),
            'image_in': (batch['image_id'], end), 'core': (seg, end)}
  out = {}
  for stage, (scope, stage_end) in scopes.items():
    schedule = ra.block_schedule(scope, scope, stage_end, blocks.block_q, blocks.block_k)
    tiles = sum(len(visited) for row in schedule for visited, _ in row)
    out[stage] = float(tiles * blocks.block_q * blocks.block_k)
  for stage in ('text_out', 'imun_out', 'imgen_out'):   # queries at every position today
    out[stage] = out['core']
  return out


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
  config = cfg_lib.load(args.config, [f'data.batch_size={args.rows}'])
  batch = builtin.fixed_batch(config)
  rows, length = batch['segment_ids'].shape
  blocks = ra.BlockSizes().clipped(length, length)
  useful = flops.stage_flops(config, batch)
  dense = flops.implemented_stage_flops(config, rows, length)
  kernel = flops.implemented_stage_flops(config, rows, length, kernel_pairs(batch, blocks))
  f = flops.TRAIN_FACTOR / 1e9
  print(f'{os.path.relpath(args.config, ROOT)}: {rows} rows x {length}, '
        f'{np.count_nonzero(batch["segment_ids"]) / (rows * length):.1%} non-padding; '
        f'train-step GFLOP (3 x forward); kernel tiles {blocks.block_q} x {blocks.block_k}')
  print(f'  {"stage":15s} {"useful":>10s} {"dense":>10s} {"useful/dense":>13s} '
        f'{"kernel":>10s} {"useful/kernel":>14s}')
  for stage in flops.STAGES + ('total',):
    u, d, k = ((sum(x.values()) if stage == 'total' else x[stage]) for x in (useful, dense, kernel))
    ratio = lambda a, b: f'{a / b:.3f}' if b else 'n/a'
    print(f"  {stage:15s} {u * f:10.4g} {d * f:10.4g} {ratio(u, d):>13s} {k * f:10.4g} "
          f'{ratio(u, k):>14s}')
  waste_dense = 1 - sum(useful.values()) / sum(dense.values())
  waste_kernel = 1 - sum(useful.values()) / sum(kernel.values())
  print(f'discarded: {waste_dense:.1%} of the dense implementation, {waste_kernel:.1%} with '
        f'the range kernel')
  if args.xla:
    counted = xla_train_step_flops(config, jax.tree.map(jnp.asarray, batch))
    print(f"XLA cost analysis of the compiled train step (dense): {counted / 1e9:.1f} GFLOP = "
          f"{counted / (flops.TRAIN_FACTOR * sum(dense.values())):.3f} x the dense count")
  return 0


if __name__ == '__main__':
  sys.exit(main())
