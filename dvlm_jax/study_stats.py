"""The study's statistics: paired differences over seeds, Holm's correction, verdicts.

Pure numpy/scipy (no JAX), so that the report can be recomputed from study.json alone.

Every arm runs the same seeds, and a seed fixes the initial parameters and the data
order in every arm (`train.seed`, `data.seed`), so arm and reference are compared seed by
seed: d_s = arm_s - reference_s. For each pre-registered (arm, metric) of a family:

  difference   mean of d over the seeds both arms finished (n of them)
  p            two-sided paired t-test of mean d = 0 (n - 1 degrees of freedom)
  p_holm       Holm's step-down adjusted p over the family (monotone, at most 1)
  interval     the paired t-interval at the level Holm's step assigns: the comparison of
               rank i (0-based, by raw p) gets alpha / (m - i), and every comparison after
               the first one Holm keeps gets that one's level. So an interval excludes 0
               exactly when Holm rejects (with the family-wise error at most alpha); it
               is not a simultaneous interval (Bonferroni's alpha / m would be)
  verdict      'helps' / 'hurts' when p_holm < alpha, by the sign of d and whether the
               metric is better higher or lower ('helps': the reference, which has the
               claim the arm switches off, is better); otherwise 'no evidence'
  detectable   t(1 - alpha / (2 m), n - 1) * sd(d) / sqrt(n): the smallest |difference|
               that would reach significance at Holm's strictest step (Bonferroni's
               level) with this spread and these seeds, the study's power line
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats

ALPHA = 0.05
HELPS, HURTS, NO_EVIDENCE = 'helps', 'hurts', 'no evidence'


def paired_t(arm: Sequence[float], reference: Sequence[float]) -> dict[str, float]:
  """Mean difference arm - reference, its sample sd and standard error, n, and the
  two-sided p of the paired t-test (nan below two pairs; 0 or 1 when sd is 0)."""
  d = np.asarray(arm, float) - np.asarray(reference, float)
  n = d.size
  mean = float(d.mean()) if n else math.nan
  if n < 2:
    return {'difference': mean, 'sd': math.nan, 'se': math.nan, 'n': n, 'p': math.nan}
  sd = float(d.std(ddof=1))
  se = sd / math.sqrt(n)
  if se == 0.0:
    p = 1.0 if mean == 0.0 else 0.0
  else:
    p = float(2.0 * stats.t.sf(abs(mean) / se, n - 1))
  return {'difference': mean, 'sd': sd, 'se': se, 'n': n, 'p': p}


def t_half_width(se: float, n: int, level: float) -> float:
  """Half-width of the two-sided t-interval with error `level` (e.g. 0.05)."""
  if n < 2 or math.isnan(se):
    return math.nan
  return float(stats.t.ppf(1.0 - level / 2.0, n - 1)) * se


def mean_interval(values: Sequence[float], level: float = ALPHA) -> tuple[float, float]:
  """(mean, half-width of its two-sided t-interval with error `level`; nan below two)."""
  t = paired_t(values, [0.0] * len(values))
  return t['difference'], t_half_width(t['se'], t['n'], level)


def holm(pvalues: Sequence[float], alpha: float = ALPHA) -> tuple[list[float], list[float]]:
  """(adjusted p, per-comparison error level of its interval), in the input order.

  Adjusted: p_(i) * (m - i) for the rank-i smallest p, made non-decreasing along the
  ranks and capped at 1. Level: alpha / (m - i) up to the first comparison Holm keeps,
  whose level every later one shares (see the module docstring). nan p values (fewer
  than two pairs) are left out of the family and get nan.
  """
  p = np.asarray(pvalues, float)
  present = np.flatnonzero(~np.isnan(p))
  adjusted = np.full(p.size, np.nan)
  levels = np.full(p.size, np.nan)
  m = present.size
  order = present[np.argsort(p[present], kind='stable')]
  running, stopped = 0.0, None
  for rank, index in enumerate(order):
    running = max(running, min(1.0, p[index] * (m - rank)))
    adjusted[index] = running
    if stopped is None and p[index] >= alpha / (m - rank):
      stopped = rank
    levels[index] = alpha / (m - (rank if stopped is None else stopped))
  return adjusted.tolist(), levels.tolist()


def verdict(difference: float, p_adjusted: float, lower_is_better: bool,
            alpha: float = ALPHA) -> str:
  """helps / hurts / no evidence for the claim the arm switches off (difference: arm -
  reference)."""
  if math.isnan(p_adjusted) or p_adjusted >= alpha or difference == 0.0:
    return NO_EVIDENCE
  arm_better = difference < 0.0 if lower_is_better else difference > 0.0
  return HURTS if arm_better else HELPS


def compare(family: Sequence[dict], alpha: float = ALPHA) -> list[dict]:
  """One family of pre-registered comparisons, Holm-corrected together.

  Each item: {'arm', 'metric', 'arm_values': {seed: v}, 'reference_values': {seed: v},
  'lower_is_better': bool, ...}; returns the items (without the values) with the fields
  of the module docstring added, paired over the seeds both have.
  """
  rows = []
  for item in family:
    seeds = sorted(set(item['arm_values']) & set(item['reference_values']))
    t = paired_t([item['arm_values'][s] for s in seeds],
                 [item['reference_values'][s] for s in seeds])
    rows.append(dict({k: v for k, v in item.items() if not k.endswith('_values')},
                     seeds=seeds, **t))
  adjusted, levels = holm([r['p'] for r in rows], alpha)
  m = sum(not math.isnan(r['p']) for r in rows)
  for row, p_adj, level in zip(rows, adjusted, levels):
    half = t_half_width(row['se'], row['n'], level)
    row.update(p_holm=p_adj, level=level,
               interval=[row['difference'] - half, row['difference'] + half],
               verdict=verdict(row['difference'], p_adj, row['lower_is_better'], alpha),
               detectable=t_half_width(row['sd'] / math.sqrt(row['n']) if row['n'] else math.nan,
                                       row['n'], alpha / max(m, 1)))
  return rows


def area_under_curve(fractions: Sequence[float], values: Sequence[float]) -> float:
  """The learning curve's mean level: the trapezoid area over the budget fractions it was
  evaluated at, divided by their span (a single point: its value)."""
  x, y = np.asarray(fractions, float), np.asarray(values, float)
  order = np.argsort(x)
  x, y = x[order], y[order]
  if x.size == 1 or x[-1] == x[0]:
    return float(y.mean())
  return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2.0 / (x[-1] - x[0]))
