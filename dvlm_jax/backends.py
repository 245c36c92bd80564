"""Starting JAX's backends without libtpu's noise on a host that has no TPU.

The test extra installs libtpu (the TPU compiler, for `python -m dvlm_jax.compile` on a
CPU host). JAX then tries the TPU backend first wherever it runs, and libtpu, finding no
TPU, writes C++ warnings about a missing TPU environment to stderr before JAX falls back
to the CPU or GPU. None of it concerns the run. A command calls `start()` once it may
start the backends (after the processes have joined: `distributed.initialize`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import tempfile


@contextlib.contextmanager
def quiet_libtpu():
  """stderr (the file descriptor: libtpu writes from C++) to nowhere while libtpu starts.
  Also lets this process load libtpu while another one holds its lock file."""
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  os.environ.setdefault('TPU_STDERR_LOG_LEVEL', '3')
  os.environ.setdefault('TPU_MIN_LOG_LEVEL', '3')
  saved = os.dup(2)
  with tempfile.TemporaryFile() as sink:
    os.dup2(sink.fileno(), 2)
    try:
      yield
    finally:
      os.dup2(saved, 2)
      os.close(saved)


def tpu_attached() -> bool:
  """Whether this host has TPU chips (JAX's own check: the PCI devices)."""
  from jax._src import hardware_utils
  return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0


def start() -> None:
  """Starts JAX's backends now; quietly where libtpu is installed and no TPU is attached
  (on a TPU host, or without libtpu, nothing is hidden)."""
  import jax
  noisy = importlib.util.find_spec('libtpu') is not None and not tpu_attached()
  with quiet_libtpu() if noisy else contextlib.nullcontext():
    jax.devices()
