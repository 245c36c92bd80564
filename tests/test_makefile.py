"""The README's commands: `make train SEED=n` reruns the demo on another seed, into its own run."""

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def dry_run(*args):
  if shutil.which('make') is None:
    pytest.skip('make is not installed')
  # -n: print the commands, run none of them (nothing installs, builds or trains).
  out = subprocess.run(['make', '-n', 'train', *args], cwd=ROOT,
                       capture_output=True, text=True, check=True).stdout
  return [line for line in out.replace('\\\n', ' ').splitlines() if 'dvlm_jax.train' in line][0]


def test_make_train_seed_sets_both_seeds_and_its_own_workdir():
  default = dry_run()
  assert '--workdir runs/small ' in default + ' '
  assert 'train.seed' not in default and 'data.seed' not in default
  seeded = dry_run('SEED=3')
  assert '--workdir runs/small_seed3' in seeded
  assert '--config.train.seed=3' in seeded and '--config.data.seed=3' in seeded
