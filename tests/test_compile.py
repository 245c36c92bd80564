"""The compile command: the train step compiled from abstract shapes, its per-device
memory and FLOPs, and a clear exit past a memory budget."""

import os

import pytest

from dvlm_jax import compile as compile_lib
from tests.conftest import ROOT

TINY = os.path.join(ROOT, 'experiments', 'tiny.py')


def test_compile_command_fits_or_fails_a_memory_budget(monkeypatch, capsys):
  # One compile serves both runs of the command.
  real, compiled = compile_lib.compile_train_step, {}

  def once(config):
    if 'step' not in compiled:
      compiled['step'] = real(config)
    return compiled['step']
  monkeypatch.setattr(compile_lib, 'compile_train_step', once)
  assert compile_lib.main(['--config', TINY, '--memory_budget_gib', '64']) == 0
  out = capsys.readouterr()
  assert out.err == ''
  report = dict(line.strip().split(None, 1) for line in out.out.splitlines()[2:6])
  assert set(report) == {'arguments', 'outputs', 'temporaries', 'donated'}
  assert float(report['arguments'].split()[0]) > 0 and float(report['temporaries'].split()[0]) > 0
  xla = next(line for line in out.out.splitlines() if 'FLOPs (XLA)' in line)
  assert float(xla.split()[2]) > 0
  # The same step under a budget it cannot meet: exit 2, one line saying what to change.
  assert compile_lib.main(['--config', TINY, '--memory_budget_gib', '0.0001']) == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and err.startswith('error: the train step needs ')
  assert '--memory_budget_gib 0.0001' in err


@pytest.mark.parametrize('args, key', [(['--config.model.d_modle=8'], 'model.d_modle'),
                                       (['--config.data.max_image_targets=3'],
                                        'data.max_image_targets')])
def test_compile_command_misconfigured_is_one_line(args, key, capsys):
  assert compile_lib.main(['--config', TINY] + args) == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and key in err
