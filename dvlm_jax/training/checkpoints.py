"""Checkpoints: orbax CheckpointManager over four items in one step directory.

  checkpoints/STEP/params   parameters (what evaluation restores, alone)
  checkpoints/STEP/ema      EMA parameters, when optim.ema_decay > 0
  checkpoints/STEP/opt      optimizer state, step and the non-finite counters
  checkpoints/STEP/data     every process's data iterator state (process_i-of-n.json)

Saves are asynchronous; orbax writes into a temporary directory and renames it when the
save is complete, so a save cut short by a kill is never listed, never restored. A listed
step that fails to restore (truncated or damaged by hand) is moved aside to
`checkpoints/corrupt.STEP` with a warning, and the previous step is tried: nothing
already written is deleted. Restoring with shardings of a different mesh reshards.
"""

from __future__ import annotations

import logging
import os

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


class Checkpointer:
  """Saves and restores the train state and the data iterator of a run's workdir."""

  def __init__(self, workdir: str, config):
    k = config.checkpoint
    self.directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
    options = ocp.CheckpointManagerOptions(
        max_to_keep=k.keep, keep_period=k.keep_period or None,
        enable_async_checkpointing=k.async_save, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def save(self, step: int, state, data_iterator=None, *, force: bool = False) -> bool:
    args = {name: ocp.args.StandardSave(tree) for name, tree in _split(state).items()}
    if data_iterator is not None:
      args['data'] = grain.checkpoint.CheckpointSave(data_iterator)
    return self.manager.save(step, args=ocp.args.Composite(**args), force=force)

  def restore_latest(self, abstract_state, data_iterator=None):
    """(state, step) from the newest step that restores; (None, 0) when there is none.

    `abstract_state`: the TrainState as ShapeDtypeStructs with the shardings wanted now.
    """
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        return self._restore(step, abstract_state, data_iterator), step
      except Exception as e:  # pylint: disable=broad-except
        log.warning('checkpoint step %d cannot be restored (%s: %s); moving it aside and '
                    'trying an older one', step, type(e).__name__, str(e)[:300])
        self._quarantine(step)
    return None, 0

  def _restore(self, step, abstract_state, data_iterator):
    args = {name: ocp.args.StandardRestore(tree) for name, tree in _split(abstract_state).items()}
    if data_iterator is not None:
      args['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**args))
    return _join(abstract_state, restored)

  def _quarantine(self, step: int) -> None:
    if jax.process_index() == 0:
      src = os.path.join(self.directory, str(step))
      dst = os.path.join(self.directory, f'corrupt.{step}')
      if os.path.exists(src):
        os.replace(src, dst)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'quarantine checkpoint {step}')
    self.manager.reload()

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def restore_params(workdir: str, abstract_params, *, step: int | None = None, ema: bool = False):
  """Parameters alone (or their EMA) from a run's workdir, for evaluation and inference.

  `abstract_params`: ShapeDtypeStructs (with shardings) of the params tree.
  Returns (params, step).
  """
  directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
  with ocp.CheckpointManager(directory) as manager:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {directory}')
    item = 'ema' if ema else 'params'
    restored = manager.restore(step, args=ocp.args.Composite(
        **{item: ocp.args.StandardRestore(abstract_params)}))
    return restored[item], step
