"""Where a run's scalars and images go besides metrics.jsonl and eval/*.json.

  TensorBoard   `train.tensorboard` (on by default): event files in WORKDIR/tensorboard
                (tensorboardX, no TensorFlow)
  W&B           `train.wandb_project` (empty = off): a Weights & Biases run in that
                project, one per workdir (its id kept in WORKDIR/wandb_run_id, so a
                resumed run and `python -m dvlm_jax.eval` log into the same run). Needs
                the `wandb` package only when set.

Training logs its scalars at each log step; each evaluation its metrics and grids under
'eval/' (or 'eval_ema/'). Only process 0 opens sinks.
"""

from __future__ import annotations

import os
import uuid
from typing import Mapping

import numpy as np

from dvlm_jax.errors import ConfigError

WANDB_ID_FILE = 'wandb_run_id'


def _wandb_run(workdir: str, config):
  try:
    import wandb
  except ImportError:
    raise ConfigError(f'train.wandb_project={config.train.wandb_project!r} needs the wandb '
                      "package: pip install wandb, or leave train.wandb_project empty") from None
  if wandb.run is not None:       # the training run's own, when it evaluates
    return wandb.run
  id_path = os.path.join(workdir, WANDB_ID_FILE)
  if os.path.exists(id_path):
    run_id = open(id_path).read().strip()
  else:
    run_id = uuid.uuid4().hex[:16]
    with open(id_path, 'w') as f:
      f.write(run_id)
  return wandb.init(project=config.train.wandb_project, id=run_id, resume='allow',
                    name=os.path.basename(os.path.abspath(workdir)), dir=workdir,
                    config=config.to_dict())


class Sinks:
  """The sinks `config` turns on for `workdir`."""

  def __init__(self, workdir: str, config):
    self._tb = self._wandb = None
    if config.train.tensorboard:
      import tensorboardX
      self._tb = tensorboardX.SummaryWriter(os.path.join(workdir, 'tensorboard'))
    if config.train.wandb_project:
      self._wandb = _wandb_run(workdir, config)

  def write(self, step: int, scalars: Mapping[str, float],
            images: Mapping[str, np.ndarray] | None = None) -> None:
    """Scalars by name; images as HxWx3 uint8 arrays by name."""
    images = images or {}
    if self._tb:
      for name, value in scalars.items():
        self._tb.add_scalar(name, value, step)
      for name, picture in images.items():
        self._tb.add_image(name, picture, step, dataformats='HWC')
      self._tb.flush()
    if self._wandb:
      import wandb
      self._wandb.log({**scalars, **{n: wandb.Image(p) for n, p in images.items()}}, step=step)

  def close(self) -> None:
    if self._tb:
      self._tb.close()
