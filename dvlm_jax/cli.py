"""What the command lines share: `--config.KEY=VALUE` overrides and one-line errors.

  def main(argv=None) -> int:
    parser = cli.parser('python -m dvlm_jax.compile', __doc__)
    parser.add_argument('--config', required=True, help=cli.CONFIG_HELP)
    args, overrides = cli.parse(parser, argv)
    return cli.guarded(lambda: run(args, overrides))

`guarded` turns a misconfiguration (`ConfigError`) or any other error type the command
names into one `error: ...` line on stderr and exit code 2 (`EXIT_USAGE`): never a
traceback for a mistake in what the user asked for.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from dvlm_jax.errors import ConfigError

EXIT_USAGE = 2
CONFIG_HELP = 'experiments/NAME.py[:arg]'


def parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
  """An argument parser whose --help shows the command's module docstring as written."""
  return argparse.ArgumentParser(prog=prog, description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """(other arguments, overrides): `--config.a.b=v` and `--config.a.b v` come back as 'a.b=v'."""
  rest, overrides = [], []
  argv = list(argv)
  i = 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith('--config.'):
      key, sep, value = arg[len('--config.'):].partition('=')
      if not sep:
        if i + 1 >= len(argv):
          raise SystemExit(f'error: {arg} needs a value (--config.KEY=VALUE)')
        i += 1
        value = argv[i]
      overrides.append(f'{key}={value}')
    else:
      rest.append(arg)
    i += 1
  return rest, overrides


def parse(parser: argparse.ArgumentParser,
          argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
  """(parsed arguments, overrides 'a.b=v') of argv (default: the process's)."""
  rest, overrides = split_overrides(sys.argv[1:] if argv is None else argv)
  return parser.parse_args(rest), overrides


def fail(message: str, code: int = EXIT_USAGE) -> int:
  """Prints `error: message` on stderr; returns `code` for main() to exit with."""
  print(f'error: {message}', file=sys.stderr, flush=True)
  return code


def guarded(body: Callable[[], int | None], errors: tuple[type[BaseException], ...] = ()) -> int:
  """Runs body(); a ConfigError or one of `errors` becomes one line and EXIT_USAGE."""
  try:
    return body() or 0
  except (ConfigError,) + tuple(errors) as e:
    return fail(str(e))
