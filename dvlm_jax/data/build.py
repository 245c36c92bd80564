"""Builds a data set into ArrayRecord files (TFDS, no TensorFlow needed): the library
under `python -m dvlm_jax.build_data` (that command's help lists the builders and options).

A data set already built with the same options is left alone; with other options
`build_dataset` refuses unless `overwrite`, and even then the old build is replaced only
after the new one is complete (a failed rebuild keeps the old data).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shutil
import tempfile
import time

import tensorflow_datasets as tfds

from dvlm_jax.data import builders
from dvlm_jax.data.builders import base


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
