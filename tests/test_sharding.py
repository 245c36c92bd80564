"""The same config on 1 device and on 8 fake CPU devices (fsdp x tensor, and with MoE
fsdp x expert x tensor) trains identically, and (fsdp x tensor) evaluates identically:
evaluation runs under the training mesh, its rows split over fsdp, heads over tensor."""

import json
import os
import subprocess
import sys

from tests.conftest import ROOT

TINY = os.path.join(ROOT, 'experiments', 'tiny.py')


def run(workdir, devices, *overrides):
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             JAX_PLATFORMS='cpu')
  subprocess.run([sys.executable, '-m', 'dvlm_jax.train', '--config', TINY, '--workdir', workdir,
                  '--config.train.steps=6', '--config.train.log_every=2', *overrides],
                 check=True, env=env, cwd=ROOT, capture_output=True, timeout=600)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


EVAL = ('--config.eval.at_end=true', '--config.eval.evaluators=text_perplexity,shapes',
        '--config.eval.num_examples=3', '--config.eval.batch_size=3',
        '--config.eval.max_new_tokens=16', '--config.eval.sample_steps=2')


def test_fsdp_tensor_mesh_matches_one_device(tmp_path):
  one = run(str(tmp_path / 'one'), 1, *EVAL)
  eight = run(str(tmp_path / 'eight'), 8, '--config.mesh.fsdp=4', '--config.mesh.tensor=2', *EVAL)
  assert len(one) == len(eight) == 3
  for a, b in zip(one, eight):
    for key in ('loss', 'text', 'imun', 'imgen', 'grad_norm'):
      assert abs(a[key] - b[key]) <= 1e-4 * max(1.0, abs(a[key])), (a['step'], key, a[key], b[key])
  # The evaluation at the end: 3 examples padded to 4 rows, one per fsdp device.
  evals = [json.load(open(os.path.join(tmp_path, name, 'eval', '6.json')))['metrics']
           for name in ('one', 'eight')]
  assert sorted(evals[0]) == sorted(evals[1]) and 'shapes/generation/colour' in evals[0]
  for key, value in evals[0].items():
    assert abs(value - evals[1][key]) <= 1e-4 * max(1.0, abs(value)), (key, value, evals[1][key])


def test_moe_expert_mesh_matches_one_device(tmp_path):
  moe = ('--config.model.moe_experts=4', '--config.model.moe_group_size=64',
         '--config.model.moe_capacity_factor=1.0')   # some drops: routing must agree too
  one = run(str(tmp_path / 'one'), 1, *moe)
  eight = run(str(tmp_path / 'eight'), 8, *moe, '--config.mesh.fsdp=2', '--config.mesh.expert=2',
              '--config.mesh.tensor=2')
  assert len(one) == len(eight) == 3
  for a, b in zip(one, eight):
    assert a['moe_aux'] > 0 and a['moe_dropped'] > 0
    for key in ('loss', 'text', 'imun', 'imgen', 'moe_aux', 'moe_dropped', 'grad_norm'):
      assert abs(a[key] - b[key]) <= 1e-4 * max(1.0, abs(a[key])), (a['step'], key, a[key], b[key])
