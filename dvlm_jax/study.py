"""The study: every variant an experiment declares, at equal training FLOPs, over seeds.

  python -m dvlm_jax.study --config experiments/small.py --workdir runs/study [--plan]

The experiment file declares `get_study(arg=None) -> dict`:

  variants   {name: config spec}, e.g. {'dream': '.../small.py', 'single_copy':
             '.../small.py:single_copy', 'janus': '.../janus.py:small'}
  reference  the variant whose `train.steps` sets the budget (default: the first)
  seeds      seeds of every variant (`train.seed` and `data.seed`), e.g. (0, 1)
  overrides  {key: value} for every variant (steps of the reference, data, evaluation)
  chart      metrics drawn in study.png (default: those with a chance level)

The budget is the reference's training FLOPs: its FLOPs per step (`training/flops.py`,
the mean over FLOP_BATCHES batches of its own data) times its steps. Every variant trains
for the steps that buy the same FLOPs. Each run trains in WORKDIR/VARIANT/seed_S in its
own process (`python -m dvlm_jax.study ... --run VARIANT/S`, resumable like the train
command), then is evaluated from the checkpoint it saved; `run.json` beside it records
steps, FLOPs, parameters and wall time. A run with a `run.json` is finished and skipped
when the study is run again. Then WORKDIR/study.md (per metric and variant: the mean and
95 % t-interval over seeds, with chance; per variant: parameters, steps, training FLOPs,
wall time) and WORKDIR/study.png (a panel per chart metric: bars with intervals).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import time
from typing import Any

from dvlm_jax import cli
from dvlm_jax import config as cfg_lib
from dvlm_jax.errors import ConfigError

FLOP_BATCHES = 8    # batches each variant's FLOPs per step is averaged over
RUN_RECORD = 'run.json'


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
  seeds: tuple[int, ...]
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
    unknown = set(declared) - {'variants', 'reference', 'seeds', 'overrides', 'chart'}
    if unknown:
      raise ConfigError(f'{path}: get_study() has unknown keys {sorted(unknown)}')
    variants = dict(declared.get('variants') or {})
    seeds = tuple(int(s) for s in declared.get('seeds', (0,)))
    reference = declared.get('reference', next(iter(variants), None))
    if not variants or reference not in variants:
      raise ConfigError(f'{path}: get_study() needs variants and a reference among '
                                f'them, got {list(variants)} / {reference!r}')
    if not seeds or len(set(seeds)) != len(seeds):
      raise ConfigError(f'{path}: get_study() seeds must be distinct, got {seeds}')
    overrides = tuple(f'{k}={_text(v)}' for k, v in sorted(declared.get('overrides', {}).items()))
    return cls(config_spec, variants, reference, seeds, overrides,
               tuple(declared.get('chart', ())), workdir)

  def runs(self) -> list[Run]:
    return [Run(v, spec, s, os.path.join(self.workdir, v, f'seed_{s}'))
            for v, spec in self.variants.items() for s in self.seeds]

  def config(self, variant: str, seed: int, steps: int | None = None):
    """The variant's config with the study's overrides, the seed and (if given) its steps."""
    extra = [f'train.seed={seed}', f'data.seed={seed}']
    if steps is not None:
      extra.append(f'train.steps={steps}')
    config = cfg_lib.load(self.variants[variant], list(self.overrides) + extra)
    # The study evaluates each run once, from its checkpoint, after training.
    config.eval.every, config.eval.at_end = 0, False
    return config


def _text(value) -> str:
  return ','.join(str(v) for v in value) if isinstance(value, (tuple, list)) else str(value)


# ---------------------------------------------------------------------------- budget

def flops_per_step(config) -> float:
  """Training FLOPs of one step, the mean over FLOP_BATCHES batches of the config's data."""
  from dvlm_jax.data import pipeline
  from dvlm_jax.training import flops
  stream = pipeline.batches_for(config, process_index=0, process_count=1)
  counted = [flops.train_step_flops(config, next(stream)) for _ in range(FLOP_BATCHES)]
  return sum(counted) / len(counted)


def plan(study: Study) -> dict[str, dict[str, Any]]:
  """Per variant: FLOPs per step, steps at the reference's budget, parameters."""
  from dvlm_jax.model.dvlm import param_count
  per_step = {v: flops_per_step(study.config(v, study.seeds[0])) for v in study.variants}
  reference = study.config(study.reference, study.seeds[0])
  budget = per_step[study.reference] * int(reference.train.steps)
  out = {}
  for v in study.variants:
    steps = max(1, int(round(budget / per_step[v])))
    out[v] = {'flops_per_step': per_step[v], 'steps': steps,
              'train_flops': steps * per_step[v],
              'params': param_count(study.config(v, study.seeds[0]))}
  return out


# ------------------------------------------------------------------------------ runs

def run_one(study: Study, variant: str, seed: int, steps: int) -> None:
  """Trains one run (resuming), then evaluates it from its saved checkpoint."""
  from dvlm_jax import train
  from dvlm_jax.evaluation import runner
  from dvlm_jax.inference.api import VLM
  run = next(r for r in study.runs() if (r.variant, r.seed) == (variant, seed))
  config = study.config(variant, seed, steps)
  train.train(config, run.workdir)
  vlm = VLM.from_workdir(run.workdir)
  if vlm.step != steps:
    raise RuntimeError(f'{run.workdir}: newest checkpoint is step {vlm.step}, not {steps}')
  runner.evaluate(vlm, vlm.config, vlm.step, run.workdir)


def launch(study: Study, run: Run, entry: dict[str, Any]) -> bool:
  """Runs one run in its own process; on success writes its run.json. True if it worked."""
  os.makedirs(run.workdir, exist_ok=True)
  cmd = [sys.executable, '-m', 'dvlm_jax.study', '--config', study.config_spec, '--workdir',
         study.workdir, '--run', run.name, '--steps', str(entry['steps'])]
  start = time.perf_counter()
  log_path = os.path.join(run.workdir, 'study.log')
  with open(log_path, 'a') as log:
    code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
  if code:
    print(f'  {run.name} failed (exit {code}): see {log_path}', flush=True)
    return False
  record = dict(entry, variant=run.variant, seed=run.seed, spec=run.spec,
                seconds=time.perf_counter() - start)
  with open(os.path.join(run.workdir, RUN_RECORD), 'w') as f:
    json.dump(record, f, indent=2, sort_keys=True)
  return True


def finished(run: Run) -> dict | None:
  """(run.json, its evaluation record) merged, or None while the run is not done."""
  path = os.path.join(run.workdir, RUN_RECORD)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    record = json.load(f)
  with open(os.path.join(run.workdir, 'eval', f'{record["steps"]}.json')) as f:
    record['eval'] = json.load(f)
  return record


# ----------------------------------------------------------------------------- report

def interval(values: list[float]) -> tuple[float, float]:
  """(mean, half-width of the 95 % Student-t interval; nan with one value)."""
  n = len(values)
  mean = sum(values) / n
  if n < 2:
    return mean, float('nan')
  from scipy import stats
  sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
  return mean, float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)


def summarise(study: Study, records: dict[str, list[dict]]) -> dict[str, Any]:
  """Per (metric, variant): (mean, half-width, seeds) or None where the variant has no such
  metric; chance; per variant the run facts and what it cannot be asked for."""
  metrics, chance, table, not_applicable = set(), {}, {}, {}
  for v, runs in records.items():
    for r in runs:
      metrics.update(r['eval']['metrics'])
      chance.update(r['eval']['chance'])
      not_applicable.setdefault(v, {}).update(r['eval']['not_applicable'])
  for m in sorted(metrics):
    for v, runs in records.items():
      values = [r['eval']['metrics'][m] for r in runs if m in r['eval']['metrics']]
      table[m, v] = interval(values) + (len(values),) if values else None
  facts = {v: {'params': runs[0]['params'], 'steps': runs[0]['steps'],
               'train_flops': runs[0]['train_flops'], 'seeds': len(runs),
               'seconds': sum(r['seconds'] for r in runs) / len(runs)}
           for v, runs in records.items() if runs}
  return {'metrics': sorted(metrics), 'chance': chance, 'table': table, 'facts': facts,
          'not_applicable': not_applicable}


def _cell(value) -> str:
  if value is None:
    return 'n/a'
  mean, half, n = value
  return f'{mean:.3f}' if math.isnan(half) else f'{mean:.3f} ± {half:.3f}'


def write_markdown(study: Study, summary: dict, command: str) -> str:
  variants = [v for v in study.variants if v in summary['facts']]
  lines = [f'# Study: `{study.config_spec}`', '',
           f'Command: `{command}`  ', f'Machine: {platform.platform()}, '
           f'{os.cpu_count()} CPU cores, Python {platform.python_version()}.  ',
           f'Seeds: {", ".join(map(str, study.seeds))}. Budget: the training FLOPs of '
           f'`{study.reference}`; every variant trains for the steps that buy as many.', '',
           '| variant | parameters | steps | training FLOPs | wall time per run | seeds done |',
           '|---|---|---|---|---|---|']
  for v in variants:
    f = summary['facts'][v]
    lines.append(f'| {v} | {f["params"] / 1e6:.2f}M | {f["steps"]} | {f["train_flops"]:.3g} | '
                 f'{f["seconds"] / 60:.1f} min | {f["seeds"]} |')
  lines += ['', 'Each cell: the mean over seeds ± the half-width of its 95 % Student-t '
            'interval (no interval with one seed); n/a: the variant cannot be asked for it '
            '(reasons below).', '',
            '| metric | chance | ' + ' | '.join(variants) + ' |',
            '|---|---|' + '---|' * len(variants)]
  for m in summary['metrics']:
    level = summary['chance'].get(m)
    lines.append(f'| {m} | {"" if level is None else f"{level:.3f}"} | '
                 + ' | '.join(_cell(summary['table'][m, v]) for v in variants) + ' |')
  reasons = [(v, group, why) for v in variants
             for group, why in sorted(summary['not_applicable'].get(v, {}).items())]
  if reasons:
    lines += ['', 'What a variant cannot be asked for (n/a):']
    lines += [f'- {v}, `{group}`: {why}' for v, group, why in reasons]
  return '\n'.join(lines) + '\n'


def draw_chart(study: Study, summary: dict, path: str) -> list[str]:
  """A panel per chart metric: a bar per variant (mean), its 95 % interval, chance dashed."""
  from PIL import Image, ImageDraw
  variants = [v for v in study.variants if v in summary['facts']]
  chart = [m for m in (study.chart or [m for m in summary['metrics'] if m in summary['chance']])
           if m in summary['metrics']]
  if not chart or not variants:
    return []
  bar, gap, height, top, label = 16, 6, 160, 24, 110
  width = 40 + len(variants) * (bar + gap)
  image = Image.new('RGB', (width * len(chart), top + height + label), 'white')
  draw = ImageDraw.Draw(image)
  for p, m in enumerate(chart):
    x0 = p * width + 30
    cells = [summary['table'][m, v] for v in variants]
    values = [c[0] + (0 if math.isnan(c[1]) else c[1]) for c in cells if c is not None]
    scale = max(values + [summary['chance'].get(m, 0.0), 1e-9])
    y = lambda v: top + height - height * max(v, 0.0) / scale
    draw.text((p * width + 4, 4), m[-int(width / 6):], fill='black')
    draw.line([(x0, top), (x0, top + height), (x0 + len(variants) * (bar + gap), top + height)],
              fill='black')
    for i, (v, c) in enumerate(zip(variants, cells)):
      bx = x0 + gap + i * (bar + gap)
      if c is not None:
        mean, half, _ = c
        draw.rectangle([bx, y(mean), bx + bar, top + height], fill=(70, 110, 190))
        if not math.isnan(half):
          cx = bx + bar // 2
          draw.line([(cx, y(mean - half)), (cx, y(mean + half))], fill='black', width=2)
      for j, ch in enumerate(v[:label // 8]):
        draw.text((bx + 4, top + height + 4 + 8 * j), ch, fill='black')
    if m in summary['chance']:
      cy = y(summary['chance'][m])
      for xs in range(x0, x0 + len(variants) * (bar + gap), 6):
        draw.line([(xs, cy), (xs + 3, cy)], fill=(200, 40, 40))
  image.save(path)
  return chart


# ------------------------------------------------------------------------------- main

def study_main(args) -> int:
  study = Study.load(args.config, args.workdir)
  if args.run:
    variant, _, seed = args.run.rpartition('/')
    run_one(study, variant, int(seed), args.steps)
    return 0
  command = f'python -m dvlm_jax.study --config {args.config} --workdir {args.workdir}'
  entries = plan(study)
  print(f'{len(study.variants)} variants x {len(study.seeds)} seeds at the training FLOPs of '
        f'{study.reference!r}:', flush=True)
  for v, e in entries.items():
    print(f'  {v:<24} {e["params"] / 1e6:7.2f}M params  {e["flops_per_step"]:.3g} FLOPs/step'
          f'  {e["steps"]:>6} steps', flush=True)
  if args.plan:
    return 0
  failed = []
  for run in study.runs():
    if finished(run) is not None:
      print(f'{run.name}: done, skipped', flush=True)
      continue
    print(f'{run.name}: training {entries[run.variant]["steps"]} steps in {run.workdir}',
          flush=True)
    if not launch(study, run, entries[run.variant]):
      failed.append(run.name)
  records = {v: [] for v in study.variants}
  for run in study.runs():
    record = finished(run)
    if record is not None:
      records[run.variant].append(record)
  summary = summarise(study, records)
  path = os.path.join(study.workdir, 'study.md')
  with open(path, 'w') as f:
    f.write(write_markdown(study, summary, command))
  drawn = draw_chart(study, summary, os.path.join(study.workdir, 'study.png'))
  print(f'wrote {path}' + (f' and study.png ({len(drawn)} metrics)' if drawn else ''))
  if failed:
    return cli.fail(f'{len(failed)} run(s) failed: {", ".join(failed)} (re-run to retry them)', 1)
  return 0


def main(argv=None) -> int:
  parser = cli.parser('python -m dvlm_jax.study', __doc__)
  parser.add_argument('--config', required=True, help=cli.CONFIG_HELP)
  parser.add_argument('--workdir', required=True, help='root; each run gets WORKDIR/VARIANT/seed_S')
  parser.add_argument('--plan', action='store_true',
                      help='print each variant\'s FLOPs per step and steps, run nothing')
  # One run of the study, in its own process (what the study launches for each run).
  parser.add_argument('--run', default=None, help=argparse.SUPPRESS)
  parser.add_argument('--steps', type=int, default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  from dvlm_jax.data import pipeline
  return cli.guarded(lambda: study_main(args), (pipeline.DataError, FileNotFoundError))


if __name__ == '__main__':
  sys.exit(main())
