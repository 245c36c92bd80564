"""Training at scale on this CPU: multi-process resume, preemption, damaged checkpoints,
non-finite guards, EMA, params-only restore, sweeps."""

import json
import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np

from dvlm_jax import config as cfg_lib
from dvlm_jax import variants
from dvlm_jax import sharding
from dvlm_jax.data import layout
from dvlm_jax.model.dvlm import DreamVLM
from dvlm_jax.model.layers import ModelConfig
from dvlm_jax.training import checkpoints
from tests.conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, 'launch'))
import local as local_launch  # noqa: E402
import sweep as sweep_launch  # noqa: E402

TINY = os.path.join(ROOT, 'experiments', 'tiny.py')
FAST = ['--config.model.core_layers=1', '--config.train.log_every=1',
        '--config.checkpoint.async_save=false']


def train_cmd(workdir, *overrides):
  return [sys.executable, '-m', 'dvlm_jax.train', '--config', TINY, '--workdir', str(workdir),
          *FAST, *overrides]


def run(workdir, *overrides, devices=1, check=True):
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             JAX_PLATFORMS='cpu')
  proc = subprocess.run(train_cmd(workdir, *overrides), env=env, cwd=ROOT, capture_output=True,
                        text=True, timeout=600)
  if check and proc.returncode:
    raise AssertionError(proc.stdout[-3000:] + proc.stderr[-3000:])
  return proc


def metrics(workdir) -> dict[int, dict]:
  """Last logged row of every step (a resumed run logs its steps again)."""
  rows = {}
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    for line in f:
      row = json.loads(line)
      rows[int(row['step'])] = row
  return rows


def assert_same_losses(a, b, steps):
  for s in steps:
    for key in ('loss', 'text', 'imun', 'imgen', 'grad_norm'):
      assert abs(a[s][key] - b[s][key]) <= 1e-5 * max(1.0, abs(a[s][key])), (s, key, a[s][key], b[s][key])


# Every kind of program evaluation runs: packed rows (perplexity), the imun head
# (reconstruction), KV-cache decoding (captions) and next-scale sampling (generation).
EVAL = ['--config.eval.evaluators=text_perplexity,masked_patch_psnr,shapes',
        '--config.eval.num_examples=2', '--config.eval.batch_size=2',
        '--config.eval.max_new_tokens=16', '--config.eval.sample_steps=2']


def test_two_processes_killed_and_resumed_match_an_uninterrupted_run(tmp_path):
  """Two processes (one fsdp mesh over both: the params sharded) train, are killed, resume, and match an
  uninterrupted two-process run step for step; that run's evaluation at its end (every
  process takes part, the model sharded as it trained) equals one process evaluating the
  same checkpoint."""
  common = ['--config.train.steps=4', '--config.checkpoint.every=2']
  def launch(workdir, *extra):
    return local_launch.launch(train_cmd(workdir, *common, *extra), num_processes=2,
                               devices_per_process=1, log_dir=str(tmp_path / 'logs'))
  assert launch(tmp_path / 'straight', '--config.eval.at_end=true', *EVAL) == 0
  with open(tmp_path / 'straight' / 'eval' / '4.json') as f:
    two_processes = json.load(f)['metrics']
  one = subprocess.run([sys.executable, '-m', 'dvlm_jax.eval', '--workdir',
                        str(tmp_path / 'straight')], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, JAX_PLATFORMS='cpu'), timeout=600)
  assert one.returncode == 0, one.stderr[-3000:]
  with open(tmp_path / 'straight' / 'eval' / '4.json') as f:
    one_process = json.load(f)['metrics']
  assert sorted(one_process) == sorted(two_processes)
  assert {'recon/psnr', 'text/loss', 'shapes/caption/colour', 'shapes/generation/colour'} <= set(one_process)
  for key, value in one_process.items():
    assert abs(value - two_processes[key]) <= 1e-4 * max(1.0, abs(value)), (key, value)
  assert launch(tmp_path / 'broken', '--config.debug.crash_at_step=3') == 17   # killed
  assert sorted(os.listdir(tmp_path / 'broken' / 'checkpoints')) == ['2']
  assert launch(tmp_path / 'broken') == 0                                       # resumed
  straight, resumed = metrics(tmp_path / 'straight'), metrics(tmp_path / 'broken')
  assert sorted(resumed) == sorted(straight) == list(range(1, 5))
  assert_same_losses(straight, resumed, range(1, 5))
  with open(tmp_path / 'broken' / 'mesh.json') as f:
    assert json.load(f)['processes'] == 2
  data_state = os.listdir(tmp_path / 'broken' / 'checkpoints' / '4' / 'data')
  assert {'process_0-of-2.json', 'process_1-of-2.json'} <= set(data_state)


def test_sigterm_saves_a_restorable_checkpoint(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  proc = subprocess.Popen(train_cmd(tmp_path, '--config.train.steps=100000',
                                    '--config.checkpoint.every=100000'),
                          env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if line.startswith('step') and ' 3/' in line.split('%')[0]:
      proc.send_signal(signal.SIGTERM)
      break
  out = ''.join(lines) + proc.communicate(timeout=300)[0]
  assert proc.returncode == 0, out
  assert 'preempted: saved step' in out
  saved = int(out.split('preempted: saved step ')[1].split(';')[0])
  assert saved >= 3 and os.listdir(tmp_path / 'checkpoints') == [str(saved)]
  proc = run(tmp_path, f'--config.train.steps={saved + 2}', '--config.checkpoint.every=100000')
  assert f'resumed at step {saved}' in proc.stdout
  assert max(metrics(tmp_path)) == saved + 2


def test_damaged_checkpoint_is_skipped_and_restore_reshards_onto_a_new_mesh(tmp_path):
  run(tmp_path, '--config.train.steps=4', '--config.checkpoint.every=2', '--config.mesh.fsdp=4',
      '--config.mesh.tensor=2', devices=8)
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2', '4']
  params = tmp_path / 'checkpoints' / '4' / 'params'
  for name in os.listdir(params):                      # cut the newest checkpoint short
    path = params / name
    shutil.rmtree(path) if path.is_dir() else path.unlink()
  proc = run(tmp_path, '--config.train.steps=5', '--config.checkpoint.every=2',
             '--config.mesh.fsdp=2', '--config.mesh.tensor=2', devices=4)
  assert 'checkpoint step 4 cannot be restored' in proc.stderr
  assert 'resumed at step 2' in proc.stdout and "'fsdp': 2" in proc.stdout   # 8 -> 4 devices
  assert (tmp_path / 'checkpoints' / 'corrupt.4').is_dir()                  # kept, moved aside
  rows = metrics(tmp_path)
  assert max(rows) == 5 and np.isfinite(rows[5]['loss'])


def test_non_finite_steps_are_skipped_counted_and_stop_the_run(tmp_path):
  proc = run(tmp_path, '--config.train.steps=8', '--config.debug.nan_at_steps=2,4,5',
             '--config.train.max_bad_steps=2', '--config.checkpoint.every=2', check=False)
  rows = metrics(tmp_path)
  assert [rows[s]['bad_steps'] for s in (1, 2, 3, 4, 5)] == [0, 1, 1, 2, 3]
  assert rows[2]['param_norm'] == rows[1]['param_norm']             # no update was applied
  assert rows[3]['param_norm'] != rows[2]['param_norm'] and np.isfinite(rows[3]['loss'])
  assert proc.returncode == 3 and max(rows) == 5                    # stopped at 2 in a row
  assert '2 steps in a row had a non-finite loss' in proc.stderr
  assert 'the last checkpoint (4) is intact' in proc.stderr


def test_params_only_restore_ema_and_grad_accumulation(tmp_path):
  run(tmp_path, '--config.train.steps=3', '--config.optim.ema_decay=0.5',
      '--config.train.grad_accum_steps=2', '--config.train.profile_steps=2,3')
  traces = [f for _, _, files in os.walk(tmp_path / 'profile') for f in files]
  assert any(f.endswith('.xplane.pb') for f in traces), traces
  config = cfg_lib.load(TINY, ['model.core_layers=1', 'optim.ema_decay=0.5'])
  spec = layout.LayoutConfig.from_config(config).batch_spec(1)
  batch = {k: jax.ShapeDtypeStruct(s, d) for k, (s, d) in spec.items()}
  model = DreamVLM(ModelConfig.from_config(config))
  abstract = jax.eval_shape(lambda b: model.init(jax.random.key(0), b), batch)['params']
  mesh = sharding.make_mesh(config)
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(
      a.shape, a.dtype, sharding=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())),
      __import__('flax').linen.unbox(abstract))
  params, step = checkpoints.restore_params(str(tmp_path), abstract)
  ema, _ = checkpoints.restore_params(str(tmp_path), abstract, ema=True)
  assert step == 3
  diff = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), params, ema))
  assert max(diff) > 0                                  # the EMA lags the parameters
  assert np.isfinite(metrics(tmp_path)[3]['loss'])


def test_sweep_declared_in_the_experiment_expands_to_runs(tmp_path):
  runs = sweep_launch.expand(TINY, str(tmp_path))
  assert sorted(r.name for r in runs) == sorted(
      ['core_layers=1_lr=0.001', 'core_layers=2_lr=0.001', 'core_layers=1_lr=0.003',
       'core_layers=2_lr=0.003'])
  r = next(r for r in runs if r.name == 'core_layers=2_lr=0.003')
  assert r.overrides == ('model.core_layers=2', 'optim.lr=0.003')
  assert r.workdir == f'{tmp_path}/core_layers=2_lr=0.003'
  ablations = sweep_launch.expand(os.path.join(ROOT, 'experiments', 'small.py'), str(tmp_path))
  assert len(ablations) == 1 + len(variants.ABLATIONS)
  assert any(r.config.endswith('small.py:causal_images') for r in ablations)
