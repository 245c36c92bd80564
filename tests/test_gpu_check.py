"""benchmarks/gpu_check.sh end to end on a CPU (GPU_CHECK_SMOKE=1): whoever next has a
GPU only has to run it."""

import json
import os
import re
import subprocess
import sys

from tests.conftest import ROOT


def test_gpu_check_runs_every_part_in_smoke_mode(tmp_path):
  env = dict(os.environ, GPU_CHECK_SMOKE='1', PYTHON=sys.executable, JAX_PLATFORMS='cpu',
             PYTHONPATH=ROOT)
  done = subprocess.run(['bash', os.path.join(ROOT, 'benchmarks', 'gpu_check.sh'), 'all',
                         str(tmp_path)], env=env, cwd=ROOT, capture_output=True, text=True,
                        timeout=900)
  log = (tmp_path / 'gpu_check.log').read_text()
  assert done.returncode == 0, done.stdout + done.stderr
  steps = re.findall(r'^--- (.+): rc=(\d+) in', log, flags=re.M)
  assert [name for name, _ in steps] == ['attention', 'train_step auto dots',
                                         'attention scope text', 'range tiles 64,64,64,64,4,3']
  assert all(rc == '0' for _, rc in steps), steps
  assert 'jax' in log and '--- done in' in log
  timed = {}
  for name in ('attention.jsonl', 'train_step.jsonl'):
    records = [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]
    timed[name] = [r for r in records if 'check' not in r]
    assert timed[name] and all(r['smoke'] for r in timed[name]), name
    # Each implementation against float32 XLA, values and gradients, once.
    checks = {r['check'] for r in records if 'check' in r and r['finite']}
    assert checks == ({'range', 'tokamax', 'xla'} if name == 'attention.jsonl' else set()), checks
  assert {r['scope'] for r in timed['attention.jsonl']} == {'document', 'text'}
