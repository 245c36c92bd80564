"""Checkpoints: orbax CheckpointManager over four items in one step directory.

  checkpoints/STEP/params   parameters (what evaluation restores, alone)
  checkpoints/STEP/ema      EMA parameters, when optim.ema_decay > 0
  checkpoints/STEP/opt      optimizer state, step and the non-finite counters
  checkpoints/STEP/data     every process's data iterator state (process_i-of-n.json)

Saves are asynchronous; orbax writes into a temporary directory and renames it when the
save is complete, so a save cut short by a kill is never listed, never restored. A listed
step whose files cannot be read (truncated or damaged by hand) is moved aside to
`checkpoints/corrupt.STEP` (`corrupt.STEP.N` if taken) with a warning, and the previous
step is tried: nothing already written is deleted. A step that reads but does not fit
the configured state (another model shape, EMA on or off) is not damage: restoring stops
with `CheckpointError` and moves nothing. Restoring with shardings of a different mesh
reshards. A save that fails (disk full, permissions) raises `CheckpointError` naming the
last complete step, after removing the save's temporary directories.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil

import grain
import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)


def _split(state) -> dict:
  items = {'params': state.params,
           'opt': {'opt_state': state.opt_state, 'step': state.step,
                   'bad_steps': state.bad_steps, 'bad_in_a_row': state.bad_in_a_row}}
  if state.ema_params is not None:
    items['ema'] = state.ema_params
  return items


def _join(template, items):
  opt = items['opt']
  return template.replace(params=items['params'], opt_state=opt['opt_state'], step=opt['step'],
                          ema_params=items.get('ema'), bad_steps=opt['bad_steps'],
                          bad_in_a_row=opt['bad_in_a_row'])


class CheckpointError(Exception):
  """A checkpoint cannot be written, or does not fit the run; the message is one line."""


class _OrphanedTaskErrors(logging.Filter):
  """orbax checks a damaged checkpoint's files in parallel asyncio tasks: the first error
  is raised (and reported here in one line), the others are logged by asyncio, with their
  tracebacks, as 'Task exception was never retrieved' whenever the tasks are garbage
  collected, which may happen before the first error reaches us. Those records say nothing
  the one-line error does not: while checkpoints are restored, they are dropped."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith('Task exception was never retrieved')


_ORPHANED_TASK_ERRORS = _OrphanedTaskErrors()


def _quiet_orphaned_tasks() -> None:
  """Before a restore: asyncio's echoes of a damaged checkpoint's errors are dropped."""
  logging.getLogger('asyncio').addFilter(_ORPHANED_TASK_ERRORS)   # a no-op when present


def _first_line(e: BaseException) -> str:
  return f'{type(e).__name__}: {(str(e).strip().splitlines() or [""])[0][:200]}'


def complete_steps(directory: str) -> list[int]:
  """Steps whose save finished (orbax renames a step's directory to its number then)."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


def _shape_tree(tree) -> dict:
  """keystr -> shape of every array (boxed or not: flax's `.value` is left out of keys)."""
  return {jax.tree_util.keystr(path).replace('.value', ''): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


class Checkpointer:
  """Saves and restores the train state and the data iterator of a run's workdir."""

  def __init__(self, workdir: str, config):
    k = config.checkpoint
    self.directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
    options = ocp.CheckpointManagerOptions(
        max_to_keep=k.keep, keep_period=k.keep_period or None,
        enable_async_checkpointing=k.async_save, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)
    self._fail_at = config.debug.save_error_at_step   # fault injection (tests)
    self._pending = None

  def save(self, step: int, state, data_iterator=None, *, force: bool = False) -> bool:
    args = {name: ocp.args.StandardSave(tree) for name, tree in _split(state).items()}
    if data_iterator is not None:
      args['data'] = grain.checkpoint.CheckpointSave(data_iterator)
    try:
      if step == self._fail_at:
        raise OSError(errno.ENOSPC, 'No space left on device (debug.save_error_at_step)')
      saved = self.manager.save(step, args=ocp.args.Composite(**args), force=force)
    except Exception as e:  # an async save's error surfaces at the next save or wait
      raise self._save_failed(self._pending if self._pending is not None else step, e) from e
    self._pending = step if saved else self._pending
    return saved

  def _save_failed(self, step: int, e: BaseException) -> CheckpointError:
    if jax.process_index() == 0:   # a failed save leaves its temporary directory behind
      for name in os.listdir(self.directory) if os.path.isdir(self.directory) else ():
        if 'orbax-checkpoint-tmp' in name:
          shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
    done = [s for s in complete_steps(self.directory) if s != step]
    last = f'step {done[-1]}' if done else 'none'
    return CheckpointError(
        f'checkpoint of step {step} could not be written ({_first_line(e)}); the last complete '
        f'checkpoint is {last}; free space or fix permissions in {self.directory}, then run '
        f'the same command again to resume')

  def restore_latest(self, abstract_state, data_iterator=None):
    """(state, step) from the newest step that restores; (None, 0) when there is none.

    `abstract_state`: the TrainState as ShapeDtypeStructs with the shardings wanted now.
    """
    _quiet_orphaned_tasks()
    for step in sorted(self.manager.all_steps(), reverse=True):
      self._raise_if_different(step, abstract_state)   # before orbax tries (and logs)
      try:
        return self._restore(step, abstract_state, data_iterator), step
      except Exception as e:  # pylint: disable=broad-except
        log.warning('checkpoint step %d cannot be restored (%s); moving it aside and '
                    'trying an older one', step, _first_line(e))
        self._quarantine(step)
    return None, 0

  def restore_params_only(self, abstract_params):
    """(params, step) of the newest step that restores, or (None, 0); nothing is moved."""
    _quiet_orphaned_tasks()
    for step in sorted(self.manager.all_steps(), reverse=True):
      self._raise_if_different(step, None, abstract_params)
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract_params)))
        return restored['params'], step
      except Exception as e:  # pylint: disable=broad-except
        log.warning('checkpoint step %d cannot be restored (%s); trying an older one', step,
                    _first_line(e))
    return None, 0

  def _raise_if_different(self, step, abstract_state, abstract_params=None):
    """CheckpointError when `step` reads but holds another model or optimizer state."""
    wanted = _split(abstract_state) if abstract_state is not None else {'params': abstract_params}
    saved = {}
    for name in ('params', 'ema', 'opt'):
      path = os.path.join(self.directory, str(step), name)
      if os.path.isdir(path):
        try:
          with ocp.StandardCheckpointer() as reader:   # closed: no thread outlives the check
            meta = reader.metadata(path)
          saved[name] = getattr(meta, 'item_metadata', meta)
        except Exception:  # pylint: disable=broad-except  # unreadable: damage, not difference
          return
    # A missing params / opt item is damage; EMA present on one side only is a difference.
    problems = []
    if ('ema' in wanted) != ('ema' in saved):
      problems.append('the checkpoint holds an EMA, the configured run none (optim.ema_decay=0)'
                      if 'ema' in saved else
                      'the configured run keeps an EMA (optim.ema_decay > 0), the checkpoint none')
    for name in ('params', 'ema', 'opt'):
      if name not in wanted or name not in saved:
        continue
      try:
        have, want = _shape_tree(saved[name]), _shape_tree(wanted[name])
      except Exception:  # pylint: disable=broad-except
        return
      if not have:   # the item's files are gone: damage, not difference
        return
      if name == 'opt':   # optax namedtuples vs the saved dicts: compare the shapes alone
        if sorted(have.values()) != sorted(want.values()):
          problems.append(f'the optimizer state differs ({len(have)} arrays saved, '
                          f'{len(want)} configured)')
        continue
      differ = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
      if differ:
        k = differ[0]
        problems.append(f'{name}{k} is {have.get(k, "absent")} in the checkpoint, '
                        f'{want.get(k, "absent")} in the configured run'
                        + (f' ({len(differ)} arrays differ)' if len(differ) > 1 else ''))
    if problems:
      raise CheckpointError(
          f'checkpoint step {step} in {self.directory} does not fit the configured run: '
          f'{"; ".join(problems[:3])}; use a new --workdir or the settings it was trained '
          f'with')

  def _restore(self, step, abstract_state, data_iterator):
    args = {name: ocp.args.StandardRestore(tree) for name, tree in _split(abstract_state).items()}
    if data_iterator is not None:
      args['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**args))
    return _join(abstract_state, restored)

  def _quarantine(self, step: int) -> None:
    if jax.process_index() == 0:
      src = os.path.join(self.directory, str(step))
      dst, n = os.path.join(self.directory, f'corrupt.{step}'), 1
      while os.path.exists(dst):   # an earlier quarantine of the same step number
        dst, n = os.path.join(self.directory, f'corrupt.{step}.{n}'), n + 1
      if os.path.exists(src):
        os.rename(src, dst)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'quarantine checkpoint {step}')
    self.manager.reload()

  def wait(self) -> None:
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_failed(self._pending, e) from e

  def finish(self, *, raise_errors: bool = True) -> None:
    """Waits for pending saves and closes; with raise_errors=False (the run is already
    failing) a save error is logged, not raised over the first one."""
    try:
      self.wait()
    except CheckpointError as e:
      if raise_errors:
        raise
      log.warning('%s', e)
    finally:
      try:
        self.manager.close()
      except Exception as e:  # pylint: disable=broad-except
        if raise_errors:
          raise self._save_failed(self._pending, e) from e


def restore_params(workdir: str, abstract_params, *, step: int | None = None, ema: bool = False):
  """Parameters alone (or their EMA) from a run's workdir, for evaluation and inference.

  `abstract_params`: ShapeDtypeStructs (with shardings) of the params tree. With `step`
  None the newest step that restores is used (a one-line warning names each step that
  does not, as training does); an explicit `step` that does not restore raises
  CheckpointError listing the other saved steps. Returns (params, step).
  """
  directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
  item = 'ema' if ema else 'params'
  _quiet_orphaned_tasks()
  with ocp.CheckpointManager(directory) as manager:
    steps = sorted(manager.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(f'no checkpoint in {directory}')
    for candidate in ([step] if step is not None else steps):
      try:
        restored = manager.restore(candidate, args=ocp.args.Composite(
            **{item: ocp.args.StandardRestore(abstract_params)}))
        return restored[item], candidate
      except Exception as e:  # pylint: disable=broad-except
        if step is not None:
          others = [s for s in steps if s != step]
          raise CheckpointError(
              f'checkpoint step {step} of {workdir!r} cannot be restored ({_first_line(e)}); '
              f'other saved steps: {others or "none"} (pass one with --step)') from e
        log.warning('checkpoint step %d of %s cannot be restored (%s); trying an older one',
                    candidate, workdir, _first_line(e))
    raise CheckpointError(f'no checkpoint of {workdir!r} can be restored (steps {steps} tried)')
