"""The study's statistics against textbook numbers and Holm's defining properties."""

import math

import numpy as np
import pytest

from dvlm_jax import study_stats

# Student's sleep data (Cushny and Peebles, 1905): extra hours of sleep per patient under
# two drugs. Paired t-test: mean difference 1.58, t = 4.0621 on 9 df, p = 0.002833,
# 95 % interval 0.7001 to 2.4599.
DRUG_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
DRUG_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]


def test_paired_t_reproduces_the_sleep_data():
  t = study_stats.paired_t(DRUG_2, DRUG_1)
  assert t['n'] == 10 and t['difference'] == pytest.approx(1.58)
  assert t['difference'] / t['se'] == pytest.approx(4.0621, abs=1e-4)
  assert t['p'] == pytest.approx(0.002833, abs=1e-6)
  half = study_stats.t_half_width(t['se'], t['n'], 0.05)
  assert (t['difference'] - half, t['difference'] + half) == pytest.approx((0.7001, 2.4599),
                                                                           abs=1e-4)
  assert math.isnan(study_stats.paired_t([1.0], [0.0])['p'])
  assert study_stats.paired_t([1.0, 2.0], [0.0, 1.0])['p'] == 0.0   # no spread, a difference


def test_holm_adjusts_step_down_and_assigns_each_step_its_level():
  adjusted, levels = study_stats.holm([0.01, 0.04, 0.03, 0.005])
  # ranks: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 -> kept at 0.06
  assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
  # 0.005 < 0.05/4 and 0.01 < 0.05/3 are rejected; 0.03 >= 0.05/2 stops, 0.04 shares its level
  assert levels == pytest.approx([0.05 / 3, 0.05 / 2, 0.05 / 2, 0.05 / 4])
  adjusted, levels = study_stats.holm([0.2, math.nan, 0.01])
  assert adjusted[0] == pytest.approx(0.2) and math.isnan(adjusted[1])
  assert adjusted[2] == pytest.approx(0.02)


def test_holm_is_monotone_and_its_intervals_agree_with_its_decisions():
  rng = np.random.default_rng(0)
  for _ in range(50):
    m = int(rng.integers(1, 12))
    family = []
    for i in range(m):
      ref = rng.normal(size=5)
      family.append({'arm': f'a{i}', 'metric': 'x', 'lower_is_better': bool(i % 2),
                     'reference_values': dict(enumerate(ref)),
                     'arm_values': dict(enumerate(ref + rng.normal(rng.normal() * 2, 1, 5)))})
    rows = study_stats.compare(family)
    p = np.array([r['p'] for r in rows])
    adj = np.array([r['p_holm'] for r in rows])
    order = np.argsort(p, kind='stable')
    assert np.all(adj >= p - 1e-12) and np.all(adj <= 1.0)
    assert np.all(np.diff(adj[order]) >= -1e-12)
    for r in rows:
      excludes_zero = r['interval'][0] > 0 or r['interval'][1] < 0
      assert excludes_zero == (r['p_holm'] < study_stats.ALPHA), r
      assert (r['verdict'] != study_stats.NO_EVIDENCE) == excludes_zero
      if r['verdict'] != study_stats.NO_EVIDENCE:   # sign-aware: the reference better = helps
        reference_better = (r['difference'] > 0) == r['lower_is_better']
        assert (r['verdict'] == study_stats.HELPS) == reference_better


def test_verdict_detectable_difference_and_area_under_curve():
  assert study_stats.verdict(-0.1, 0.01, lower_is_better=False) == 'helps'
  assert study_stats.verdict(-0.1, 0.01, lower_is_better=True) == 'hurts'
  assert study_stats.verdict(-0.1, 0.2, lower_is_better=True) == 'no evidence'
  family = [{'arm': 'a', 'metric': 'x', 'lower_is_better': False,
             'reference_values': dict(enumerate(DRUG_1)), 'arm_values': dict(enumerate(DRUG_2))},
            {'arm': 'b', 'metric': 'x', 'lower_is_better': False,
             'reference_values': {0: 1.0}, 'arm_values': {0: 2.0, 1: 3.0}}]
  rows = study_stats.compare(family)
  sd = np.std(np.subtract(DRUG_2, DRUG_1), ddof=1)
  # One comparison in the family (the other has one pair): the 95 % level, t(0.975, 9).
  assert rows[0]['detectable'] == pytest.approx(2.262157 * sd / math.sqrt(10), rel=1e-5)
  assert rows[1]['n'] == 1 and rows[1]['verdict'] == 'no evidence'
  assert study_stats.area_under_curve([0.25, 0.5, 1.0], [0.0, 1.0, 1.0]) == pytest.approx(
      (0.125 + 0.5) / 0.75)
  assert study_stats.area_under_curve([1.0], [0.3]) == 0.3
