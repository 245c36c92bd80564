"""The study command on experiments/tiny.py (2 arms x 2 seeds, 4 steps): equal FLOPs, runs
resumed and skipped, learning curves, and study.json's comparisons against the paired
computation done here by hand; then its refusals of a study that cannot decide."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from dvlm_jax import study as study_lib
from tests.conftest import ROOT

TINY = os.path.join(ROOT, 'experiments', 'tiny.py')
ARMS, SEEDS = ('dream', 'no_diffusion'), (0, 1)


def _final_and_auc(workdir, arm, seed, metric):
  """From the run's own eval records: the last point's value, and the area under the
  curve over the budget fractions divided by their span (trapezoids)."""
  run = os.path.join(workdir, arm, f'seed_{seed}')
  steps = json.load(open(os.path.join(run, 'run.json')))['steps']
  points = sorted(int(name[:-5]) for name in os.listdir(os.path.join(run, 'eval'))
                  if name.endswith('.json'))
  values = [json.load(open(os.path.join(run, 'eval', f'{p}.json')))['metrics'][metric]
            for p in points]
  x = np.array(points) / steps
  area = sum((values[i] + values[i + 1]) / 2 * (x[i + 1] - x[i]) for i in range(len(x) - 1))
  return values[-1], area / (x[-1] - x[0]), points


def test_study_pairs_seeds_resumes_and_compares_as_computed_by_hand(tmp_path):
  workdir = str(tmp_path / 'study')
  cmd = [sys.executable, '-m', 'dvlm_jax.study', '--config', TINY, '--workdir', workdir,
         '--parallel', '2']
  first = subprocess.run(cmd + ['--seeds', '0'], cwd=ROOT, capture_output=True, text=True)
  assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
  assert first.stdout.count(': training') == 2
  again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
  assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
  assert again.stdout.count('done, skipped') == 2 and again.stdout.count(': training') == 2
  data = json.load(open(os.path.join(workdir, 'study.json')))

  # Equal FLOPs: the head-less arm is cheaper per step and buys more steps.
  dream, other = data['arms']['dream'], data['arms']['no_diffusion']
  assert dream['steps'] == 4 and other['flops_per_step'] < dream['flops_per_step']
  assert other['steps'] == round(4 * dream['flops_per_step'] / other['flops_per_step'])
  assert {(r['variant'], r['seed']) for r in data['runs']} == {(a, s) for a in ARMS for s in SEEDS}
  for r in data['runs']:   # >= 4 points along the budget, the last at its end
    assert len(r['curve']) >= 4 and r['curve'][-1]['fraction'] == 1.0

  # The comparisons, computed here from the eval records: paired differences, t, Holm.
  metrics = data['metrics']
  assert set(metrics) == {'text/caption_loss', 'text/loss', 'text/caption_loss@auc'}
  rows = {c['metric']: c for c in data['comparisons'] if c['family'] == 'claims'}
  assert set(rows) == set(metrics) and all(c['arm'] == 'no_diffusion' for c in rows.values())
  expected = {}
  for metric in metrics:
    base, auc = metric.removesuffix('@auc'), metric.endswith('@auc')
    diffs = []
    for seed in SEEDS:
      a = _final_and_auc(workdir, 'no_diffusion', seed, base)
      b = _final_and_auc(workdir, 'dream', seed, base)
      diffs.append(a[1] - b[1] if auc else a[0] - b[0])
    mean, se = np.mean(diffs), np.std(diffs, ddof=1) / math.sqrt(2)
    expected[metric] = (mean, se, 2 * stats.t.sf(abs(mean / se), 1))
  order = sorted(expected, key=lambda m: expected[m][2])
  m, running, stopped = len(order), 0.0, None
  for rank, metric in enumerate(order):
    mean, se, p = expected[metric]
    running = max(running, min(1.0, p * (m - rank)))
    if stopped is None and p >= 0.05 / (m - rank):
      stopped = rank
    level = 0.05 / (m - (rank if stopped is None else stopped))
    half = stats.t.ppf(1 - level / 2, 1) * se
    row = rows[metric]
    assert row['n'] == 2 and row['seeds'] == [0, 1]
    assert row['difference'] == pytest.approx(mean, rel=1e-9, abs=1e-12)
    assert row['p'] == pytest.approx(p, rel=1e-6)
    assert row['p_holm'] == pytest.approx(running, rel=1e-6)
    assert row['interval'] == pytest.approx([mean - half, mean + half], rel=1e-6)
    assert row['detectable'] == pytest.approx(stats.t.ppf(1 - 0.05 / (2 * m), 1) * se, rel=1e-6)
    if running >= 0.05:
      assert row['verdict'] == 'no evidence'
    else:   # losses: lower is better, so the arm's higher loss means the claim helps
      assert row['verdict'] == ('helps' if mean > 0 else 'hurts')

  # The report is drawn from study.json alone.
  report = open(os.path.join(workdir, 'study.md')).read()
  assert report == study_lib.write_markdown(data)
  assert sum(line.startswith('| no_diffusion | text/') for line in report.splitlines()) == 3
  for name in ('study.png', 'curves.png'):
    assert Image.open(os.path.join(workdir, name)).size[0] > 0
  for arm in ARMS:   # a row of the HParams table per arm
    assert os.listdir(os.path.join(workdir, 'tensorboard', arm))


STUDY_FILE = '''
import os
from dvlm_jax import config as cfg_lib

TINY = {tiny!r}

def get_config(arg=None):
  return cfg_lib.load_experiment(TINY).get_config(arg)

def get_study(arg=None):
  study = {{'variants': {{'dream': TINY, 'shared': TINY + ':no_modality_blocks'}},
           'metrics': {{'text/loss': 'lower'}}, 'overrides': {{'train.steps': 2}}}}
  if arg == 'unregistered':
    del study['metrics']
  if arg == 'sideways':
    study['metrics'] = {{'text/loss': 'down'}}
  if arg == 'narrow':
    study['overrides']['model.mlp_dim'] = 64
  return study
'''


def test_a_study_that_cannot_decide_is_refused_in_one_line(tmp_path, capsys):
  path = tmp_path / 'exp.py'
  path.write_text(STUDY_FILE.format(tiny=TINY))
  cases = [('unregistered', [], 'metrics must pre-register'),
           ('sideways', [], 'metrics must pre-register'),
           ('narrow', ['--plan'], 'overrides model.mlp_dim'),
           ('', ['--variants', 'dream,janus'], "--variants: ['janus']"),
           ('', ['--seeds', '3'], '--seeds: [3]')]
  for arg, extra, message in cases:
    spec = f'{path}:{arg}' if arg else str(path)
    code = study_lib.main(['--config', spec, '--workdir', str(tmp_path / 'w')] + extra)
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
  assert not os.path.exists(tmp_path / 'w' / 'study.json')


def test_the_small_study_pre_registers_every_claim_paired_over_five_seeds():
  from dvlm_jax import variants
  study = study_lib.Study.load(os.path.join(ROOT, 'experiments', 'small.py'), 'unused')
  assert len(study.seeds) >= 5 and study.points >= 4 and study.baseline == 'janus'
  assert set(study.comparisons) == set(variants.ABLATIONS) | {'janus'}
  assert 'eval.split' not in dict(o.split('=', 1) for o in study.overrides)   # SPLIT's
  assert study_lib.families(study)['effects'] == [study_lib.NULL]


def _run(variant, seed, values, not_applicable=None):
  curve = [{'step': s, 'fraction': s / 4, 'metrics': {k: v * s / 4 for k, v in values.items()}}
           for s in (2, 4)]
  return {'variant': variant, 'seed': seed, 'steps': 4, 'params': 1e6, 'flops_per_step': 1e9,
          'train_flops': 4e9, 'eval_steps': [2, 4], 'spec': 'x.py', 'seconds': 60.0,
          'eval_seconds': 6.0, 'curve': curve, 'final': study_lib.final_metrics(curve),
          'chance': {'acc': 0.25}, 'not_applicable': not_applicable or {}}


def test_families_baseline_effects_and_what_an_arm_cannot_be_asked():
  study = study_lib.Study('x.py', {'dream': 'x.py', 'no_head': 'x.py:no_head', 'janus': 'j.py'},
                          'dream', 'janus', (0, 1, 2), {'acc': False, 'gen': False}, {},
                          {'acc': 0.25}, 2, (), (), 'unused')
  records = {'dream': [_run('dream', s, {'acc': 0.6 + 0.01 * s, 'gen': 0.5}) for s in range(3)],
             'no_head': [_run('no_head', s, {'acc': 0.5 + 0.012 * s}, {'gen': 'no head'})
                         for s in range(3)],
             'janus': [_run('janus', s, {'acc': 0.59 + 0.011 * s, 'gen': 0.4}) for s in range(3)]}
  data = study_lib.analyse(study, records, 'python -m dvlm_jax.study ...')
  rows = {(c['family'], c['arm'], c['metric']): c for c in data['comparisons']}
  assert set(rows) == {('claims', 'no_head', 'acc'), ('claims', 'no_head', 'gen'),
                       ('baseline', 'janus', 'acc'), ('baseline', 'janus', 'gen'),
                       ('effects', study_lib.NULL, 'acc')}
  assert rows['claims', 'no_head', 'gen']['verdict'] == 'n/a'
  assert rows['claims', 'no_head', 'gen']['why'] == 'no head'
  claim = rows['claims', 'no_head', 'acc']   # the only test in its family: no correction
  assert claim['difference'] == pytest.approx(-0.1 + 0.002) and claim['verdict'] == 'helps'
  assert claim['p_holm'] == pytest.approx(claim['p'])
  # The dream config against the null value: 0.25 in every seed, so it "helps" when above.
  effect = rows['effects', study_lib.NULL, 'acc']
  assert effect['difference'] == pytest.approx(0.25 - 0.61) and effect['verdict'] == 'helps'
  assert rows['baseline', 'janus', 'gen']['verdict'] == 'helps'   # no spread: p = 0
  assert data['runs'][0]['final']['acc@auc'] == pytest.approx(0.75 * 0.6)
  report = study_lib.write_markdown(data)
  assert '| no_head | gen | higher | | | n/a: no head | | n/a | | 0 |' in report
  assert '## The Janus-like baseline against the dream config' in report
