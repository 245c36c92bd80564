"""Ahead-of-time compile of the train step (and the inference programs): memory, FLOPs,
and on a TPU slice the compiler's step-time estimate; nothing runs.

  python -m dvlm_jax.compile --config experiments/b1.py[:arg] [--config.a.b=v ...]
      [--topology v5p-32 [--num_slices N]] [--program train|decode|generate|all]
      [--memory_budget_gib N]

Without --topology: the configured mesh over the visible devices (on a CPU, fake ones:
XLA_FLAGS=--xla_force_host_platform_device_count=8). With --topology: the devices of that
TPU pod slice (`dvlm_jax.topology`: v5p-32, v5e-16, v5e:4x4, v4-8, v6e-256, ...), compiled
by the TPU compiler on this host (libtpu, no TPU needed), attention through the splash
kernels as on the TPU. Either way the programs are the ones the commands run, from
abstract shapes (jax.ShapeDtypeStruct: no parameter is materialised):

  train     the train step the train command jits (`step.configured_train_step`)
  decode    KV-cache text decoding (`inference.text._decode`: prefill, then 1-token steps)
  generate  one next-scale generation pass at the finest scale (`inference.images._chunk`:
            the cached forward pass, then `_draw`: that scale's diffusion sampling)

Per device: arguments, outputs, temporaries, donated buffers and their total (the peak
the program needs); the FLOPs XLA counts; on a TPU slice the compiler's step-time
estimate and the MFU it implies for the model's useful FLOPs (docs/flops.md) against the
chip's bf16 peak. A program over the chip's HBM (or over --memory_budget_gib) exits 2
with one line naming what to change.
"""

from __future__ import annotations

import copy
import functools
import re
import sys

import jax
import numpy as np

from dvlm_jax import cli
from dvlm_jax import config as cfg_lib
from dvlm_jax.errors import ConfigError

GIB = 1 << 30
PROGRAMS = ('train', 'decode', 'generate')
USEFUL_SAMPLE_ROWS = 8   # rows of real data the useful FLOPs per row are measured on


def parse_args(argv):
  parser = cli.parser('python -m dvlm_jax.compile', __doc__)
  parser.add_argument('--config', required=True, help=cli.CONFIG_HELP)
  parser.add_argument('--topology', default=None,
                      help='a TPU pod slice to compile for: v5p-32, v5e-16, v5e:4x4, v4-8, ...')
  parser.add_argument('--num_slices', type=int, default=1,
                      help='slices joined over DCN (the mesh.data axis spans them)')
  parser.add_argument('--program', choices=PROGRAMS + ('all',), default='train')
  parser.add_argument('--memory_budget_gib', type=float, default=None,
                      help='fail (exit 2) when a device needs more than this')
  return cli.parse(parser, argv)


class OverMemory(ConfigError):
  """The compiler found the program larger than the chip's memory."""


# ------------------------------------------------------------------------ the programs

def _setup(config, devices):
  from dvlm_jax import sharding
  from dvlm_jax.data import layout
  from dvlm_jax.model.dvlm import DreamVLM
  from dvlm_jax.model.layers import ModelConfig
  from dvlm_jax.training import optimizer as optim_lib
  from dvlm_jax.training import step as step_lib
  devices = list(devices if devices is not None else jax.devices())
  sharding.check(config, len(devices), len({d.process_index for d in devices}))
  ctx = sharding.Context.from_config(config, devices)
  model = DreamVLM(ModelConfig.from_config(config))
  optimizer = optim_lib.make_optimizer(config)
  spec = layout.LayoutConfig.from_config(config).batch_spec(config.data.batch_size)
  batch = {k: jax.ShapeDtypeStruct(shape, dtype, sharding=ctx.batch_sharding)
           for k, (shape, dtype) in spec.items()}
  rng = jax.random.key(config.train.seed)
  state, shardings = step_lib.abstract_state(model, optimizer, batch, rng, ctx,
                                             ema=config.optim.ema_decay > 0)
  return ctx, model, optimizer, batch, rng, state, shardings


def _compile(lowered):
  """lowered.compile(); the TPU compiler's out-of-memory error becomes OverMemory."""
  try:
    return lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    text = str(e)
    if 'RESOURCE_EXHAUSTED' not in text and 'Ran out of memory' not in text:
      raise
    used = re.search(r'Used (\S+) of (\S+) hbm', text)
    raise OverMemory(f'needs {used.group(1)} of the chip\'s {used.group(2)} HBM' if used
                     else 'does not fit the chip\'s HBM') from None


def compile_train_step(config, devices=None):
  """(the compiled train step of `config`, its mesh) over `devices` (default: visible)."""
  from dvlm_jax.training import step as step_lib
  ctx, model, optimizer, batch, rng, state, shardings = _setup(config, devices)
  train_step = step_lib.configured_train_step(config, model, optimizer, shardings, ctx)
  return _compile(train_step.lower(state, batch, jax.eval_shape(lambda: rng))), ctx.mesh


def _params_and_rows(config, devices, rows_wanted: int):
  from dvlm_jax.inference import text as text_lib
  ctx, model, _, _, _, state, _ = _setup(config, devices)
  return ctx, model, state.params, text_lib.row_bucket(rows_wanted, ctx)


def _abstract_cache(ctx, model, batch):
  """The KV cache's shapes, split over rows like the batch ([..., B, L, kv heads, dim])."""
  from jax.sharding import NamedSharding, PartitionSpec as P
  from dvlm_jax.inference import text as text_lib
  rows = ctx.batch_sharding.spec[0] if ctx.batch_sharding.spec else None
  with ctx.scope():
    shapes = jax.eval_shape(lambda: text_lib.empty_cache(model, batch))
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=NamedSharding(
      ctx.mesh, P(*([None] * (s.ndim - 4)), rows))), shapes)


def compile_decode(config, devices=None):
  """The text decode program (prefill + while loop of 1-token KV-cache steps) for
  eval.batch_size rows of data.seq_len, eval.max_new_tokens of them new."""
  from dvlm_jax.data import layout, pipeline
  from dvlm_jax.inference import text as text_lib
  ctx, model, params, rows = _params_and_rows(config, devices, config.eval.batch_size)
  length = config.data.seq_len
  max_new = min(config.eval.max_new_tokens, length - 1)
  spec = layout.batch_spec(layout.LayoutConfig.from_config(config), rows)
  batch = {k: jax.ShapeDtypeStruct(shape, dtype, sharding=ctx.batch_sharding)
           for k, (shape, dtype) in spec.items()}
  scalar = lambda dtype: jax.ShapeDtypeStruct((), dtype, sharding=ctx.replicated)
  rng = jax.eval_shape(lambda: jax.random.key(0))
  with ctx.scope():
    lowered = text_lib._decode.lower(
        params, batch, rng, scalar(np.int32), scalar(np.float32), scalar(np.int32),
        scalar(np.float32), model=model, tokenizer_size=pipeline.load_tokenizer(config).vocab_size,
        prompt_end=length - max_new, keep_logits=False)
  return _compile(lowered), ctx.mesh


def compile_generate(config, devices=None):
  """One next-scale pass at the finest scale, as text-to-image runs it with guidance:
    the cached chunk U_{K-1} <scale_K> M_K (conditions at M_K's positions), then the
    diffusion sampling of scale K. Returns ([compiled chunk, compiled draw], mesh)."""
  from dvlm_jax.data import layout, pipeline
  from dvlm_jax.inference import images, sequence
  from dvlm_jax.model.diffusion import DiffusionObjective
  ctx, model, params, rows = _params_and_rows(config, devices, config.eval.batch_size)
  cfg = layout.LayoutConfig.from_config(config)
  generator = images.ImageGenerator(model, config, pipeline.load_tokenizer(config), ctx)
  blank = sequence.blank_image(cfg)
  host = generator._rows([['a picture', blank]] * rows + [[blank]] * rows)   # + unconditional
  slots = sequence.image_slots(host, cfg.target_shift)
  k = len(cfg.scales) - 1
  start, n = slots.passes()[k]
  size = slots.sizes[k]
  put = lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
  batch = {key: put(v, ctx.batch_sharding) for key, v in host.items()}
  cache = _abstract_cache(ctx, model, batch)
  with ctx.scope():
    chunk = _compile(images._chunk.lower(params, cache, batch, model=model, start=start, n=n,
                                         pred_at=slots.predicting(k), size=size))
    cond_shape, pred_shape = jax.eval_shape(
        functools.partial(images._chunk, model=model, start=start, n=n,
                          pred_at=slots.predicting(k), size=size), params, cache, batch)[:2]
    objective = DiffusionObjective.from_config(config)
    f32 = lambda shape, dtype=np.float32: jax.ShapeDtypeStruct(shape, dtype,
                                                               sharding=ctx.batch_sharding)
    patch = (rows, size, cfg.patch_dim)
    pred = None if pred_shape is None else f32((rows,) + pred_shape.shape[1:])
    scalar = jax.ShapeDtypeStruct((), np.float32, sharding=ctx.replicated)
    draw = _compile(images._draw.lower(
        params, put(cond_shape, ctx.batch_sharding), pred, f32(patch), f32((rows, size), bool),
        f32(patch), jax.eval_shape(lambda: jax.random.key(0)), scalar, scalar, model=model,
        objective=objective, norm_pix=bool(config.model.imun_norm_pix),
        steps=config.eval.sample_steps or objective.sample_steps, guided=True))
  return [chunk, draw], ctx.mesh


# ------------------------------------------------------------------------ the report

def memory(compiled) -> dict[str, int]:
  m = compiled.memory_analysis()
  out = {'arguments': m.argument_size_in_bytes, 'outputs': m.output_size_in_bytes,
         'temporaries': m.temp_size_in_bytes, 'donated': m.alias_size_in_bytes}
  out['total'] = out['arguments'] + out['outputs'] + out['temporaries'] - out['donated']
  return out


def cost(compiled) -> dict[str, float]:
  c = compiled.cost_analysis()
  return dict((c[0] if isinstance(c, list) else c) or {})


def implemented_train_flops(config) -> float:
  """Training FLOPs of one step as the model computes it (docs/flops.md, every slot)."""
  from dvlm_jax.training import flops
  return flops.TRAIN_FACTOR * sum(flops.implemented_stage_flops(
      config, config.data.batch_size).values())


def useful_train_flops(config) -> tuple[float, str]:
  """(useful training FLOPs of one step, how they were counted): docs/flops.md on
  USEFUL_SAMPLE_ROWS rows of the config's own data, scaled to data.batch_size; the
  implemented count (every slot) when the data cannot be read here."""
  from dvlm_jax.data import pipeline
  from dvlm_jax.training import flops
  rows = min(USEFUL_SAMPLE_ROWS, config.data.batch_size)
  sample = copy.deepcopy(config)   # ConfigDict(config) would share config.data
  sample.data.batch_size = rows
  try:
    batch = pipeline.first_batch(sample)
  except (OSError, ValueError) as e:   # data not built here: what the model computes instead
    return implemented_train_flops(config), f'implemented, data unreadable here ({type(e).__name__})'
  per_row = flops.train_step_flops(config, batch) / rows
  return per_row * config.data.batch_size, f'useful, {rows} rows of the data'


def report(name: str, parts, config, devices, chip=None,
           budget_gib: float | None = None) -> tuple[list[str], str | None]:
  """(lines to print, the error line when over the budget or the chip) of one program,
  compiled as one or more executables (`parts`, run one after the other)."""
  parts = parts if isinstance(parts, list) else [parts]
  mems = [memory(p) for p in parts]
  costs = [cost(p) for p in parts]
  mem = {k: max(m[k] for m in mems) for k in mems[0]}   # one at a time: the larger
  gib = lambda n: f'{n / GIB:.3f} GiB'
  counted = sum(float(c.get('flops', 0.0)) for c in costs)
  kind = devices[0].device_kind
  lines = [f'{name}: per device ({len(devices)} x {kind})',
           f'  arguments     {gib(mem["arguments"])}',
           f'  outputs       {gib(mem["outputs"])}',
           f'  temporaries   {gib(mem["temporaries"])}',
           f'  donated       {gib(mem["donated"])} (outputs written into arguments)',
           f'  total         {gib(mem["total"])}' + (
               f' of {chip.hbm_bytes / GIB:g} GiB HBM per chip' if chip else ''),
           f'  FLOPs (XLA)   {counted / 1e9:.4g} GFLOP per device'
           + (' (a scanned layer stack is counted once)' if config.model.scan_layers else '')]
  if name == 'train':
    implemented = implemented_train_flops(config) / len(devices)
    lines.append(f'  FLOPs (docs/flops.md, as implemented) {implemented / 1e9:.4g} GFLOP '
                 'per device')
  seconds = sum(float(c.get('optimal_seconds', 0.0)) for c in costs)
  if chip:
    lines += step_time_lines(name, seconds, counted, config, devices)
  error = None
  limits = ([(chip.hbm_bytes, f'{gib(chip.hbm_bytes)} of HBM')] if chip else []) + (
      [(budget_gib * GIB, f'--memory_budget_gib {budget_gib:g}')] if budget_gib is not None else [])
  over = [text for limit, text in limits if mem['total'] > limit]
  if over:
    error = over_memory_line(name, f'needs {gib(mem["total"])} per device > {over[0]}', config)
  return lines, error


def step_time_lines(name: str, seconds: float, counted: float, config, devices) -> list[str]:
  """XLA's step-time estimate and, for the train step, the MFU it implies.

  XLA's cost model counts a while loop's body once, so a scanned layer stack (and
  gradient accumulation) is in its seconds and FLOPs once: the estimate is scaled by
  docs/flops.md's FLOPs over XLA's count (each FLOP taking the time of the counted ones).
  """
  from dvlm_jax.training import flops
  label = 'compiler estimate, not a TPU run'
  if seconds <= 0 or counted <= 0:
    return [f'  step time     n/a (XLA gave no estimate: {seconds:.3g} s)']
  lines = [f'  step time     {seconds * 1e3:.1f} ms as XLA counts it ({label})']
  if name != 'train':
    return lines
  implemented = implemented_train_flops(config) / len(devices)
  scale = max(1.0, implemented / counted)
  seconds *= scale
  lines.append(f'  step time     {seconds * 1e3:.1f} ms with every layer ({label}: x{scale:.2f}, '
               'docs/flops.md over XLA\'s FLOPs)')
  peak = flops.peak_flops_per_device(devices[0])
  if peak:
    useful, how = useful_train_flops(config)
    mfu = useful / len(devices) / seconds / peak
    lines.append(f'  MFU           {100 * mfu:.1f} % ({label}; {useful / len(devices) / 1e12:.4g} '
                 f'TFLOP per device, {how}; peak {peak / 1e12:g} TFLOP/s)')
  return lines


def over_memory_line(name: str, need: str, config) -> str:
  """The one line of a program that does not fit (`need`: by how much): what to change."""
  if name == 'train':
    fixes = ('lower data.batch_size (or raise train.grad_accum_steps)'
             + ('' if config.model.remat == 'full' else ', set model.remat=full')
             + ', or shard further (a larger slice, mesh.tensor)')
  else:
    fixes = 'lower eval.batch_size, or shard further (a larger slice, mesh.tensor)'
  return f'the {name} program {need}: {fixes}'


def run(args, overrides) -> int:
  from dvlm_jax import topology
  config = cfg_lib.load(args.config, overrides)
  chip = devices = None
  if args.topology:
    chip = topology.parse(args.topology, args.num_slices)
    devices = chip.devices()
  elif args.num_slices != 1:
    return cli.fail('--num_slices needs --topology')
  devices = devices or jax.devices()
  where = chip.name if chip else f'{len(devices)} x {devices[0].device_kind}'
  names = PROGRAMS if args.program == 'all' else (args.program,)
  print(f'{args.config} on {where}: {config.data.batch_size} x {config.data.seq_len} tokens '
        f'per train step, remat {config.model.remat}', flush=True)
  for i, name in enumerate(names):
    compiler = {'train': compile_train_step, 'decode': compile_decode,
                'generate': compile_generate}[name]
    try:
      compiled, mesh = compiler(config, devices)
    except OverMemory as e:
      return cli.fail(over_memory_line(name, str(e), config))
    if i == 0:
      print(f'mesh {dict(mesh.shape)}')
    lines, error = report(name, compiled, config, devices, chip, args.memory_budget_gib)
    print('\n'.join(lines), flush=True)
    if error:
      return cli.fail(error)
  return 0


def main(argv=None) -> int:
  args, overrides = parse_args(argv)
  return cli.guarded(lambda: run(args, overrides))


if __name__ == '__main__':
  sys.exit(main())
