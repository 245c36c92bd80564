"""Where a training step's time goes: the device step by model stage and kind of op, and the
host's work per step beside it.

  python benchmarks/step_profile.py [--config experiments/small.py] [--steps 3]
      [--top 12] [--config.KEY=VALUE ...]

Runs the real train step (`dvlm_jax.training.step`) on the config's own batches under
`jax.profiler`, maps every executed XLA op back to the JAX source that emitted it (the
compiled HLO's `op_name` metadata) and prints, per step:
  - the time of each model stage (text_in, image_in, core, the out stacks, the diffusion
    head, the optimizer and the rest), forward and backward apart, with its share;
  - the op kinds that cost most (dot_general, transpose, reduce_sum, ...) over all stages;
  - the host's work per step that the training loop does besides the step: the next batch
    from the data pipeline (decode, layout, packing) and the device transfer.
On CPU the device step is XLA's thread pool on the same cores as the host work, so the
two add up; on an accelerator the host work overlaps the step (async dispatch).
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dvlm_jax import cli  # noqa: E402
from dvlm_jax import config as cfg_lib  # noqa: E402
from dvlm_jax import sharding  # noqa: E402
from dvlm_jax.data import pipeline  # noqa: E402
from dvlm_jax.model.dvlm import DreamVLM  # noqa: E402
from dvlm_jax.model.layers import ModelConfig  # noqa: E402
from dvlm_jax.training import optimizer as optim_lib  # noqa: E402
from dvlm_jax.training import step as step_lib  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ('text_in', 'image_in', 'core', 'text_out', 'imun_out', 'imgen_out', 'denoiser')


def op_sources(hlo_text: str) -> dict[str, str]:
  """HLO instruction name -> the JAX op_name that emitted it."""
  found = {}
  for line in hlo_text.splitlines():
    m = re.match(r'\s*(?:ROOT )?%?([\w.\-]+) = .*?op_name="([^"]*)"', line)
    if m:
      found.setdefault(m.group(1), m.group(2))
  return found


def stage_of(op_name: str) -> str:
  parts = op_name.split('/')
  stage = next((p for p in parts if p in STAGES), None)
  if stage is None:
    stage = 'optimizer' if 'DreamVLM' not in op_name else 'model (other)'
  return f'{stage} {"bwd" if "transpose(jvp" in op_name else "fwd"}'


def main(argv=None) -> int:
  rest, overrides = cli.split_overrides(sys.argv[1:] if argv is None else argv)
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--config', default=os.path.join(ROOT, 'experiments', 'small.py'))
  p.add_argument('--steps', type=int, default=3, help='profiled steps (after 2 warm-up steps)')
  p.add_argument('--top', type=int, default=12, help='op kinds to list')
  args = p.parse_args(rest)
  config = cfg_lib.load(args.config, overrides)
  ctx = sharding.Context.from_config(config)
  model = DreamVLM(ModelConfig.from_config(config))
  optimizer = optim_lib.make_optimizer(config)
  stream = pipeline.batches_for(config, process_index=0, process_count=1)
  next(stream)   # the pipeline's start-up (workers, first reads) is not per-step work
  start = time.perf_counter()
  local = [next(stream) for _ in range(2 + args.steps)]
  data_ms = (time.perf_counter() - start) / len(local) * 1e3
  init_rng, step_rng = jax.random.split(jax.random.key(config.train.seed))
  state, shardings = step_lib.init_state(model, optimizer, local[0], init_rng, ctx)
  run = step_lib.configured_train_step(config, model, optimizer, shardings, ctx)
  start = time.perf_counter()
  batches = [ctx.global_batch(b) for b in local]
  jax.block_until_ready(batches)
  transfer_ms = (time.perf_counter() - start) / len(local) * 1e3
  for batch in batches[:2]:
    state, _ = run(state, batch, step_rng)
  jax.block_until_ready(state)

  trace_dir = tempfile.mkdtemp(prefix='step_profile_')
  jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
  start = time.perf_counter()
  for batch in batches[2:]:
    state, _ = run(state, batch, step_rng)
    jax.block_until_ready(state)
  step_ms = (time.perf_counter() - start) / args.steps * 1e3
  jax.profiler.stop_trace()
  sources = op_sources(run.lower(state, batches[0], step_rng).compile().as_text())
  with gzip.open(glob.glob(f'{trace_dir}/**/*.trace.json.gz', recursive=True)[0]) as f:
    events = json.load(f)
  events = events['traceEvents'] if isinstance(events, dict) else events
  by_stage, by_kind = collections.Counter(), collections.Counter()
  for e in events:   # executed XLA ops are the trace events named like HLO instructions
    if e.get('ph') == 'X' and e.get('name') in sources:
      op_name = sources[e['name']]
      by_stage[stage_of(op_name)] += e.get('dur', 0) / 1e3 / args.steps
      by_kind[op_name.split('/')[-1]] += e.get('dur', 0) / 1e3 / args.steps
  attributed = sum(by_stage.values())

  print(f'{os.path.relpath(args.config, ROOT)} on {jax.device_count()} x '
        f'{jax.devices()[0].device_kind}: {config.data.batch_size} x {config.data.seq_len} '
        f'tokens; step {step_ms:.1f} ms (profiled), {attributed:.1f} ms in XLA ops')
  print('\nstage (fwd / bwd incl. recompute)     ms/step   share')
  for name, ms in sorted(by_stage.items(), key=lambda kv: -kv[1]):
    print(f'  {name:34s} {ms:8.1f} {ms / attributed:7.1%}')
  print(f'\nop kinds (top {args.top})                ms/step   share')
  for name, ms in by_kind.most_common(args.top):
    print(f'  {name[:34]:34s} {ms:8.1f} {ms / attributed:7.1%}')
  print('\nhost work per step beside it           ms/step')
  print(f'  next batch (data pipeline)         {data_ms:8.1f}')
  print(f'  device transfer (global_batch)      {transfer_ms:8.1f}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
