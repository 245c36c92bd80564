"""Builds a data set into ArrayRecord files (TFDS, no TensorFlow needed).

  python -m dvlm_jax.data.build --list
  python -m dvlm_jax.data.build twemoji --data_dir data
  python -m dvlm_jax.data.build shapes --data_dir data --image_size 64 --train_size 20000
  python -m dvlm_jax.data.build folder --data_dir data --source my_docs.jsonl
  python -m dvlm_jax.data.build --config experiments/small.py --data_dir data [--config.KEY=VALUE]

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
import contextlib
import dataclasses
import io
import json
import logging
import os
import shutil
import sys
import tempfile
import time

import tensorflow_datasets as tfds

from dvlm_jax import cli
from dvlm_jax.errors import ConfigError
from dvlm_jax.data.mixture import parse_mixture
from dvlm_jax.data import builders
from dvlm_jax.data.builders import base

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


class AlreadyBuiltError(Exception):
  """A build exists with other options; replacing it needs --overwrite."""


@dataclasses.dataclass(frozen=True)
class BuildResult:
  name: str
  path: str
  built: bool                 # False: an identical build was already there
  splits: dict[str, int]      # records per split
  skipped: dict[str, int]     # reason -> count
  repaired: dict[str, int]    # reason -> count
  seconds: float


def _metadata(path: str) -> dict:
  try:
    with open(os.path.join(path, 'metadata.json')) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}   # a build from elsewhere: treated as "other options"


def _split_counts(path: str) -> dict[str, int]:
  info = tfds.builder_from_directory(path).info
  return {name: split.num_examples for name, split in info.splits.items()}


def _prepare(builder: base.DvlmBuilder) -> None:
  """Runs TFDS; its "Downloading and preparing" banner is noise here (nothing downloads)."""
  tfds.disable_progress_bar()
  with tempfile.TemporaryDirectory() as downloads, contextlib.redirect_stdout(io.StringIO()):
    builder.download_and_prepare(download_dir=downloads)


def _replace(new: str, old: str) -> None:
  """Swaps a finished build into place; the old one is removed only after the swap."""
  trash = f'{old}.replaced-{os.getpid()}'
  os.rename(old, trash)
  os.rename(new, old)
  shutil.rmtree(trash)


def build_dataset(name: str, data_dir: str, *, overwrite: bool = False,
                  **options) -> BuildResult:
  """Builds data set `name` into `data_dir` (see the module docstring for the rules)."""
  return build_with(builders.get(name), data_dir, overwrite=overwrite, **options)


def build_with(cls: type[base.DvlmBuilder], data_dir: str, *, overwrite: bool = False,
               **options) -> BuildResult:
  """Builds with builder class `cls` (a registered builder, or the ingest command's)."""
  name = cls.BUILDER
  if '://' not in data_dir:   # gs://... (an ingest on a cluster) stays as it is
    data_dir = os.path.abspath(data_dir)
  builder = cls(data_dir=data_dir, **options)   # checks the options
  path = builders.dataset_dir(data_dir, name)
  exists = builders.is_built(data_dir, name)
  if exists and not overwrite:
    stored = _metadata(path)
    if stored.get('options') != builder.options:
      raise AlreadyBuiltError(
          f'{name} is already built at {path} with options {stored.get("options")}, not '
          f'{builder.options}; pass --overwrite to replace it')
    return BuildResult(name, path, False, _split_counts(path), stored.get('skipped', {}),
                       stored.get('repaired', {}), 0.0)
  builder.check_source()
  start = time.time()
  if exists:
    os.makedirs(data_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=data_dir, prefix=f'.{cls.name}.building-') as tmp:
      builder = cls(data_dir=tmp, **options)
      _prepare(builder)
      _replace(builders.dataset_dir(tmp, name), path)
  else:
    _prepare(builder)
  return BuildResult(name, path, True, _split_counts(path), dict(builder.skips.skipped),
                     dict(builder.skips.repaired), time.time() - start)


def report(result: BuildResult) -> str:
  """Human-readable summary: where, records per split, skips and repairs by reason."""
  if result.built:
    lines = [f'{result.name}: built {result.path} in {result.seconds:.1f} s']
  else:
    lines = [f'{result.name}: already built at {result.path} with these options; nothing to '
             'do (--overwrite rebuilds)']
  lines += [f'  {split:<11} {n:>8} records' for split, n in sorted(result.splits.items())]
  lines += [f'  skipped  {n:>6}  {reason}' for reason, n in sorted(result.skipped.items())]
  lines += [f'  repaired {n:>6}  {reason}' for reason, n in sorted(result.repaired.items())]
  return '\n'.join(lines)


def listing() -> str:
  lines = []
  for name, cls in builders.BUILDERS.items():
    options = ' '.join(
        f'--{k}' + ('' if isinstance(v, bool) else
                    ' (required)' if v is base.REQUIRED else f'={v}' if v != '' else '')
        for k, v in cls.OPTIONS.items())
    lines.append(f'{name:<14} -> {cls.name}: {cls.DESCRIPTION}\n{"":<14}    options: {options}')
  return '\n'.join(lines)


def _option_types() -> dict[str, type]:
  """Every option of every builder with its type (taken from the defaults)."""
  types = {}
  for cls in builders.BUILDERS.values():
    for key, default in cls.OPTIONS.items():
      types[key] = str if default is base.REQUIRED else type(default)
  return types


def make_parser() -> argparse.ArgumentParser:
  parser = cli.parser('python -m dvlm_jax.data.build', __doc__.split('\n\n')[0])
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
  from dvlm_jax import config as cfg_lib   # the command reads an experiment; data/ does not
  config = cfg_lib.load(spec, overrides)
  return [name for name, _ in parse_mixture(config.data.mixture)]


if __name__ == '__main__':
  sys.exit(main())
