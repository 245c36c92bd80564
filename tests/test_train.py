"""The train command end to end on the tiny config."""

import json
import os
import subprocess
import sys

import pytest

from dvlm_jax import train
from tests.conftest import ROOT

TINY = os.path.join(ROOT, 'experiments', 'tiny.py')


def test_train_command_writes_config_and_metrics(tmp_path, capsys):
  workdir = str(tmp_path / 'run')
  assert train.main(['--config', TINY, '--workdir', workdir, '--config.train.steps=4',
                     '--config.train.log_every=2', '--config.model.core_layers=1']) == 0
  with open(os.path.join(workdir, 'config.json')) as f:
    saved = json.load(f)
  assert saved['model']['core_layers'] == 1 and saved['train']['steps'] == 4
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  assert [r['step'] for r in rows] == [2, 4]
  for key in ('loss', 'text', 'imun', 'imgen', 'imun/scale_1', 'imgen/scale_2', 'grad_norm',
              'lr', 'tokens_per_sec'):
    assert key in rows[-1], key
  out = capsys.readouterr().out
  assert 'step 4/4' in out and 'tok/s' in out


def test_bad_key_fails_before_anything_runs(tmp_path):
  proc = subprocess.run([sys.executable, '-m', 'dvlm_jax.train', '--config', TINY,
                         '--workdir', str(tmp_path / 'w'), '--config.model.core_layerz=2'],
                        capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert proc.returncode == 2
  assert "unknown config key 'model.core_layerz'" in proc.stderr
  assert not (tmp_path / 'w').exists()


JOIN_ORDER = """
import sys
from jax._src import xla_bridge
from dvlm_jax import distributed, train
seen = []
distributed.initialize = lambda settings: seen.append(
    ('join', xla_bridge.backends_are_initialized(), settings.num_processes))
train.train = lambda config, workdir: seen.append(
    ('train', xla_bridge.backends_are_initialized(), config.model.core_layers))
assert train.main(sys.argv[1:]) == 0
print(seen)
"""


def test_processes_join_before_the_experiment_starts_jax(tmp_path):
  # Loading an ablation counts its parameters with JAX, which starts the backends; JAX
  # joins no process after that, so a multi-host ablation would fail at start-up.
  proc = subprocess.run(
      [sys.executable, '-c', JOIN_ORDER, '--config', f'{TINY}:no_in_blocks', '--workdir',
       str(tmp_path / 'w'), '--config.distributed.num_processes=3'],
      capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  (join, started_then, processes), (_, started_later, core_layers) = eval(
      proc.stdout.strip().splitlines()[-1])
  assert join == 'join' and started_then is False and processes == 3
  assert started_later is True and core_layers > 2     # the ablation gave the core depth


def test_an_experiment_that_sets_launch_settings_is_refused(tmp_path):
  from dvlm_jax import config as cfg_lib
  from dvlm_jax.errors import ConfigError
  experiment = tmp_path / 'exp.py'
  experiment.write_text(f'import runpy\nget = runpy.run_path({TINY!r})["get_config"]\n'
                        'def get_config(arg=None):\n  c = get(arg)\n'
                        '  c.distributed.num_processes = 2\n  return c\n')
  with pytest.raises(ConfigError, match=r'distributed\.\* are launch settings.*--config\.distributed'):
    cfg_lib.load(str(experiment))
  assert cfg_lib.launch_settings(['distributed.process_id=1', 'train.steps=3']).process_id == 1


def test_commands_start_jax_without_libtpu_noise_on_a_host_without_a_tpu():
  import importlib.util
  from dvlm_jax import backends
  if importlib.util.find_spec('libtpu') is None or backends.tpu_attached():
    pytest.skip('needs libtpu installed on a host without a TPU')
  def stderr_of(code):
    env = {k: v for k, v in os.environ.items() if not k.startswith(('TPU_', 'JAX_PLATFORMS'))}
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=120, check=True).stderr
  assert 'TPU' in stderr_of('import jax; jax.devices()')       # what a user would see
  assert 'TPU' not in stderr_of('from dvlm_jax import backends; backends.start()\n'
                                'import jax; assert jax.devices()')
