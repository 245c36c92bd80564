"""Training-step throughput: tokens/s, TFLOP/s per device, MFU and peak memory.

  python benchmarks/train_step.py [--config experiments/b1.py] [--batch_size 4]
      [--remat none|full|dots] [--dtype bfloat16|float32] [--attention xla|pallas_gpu]
      [--steps 10] [--warmup 3] [--json out.jsonl] [--config.KEY=VALUE ...]
  python benchmarks/train_step.py --smoke      # experiments/tiny.py on CPU

Runs the real train step (`dvlm_jax.training.step`: sharded init, jitted step with
donated state) on built-in packed batches of the config (b1: rows of 4096 tokens with
256-px images at 4 scales). --batch_size is the global number of rows (b1's own 256
rows do not fit one GPU); --remat / --dtype / --attention override the config's
model.remat / model.dtype / model.attention. Batches are built before timing, so host
data work is not in the step time.

Prints per measured step the time, and at the end the median step time and:
  tokens/s          non-padding tokens per second (and row slots per second)
  TFLOP/s/device    `flops.train_step_flops` of the batches (each token through the
                    blocks it uses, attention at its real mask density; docs/flops.md)
                    over the measured time, divided by the number of devices
  MFU               that over `flops.peak_flops_per_device` (n/a when unknown, e.g. CPU)
  peak memory       the device's peak_bytes_in_use when the backend reports it (GPU, TPU),
                    else the compiled step's argument + output + temporary bytes
The CPU smoke run proves the script works; its figures are not performance.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dvlm_jax import cli  # noqa: E402
from dvlm_jax import config as cfg_lib  # noqa: E402
from dvlm_jax import sharding  # noqa: E402
from dvlm_jax.data import pipeline  # noqa: E402
from dvlm_jax.model.dvlm import DreamVLM  # noqa: E402
from dvlm_jax.model.layers import ModelConfig  # noqa: E402
from dvlm_jax.training import flops  # noqa: E402
from dvlm_jax.training import optimizer as optim_lib  # noqa: E402
from dvlm_jax.training import step as step_lib  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 1 << 30


def parse_args(argv):
  rest, overrides = cli.split_overrides(argv)
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--config', default=os.path.join(ROOT, 'experiments', 'b1.py'))
  p.add_argument('--batch_size', type=int, default=4, help='global rows per step')
  p.add_argument('--remat', choices=('none', 'full', 'dots'), default=None)
  p.add_argument('--dtype', choices=('bfloat16', 'float32'), default=None)
  p.add_argument('--attention', default=None, help='model.attention (xla | pallas_gpu | ...)')
  p.add_argument('--steps', type=int, default=10, help='measured steps')
  p.add_argument('--warmup', type=int, default=3, help='steps before timing (compile included)')
  p.add_argument('--json', default=None, help='append the summary as one JSON line here')
  p.add_argument('--smoke', action='store_true', help='experiments/tiny.py, 3 steps (CPU check)')
  args = p.parse_args(rest)
  if args.smoke:
    args.config = os.path.join(ROOT, 'experiments', 'tiny.py')
    args.steps, args.warmup = 3, 1
  for key, value in (('model.remat', args.remat), ('model.dtype', args.dtype),
                     ('model.attention', args.attention), ('data.batch_size', args.batch_size)):
    if value is not None:
      overrides.insert(0, f'{key}={value}')
  return args, overrides


def memory_bytes(run, state, batch, rng):
  """Device peak when reported; else the compiled step's memory (one more compile,
  `dvlm_jax.compile.report`'s total: args + outputs + temp - donated)."""
  stats = jax.devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    return stats['peak_bytes_in_use'], 'device peak_bytes_in_use'
  m = run.lower(state, batch, rng).compile().memory_analysis()
  if m is None:
    return None, 'not reported'
  return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
          - m.alias_size_in_bytes), 'compiled memory analysis (args + outputs + temp - donated)'


def main(argv=None) -> int:
  args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
  config = cfg_lib.load(args.config, overrides)
  devices = jax.devices()
  ctx = sharding.Context.from_config(config)
  m = config.model
  print(f'{os.path.relpath(args.config, ROOT)} on {len(devices)} x {devices[0].device_kind} '
        f'({jax.default_backend()}): {config.data.batch_size} x {config.data.seq_len} tokens, '
        f'dtype {m.dtype}, remat {m.remat}, attention {m.attention}, mesh {dict(ctx.mesh.shape)}')
  if jax.default_backend() == 'cpu':
    print('CPU: a smoke test of the benchmark, not performance')

  model = DreamVLM(ModelConfig.from_config(config))
  optimizer = optim_lib.make_optimizer(config)
  stream = pipeline.batches_for(config, process_index=0, process_count=1)
  local = [next(stream) for _ in range(args.warmup + args.steps)]
  init_rng, step_rng = jax.random.split(jax.random.key(config.train.seed))
  state, shardings = step_lib.init_state(model, optimizer, local[0], init_rng, ctx)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  print(f'{n_params / 1e6:.1f}M parameters')
  run = step_lib.configured_train_step(config, model, optimizer, shardings, ctx)

  times, step_flops, tokens = [], [], []
  for i, batch in enumerate(local):
    global_batch = ctx.global_batch(batch)
    start = time.perf_counter()
    state, metrics = run(state, global_batch, step_rng)
    jax.block_until_ready((state, metrics))
    seconds = time.perf_counter() - start
    measured = i >= args.warmup
    if measured:
      times.append(seconds)
      step_flops.append(flops.train_step_flops(config, batch))
      tokens.append(int(np.count_nonzero(batch['segment_ids'])))
    print(f'step {i + 1}{"" if measured else " (warmup)"}: {seconds * 1e3:.1f} ms, '
          f'loss {float(metrics["loss"]):.4f}')

  peak, peak_source = memory_bytes(run, state, ctx.global_batch(local[0]), step_rng)
  total = sum(times)
  tflops = sum(step_flops) / total / len(devices) / 1e12
  peak_flops = flops.peak_flops_per_device(devices[0])
  mfu = None if peak_flops is None else tflops * 1e12 / peak_flops
  slots = config.data.batch_size * config.data.seq_len
  summary = {
      'config': os.path.relpath(args.config, ROOT), 'overrides': overrides,
      'backend': jax.default_backend(), 'device': devices[0].device_kind,
      'devices': len(devices), 'batch_size': config.data.batch_size,
      'seq_len': config.data.seq_len, 'dtype': m.dtype, 'remat': m.remat,
      'attention': m.attention, 'params_m': n_params / 1e6,
      'step_ms_median': 1e3 * statistics.median(times),
      'tokens_per_s': sum(tokens) / total, 'slots_per_s': slots * len(times) / total,
      'tflops_per_device': tflops, 'mfu': mfu,
      'peak_gib': None if peak is None else peak / GIB, 'peak_source': peak_source,
      'smoke': args.smoke}
  print(f'median step {summary["step_ms_median"]:.1f} ms | {summary["tokens_per_s"]:,.0f} tokens/s '
        f'({summary["slots_per_s"]:,.0f} row slots/s) | {tflops:.3g} TFLOP/s per device | MFU '
        f'{"n/a (peak unknown)" if mfu is None else f"{100 * mfu:.1f} %"} | peak memory '
        f'{"n/a" if peak is None else f"{peak / GIB:.2f} GiB"} ({peak_source})')
  if args.json:
    with open(args.json, 'a') as f:
      f.write(json.dumps(summary) + '\n')
  return 0


if __name__ == '__main__':
  sys.exit(main())
