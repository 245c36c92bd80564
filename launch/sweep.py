"""Expands the sweep an experiment file declares into runs, and can run them locally.

  python launch/sweep.py --config experiments/small.py --workdir runs/ablations          # list
  python launch/sweep.py --config experiments/small.py --workdir runs/ablations --run    # run all

An experiment declares `get_sweep(arg=None) -> list[dict]`; each dict is one run: config
overrides (`{'optim.lr': 1e-3}`) and optionally `'arg'`, the experiment argument
(`{'arg': 'causal_images'}` runs `experiments/small.py:causal_images`). Each run gets
`WORKDIR/NAME` with NAME made from its overrides, so re-running the sweep resumes every
run where it stopped (the train command resumes from its workdir).
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys

from dvlm_jax import cli
from dvlm_jax import config as cfg_lib
from dvlm_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Run:
  name: str
  config: str              # experiments/x.py[:arg]
  overrides: tuple[str, ...]
  workdir: str

  def command(self, python: str = sys.executable) -> list[str]:
    return [python, '-m', 'dvlm_jax.train', '--config', self.config, '--workdir', self.workdir,
            *[f'--config.{o}' for o in self.overrides]]


def _format(value) -> str:
  if isinstance(value, (tuple, list)):
    return ','.join(str(v) for v in value)
  return str(value)


def run_name(point: dict) -> str:
  parts = [point['arg']] if point.get('arg') else []
  parts += [f'{k.split(".")[-1]}={_format(v)}' for k, v in sorted(point.items()) if k != 'arg']
  name = '_'.join(parts) or 'default'
  return re.sub(r'[^A-Za-z0-9_.=,+-]', '-', name)


def expand(config_spec: str, workdir: str) -> list[Run]:
  """The runs of the sweep `config_spec` declares; ConfigError names what is wrong."""
  path, _, arg = config_spec.partition(':')
  module = cfg_lib.load_experiment(path)
  if not hasattr(module, 'get_sweep'):
    raise ConfigError(f'{path} declares no get_sweep(arg): nothing to sweep')
  runs = []
  for point in module.get_sweep(arg or None):
    point = dict(point)
    run_arg = point.pop('arg', '') or ''
    overrides = tuple(f'{k}={_format(v)}' for k, v in sorted(point.items()))
    name = run_name({'arg': run_arg, **point})
    runs.append(Run(name, f'{path}:{run_arg}' if run_arg else path, overrides,
                    f'{workdir.rstrip("/")}/{name}'))
  names = [r.name for r in runs]
  if len(set(names)) != len(names):
    raise ConfigError(f'the sweep of {path} has duplicate points: {names}')
  return runs


def main(argv=None) -> int:
  parser = cli.parser('python launch/sweep.py', __doc__)
  parser.add_argument('--config', required=True, help=cli.CONFIG_HELP)
  parser.add_argument('--workdir', required=True, help='root; each run gets WORKDIR/NAME')
  parser.add_argument('--run', action='store_true', help='run the points one after another')
  args = parser.parse_args(argv)
  return cli.guarded(lambda: run(args))


def run(args) -> int:
  runs = expand(args.config, args.workdir)
  for r in runs:
    print(' '.join(r.command('python')))
  if not args.run:
    return 0
  failed = []
  for r in runs:
    print(f'=== {r.name}', flush=True)
    if subprocess.run(r.command()).returncode:
      failed.append(r.name)
  if failed:
    print(f'failed runs: {failed}', file=sys.stderr)
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
