"""Per-step metrics: one console line per log step and a JSONL file in the workdir."""

from __future__ import annotations

import json
import os
import time
from typing import Mapping

import numpy as np

# Order of the console line; anything else is only in the JSONL file.
CONSOLE_KEYS = ('loss', 'text', 'imun', 'imgen', 'text_accuracy', 'grad_norm', 'lr')


class MetricsLogger:
  """Writes `metrics.jsonl` and prints a compact line; tracks tokens per second."""

  def __init__(self, workdir: str, total_steps: int, *, enabled: bool = True):
    self.total_steps = total_steps
    self.enabled = enabled
    self._file = open(os.path.join(workdir, 'metrics.jsonl'), 'a') if enabled else None
    self._tokens = 0
    self._since = time.perf_counter()

  def count_tokens(self, n: int) -> None:
    self._tokens += int(n)

  def log(self, step: int, metrics: Mapping[str, float]) -> dict[str, float]:
    now = time.perf_counter()
    row = {k: float(np.asarray(v)) for k, v in metrics.items()}
    row['tokens_per_sec'] = self._tokens / max(now - self._since, 1e-9)
    row['step'] = step
    self._tokens, self._since = 0, now
    if self.enabled:
      self._file.write(json.dumps(row) + '\n')
      self._file.flush()
      parts = [f'step {step:>{len(str(self.total_steps))}}/{self.total_steps}']
      parts += [f'{k} {row[k]:.4g}' for k in CONSOLE_KEYS if k in row]
      parts.append(f"{row['tokens_per_sec']:,.0f} tok/s")
      print(' | '.join(parts), flush=True)
    return row

  def close(self) -> None:
    if self._file:
      self._file.close()
