"""The study: every arm an experiment declares, at equal training FLOPs and parameters,
over paired seeds, compared with the dream config by pre-registered metrics.

  python -m dvlm_jax.study --config experiments/small.py --workdir runs/study [--plan]
      [--variants dream,no_diffusion] [--seeds 0,1] [--parallel N]

The experiment file declares `get_study(arg=None) -> dict` (docs/study.md):

  variants     {name: config spec}: the dream config, its ablations, the baseline
  reference    the dream config: its `train.steps` set the budget, every claim is
               compared with it (default: the first variant)
  baseline     the Janus-like baseline among the variants: compared with the reference
               as a family of its own (optional)
  seeds        every arm runs each seed (`train.seed`: initial parameters and noise;
               `data.seed`: the data order); >= 5 for a decision
  metrics      the pre-registered metrics, {name: 'higher' | 'lower'} (which is better);
               NAME@auc is the area under NAME's learning curve
  comparisons  {arm: [metric, ...]}: the metrics each claim is judged on (default: all)
  effects      {metric: null value}: tested on the reference alone against the null (the
               change self-correction makes against 0, a surprisal AUROC against 0.5)
  points       evaluations along each run's budget (default 4; the last at its end)
  overrides    {key: value} for every arm (steps of the reference, evaluation)
  chart        metrics drawn in study.png and curves.png (default: the first 6)

Each run trains in WORKDIR/VARIANT/seed_S in its own process (`--run VARIANT/S`,
resumable like the train command) and is evaluated on the test split at `points` steps
during training; `run.json` beside it records steps, FLOPs, parameters, wall time. A run
with a `run.json` is finished and skipped when the study is run again; `--variants` and
`--seeds` run a subset, `--parallel N` N runs at once (an accelerator's memory is split).
Then WORKDIR/study.json holds every run's metrics at every evaluation point and every
comparison (`study_stats`: paired differences, Holm, verdicts), and study.md, study.png,
curves.png and the TensorBoard HParams table (WORKDIR/tensorboard) are drawn from it alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time
from typing import Any

from dvlm_jax import backends
from dvlm_jax import cli
from dvlm_jax import config as cfg_lib
from dvlm_jax import study_stats
from dvlm_jax.errors import ConfigError

FLOP_BATCHES = 8    # batches each variant's FLOPs per step is averaged over
RUN_RECORD = 'run.json'
STUDY_RECORD = 'study.json'
SPLIT = 'test'      # the study reports; recipes are chosen on validation (eval.split)
AUC = '@auc'
DIRECTIONS = ('higher', 'lower')
# Not to be overridden where arms differ in them: their matched depths and widths derive
# from get_config's (`variants.ablate`, experiments/janus.py).
ARCHITECTURE_KEYS = ('model.core_layers', 'model.mlp_dim')
_KEYS = {'variants', 'reference', 'baseline', 'seeds', 'metrics', 'comparisons', 'effects',
         'points', 'overrides', 'chart'}


@dataclasses.dataclass(frozen=True)
class Run:
  variant: str
  spec: str          # experiments/x.py[:arg]
  seed: int
  workdir: str

  @property
  def name(self) -> str:
    return f'{self.variant}/{self.seed}'


@dataclasses.dataclass(frozen=True)
class Study:
  config_spec: str
  variants: dict[str, str]
  reference: str
  baseline: str | None
  seeds: tuple[int, ...]
  metrics: dict[str, bool]             # name -> lower is better
  comparisons: dict[str, tuple[str, ...]]
  effects: dict[str, float]            # metric -> its null value, on the reference alone
  points: int
  overrides: tuple[str, ...]
  chart: tuple[str, ...]
  workdir: str

  @classmethod
  def load(cls, config_spec: str, workdir: str) -> 'Study':
    path, _, arg = config_spec.partition(':')
    module = cfg_lib.load_experiment(path)
    if not hasattr(module, 'get_study'):
      raise ConfigError(f'{path} declares no get_study(arg): nothing to study')
    declared = dict(module.get_study(arg or None))
    unknown = set(declared) - _KEYS
    if unknown:
      raise ConfigError(f'{path}: get_study() has unknown keys {sorted(unknown)}')
    variants = dict(declared.get('variants') or {})
    seeds = tuple(int(s) for s in declared.get('seeds', (0,)))
    reference = declared.get('reference', next(iter(variants), None))
    baseline = declared.get('baseline')
    if not variants or reference not in variants or (baseline is not None
                                                     and baseline not in variants):
      raise ConfigError(f'{path}: get_study() needs variants, and a reference (and '
                                f'baseline) among them, got {list(variants)} / {reference!r} / '
                                f'{baseline!r}')
    if not seeds or len(set(seeds)) != len(seeds):
      raise ConfigError(f'{path}: get_study() seeds must be distinct, got {seeds}')
    metrics = dict(declared.get('metrics') or {})
    bad = {m: d for m, d in metrics.items() if d not in DIRECTIONS}
    if not metrics or bad:
      raise ConfigError(f'{path}: get_study() metrics must pre-register '
                                f'{{metric: {" | ".join(DIRECTIONS)}}}, got {bad or metrics}')
    comparisons = {arm: tuple(ms) for arm, ms in (declared.get('comparisons') or {}).items()}
    stray = {arm: [m for m in ms if m not in metrics] for arm, ms in comparisons.items()}
    stray = {arm: ms for arm, ms in stray.items() if ms or arm not in variants}
    if stray:
      raise ConfigError(f'{path}: get_study() comparisons name arms or metrics it '
                                f'does not declare: {stray}')
    effects = {m: float(v) for m, v in (declared.get('effects') or {}).items()}
    if set(effects) - set(metrics):
      raise ConfigError(f'{path}: get_study() effects name metrics it does not '
                                f'pre-register: {sorted(set(effects) - set(metrics))}')
    points = int(declared.get('points', 4))
    if points < 1:
      raise ConfigError(f'{path}: get_study() points must be >= 1, got {points}')
    overrides = dict(declared.get('overrides', {}))
    return cls(config_spec, variants, reference, baseline, seeds,
               {m: d == 'lower' for m, d in metrics.items()}, comparisons, effects, points,
               tuple(f'{k}={_text(v)}' for k, v in sorted(overrides.items())),
               tuple(declared.get('chart', ())), workdir)

  def runs(self, variants=None, seeds=None) -> list[Run]:
    return [Run(v, spec, s, os.path.join(self.workdir, v, f'seed_{s}'))
            for v, spec in self.variants.items() if variants is None or v in variants
            for s in self.seeds if seeds is None or s in seeds]

  def config(self, variant: str, seed: int, steps: int | None = None):
    """The arm's config with the study's overrides, the seed, the test split and (if
    given) its steps, evaluated at `points` steps along them."""
    extra = [f'train.seed={seed}', f'data.seed={seed}', f'eval.split={SPLIT}']
    if steps is not None:
      every = eval_every(steps, self.points)
      extra += [f'train.steps={steps}', f'eval.every={every}', 'eval.at_end=true',
                f'checkpoint.every={every}', f'checkpoint.keep={self.points + 1}']
    return cfg_lib.load(self.variants[variant], list(self.overrides) + extra)


def _text(value) -> str:
  return ','.join(str(v) for v in value) if isinstance(value, (tuple, list)) else str(value)


def eval_every(steps: int, points: int) -> int:
  """The interval that evaluates `points` times along `steps` (the last at the end):
  ceil(steps / points), or the floor where the ceiling would give fewer points."""
  every = max(1, math.ceil(steps / points))
  if len(eval_steps(steps, every)) < points:
    every = max(1, steps // points)
  return every


def eval_steps(steps: int, every: int) -> list[int]:
  return sorted(set(range(every, steps + 1, every)) | {steps})


# ---------------------------------------------------------------------------- budget

def flops_per_step(config) -> float:
  """Training FLOPs of one step, the mean over FLOP_BATCHES batches of the config's data."""
  from dvlm_jax.data import pipeline
  from dvlm_jax.training import flops
  stream = pipeline.batches_for(config, process_index=0, process_count=1)
  counted = [flops.train_step_flops(config, next(stream)) for _ in range(FLOP_BATCHES)]
  return sum(counted) / len(counted)


def plan(study: Study, variants) -> dict[str, dict[str, Any]]:
  """Per variant: FLOPs per step, steps at the reference's budget, parameters."""
  from dvlm_jax.model.dvlm import param_count
  seed = study.seeds[0]
  wanted = [v for v in study.variants if v in variants or v == study.reference]
  overridden = {o.partition('=')[0] for o in study.overrides} & set(ARCHITECTURE_KEYS)
  if overridden:
    own = {v: cfg_lib.load(study.variants[v]) for v in study.variants}
    for key in sorted(overridden):
      section, leaf = key.split('.')
      if len({c[section][leaf] for c in own.values()}) > 1:
        raise ConfigError(f'{study.config_spec}: get_study() overrides {key}, in which '
                                  'its arms differ (matched depth and width): set it in '
                                  'get_config instead')
  per_step = {v: flops_per_step(study.config(v, seed)) for v in wanted}
  budget = per_step[study.reference] * int(study.config(study.reference, seed).train.steps)
  out = {}
  for v in wanted:
    steps = max(1, int(round(budget / per_step[v])))
    out[v] = {'flops_per_step': per_step[v], 'steps': steps, 'train_flops': steps * per_step[v],
              'params': param_count(study.config(v, seed)),
              'eval_steps': eval_steps(steps, eval_every(steps, study.points))}
  return out


# ------------------------------------------------------------------------------ runs

def run_one(study: Study, variant: str, seed: int, steps: int) -> None:
  """Trains one run (resuming; it evaluates at its points), then evaluates any point an
  interruption skipped from the checkpoint kept there."""
  from dvlm_jax import train
  from dvlm_jax.evaluation import runner
  from dvlm_jax.inference.api import VLM
  run = next(r for r in study.runs() if (r.variant, r.seed) == (variant, seed))
  config = study.config(variant, seed, steps)
  train.train(config, run.workdir)
  for step in eval_steps(steps, int(config.eval.every)):
    if not os.path.exists(runner.record_path(run.workdir, step)):
      vlm = VLM.from_workdir(run.workdir, step=step)
      runner.evaluate(vlm, config, step, run.workdir)


def _command(study: Study, run: Run, steps: int) -> list[str]:
  return [sys.executable, '-m', 'dvlm_jax.study', '--config', study.config_spec, '--workdir',
          study.workdir, '--run', run.name, '--steps', str(steps)]


def launch_all(study: Study, runs: list[Run], entries: dict, parallel: int) -> list[str]:
  """Runs each run in its own process, `parallel` at once; writes each one's run.json on
  success. Returns the names of those that failed."""
  env = dict(os.environ)
  if parallel > 1:   # one accelerator shared: each process takes its part, on demand
    env.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
    env.setdefault('XLA_PYTHON_CLIENT_MEM_FRACTION', f'{0.9 / parallel:.3f}')
  waiting, running, failed = list(runs), [], []
  while waiting or running:
    while waiting and len(running) < parallel:
      run = waiting.pop(0)
      entry = entries[run.variant]
      os.makedirs(run.workdir, exist_ok=True)
      print(f'{run.name}: training {entry["steps"]} steps in {run.workdir}', flush=True)
      log = open(os.path.join(run.workdir, 'study.log'), 'a')
      proc = subprocess.Popen(_command(study, run, entry['steps']), stdout=log,
                              stderr=subprocess.STDOUT, env=env)
      running.append((run, proc, log, time.perf_counter()))
    time.sleep(0.2)
    for item in list(running):
      run, proc, log, start = item
      if proc.poll() is None:
        continue
      running.remove(item)
      log.close()
      if proc.returncode:
        print(f'  {run.name} failed (exit {proc.returncode}): see {log.name}', flush=True)
        failed.append(run.name)
        continue
      record = dict(entries[run.variant], variant=run.variant, seed=run.seed, spec=run.spec,
                    seconds=time.perf_counter() - start)
      with open(os.path.join(run.workdir, RUN_RECORD), 'w') as f:
        json.dump(record, f, indent=2, sort_keys=True)
      print(f'  {run.name} done in {record["seconds"] / 60:.1f} min', flush=True)
  return failed


def finished(run: Run) -> dict | None:
  """The run's record with its learning curve, or None while the run is not done."""
  path = os.path.join(run.workdir, RUN_RECORD)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    record = json.load(f)
  if 'eval_steps' not in record:
    raise ConfigError(f'{path} was written by an older study (one evaluation, no '
                              'learning curve): run this study in a new --workdir')
  curve, chance, not_applicable, eval_seconds = [], {}, {}, 0.0
  for step in record['eval_steps']:
    with open(os.path.join(run.workdir, 'eval', f'{step}.json')) as f:
      found = json.load(f)
    curve.append({'step': step, 'fraction': step / record['steps'], 'metrics': found['metrics']})
    chance.update(found['chance'])
    not_applicable.update(found['not_applicable'])
    eval_seconds += sum(found['seconds'].values())
  record.update(curve=curve, chance=chance, not_applicable=not_applicable,
                eval_seconds=eval_seconds, final=final_metrics(curve))
  return record


def final_metrics(curve: list[dict]) -> dict[str, float]:
  """The last point's metrics, and NAME@auc for each metric measured at every point."""
  final = dict(curve[-1]['metrics'])
  for name in curve[-1]['metrics']:
    if all(name in p['metrics'] for p in curve):
      final[name + AUC] = study_stats.area_under_curve(
          [p['fraction'] for p in curve], [p['metrics'][name] for p in curve])
  return final


# -------------------------------------------------------------------------- analysis

def _values(records: list[dict], metric: str) -> dict[int, float]:
  return {r['seed']: r['final'][metric] for r in records
          if metric in r['final'] and math.isfinite(r['final'][metric])}


NULL = 'null'   # the arm of the effects family: the null value in every seed


def families(study: Study) -> dict[str, list[str]]:
  """{family: arms}, each family Holm-corrected on its own: every claim against the
  reference; the baseline against it; the reference's effects against their nulls."""
  claims = [v for v in study.variants if v not in (study.reference, study.baseline)]
  return {'claims': claims, **({'baseline': [study.baseline]} if study.baseline else {}),
          **({'effects': [NULL]} if study.effects else {})}


def analyse(study: Study, records: dict[str, list[dict]], command: str) -> dict[str, Any]:
  """study.json: the study, each arm's facts, every run, every comparison."""
  reference = records.get(study.reference, [])
  comparisons = []
  for family, arms in families(study).items():
    items, missing = [], []
    for arm in arms:
      for metric in (study.effects if arm == NULL else
                     study.comparisons.get(arm, tuple(study.metrics))):
        reference_values = _values(reference, metric)
        arm_values = ({s: study.effects[metric] for s in reference_values} if arm == NULL
                      else _values(records.get(arm, []), metric))
        item = {'family': family, 'arm': arm, 'metric': metric,
                'lower_is_better': study.metrics[metric],
                'arm_values': arm_values, 'reference_values': reference_values}
        paired = set(item['arm_values']) & set(item['reference_values'])
        (items if paired else missing).append(item)
    rows = study_stats.compare(items)
    for row, item in zip(rows, items):
      row.update(arm_mean=_mean([item['arm_values'][s] for s in row['seeds']]),
                 reference_mean=_mean([item['reference_values'][s] for s in row['seeds']]))
    comparisons += rows
    comparisons += [{'family': item['family'], 'arm': item['arm'], 'metric': item['metric'],
                     'lower_is_better': item['lower_is_better'], 'n': 0, 'verdict': 'n/a',
                     'why': _why(records.get(item['arm'], []) or reference, item['metric'])}
                    for item in missing]
  arms = {}
  for v, runs in records.items():
    if runs:
      arms[v] = {k: runs[0][k] for k in ('params', 'steps', 'flops_per_step', 'train_flops',
                                         'eval_steps', 'spec')}
      arms[v].update(seeds=[r['seed'] for r in runs],
                     seconds=_mean([r['seconds'] for r in runs]),
                     eval_seconds=_mean([r['eval_seconds'] for r in runs]))
  chance = {}
  for runs in records.values():
    for r in runs:
      chance.update(r['chance'])
  return {'config': study.config_spec, 'command': command,
          'machine': f'{platform.platform()}, {os.cpu_count()} CPU cores, Python '
                     f'{platform.python_version()}',
          'date': datetime.date.today().isoformat(), 'reference': study.reference,
          'baseline': study.baseline, 'seeds': list(study.seeds), 'split': SPLIT,
          'points': study.points, 'alpha': study_stats.ALPHA, 'effects': study.effects,
          'metrics': {m: 'lower' if low else 'higher' for m, low in study.metrics.items()},
          'chart': list(study.chart), 'chance': chance, 'arms': arms,
          'runs': [{k: r[k] for k in ('variant', 'seed', 'steps', 'seconds', 'eval_seconds',
                                      'curve', 'final', 'not_applicable')}
                   for v in study.variants for r in records.get(v, [])],
          'comparisons': comparisons}


def _mean(values) -> float:
  return sum(values) / len(values) if values else math.nan


def _why(runs: list[dict], metric: str) -> str:
  base = metric.removesuffix(AUC)
  for r in runs:
    for group, reason in r['not_applicable'].items():
      if base.startswith(group):
        return reason
  return 'not measured in both arms'


# ----------------------------------------------------------------------------- report

def _number(value) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return 'n/a'
  return f'{value:.3g}' if abs(value) >= 1e3 or (value and abs(value) < 1e-2) else f'{value:.3f}'


def write_markdown(data: dict) -> str:
  """study.md from study.json alone."""
  arms = data['arms']
  lines = [f'# Study: `{data["config"]}`', '', f'Command: `{data["command"]}`  ',
           f'Machine: {data["machine"]}; {data["date"]}.  ',
           f'Seeds: {", ".join(map(str, data["seeds"]))} (paired: the same seed in every arm). '
           f'Split: {data["split"]}. Budget: the training FLOPs of `{data["reference"]}`; every '
           f'arm trains for the steps that buy as many and is evaluated at {data["points"]} '
           'points along them.', '',
           '| arm | parameters | steps | training FLOPs | wall time per run (of it evaluation) '
           '| seeds done |', '|---|---|---|---|---|---|']
  for v, a in arms.items():
    lines.append(f'| {v} | {a["params"] / 1e6:.2f}M | {a["steps"]} | {a["train_flops"]:.3g} | '
                 f'{a["seconds"] / 60:.1f} min ({a["eval_seconds"] / 60:.1f}) | '
                 f'{len(a["seeds"])} |')
  titles = {'claims': 'Each claim switched off against the dream config',
            'baseline': 'The Janus-like baseline against the dream config',
            'effects': f'The dream config against the null value ({NULL}: the same value '
                       'in every seed; helps: the dream config is better than it)'}
  for family, title in titles.items():
    rows = [c for c in data['comparisons'] if c['family'] == family]
    if not rows:
      continue
    lines += ['', f'## {title}', '',
              'difference: arm minus reference, mean over paired seeds [interval at the level '
              'Holm\'s step assigns]; p: Holm-adjusted over this table; verdict for the claim '
              '(helps: the reference, which has it, is better); detectable: the smallest '
              '|difference| these seeds could show at the corrected level.', '',
              f'| arm | metric | better | {data["reference"]} | arm | difference [interval] | '
              'p (Holm) | verdict | detectable | n |', '|---|---|---|---|---|---|---|---|---|---|']
    for c in rows:
      better = 'lower' if c['lower_is_better'] else 'higher'
      if c['verdict'] == 'n/a':
        lines.append(f'| {c["arm"]} | {c["metric"]} | {better} | | | n/a: {c["why"]} | | n/a | | 0 |')
        continue
      low, high = c['interval']
      lines.append(f'| {c["arm"]} | {c["metric"]} | {better} | {_number(c["reference_mean"])} | '
                   f'{_number(c["arm_mean"])} | {_number(c["difference"])} [{_number(low)}, '
                   f'{_number(high)}] | {_number(c["p_holm"])} | {c["verdict"]} | '
                   f'{_number(c["detectable"])} | {c["n"]} |')
  return '\n'.join(lines) + '\n'


def chart_metrics(data: dict) -> list[str]:
  return list(data['chart']) or [m for m in data['metrics'] if not m.endswith(AUC)][:6]


def _arm_finals(data: dict, metric: str) -> dict[str, list[float]]:
  out = {}
  for r in data['runs']:
    if metric in r['final']:
      out.setdefault(r['variant'], []).append(r['final'][metric])
  return out


def draw_chart(data: dict, path: str) -> list[str]:
  """A panel per chart metric: a bar per arm (mean of the final values), its 95 %
  t-interval over seeds, chance dashed. From study.json alone."""
  from PIL import Image, ImageDraw
  arms = list(data['arms'])
  metrics = chart_metrics(data)
  if not metrics or not arms:
    return []
  bar, gap, height, top, label = 16, 6, 160, 24, 110
  width = 40 + len(arms) * (bar + gap)
  image = Image.new('RGB', (width * len(metrics), top + height + label), 'white')
  draw = ImageDraw.Draw(image)
  for p, m in enumerate(metrics):
    x0 = p * width + 30
    finals = _arm_finals(data, m)
    cells = {v: study_stats.mean_interval(values) for v, values in finals.items()}
    tops = [mean + (0 if math.isnan(half) else half) for mean, half in cells.values()]
    scale = max(tops + [data['chance'].get(m, 0.0), 1e-9])
    y = lambda v: top + height - height * max(v, 0.0) / scale
    draw.text((p * width + 4, 4), m[-int(width / 6):], fill='black')
    draw.line([(x0, top), (x0, top + height), (x0 + len(arms) * (bar + gap), top + height)],
              fill='black')
    for i, v in enumerate(arms):
      bx = x0 + gap + i * (bar + gap)
      if v in cells:
        mean, half = cells[v]
        draw.rectangle([bx, y(mean), bx + bar, top + height], fill=(70, 110, 190))
        if not math.isnan(half):
          cx = bx + bar // 2
          draw.line([(cx, y(mean - half)), (cx, y(mean + half))], fill='black', width=2)
      for j, ch in enumerate(v[:label // 8]):
        draw.text((bx + 4, top + height + 4 + 8 * j), ch, fill='black')
    if m in data['chance']:
      cy = y(data['chance'][m])
      for xs in range(x0, x0 + len(arms) * (bar + gap), 6):
        draw.line([(xs, cy), (xs + 3, cy)], fill=(200, 40, 40))
  image.save(path)
  return metrics


_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
            (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
            (0, 0, 0)]


def draw_curves(data: dict, path: str) -> list[str]:
  """A panel per chart metric: per arm, the mean over seeds at each evaluation point
  against the share of the budget spent (0 to 1). From study.json alone."""
  from PIL import Image, ImageDraw
  arms = list(data['arms'])
  metrics = [m for m in chart_metrics(data) if not m.endswith(AUC)]
  if not metrics or not arms:
    return []
  size, pad = 220, 30
  image = Image.new('RGB', (size * len(metrics), size + 14 * len(arms)), 'white')
  draw = ImageDraw.Draw(image)
  for p, m in enumerate(metrics):
    lines = {}
    for v in arms:
      points = {}
      for r in data['runs']:
        if r['variant'] == v:
          for point in r['curve']:
            if m in point['metrics']:
              points.setdefault(round(point['fraction'], 3), []).append(point['metrics'][m])
      if points:
        lines[v] = sorted((x, sum(ys) / len(ys)) for x, ys in points.items())
    values = [y for line in lines.values() for _, y in line]
    if not values:
      continue
    low, high = min(values), max(values)
    high = high if high > low else low + 1.0
    x0 = p * size + pad
    span = size - 2 * pad
    to_xy = lambda x, y: (x0 + x * span, pad + span - (y - low) / (high - low) * span)
    draw.text((p * size + 4, 4), m[-34:], fill='black')
    draw.text((p * size + 2, pad - 10), _number(high), fill='black')
    draw.text((p * size + 2, pad + span), _number(low), fill='black')
    draw.rectangle([x0, pad, x0 + span, pad + span], outline='black')
    for i, v in enumerate(arms):
      if v in lines:
        draw.line([to_xy(x, y) for x, y in lines[v]] if len(lines[v]) > 1
                  else [to_xy(*lines[v][0])] * 2, fill=_COLOURS[i % len(_COLOURS)], width=2)
  for i, v in enumerate(arms):
    draw.text((4, size + 14 * i), v, fill=_COLOURS[i % len(_COLOURS)])
  image.save(path)
  return metrics


def write_hparams(data: dict, directory: str) -> None:
  """TensorBoard's HParams table: one row per arm, its facts and the mean final value of
  each pre-registered metric."""
  import tensorboardX
  for v, a in data['arms'].items():
    finals = {m: _arm_finals(data, m).get(v) for m in data['metrics']}
    metrics = {f'study/{m}': sum(x) / len(x) for m, x in finals.items() if x}
    hparams = {'arm': v, 'params': int(a['params']), 'steps': int(a['steps']),
               'train_flops': float(a['train_flops']), 'seeds': len(a['seeds'])}
    with tensorboardX.SummaryWriter(directory) as writer:
      writer.add_hparams(hparams, metrics, name=v)


def report(data: dict, workdir: str) -> list[str]:
  """Writes study.md, study.png, curves.png and the HParams table from `data` (study.json)."""
  with open(os.path.join(workdir, 'study.md'), 'w') as f:
    f.write(write_markdown(data))
  drawn = draw_chart(data, os.path.join(workdir, 'study.png'))
  draw_curves(data, os.path.join(workdir, 'curves.png'))
  write_hparams(data, os.path.join(workdir, 'tensorboard'))
  return drawn


# ------------------------------------------------------------------------------- main

def _subset(text: str | None, declared, kind: str, cast=str):
  if text is None:
    return list(declared)
  chosen = [cast(x.strip()) for x in text.split(',') if x.strip()]
  unknown = [x for x in chosen if x not in declared]
  if unknown or not chosen:
    raise ConfigError(f'--{kind}: {unknown or text!r} not among the study\'s '
                              f'{kind} {list(declared)}')
  return chosen


def study_main(args) -> int:
  study = Study.load(args.config, args.workdir)
  if args.run:
    variant, _, seed = args.run.rpartition('/')
    run_one(study, variant, int(seed), args.steps)
    return 0
  variants = _subset(args.variants, study.variants, 'variants')
  seeds = _subset(args.seeds, study.seeds, 'seeds', int)
  if args.parallel < 1:
    raise ConfigError(f'--parallel must be >= 1, got {args.parallel}')
  command = f'python -m dvlm_jax.study --config {args.config} --workdir {args.workdir}'
  entries = plan(study, variants)
  print(f'{len(variants)} arms x {len(seeds)} seeds at the training FLOPs of '
        f'{study.reference!r}, evaluated on {SPLIT} at {study.points} points:', flush=True)
  for v in variants:
    e = entries[v]
    print(f'  {v:<24} {e["params"] / 1e6:7.2f}M params  {e["flops_per_step"]:.3g} FLOPs/step'
          f'  {e["steps"]:>6} steps  evaluated at {e["eval_steps"]}', flush=True)
  from dvlm_jax.data import splits
  from dvlm_jax.evaluation.heldout import HeldOut
  held = HeldOut(study.config(study.reference, seeds[0]))
  counts = splits.compositions(held.max_shapes)
  if counts:
    print(f'  held-out compositions of the {held.world} world: ' +
          ', '.join(f'{s} {n}' for s, n in counts.items()), flush=True)
  if args.plan:
    return 0
  todo = []
  for run in study.runs(variants, seeds):
    if finished(run) is not None:
      print(f'{run.name}: done, skipped', flush=True)
    else:
      todo.append(run)
  failed = launch_all(study, todo, entries, args.parallel)
  records = {v: [r for r in map(finished, study.runs([v])) if r is not None]
             for v in study.variants}
  data = analyse(study, records, command)
  path = os.path.join(study.workdir, STUDY_RECORD)
  with open(path + '.tmp', 'w') as f:
    json.dump(data, f, indent=1, sort_keys=True)
  os.replace(path + '.tmp', path)
  drawn = report(data, study.workdir)
  print(f'wrote {path}, study.md, curves.png' + (f' and study.png ({len(drawn)} metrics)'
                                                 if drawn else ''))
  if failed:
    return cli.fail(f'{len(failed)} run(s) failed: {", ".join(failed)} (re-run to retry them)', 1)
  return 0


def main(argv=None) -> int:
  parser = cli.parser('python -m dvlm_jax.study', __doc__)
  parser.add_argument('--config', required=True, help=cli.CONFIG_HELP)
  parser.add_argument('--workdir', required=True, help='root; each run gets WORKDIR/VARIANT/seed_S')
  parser.add_argument('--plan', action='store_true',
                      help='print each arm\'s parameters, FLOPs per step and steps, run nothing')
  parser.add_argument('--variants', default=None, help='run only these arms (comma-separated)')
  parser.add_argument('--seeds', default=None, help='run only these seeds (comma-separated)')
  parser.add_argument('--parallel', type=int, default=1,
                      help='runs at once, each in its own process (for an accelerator)')
  # One run of the study, in its own process (what the study launches for each run).
  parser.add_argument('--run', default=None, help=argparse.SUPPRESS)
  parser.add_argument('--steps', type=int, default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  backends.start()
  from dvlm_jax.data import pipeline
  return cli.guarded(lambda: study_main(args), (pipeline.DataError, FileNotFoundError))


if __name__ == '__main__':
  sys.exit(main())
