"""The compile command: the train step compiled from abstract shapes, its per-device
memory and FLOPs, and a clear exit past a memory budget; the same step compiled by the
TPU compiler for a TPU slice on this CPU host (libtpu), attention through splash."""

import os

import pytest

from dvlm_jax import compile as compile_lib
from dvlm_jax import topology
from dvlm_jax.errors import ConfigError
from tests.conftest import ROOT

TINY = os.path.join(ROOT, 'experiments', 'tiny.py')


def report_of(out: str) -> dict[str, str]:
  """The 'name  value' lines of a program's report."""
  return dict(line.strip().split(None, 1) for line in out.splitlines()
              if line.startswith('  ') and len(line.split()) > 1)


def capture_compiles(monkeypatch):
  """Each compile_train_step's result is kept (and reused: one compile per test)."""
  real, compiled = compile_lib.compile_train_step, {}

  def once(config, devices=None):
    if 'step' not in compiled:
      compiled['step'] = real(config, devices)
    return compiled['step']
  monkeypatch.setattr(compile_lib, 'compile_train_step', once)
  return compiled


def test_compile_command_fits_or_fails_a_memory_budget(monkeypatch, capsys):
  capture_compiles(monkeypatch)
  assert compile_lib.main(['--config', TINY, '--memory_budget_gib', '64']) == 0
  out = capsys.readouterr()
  assert out.err == ''
  report = report_of(out.out)
  assert {'arguments', 'outputs', 'temporaries', 'donated', 'total'} <= set(report)
  assert float(report['arguments'].split()[0]) > 0 and float(report['temporaries'].split()[0]) > 0
  xla = next(line for line in out.out.splitlines() if 'FLOPs (XLA)' in line)
  assert float(xla.split()[2]) > 0
  # The same step under a budget it cannot meet: exit 2, one line saying what to change.
  assert compile_lib.main(['--config', TINY, '--memory_budget_gib', '0.0001']) == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and err.startswith('error: the train program needs ')
  assert '--memory_budget_gib 0.0001' in err and 'data.batch_size' in err


@pytest.mark.parametrize('args, key', [(['--config.model.d_modle=8'], 'model.d_modle'),
                                       (['--config.data.max_image_targets=3'],
                                        'data.max_image_targets'),
                                       (['--topology', 'v5q-8'], '--topology'),
                                       (['--topology', 'v5p-12'], '--topology')])
def test_compile_command_misconfigured_is_one_line(args, key, capsys):
  assert compile_lib.main(['--config', TINY] + args) == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and key in err


@pytest.mark.parametrize('name, generation, shape', [
    ('v5p-32', 'v5p', (2, 2, 4)), ('v5p-8', 'v5p', (2, 2, 1)), ('v4-8', 'v4', (2, 2, 1)),
    ('v4-128', 'v4', (4, 4, 4)), ('v5p-64', 'v5p', (2, 4, 4)), ('v5e-16', 'v5e', (4, 4)),
    ('v5litepod-8', 'v5e', (2, 4)), ('v5e:4x4', 'v5e', (4, 4)), ('v6e-256', 'v6e', (16, 16)),
    ('v5p:4x4x12', 'v5p', (4, 4, 12)), ('v5e-1', 'v5e', (1, 1))])
def test_slice_names_as_cloud_tpu_counts_them(name, generation, shape):
  s = topology.parse(name)
  assert (s.generation, s.shape) == (generation, shape)


def test_slice_names_that_are_not_slices():
  for bad in ('v5p-7', 'v5e-12', 'v5e:4x4x4', 'v6e-512', 'h100-8', 'v5p'):
    with pytest.raises(ConfigError, match='--topology'):
      topology.parse(bad)


def test_train_step_compiles_for_a_tpu_slice(monkeypatch, capsys):
  """experiments/tiny.py's train step for a v5e:2x2 slice on this CPU host: the TPU
  compiler's memory fits the chip, attention is splash's Mosaic kernel (a TPU custom
  call in the compiled program), and the step time and MFU are labelled estimates."""
  pytest.importorskip('libtpu')
  compiled = capture_compiles(monkeypatch)
  assert compile_lib.main(['--config', TINY, '--topology', 'v5e:2x2']) == 0
  out = capsys.readouterr()
  assert out.err == ''
  step, mesh = compiled['step']
  assert {d.device_kind for d in mesh.devices.flat} == {'TPU v5 lite'}
  assert 'tpu_custom_call' in step.as_text()
  report = report_of(out.out)
  total = float(report['total'].split()[0])
  assert 0 < total < 16 and report['total'].endswith('of 16 GiB HBM per chip')
  times = [line for line in out.out.splitlines() if 'step time' in line]
  assert times and all('compiler estimate, not a TPU run' in t for t in times)
  assert 'compiler estimate, not a TPU run' in report['MFU']


def test_train_step_too_large_for_its_slice_is_one_line(capsys):
  """The TPU compiler's out-of-memory error (a 262k vocabulary's logits over 64 rows
  per chip) ends in one line naming what to change, exit 2."""
  pytest.importorskip('libtpu')
  assert compile_lib.main(['--config', TINY, '--topology', 'v5e:2x2',
                           '--config.data.batch_size=256',
                           '--config.model.vocab_size=262144']) == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and err.startswith('error: the train program ')
  assert 'HBM' in err and 'data.batch_size' in err and 'model.remat=full' in err
