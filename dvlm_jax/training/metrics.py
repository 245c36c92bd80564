"""Per-step metrics: a console line with progress, metrics.jsonl, and the sinks
(TensorBoard events; W&B when train.wandb_project is set: `sinks.py`).

Only process 0 writes. Throughput figures cover the steps since the previous log line:
tokens/s (non-padding tokens), TFLOP/s per device and MFU from `flops.train_step_flops`
(the real work of each step; see docs/flops.md) and the device's peak, when known.
"""

from __future__ import annotations

import json
import os
import time
from typing import Mapping

import jax
import numpy as np

from dvlm_jax.training import flops as flops_lib
from dvlm_jax.training import sinks as sinks_lib

# Order of the console line; everything is in metrics.jsonl and TensorBoard.
CONSOLE_KEYS = ('loss', 'text', 'imun', 'imgen', 'grad_norm', 'lr')


def _duration(seconds: float) -> str:
  seconds = int(seconds)
  return f'{seconds // 3600}h{seconds // 60 % 60:02d}m' if seconds >= 3600 else \
      f'{seconds // 60}m{seconds % 60:02d}s'


class MetricsLogger:
  """Writes metrics.jsonl and TensorBoard events, prints one line per log step."""

  def __init__(self, workdir: str, config, *, first_step: int = 0):
    self.total_steps = config.train.steps
    self.enabled = jax.process_index() == 0
    self._peak = flops_lib.peak_flops_per_device()
    self._devices = jax.device_count()
    self._file = self._sinks = None
    if self.enabled:
      self._sinks = sinks_lib.Sinks(workdir, config)
      self._file = open(os.path.join(workdir, 'metrics.jsonl'), 'a')
    self._tokens = self._flops = 0.0
    self._steps = 0
    self._since = self._start = time.perf_counter()
    self._first_step = first_step

  def count(self, tokens: float, step_flops: float) -> None:
    """Adds one step's global non-padding tokens and training FLOPs."""
    self._tokens += tokens
    self._flops += step_flops
    self._steps += 1

  def log(self, step: int, metrics: Mapping[str, float]) -> dict[str, float]:
    now = time.perf_counter()
    elapsed = max(now - self._since, 1e-9)
    row = {k: float(np.asarray(v)) for k, v in metrics.items()}
    row['step'] = step
    row['tokens_per_sec'] = self._tokens / elapsed
    row['tflops_per_device'] = self._flops / elapsed / self._devices / 1e12
    if self._peak:
      row['mfu'] = row['tflops_per_device'] * 1e12 / self._peak
    row['step_time'] = elapsed / max(self._steps, 1)
    self._tokens = self._flops = 0.0
    self._steps = 0
    self._since = now
    if self.enabled:
      self._file.write(json.dumps(row) + '\n')
      self._file.flush()
      self._sinks.write(step, {k: v for k, v in row.items() if k != 'step'})
      print(self._line(step, row, now), flush=True)
    return row

  def _line(self, step, row, now) -> str:
    done = (step - self._first_step) / max(self.total_steps - self._first_step, 1)
    eta = (now - self._start) / max(done, 1e-9) * (1 - done)
    width = len(str(self.total_steps))
    parts = [f'step {step:>{width}}/{self.total_steps} {100 * step / self.total_steps:3.0f}% '
             f'eta {_duration(eta)}']
    parts += [f'{k} {row[k]:.4g}' for k in CONSOLE_KEYS if k in row]
    parts.append(f"{row['tokens_per_sec']:,.0f} tok/s")
    parts.append(f"{row['tflops_per_device']:.3g} TFLOP/s/dev")
    if 'mfu' in row:
      parts.append(f"MFU {100 * row['mfu']:.1f}%")
    if row.get('bad_steps'):
      parts.append(f"skipped {row['bad_steps']:.0f} non-finite")
    return ' | '.join(parts)

  def close(self) -> None:
    if self._file:
      self._file.close()
    if self._sinks:
      self._sinks.close()
