"""A run directory is sacred: misconfigurations and faults end in one `error:` line and
exit code 2, and every file already in the workdir is byte-for-byte unchanged.

One trained tiny run (4 steps, checkpoints 2 and 4) is shared: cases that fail before
writing run on it directly; the cases that write run on copies.
"""

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

from dvlm_jax import config as cfg_lib
from dvlm_jax.errors import ConfigError
from dvlm_jax.overrides import set_key
from dvlm_jax.data import pipeline
from dvlm_jax.training import run_dir
from tests.conftest import ROOT
from tests.test_training import TINY, run


def snapshot(workdir) -> dict[str, str]:
  """Path -> sha1 of every file under the workdir."""
  out = {}
  for base, _, files in os.walk(workdir):
    for name in files:
      path = os.path.join(base, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, workdir)] = hashlib.sha1(f.read()).hexdigest()
  return out


def assert_one_error_line(proc, *fragments):
  """Exit 2; stderr's only non-warning content is one `error:` line holding `fragments`."""
  assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1, proc.stderr[-3000:]
  for fragment in fragments:
    assert fragment in errors[0], errors[0]
  others = [line for line in proc.stderr.splitlines()
            if line.strip() and not line.startswith(('error:', 'WARNING'))]
  assert not others, others
  return errors[0]


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('run') / 'w'
  run(workdir, '--config.train.steps=4', '--config.checkpoint.every=2')
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['2', '4']
  return workdir


def test_a_resume_with_another_config_stops_before_writing(trained):
  before = snapshot(trained)
  proc = run(trained, '--config.train.steps=6', '--config.model.d_model=128',
             '--config.data.seed=3', check=False)
  assert_one_error_line(proc, 'model.d_model 64 -> 128', 'data.seed 0 -> 3', 'new --workdir',
                        'checkpoint.restore=params_only')
  proc = run(trained, '--config.train.steps=6', '--config.optim.ema_decay=0.5', check=False)
  assert_one_error_line(proc, 'optim.ema_decay 0.0 -> 0.5')
  assert snapshot(trained) == before


def test_a_changed_process_count_is_a_difference(trained):
  config = cfg_lib.load(TINY, ['model.core_layers=1', 'train.log_every=1',
                               'checkpoint.async_save=false', 'train.steps=4',
                               'checkpoint.every=2'])
  run_dir.check_resume(str(trained), config, 1)           # the same run: fine
  with pytest.raises(run_dir.RunDirError, match='processes 1 -> 2'):
    run_dir.check_resume(str(trained), config, 2)
  config.checkpoint.restore = 'params_only'               # asked for explicitly: allowed
  run_dir.check_resume(str(trained), config, 2)


def test_a_second_writer_is_refused_and_a_stale_lock_taken_over(trained, tmp_path):
  before = snapshot(trained)
  lock = trained / 'lock'
  lock.write_text(json.dumps({'host': socket.gethostname(), 'pid': os.getpid(), 'since': 'now'}))
  try:
    proc = run(trained, '--config.train.steps=6', check=False)
    assert_one_error_line(proc, 'is in use by process', str(os.getpid()), 'another --workdir')
  finally:
    lock.unlink()
  assert snapshot(trained) == before

  # A lock left by a dead process is taken over; the run then fails to save (disk full):
  # one line naming the last complete checkpoint, which is intact, and no temporary files.
  copy = tmp_path / 'w'
  shutil.copytree(trained, copy)
  (copy / 'lock').write_text(json.dumps({'host': socket.gethostname(), 'pid': 2 ** 22 + 7,
                                         'since': 'then'}))
  ckpts = {k: v for k, v in snapshot(copy).items() if k.startswith('checkpoints')}
  proc = run(copy, '--config.train.steps=6', '--config.checkpoint.every=2',
             '--config.debug.save_error_at_step=6', check=False)
  assert 'took over the stale lock' in proc.stderr
  assert_one_error_line(proc, 'checkpoint of step 6 could not be written',
                        'No space left on device', 'last complete checkpoint is step 4')
  after = snapshot(copy)
  assert {k: v for k, v in after.items() if k in ckpts} == ckpts
  assert sorted(os.listdir(copy / 'checkpoints')) == ['2', '4']
  assert not (copy / 'lock').exists()                    # released on the way out
  with open(copy / 'config_history.jsonl') as f:
    history = [json.loads(line) for line in f]
  assert [h['step'] for h in history] == [0, 4]          # the first start, then the resume


def test_params_only_restore_starts_a_new_optimizer_from_the_weights(trained, tmp_path):
  copy = tmp_path / 'w'
  shutil.copytree(trained, copy)
  with open(copy / 'config.json') as f:
    first = json.load(f)
  proc = run(copy, '--config.train.steps=5', '--config.data.seed=3',
             '--config.checkpoint.restore=params_only')
  assert 'resumed at step 4' in proc.stdout
  assert '5' in os.listdir(copy / 'checkpoints')
  with open(copy / 'config_history.jsonl') as f:
    history = [json.loads(line) for line in f]
  assert history[0]['config'] == first and history[-1]['config']['data']['seed'] == 3


def test_start_checks_fail_before_compiling_and_write_nothing(tmp_path):
  cases = [(['--config.mesh.fsdp=8'], 8, 'data.batch_size=4 does not divide over'),
           (['--config.mesh.tensor=4', '--config.mesh.fsdp=1'], 4, 'model.n_heads=2'),
           (['--config.mesh.tensor=3'], 1, 'config.mesh')]
  for overrides, devices, fragment in cases:
    workdir = tmp_path / f'w{devices}'
    proc = run(workdir, '--config.train.steps=2', *overrides, devices=devices, check=False)
    assert_one_error_line(proc, fragment)
    assert not workdir.exists()
  a_file = tmp_path / 'file'
  a_file.write_text('not a directory')
  proc = run(a_file, '--config.train.steps=2', check=False)
  assert_one_error_line(proc, 'is a file, not a directory')
  assert a_file.read_text() == 'not a directory'


def test_a_checkpoint_that_reads_but_does_not_fit_is_not_moved(trained, tmp_path):
  """Without config.json to compare against, the checkpoint's own shapes decide."""
  copy = tmp_path / 'w'
  shutil.copytree(trained, copy)
  (copy / 'config.json').unlink()
  (copy / 'mesh.json').unlink()
  before = snapshot(copy)
  proc = run(copy, '--config.train.steps=6', '--config.model.d_model=128', check=False)
  assert_one_error_line(proc, 'does not fit the configured run', "params['")
  assert snapshot(copy) == before


def test_eval_falls_back_from_a_damaged_newest_checkpoint(trained, tmp_path):
  copy = tmp_path / 'w'
  shutil.copytree(trained, copy)
  params = copy / 'checkpoints' / '4' / 'params'
  for name in os.listdir(params):
    path = params / name
    shutil.rmtree(path) if path.is_dir() else path.unlink()
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  evaluate = lambda *extra: subprocess.run(
      [sys.executable, '-m', 'dvlm_jax.eval', '--workdir', str(copy), *extra], env=env, cwd=ROOT,
      capture_output=True, text=True, timeout=600)
  proc = evaluate('--step', '4')
  assert_one_error_line(proc, 'checkpoint step 4', 'other saved steps: [2]', '--step')
  proc = evaluate('--config.eval.evaluators=text_perplexity', '--config.eval.num_examples=2')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'checkpoint step 4' in proc.stderr and 'trying an older one' in proc.stderr
  assert 'step 2 of' in proc.stdout
  assert (copy / 'checkpoints' / '4').is_dir()          # evaluation moves nothing


def test_tuple_overrides_take_the_forms_people_type():
  config = cfg_lib.load(TINY)
  for text, want in [('shapes', ('shapes',)), ('shapes,inpainting', ('shapes', 'inpainting')),
                     ("'shapes','inpainting'", ('shapes', 'inpainting'))]:
    set_key(config, 'eval.evaluators', text)
    assert config.eval.evaluators == want
  for text in ('shapes:1,twemoji:2', "'shapes:1','twemoji:2'"):
    set_key(config, 'data.mixture', text)
    assert config.data.mixture == (('shapes', 1.0), ('twemoji', 2.0))
  set_key(config, 'data.mixture', 'shapes')
  assert config.data.mixture == (('shapes', 1.0),)
  with pytest.raises(ConfigError, match="--config.KEY=a,b"):
    set_key(config, 'data.mixture', 'shapes:x')


def test_a_mixture_typo_suggests_a_builder_that_exists(tmp_path):
  config = cfg_lib.load(TINY, [f'data.data_dir={tmp_path}'])
  with pytest.raises(pipeline.DataError, match="no data set 'shapez'; did you mean 'shapes'") as e:
    pipeline.open_source('shapez', config)
  assert 'data.build' not in str(e.value)
