"""The study command: equal training FLOPs per variant, runs skipped once finished, and a
table with a row per metric and a column per variant (mean and 95 % interval over seeds)."""

import json
import math
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from dvlm_jax import study as study_lib
from tests.conftest import ROOT

STUDY_FILE = '''
from dvlm_jax import config as cfg_lib

def get_config(arg=None):
  return cfg_lib.load_experiment({tiny!r}).get_config(arg)

def get_study(arg=None):
  return {{'variants': {{'dream': __file__, 'shared': __file__ + ':no_modality_blocks'}},
          'seeds': (3,), 'chart': ('text/perplexity',),
          'overrides': {{'train.steps': 2, 'model.core_layers': 1, 'checkpoint.every': 1000,
                        'eval.evaluators': ('text_perplexity',), 'eval.num_examples': 2}}}}
'''


def test_study_runs_every_variant_at_equal_flops_and_skips_finished_runs(tmp_path):
  experiment = tmp_path / 'study_exp.py'
  experiment.write_text(STUDY_FILE.format(tiny=os.path.join(ROOT, 'experiments', 'tiny.py')))
  workdir = str(tmp_path / 'study')
  cmd = [sys.executable, '-m', 'dvlm_jax.study', '--config', str(experiment), '--workdir', workdir]
  first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
  assert first.returncode == 0, first.stderr[-3000:]
  runs = {}
  for variant in ('dream', 'shared'):
    with open(os.path.join(workdir, variant, 'seed_3', 'run.json')) as f:
      runs[variant] = json.load(f)
    assert os.path.exists(os.path.join(workdir, variant, 'seed_3', 'eval',
                                       f'{runs[variant]["steps"]}.json'))
  # The shared stack costs fewer FLOPs per step, so the same budget buys it more steps.
  dream, shared = runs['dream'], runs['shared']
  assert dream['steps'] == 2 and shared['flops_per_step'] < dream['flops_per_step']
  assert shared['steps'] == round(2 * dream['flops_per_step'] / shared['flops_per_step']) > 2
  assert shared['params'] < dream['params']
  report = open(os.path.join(workdir, 'study.md')).read()
  assert '| metric | chance | dream | shared |' in report
  lines = report.splitlines()
  assert sum(line.startswith('| text/perplexity |') for line in lines) == 1
  assert [line.split(' | ')[0] for line in lines if line.startswith(('| dream ', '| shared '))] \
      == ['| dream', '| shared']
  assert Image.open(os.path.join(workdir, 'study.png')).size[0] > 0
  again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stdout.count('done, skipped') == 2 and ': training' not in again.stdout


def _record(params, steps, metrics, not_applicable=None):
  return {'params': params, 'steps': steps, 'train_flops': 1e9, 'seconds': 60.0,
          'eval': {'metrics': metrics, 'chance': {'a/colour': 0.14},
                   'not_applicable': not_applicable or {}}}


def test_report_has_a_row_per_metric_with_intervals_over_seeds_and_n_a(tmp_path):
  study = study_lib.Study('x.py', {'dream': 'x.py', 'no_head': 'x.py:no_head'}, 'dream', (0, 1),
                          (), (), str(tmp_path))
  records = {
      'dream': [_record(2e6, 300, {'a/colour': 0.30, 'b/loss': 1.0}),
                _record(2e6, 300, {'a/colour': 0.50, 'b/loss': 1.2})],
      'no_head': [_record(1e6, 350, {'b/loss': 1.4}, {'a': 'no head'}),
                  _record(1e6, 350, {'b/loss': 1.6}, {'a': 'no head'})]}
  summary = study_lib.summarise(study, records)
  mean, half, n = summary['table']['a/colour', 'dream']
  # The 95 % t-interval of two values: t(0.975, 1) * sd / sqrt(2).
  assert n == 2 and math.isclose(mean, 0.4)
  assert math.isclose(half, 12.7062 * np.std([0.3, 0.5], ddof=1) / math.sqrt(2), rel_tol=1e-4)
  assert summary['table']['a/colour', 'no_head'] is None
  report = study_lib.write_markdown(study, summary, 'python -m dvlm_jax.study ...')
  rows = [line for line in report.splitlines() if line.startswith('| a/colour')]
  assert rows == ['| a/colour | 0.140 | 0.400 ± 1.271 | n/a |']
  assert '| no_head | 1.00M | 350 |' in report and '- no_head, `a`: no head' in report
  assert study_lib.draw_chart(study, summary, str(tmp_path / 'chart.png')) == ['a/colour']
  mean, half = study_lib.interval([0.7])
  assert mean == 0.7 and math.isnan(half)
