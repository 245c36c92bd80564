"""Pretraining command.

  python -m dvlm_jax.train --config experiments/tiny.py[:arg] --workdir DIR [--config.a.b=v ...]

Reads top to bottom: processes, config, mesh, model, data, state (restored when DIR has a
checkpoint), loop. Re-running the same command in the same DIR resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

import jax
import numpy as np

from dvlm_jax import cli
from dvlm_jax import config as cfg_lib
from dvlm_jax.errors import ConfigError
from dvlm_jax import distributed, sharding
from dvlm_jax.data import decode, layout, pipeline
from dvlm_jax.evaluation import runner as eval_runner
from dvlm_jax.model.dvlm import DreamVLM
from dvlm_jax.model.layers import ModelConfig
from dvlm_jax.training import checkpoints, flops, metrics as metrics_lib, run_dir
from dvlm_jax.training import optimizer as optim_lib
from dvlm_jax.training import step as step_lib


class NonFiniteError(RuntimeError):
  """Too many steps in a row with a non-finite loss or gradient."""


def parse_args(argv):
  """--config PATH[:ARG], --workdir DIR, and any number of --config.KEY=VALUE overrides."""
  parser = cli.parser('python -m dvlm_jax.train', __doc__)
  parser.add_argument('--config', required=True, help=cli.CONFIG_HELP)
  parser.add_argument('--workdir', required=True, help='run directory (created; resumed)')
  return cli.parse(parser, argv)


def open_workdir(config, workdir: str) -> run_dir.Lock:
  """Checks that need no compile: the workdir is usable and ours alone, the mesh divides
  everything, and its checkpoints (if any) were trained under this config. Raises
  RunDirError / ConfigError with one line; on any failure nothing in DIR has changed."""
  sharding.check(config, jax.device_count(), jax.process_count())
  main_process = jax.process_index() == 0
  lock = run_dir.Lock(workdir)
  failure = ''
  if main_process:
    try:
      run_dir.prepare(workdir)
      note = lock.acquire()
      if note:
        logging.getLogger(__name__).warning('%s', note)
      if checkpoints.complete_steps(os.path.join(workdir, 'checkpoints')):
        run_dir.check_resume(workdir, config, jax.process_count())
    except run_dir.RunDirError as e:
      lock.release()
      failure = str(e)
  failure = distributed.broadcast_text(failure)   # every process stops, or none
  if failure:
    raise run_dir.RunDirError(failure)
  return lock


def print_eval_summary(workdir: str, step: int) -> None:
  """The final evaluation as a table (metric, value, chance) and where its pictures are."""
  with open(eval_runner.record_path(workdir, step)) as f:
    record = json.load(f)
  print(eval_runner.summary_table(record['metrics'], record['chance'],
                                  record.get('not_applicable')))
  for path in record['grids'].values():
    print(f'  grid: {path}')


def train(config, workdir: str) -> dict[str, float]:
  """Trains to `config.train.steps`, resuming from DIR's checkpoints; returns the last metrics."""
  main_process = jax.process_index() == 0
  lock = open_workdir(config, workdir)
  try:
    return _train(config, workdir, main_process)
  finally:
    lock.release()


def _train(config, workdir: str, main_process: bool) -> dict[str, float]:
  ctx = sharding.Context.from_config(config)   # the mesh and rules every program runs under

  model = DreamVLM(ModelConfig.from_config(config))
  data = pipeline.batches_for(config)                   # this process's rows, checkpointable
  layout_cfg = layout.LayoutConfig.from_config(config)
  batch_spec = layout_cfg.batch_spec(config.data.batch_size)
  batch_spec = {k: jax.ShapeDtypeStruct(shape, dtype) for k, (shape, dtype) in batch_spec.items()}

  optimizer = optim_lib.make_optimizer(config)
  init_rng, step_rng = jax.random.split(jax.random.key(config.train.seed))
  ema = config.optim.ema_decay > 0
  ckpt = checkpoints.Checkpointer(workdir, config)
  abstract, state_shardings = step_lib.abstract_state(model, optimizer, batch_spec, init_rng,
                                                      ctx, ema=ema)
  if config.checkpoint.restore == 'params_only':   # new optimizer and data from these weights
    state, _ = step_lib.init_state(model, optimizer, batch_spec, init_rng, ctx, ema=ema)
    params, start = ckpt.restore_params_only(abstract.params)
    if params is not None:
      state = state.replace(params=params, step=jax.numpy.asarray(start, state.step.dtype))
  else:
    state, start = ckpt.restore_latest(abstract, data)
    if state is None:
      state, _ = step_lib.init_state(model, optimizer, batch_spec, init_rng, ctx, ema=ema)
  if main_process:   # only now: a refused resume leaves config.json as it was
    run_dir.record_start(workdir, config, start, ctx.mesh)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  if main_process:
    print(f'{"resumed at step " + str(start) if start else "new run"}: {n_params / 1e6:.2f}M '
          f'parameters; mesh {dict(ctx.mesh.shape)} over {jax.process_count()} process(es); '
          f'{config.data.batch_size} x {config.data.seq_len} tokens per step', flush=True)

  train_step = step_lib.configured_train_step(config, model, optimizer, state_shardings, ctx)
  logger = metrics_lib.MetricsLogger(workdir, config, first_step=start)
  preemption = distributed.Preemption()
  profile = tuple(config.train.profile_steps)
  last, step_flops = {}, 0.0

  failed = True
  try:
    for step in range(start + 1, config.train.steps + 1):
      if profile and step == profile[0]:
        jax.profiler.start_trace(os.path.join(workdir, 'profile'))
      local = next(data)
      layout.check_capacities(local, layout_cfg)   # the model would drop what overflows
      state, metrics = train_step(state, ctx.global_batch(local), step_rng)
      if step == start + 1 or step % config.train.log_every == 1:  # FLOPs of a sample batch
        step_flops = flops.train_step_flops(config, local) * jax.process_count()
      logger.count(np.count_nonzero(local['segment_ids']) * jax.process_count(), step_flops)
      if profile and step == profile[1]:
        jax.block_until_ready(state)
        jax.profiler.stop_trace()

      if step % config.train.log_every == 0 or step == config.train.steps:
        last = logger.log(step, jax.device_get(metrics))
        if last['bad_in_a_row'] >= config.train.max_bad_steps:
          ckpt.wait()
          raise NonFiniteError(
              f'{int(last["bad_in_a_row"])} steps in a row had a non-finite loss or gradient '
              f'(train.max_bad_steps={config.train.max_bad_steps}); stopping. Those updates were '
              f'skipped, so the last checkpoint ({ckpt.manager.latest_step()}) is intact.')
      if step % config.checkpoint.every == 0 or step == config.train.steps:
        ckpt.save(step, state, data)
      if eval_runner.due(config, step):
        ckpt.wait()   # the async save lands first: evaluation never races checkpoint I/O
        eval_runner.maybe_evaluate(config, state.params, step, workdir, ctx)  # every process
        if step == config.train.steps and main_process:
          print_eval_summary(workdir, step)
      if preemption.reached(step):
        ckpt.save(step, state, data, force=True)
        ckpt.wait()
        if main_process:
          print(f'preempted: saved step {step}; re-run the same command to resume', flush=True)
        break
      if step == config.debug.crash_at_step:   # fault injection: die like a killed process
        ckpt.wait()                             # (after the last save landed: a deterministic test)
        os._exit(17)
    failed = False
  finally:  # pending saves always land (or fail loudly, unless we are failing already)
    ckpt.finish(raise_errors=not failed)
    logger.close()
  return last


def fail(message: str, code: int) -> int:
  """One line on stderr and exit now: background checkpoint threads would otherwise print
  pages of shutdown tracebacks (asyncio 'Event loop is closed') over the message."""
  cli.fail(message, code)
  sys.stdout.flush()
  logging.shutdown()
  os._exit(code)


def main(argv=None) -> int:
  logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
  args, overrides = parse_args(argv)
  try:
    distributed.initialize(cfg_lib.launch_settings(overrides))
    config = cfg_lib.load(args.config, overrides)
  except ConfigError as e:
    return cli.fail(str(e))
  start = time.perf_counter()
  try:
    train(config, args.workdir)
  except (pipeline.DataError, decode.TooManyBadRecords, layout.CapacityError) as e:
    return fail(f'data: {e}', cli.EXIT_USAGE)
  except (run_dir.RunDirError, checkpoints.CheckpointError, ConfigError) as e:
    return fail(str(e), cli.EXIT_USAGE)   # ConfigError here: sharding.check's mesh / divisibility lines
  except NonFiniteError as e:
    return fail(str(e), 3)
  if jax.process_index() == 0:
    print(f'done in {time.perf_counter() - start:.1f}s', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
