"""Attention fwd+bwd on packed VLM rows: the block-sparse kernel vs cuDNN causal vs dense XLA.

  python benchmarks/attention.py [--lengths 2048,4096,8192,16384] [--tokens 16384]
      [--heads 16 --kv_heads 8 --head_dim 128] [--scope document|text|image] [--json out.jsonl]
  python benchmarks/attention.py --smoke        # CPU: tiny sizes, kernel in interpret mode
  python benchmarks/attention.py --stats_only   # the layout's mask statistics only (any host)

Rows are real packed batches: built-in shapes-world documents (text with 256-px images
at 4 scales, dual copy, as in experiments/b1.py) through the sequence layout, so the
mask is the model's own (`--scope document` is the core / out stages' mask, `text` the
text-in stage's, `image` the image-in stage's). Each length gets --tokens // length
rows, so every length moves the same number of tokens.

Per length it prints the mask density (pairs attended / L^2, and the causal mask's for
comparison), the share of (query block, key block) tiles the kernel visits and runs
unmasked, then per implementation: forward and forward+backward time (median), speed
relative to cuDNN causal (or to XLA when cuDNN is not there), useful TFLOP/s (model
FLOPs of the pairs really attended, 3 x 4 * pairs * heads * head_dim for fwd+bwd, as in
docs/flops.md), the compiled program's temporary memory, and the device's peak memory
so far when the backend reports it. Implementations:

  range   dvlm_jax.model.kernels.range_attention (Triton on GPU, interpret mode on CPU)
  tokamax dvlm_jax.model.kernels.tokamax_attention: tokamax flash attention on per-query
          key ranges (Mosaic-GPU on Hopper; tokamax's XLA reference on CPU)
  splash  the splash kernel with per-row masks (TPU only)
  cudnn   jax.nn.dot_product_attention(..., implementation='cudnn', is_causal=True): a
          plain causal flash attention on the same shapes, the speed to beat (GPU only)
  xla     attention.attend with the dense [B, L, L] mask (the model's default path)

Correctness (--check, on by default): every implementation's output and dQ, dK, dV
against XLA attention in float32 on the same bf16 inputs (the cotangent is zero on rows
that see nothing, whose outputs the model discards), as the relative error
||impl - ref|| / ||ref||; bf16 kernels land near 1e-3..1e-2, a wrong mask near 1. The
float32 reference is dense (O(L^2) memory), so it runs up to --check_max_len.

The CPU smoke run proves the script works end to end; its times are not performance.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dvlm_jax import config as cfg_lib  # noqa: E402
from dvlm_jax import contract  # noqa: E402
from dvlm_jax.data import pipeline  # noqa: E402
from dvlm_jax.model import attention  # noqa: E402
from dvlm_jax.model.kernels import range_attention as ra  # noqa: E402
from dvlm_jax.model.kernels import tokamax_attention  # noqa: E402
from dvlm_jax.training import flops  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 1 << 20


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--lengths', default=None, help='default 2048,4096,8192,16384 (smoke: 256,512)')
  p.add_argument('--tokens', type=int, default=16384, help='tokens per call (rows = tokens // length)')
  p.add_argument('--heads', type=int, default=16)
  p.add_argument('--kv_heads', type=int, default=8)
  p.add_argument('--head_dim', type=int, default=128)
  p.add_argument('--dtype', default='bfloat16', choices=('bfloat16', 'float32'))
  p.add_argument('--scope', default='document', choices=('document', 'text', 'image'))
  p.add_argument('--layout', default=os.path.join(ROOT, 'experiments', 'b1.py'),
                 help='experiment whose image settings shape the rows')
  p.add_argument('--warmup', type=int, default=3)
  p.add_argument('--iters', type=int, default=20)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--json', default=None, help='append one JSON line per measurement here')
  p.add_argument('--impls', default='range,tokamax,splash,cudnn,xla',
                 help='comma-separated implementations to run (those the backend has)')
  p.add_argument('--range_blocks', default=None,
                 help='range kernel tiles: block_q,block_k,block_q_bwd,block_k_bwd[,warps,stages]')
  p.add_argument('--check', action=argparse.BooleanOptionalAction, default=True,
                 help='compare values and gradients with float32 XLA (default on)')
  p.add_argument('--check_max_len', type=int, default=8192,
                 help='longest L at which the dense float32 reference runs')
  p.add_argument('--stats_only', action='store_true',
                 help='print the layout statistics (density, tiles) and time nothing')
  p.add_argument('--smoke', action='store_true',
                 help='CPU check: lengths 256,512, 4 heads (2 kv) of 64, tiny.py images, 2 iters')
  args = p.parse_args(argv)
  lengths = args.lengths
  if args.smoke:
    args.lengths, args.tokens, args.heads, args.kv_heads, args.head_dim = '256,512', 512, 4, 2, 64
    args.layout = os.path.join(ROOT, 'experiments', 'tiny.py')
    args.warmup, args.iters = 1, 2
  args.lengths = lengths or args.lengths or '2048,4096,8192,16384'
  return args


# ----------------------------------------------------------------------------- rows

def packed_rows(layout_spec: str, length: int, rows: int, seed: int):
  """A packed batch of built-in documents with the layout settings of `layout_spec`."""
  config = cfg_lib.load(layout_spec, [f'data.seq_len={length}', f'data.batch_size={rows}',
                                      f'data.seed={seed}'])
  return pipeline.first_batch(config)


def stage_inputs(batch, scope: str):
  """(scope ids, attn_end) of one stage's rule over the whole row (`contract.stage_scopes`).
  The model runs text-in and image-in on their own streams (dvlm.stage_rules), where each
  query's keys are one range like the 'document' scope's; 'text' / 'image' here time the
  interleaved scopes."""
  stage = contract.stage_scopes(batch)[{'document': 'core', 'text': 'text_in',
                                        'image': 'image_in'}[scope]]
  return stage.scope, stage.end


def tile_stats(scope, end, blocks: ra.BlockSizes):
  """Shares of forward tiles the kernel visits / runs unmasked, and of causal tiles."""
  schedule = ra.block_schedule(scope, scope, end, blocks.block_q, blocks.block_k)
  nq = len(schedule[0])
  nk = -(-scope.shape[1] // blocks.block_k)
  visited = sum(len(v) for row in schedule for v, _ in row)
  full = sum(len(f) for row in schedule for _, f in row)
  causal = sum(min(nk, -(-((i + 1) * blocks.block_q) // blocks.block_k)) for i in range(nq))
  total = len(schedule) * nq * nk
  return visited / total, full / total, len(schedule) * causal / total


# ----------------------------------------------------------------------- measuring

def range_block_sizes(spec: str | None) -> ra.BlockSizes:
  if not spec:
    return ra.BlockSizes()
  values = [int(x) for x in spec.split(',')]
  names = ('block_q', 'block_k', 'block_q_bwd', 'block_k_bwd', 'num_warps', 'num_stages')
  return ra.BlockSizes(**dict(zip(names, values)))


def implementations(backend: str, blocks: ra.BlockSizes):
  """name -> (fn(q, k, v, scope, end, mask) or None, why not)."""
  range_fn = lambda q, k, v, s, e, m: ra.range_attention(q, k, v, s, s, e, block_sizes=blocks,
                                                         interpret=backend != 'gpu')
  cudnn_fn = lambda q, k, v, s, e, m: jax.nn.dot_product_attention(
      q, k, v, is_causal=True, implementation='cudnn')
  out = {'range': (range_fn, None)}
  out['tokamax'] = (lambda q, k, v, s, e, m: tokamax_attention.tokamax_attention(q, k, v, s, s, e),
                    None)
  if backend == 'tpu':
    from dvlm_jax.model.kernels import splash
    out['splash'] = (lambda q, k, v, s, e, m: splash.splash_attention(q, k, v, s, s, e), None)
  else:
    out['splash'] = (None, 'splash runs on TPUs only')
  out['cudnn'] = (cudnn_fn, None) if backend == 'gpu' else (None, 'cuDNN needs a GPU')
  out['xla'] = (lambda q, k, v, s, e, m: attention.attend(q, k, v, m), None)
  return out


def timed(fn, args, warmup: int, iters: int) -> float:
  """Median seconds of one call (after `warmup` calls, which include the compile)."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def peak_bytes():
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get('peak_bytes_in_use')


def measure(name, fn, inputs, args):
  """Forward and forward+backward of one implementation; a dict of results."""
  q, k, v, scope, end, mask, w = inputs
  fwd = jax.jit(fn)
  # w is an argument, not a closure: a captured array is a constant XLA would fold.
  loss = lambda q, k, v, s, e, m, w: jnp.sum(fn(q, k, v, s, e, m).astype(jnp.float32) * w)
  fwd_bwd = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
  call = (q, k, v, scope, end, mask)
  compiled = fwd_bwd.lower(*call, w).compile()
  grads = compiled(*call, w)
  memory = compiled.memory_analysis()
  result = {'impl': name,
            'temp_mib': None if memory is None else memory.temp_size_in_bytes / MIB}
  result['fwd_ms'] = 1e3 * timed(fwd, call, args.warmup, args.iters)
  result['fwd_bwd_ms'] = 1e3 * timed(compiled, call + (w,), args.warmup, args.iters)
  peak = peak_bytes()
  result['peak_mib'] = None if peak is None else peak / MIB
  result['out'] = fwd(*call)
  result['grads'] = grads
  return result


def reference(inputs):
  """Float32 XLA attention on the same inputs: (out, (dq, dk, dv))."""
  q, k, v, _, _, mask, w = inputs
  f32 = lambda x: x.astype(jnp.float32)
  loss = lambda q, k, v, m, w: jnp.sum(attention.attend(q, k, v, m) * w)
  out = jax.jit(attention.attend)(f32(q), f32(k), f32(v), mask)
  grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(f32(q), f32(k), f32(v), mask, w)
  return out, grads


def relative_errors(result, ref, used):
  """||impl - ref|| / ||ref|| for the output (attended rows) and dQ, dK, dV."""
  def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)), bool(np.isfinite(a).all())
  errors = {'out': rel(np.asarray(result['out'], np.float32)[used], np.asarray(ref[0])[used])}
  for name, g, r in zip(('dq', 'dk', 'dv'), result['grads'], ref[1]):
    errors[name] = rel(g, r)
  return errors


def fmt(x, spec):
  return 'n/a' if x is None else format(x, spec)


def main(argv=None) -> int:
  args = parse_args(argv)
  backend = jax.default_backend()
  dtype = jnp.dtype(args.dtype)
  print(f'backend {backend} ({jax.devices()[0].device_kind}); {args.heads} heads '
        f'({args.kv_heads} kv) of {args.head_dim}, {args.dtype}; scope {args.scope}; '
        f'rows from {os.path.relpath(args.layout, ROOT)}')
  if backend == 'cpu':
    print('CPU: the kernel runs in Pallas interpret mode; times are a smoke test, not performance')
  blocks = range_block_sizes(args.range_blocks)
  wanted = args.impls.split(',')
  impls = {n: f for n, f in implementations(backend, blocks).items() if n in wanted}
  for name, (fn, why) in impls.items():
    if fn is None:
      print(f'skipping {name}: {why}')
  print(f'range kernel tiles: {blocks}')
  for length in (int(x) for x in args.lengths.split(',')):
    rows = max(1, args.tokens // length)
    batch = packed_rows(args.layout, length, rows, args.seed)
    scope, end = stage_inputs(batch, args.scope)
    pairs = float(flops.visible_pairs(scope, end).sum())
    density = pairs / (rows * length * length)
    causal = (length + 1) / (2 * length)
    visited, unmasked, causal_tiles = tile_stats(scope, end, blocks.clipped(length, length))
    useful_flops = 3 * 4 * pairs * args.heads * args.head_dim
    print(f'\nL={length} rows={rows}: mask density {density:.3g} (causal {causal:.3f}, '
          f'{causal / density:.2f}x sparser); kernel visits {visited:.3f} of tiles, '
          f'{unmasked:.3f} unmasked (causal {causal_tiles:.3f})')
    if args.stats_only:
      continue

    ks = jax.random.split(jax.random.key(args.seed), 4)
    q = jax.random.normal(ks[0], (rows, length, args.heads, args.head_dim), dtype)
    k = jax.random.normal(ks[1], (rows, length, args.kv_heads, args.head_dim), dtype)
    v = jax.random.normal(ks[2], (rows, length, args.kv_heads, args.head_dim), dtype)
    scope_j, end_j = jnp.asarray(scope), jnp.asarray(end)
    mask = contract.make_mask(scope_j, scope_j, end_j)
    used = np.asarray(jnp.any(mask, axis=-1))
    # Zero cotangent on rows that see nothing: the model discards them, implementations differ.
    w = jax.random.normal(ks[3], q.shape, jnp.float32) * used[:, :, None, None]
    inputs = (q, k, v, scope_j, end_j, mask, w)

    results = []
    for name, (fn, _) in impls.items():
      if fn is None:
        continue
      try:
        results.append(measure(name, fn, inputs, args))
      except Exception as e:  # noqa: BLE001 - an OOM at 16k is a result, not a crash
        message = str(e).splitlines()[0][:160]
        print(f'  {name:6s} failed: {type(e).__name__}: {message}')
    base = next((r for r in results if r['impl'] == 'cudnn'), None) or next(
        (r for r in results if r['impl'] == 'xla'), None)
    print(f'  {"impl":6s} {"fwd ms":>10s} {"fwd+bwd ms":>11s} {"vs " + (base["impl"] if base else "-"):>9s} '
          f'{"TFLOP/s":>8s} {"temp MiB":>9s} {"peak MiB":>9s}')
    for r in results:
      ratio = base['fwd_bwd_ms'] / r['fwd_bwd_ms'] if base else None
      tflops = useful_flops / (r['fwd_bwd_ms'] * 1e-3) / 1e12
      print(f'  {r["impl"]:6s} {r["fwd_ms"]:10.3f} {r["fwd_bwd_ms"]:11.3f} '
            f'{fmt(ratio, ".2f") + "x":>9s} {tflops:8.3g} {fmt(r["temp_mib"], "9.1f")} '
            f'{fmt(r["peak_mib"], "9.1f")}')
      if args.json:
        with open(args.json, 'a') as f:
          f.write(json.dumps({
              'backend': backend, 'device': jax.devices()[0].device_kind, 'length': length,
              'rows': rows, 'heads': args.heads, 'kv_heads': args.kv_heads,
              'head_dim': args.head_dim, 'dtype': args.dtype, 'scope': args.scope,
              'density': density, 'tiles_visited': visited, 'smoke': args.smoke,
              **{key: r[key] for key in ('impl', 'fwd_ms', 'fwd_bwd_ms', 'temp_mib', 'peak_mib')},
              'useful_tflops': tflops}) + '\n')
    if args.check and length <= args.check_max_len:
      ref = reference(inputs)
      for r in results:
        if r['impl'] == 'cudnn':   # cuDNN computes a plain causal mask: nothing to check
          continue
        errors = relative_errors(r, ref, used)
        finite = all(ok for _, ok in errors.values())
        text = ' '.join(f'{k} {v:.2e}' for k, (v, _) in errors.items())
        print(f'  check {r["impl"]:7s} vs float32 xla: {text}{"" if finite else "  NON-FINITE"}')
        if args.json:
          with open(args.json, 'a') as f:
            f.write(json.dumps({'check': r['impl'], 'length': length, 'scope': args.scope,
                                'device': jax.devices()[0].device_kind, 'finite': finite,
                                **{k: v for k, (v, _) in errors.items()}}) + '\n')
      del ref
  return 0


if __name__ == '__main__':
  sys.exit(main())
