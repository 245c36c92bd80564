"""The optional W&B sink, behind train.wandb_project, with a stand-in `wandb` module."""

import sys
import types

import numpy as np
import pytest

from dvlm_jax import config as cfg_lib
from dvlm_jax.errors import ConfigError
from dvlm_jax.training import sinks


def fake_wandb():
  module = types.ModuleType('wandb')
  module.run, module.inits = None, []

  class Run:
    def __init__(self, **kwargs):
      self.kwargs, self.logged = kwargs, []
    def log(self, values, step):
      self.logged.append((step, values))

  def init(**kwargs):
    module.inits.append(kwargs)
    module.run = Run(**kwargs)
    return module.run

  module.init = init
  module.Image = lambda array: ('image', array.shape)
  return module


def config(project):
  c = cfg_lib.defaults()
  c.train.tensorboard = False
  c.train.wandb_project = project
  return c


def test_wandb_gets_scalars_and_images_in_one_run_per_workdir(tmp_path, monkeypatch):
  wandb = fake_wandb()
  monkeypatch.setitem(sys.modules, 'wandb', wandb)
  sink = sinks.Sinks(str(tmp_path), config('dvlm'))
  sink.write(3, {'loss': 1.5}, {'eval/grid': np.zeros((4, 5, 3), np.uint8)})
  (kwargs,) = wandb.inits
  assert kwargs['project'] == 'dvlm' and kwargs['resume'] == 'allow'
  assert kwargs['config']['train']['wandb_project'] == 'dvlm'
  assert wandb.run.logged == [(3, {'loss': 1.5, 'eval/grid': ('image', (4, 5, 3))})]
  # An evaluation in the same process logs into the training's run ...
  sinks.Sinks(str(tmp_path), config('dvlm')).write(4, {'eval/x': 1.0})
  assert len(wandb.inits) == 1 and wandb.run.logged[-1] == (4, {'eval/x': 1.0})
  # ... and a later process (a resume, the eval command) into the same run id.
  wandb.run = None
  sinks.Sinks(str(tmp_path), config('dvlm'))
  assert wandb.inits[1]['id'] == kwargs['id']


def test_wandb_off_needs_no_package_and_on_without_it_is_one_line(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'wandb', None)      # import wandb raises ImportError
  sinks.Sinks(str(tmp_path), config('')).write(1, {'loss': 1.0})
  with pytest.raises(ConfigError, match='train.wandb_project.*pip install wandb'):
    sinks.Sinks(str(tmp_path), config('dvlm'))
