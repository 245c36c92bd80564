"""Builds a data set into ArrayRecord files (TFDS, no TensorFlow needed).

  python -m dvlm_jax.build_data --list
  python -m dvlm_jax.build_data twemoji --data_dir data
  python -m dvlm_jax.build_data shapes --data_dir data --image_size 64 --train_size 20000
  python -m dvlm_jax.build_data folder --data_dir data --source my_docs.jsonl
  python -m dvlm_jax.build_data --config experiments/small.py --data_dir data [--config.KEY=VALUE]

`--config` builds every data set the experiment's `data.mixture` names (what `make train`
runs: the data its run reads, nothing else), each with its builder's default options.

Prints records per split and what was skipped, and exits 2 with a one-line
error when a source is missing or an option is wrong. A data set already built
with the same options is left alone; with other options the command refuses
unless --overwrite, and even then the old build is replaced only after the new
one is complete (a failed rebuild keeps the old data).
"""

from __future__ import annotations

import argparse
import logging
import sys

from dvlm_jax import cli
from dvlm_jax import config as config_lib
from dvlm_jax.data import builders
from dvlm_jax.data.build import AlreadyBuiltError, build_dataset, listing, report
from dvlm_jax.data.builders import base
from dvlm_jax.data.mixture import parse_mixture
from dvlm_jax.errors import ConfigError

OPTION_HELP = {
    'source': 'JSONL file or folder (folder); .txt file or folder (text)',
    'source_dir': 'where the installed package put its files (default: the package path)',
    'limit': 'at most N records per split (0 = all); for quick builds and tests',
    'image_size': 'side of the rendered square images in pixels',
    'seed': 'seed of the procedural world (records are a pure function of it)',
    'max_shapes': 'most shapes per scene (1..9)',
    'train_size': 'records in the train split',
    'validation_size': 'records in the validation split',
    'test_size': 'records in the test split',
    'validation_fraction': 'share of records (by hash of the id) in the validation split',
    'per_file': 'one document per file instead of one per paragraph',
}


def _option_types() -> dict[str, type]:
  """Every option of every builder with its type (taken from the defaults)."""
  types = {}
  for cls in builders.BUILDERS.values():
    for key, default in cls.OPTIONS.items():
      types[key] = str if default is base.REQUIRED else type(default)
  return types


def make_parser() -> argparse.ArgumentParser:
  parser = cli.parser('python -m dvlm_jax.build_data', __doc__.split('\n\n')[0])
  parser.add_argument('name', nargs='?', help='data set to build (see --list)')
  parser.add_argument('--list', action='store_true', help='list the builders and their options')
  parser.add_argument('--config', help=f'{cli.CONFIG_HELP}: build the data sets its '
                      'data.mixture names, instead of NAME')
  parser.add_argument('--data_dir', help='where builds go (DATA_DIR/dvlm_NAME/VERSION)')
  parser.add_argument('--overwrite', action='store_true',
                      help='replace an existing build made with other options')
  for key, kind in _option_types().items():
    # Default None = "not given": each builder then uses its own default.
    if kind is bool:
      parser.add_argument(f'--{key}', action='store_const', const=True, default=None,
                          help=OPTION_HELP.get(key))
    else:
      parser.add_argument(f'--{key}', type=kind, default=None, help=OPTION_HELP.get(key))
  return parser


def main(argv: list[str] | None = None) -> int:
  parser = make_parser()
  args, overrides = cli.parse(parser, argv)
  if overrides and not args.config:
    parser.error('--config.KEY=VALUE overrides need --config')
  if args.list:
    print(listing())
    return 0
  if bool(args.name) == bool(args.config) or not args.data_dir:
    parser.error('give a data set NAME or --config, and --data_dir (or --list)')
  logging.basicConfig(level=logging.WARNING, format='%(levelname)s: %(message)s')
  options = {k: getattr(args, k) for k in _option_types() if getattr(args, k) is not None}
  try:
    names = [args.name] if args.name else mixture_names(args.config, overrides)
    for name in names:
      print(report(build_dataset(name, args.data_dir, overwrite=args.overwrite, **options)),
            flush=True)
  except (base.SourceError, base.OptionError, AlreadyBuiltError, ConfigError) as e:
    return cli.fail(str(e))
  return 0


def mixture_names(spec: str, overrides: list[str]) -> list[str]:
  """The data sets the experiment `spec` (experiments/NAME.py[:arg], with `a.b=v`
  overrides) mixes."""
  config = config_lib.load(spec, overrides)
  return [name for name, _ in parse_mixture(config.data.mixture)]


if __name__ == '__main__':
  sys.exit(main())
