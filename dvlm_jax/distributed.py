"""Multi-host start-up and preemption.

`initialize(settings)` must run before anything starts JAX's backends, so before the
experiment loads (`config.launch_settings`). Where the processes learn about each other,
first match wins:
  1. `distributed.coordinator/num_processes/process_id` (flags: --config.distributed.*)
  2. environment: DVLM_COORDINATOR, DVLM_NUM_PROCESSES, DVLM_PROCESS_ID (set by launch/local.py)
  3. a cluster JAX detects by itself: SLURM (srun with several tasks), or any cluster when
     DVLM_DISTRIBUTED=auto (set by launch/tpu_pod.sh and launch/slurm.sbatch)
  4. none: a single process.
On CPU the collectives are gloo, so N local processes behave like N hosts.
"""

from __future__ import annotations

import logging
import os
import signal

import jax
import numpy as np
from jax.experimental import multihost_utils

from dvlm_jax import backends
from dvlm_jax.errors import ConfigError

log = logging.getLogger(__name__)


def _settings(d) -> tuple[str, int, int]:
  coordinator = d.coordinator or os.environ.get('DVLM_COORDINATOR', '')
  num = d.num_processes or int(os.environ.get('DVLM_NUM_PROCESSES', '0'))
  pid = d.process_id if d.process_id >= 0 else int(os.environ.get('DVLM_PROCESS_ID', '-1'))
  return coordinator, num, pid


def _cluster_detected() -> bool:
  slurm = int(os.environ.get('SLURM_NTASKS', '1')) > 1 and 'SLURM_PROCID' in os.environ
  return slurm or os.environ.get('DVLM_DISTRIBUTED') == 'auto'


def initialize(settings) -> None:
  """Joins the other processes of this run, if there are any (`settings`: the config's
  `distributed` section)."""
  coordinator, num, pid = _settings(settings)
  if coordinator:
    if num < 1 or pid < 0:
      raise ConfigError(f'distributed.coordinator {coordinator} needs num_processes >= 1 and '
                        f'process_id >= 0 (got {num}, {pid}): --config.distributed.* or DVLM_*')
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(coordinator, num, pid)
  elif _cluster_detected():
    jax.distributed.initialize()
  backends.start()
  if jax.process_count() > 1:
    log.info('process %d of %d, %d local / %d global devices', jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())


class Preemption:
  """Tells every process, at the same step, that the run was asked to stop (SIGTERM).

  Multi-process: JAX's preemption sync point (the coordination service sees the signal
  and picks one step for all). Single process: our own SIGTERM handler.
  """

  def __init__(self):
    self._requested = False
    self._multi = jax.process_count() > 1
    if not self._multi:
      signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame):
    del signum, frame
    self._requested = True

  def reached(self, step: int) -> bool:
    if self._multi:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._requested


def broadcast_text(text: str, max_bytes: int = 2048) -> str:
  """Process 0's `text` on every process (a decision only process 0 can take, such as
  'this workdir is locked', must stop every process alike)."""
  if jax.process_count() == 1:
    return text
  buf = np.zeros(max_bytes, np.uint8)
  data = text.encode()[:max_bytes]
  buf[:len(data)] = np.frombuffer(data, np.uint8)
  out = np.asarray(multihost_utils.broadcast_one_to_all(buf))
  return bytes(out[out != 0].tolist()).decode(errors='replace')
