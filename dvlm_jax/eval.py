"""Evaluation command: restore a checkpoint of a run, run the evaluators, report.

  python -m dvlm_jax.eval --workdir DIR [--step N] [--ema] [--config.eval.KEY=VALUE ...]

Restores the run's config and parameters (newest checkpoint, or step N; its EMA
with --ema), runs `config.eval.evaluators` (docs/evaluation.md), prints a table
of every metric next to its chance level and the paths of the picture grids, and
writes DIR/eval/N.json (plus DIR/eval/N/*.png and TensorBoard scalars; with --ema
DIR/eval/N_ema.json, DIR/eval/N_ema/ and 'eval_ema/' scalars). Only
`eval.*` keys can be overridden: the model is what the run trained.
"""

from __future__ import annotations

import json
import logging
import sys
import time

import jax

from dvlm_jax import backends
from dvlm_jax import cli
from dvlm_jax.overrides import apply_overrides


def parse_args(argv):
  parser = cli.parser('python -m dvlm_jax.eval', __doc__)
  parser.add_argument('--workdir', required=True, help='run directory of python -m dvlm_jax.train')
  parser.add_argument('--step', type=int, default=None, help='checkpoint step (default: newest)')
  parser.add_argument('--ema', action='store_true', help='evaluate the EMA parameters')
  return cli.parse(parser, argv)


def main(argv=None) -> int:
  logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
  args, overrides = parse_args(argv)
  backends.start()
  from dvlm_jax.evaluation import runner
  from dvlm_jax.inference.api import VLM
  from dvlm_jax.training.checkpoints import CheckpointError
  try:
    vlm = VLM.from_workdir(args.workdir, step=args.step, ema=args.ema)
    # The model and data are those of the run: only eval.* may change.
    apply_overrides(vlm.config, overrides, only='eval.')
  except (FileNotFoundError, ValueError, CheckpointError) as e:   # ConfigError is a ValueError
    return cli.fail(str(e))
  start = time.perf_counter()
  tag = '_ema' if args.ema else ''
  metrics = runner.evaluate(vlm, vlm.config, vlm.step, args.workdir, tag=tag)
  if jax.process_index() == 0:
    path = runner.record_path(args.workdir, vlm.step, tag)
    with open(path) as f:
      record = json.load(f)
    print(f'step {vlm.step}{" (EMA)" if args.ema else ""} of {args.workdir}: '
          f'{time.perf_counter() - start:.1f}s')
    print(runner.summary_table(metrics, record['chance'], record.get('not_applicable')))
    print(f'wrote {path}')
    for grid in record['grids'].values():
      print(f'grid  {grid}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
