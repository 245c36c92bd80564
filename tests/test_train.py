"""The train command end to end on the tiny config."""

import json
import os
import subprocess
import sys

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
