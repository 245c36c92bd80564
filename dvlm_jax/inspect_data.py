"""Look at one packed batch: write it to .npz, summarise it, and draw one row.

  python -m dvlm_jax.inspect_data --config experiments/tiny.py[:arg] \
      [--config.a.b=v ...] --out batch.npz [--png layout.png] [--row 0] [--seed 0]
  python -m dvlm_jax.inspect_data --config experiments/small.py --dataset twemoji \
      --data_dir data --out batch.npz --png layout.png      # any built data set

The batch comes from the train command's own data path (`pipeline.batches_for`).

The picture: `dvlm_jax/data/inspect.py`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

import numpy as np

from dvlm_jax import cli
from dvlm_jax import config as config_lib
from dvlm_jax.data import pipeline
from dvlm_jax.data.inspect import draw_row, summary


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
  """(arguments, overrides 'a.b=v'), the data-set flags turned into overrides."""
  parser = cli.parser('python -m dvlm_jax.inspect_data', __doc__.split('\n')[0])
  parser.add_argument('--config', required=True, help=cli.CONFIG_HELP)
  parser.add_argument('--out', required=True, help='write the batch here (.npz)')
  parser.add_argument('--png', help='also draw one row into this PNG')
  parser.add_argument('--row', type=int, default=0, help='row of the batch to draw')
  parser.add_argument('--seed', type=int, default=None, help='default: config.data.seed')
  parser.add_argument('--dataset', help='a built data set (e.g. twemoji) instead of the '
                      "config's data: reads it alone through the Grain pipeline")
  parser.add_argument('--data_dir', help='where the data sets are built (data.data_dir)')
  args, overrides = cli.parse(parser, argv)
  if args.dataset:
    overrides += ['data.source=tfds', f"data.mixture=(('{args.dataset}', 1.0),)"]
  if args.data_dir:
    overrides.append(f'data.data_dir={args.data_dir}')
  if args.seed is not None:
    overrides.append(f'data.seed={args.seed}')
  return args, overrides


def main(argv: Sequence[str] | None = None) -> int:
  args, overrides = parse_args(argv)
  return cli.guarded(lambda: run(args, overrides), (pipeline.DataError, FileNotFoundError))


def run(args: argparse.Namespace, overrides: list[str]) -> int:
  config = config_lib.load(args.config, overrides)
  # The train command's data path: built-in stream or the Grain pipeline.
  batch = pipeline.first_batch(config)
  if not 0 <= args.row < batch['tokens'].shape[0]:
    return cli.fail(f'--row {args.row} outside the batch of {batch["tokens"].shape[0]} rows')
  np.savez(args.out, **batch)
  print(summary(batch))
  print(f'wrote {args.out}')
  if args.png:
    draw_row(batch, args.row, config.image.patch_size).save(args.png)
    print(f'wrote {args.png}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
