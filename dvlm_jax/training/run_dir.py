"""A run directory has one writer, one config, and a history: nothing in it is lost.

  DIR/lock                    the writer (host, pid); a second run on DIR is refused
  DIR/config.json             the config the checkpoints were trained under
  DIR/config_history.jsonl    one line per start: time, step, host, processes, config
  DIR/mesh.json               the mesh and process count of the latest start

A resume is allowed only under the same config, up to `RESUMABLE` (keys that change
how a run is driven, not what it trains). Anything else stops the run before it writes,
with one line naming the keys, unless `checkpoint.restore=params_only` asks for a new
optimizer and data stream from the newest weights.
"""

from __future__ import annotations

import datetime
import json
import os
import socket

import jax

from dvlm_jax import config as cfg_lib

# Keys that may differ between a checkpoint's run and its resume: how long, how often,
# where, on which mesh and with which kernels, what to evaluate. Prefixes end in '.'.
RESUMABLE = ('train.steps', 'train.log_every', 'train.profile_steps', 'train.max_bad_steps',
             'train.tensorboard', 'train.wandb_project', 'checkpoint.', 'eval.', 'debug.',
             'mesh.', 'distributed.',
             'data.data_dir', 'data.worker_count', 'model.attention', 'model.remat')


class RunDirError(Exception):
  """The workdir cannot be used as asked; the message is one line saying what to do."""


def prepare(workdir: str) -> None:
  """Creates the workdir; refuses one that is a file or not writable."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise RunDirError(f'--workdir {workdir!r} is a file, not a directory; choose another path')
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f'.write_test.{os.getpid()}')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise RunDirError(f'--workdir {workdir!r} cannot be written ({e.strerror}); choose a '
                      f'writable path') from e


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


class Lock:
  """DIR/lock, created exclusively; a lock whose process is gone (same host) is taken over.

  A lock held from another host cannot be checked from here: the message says how to
  clear it once that run is known to be dead.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, 'lock')
    self.held = False

  def acquire(self) -> str | None:
    """Takes the lock; returns a note when a stale lock was taken over."""
    me = {'host': socket.gethostname(), 'pid': os.getpid(),
          'since': datetime.datetime.now().isoformat(timespec='seconds')}
    note = None
    for _ in range(2):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        holder = self._holder()
        same_host = holder.get('host') == me['host']
        if same_host and isinstance(holder.get('pid'), int) and not _alive(holder['pid']):
          note = (f'took over the stale lock of process {holder["pid"]} (no longer running) '
                  f'in {os.path.dirname(self.path)}')
          os.remove(self.path)
          continue
        where = f'process {holder.get("pid")} on {holder.get("host")}' if holder else 'another run'
        raise RunDirError(
            f'workdir {os.path.dirname(self.path)!r} is in use by {where} (since '
            f'{holder.get("since", "?")}); wait for it, or use another --workdir'
            + ('' if same_host else f'; if that run is dead, delete {self.path}'))
      with os.fdopen(fd, 'w') as f:
        json.dump(me, f)
      self.held = True
      return note
    raise RunDirError(f'cannot take the lock {self.path}; delete it if no run uses the workdir')

  def _holder(self) -> dict:
    try:
      with open(self.path) as f:
        return json.load(f)
    except (OSError, ValueError):
      return {}

  def release(self) -> None:
    if self.held:
      self.held = False
      try:
        os.remove(self.path)
      except OSError:
        pass


def _flatten(tree, prefix=''):
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def config_differences(saved: dict, config) -> list[tuple[str, object, object]]:
  """(key, saved value, current value) for every key outside `RESUMABLE` that differs."""
  old = _flatten(saved)
  new = _flatten(json.loads(cfg_lib.to_json(config)))
  resumable = lambda k: any(k == r or (r.endswith('.') and k.startswith(r)) for r in RESUMABLE)
  return [(k, old.get(k, '<absent>'), new.get(k, '<absent>'))
          for k in sorted(set(old) | set(new)) if not resumable(k) and old.get(k) != new.get(k)]


def saved_config(workdir: str) -> dict | None:
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise RunDirError(f'{path} cannot be read ({e}); restore it or use another --workdir') from e


def saved_processes(workdir: str) -> int | None:
  try:
    with open(os.path.join(workdir, 'mesh.json')) as f:
      return int(json.load(f)['processes'])
  except (OSError, ValueError, KeyError, TypeError):
    return None


def check_resume(workdir: str, config, processes: int) -> None:
  """Raises RunDirError when the checkpoints in DIR were trained under another config."""
  if config.checkpoint.restore == 'params_only':
    return
  saved = saved_config(workdir)
  lines = []
  if saved is not None:
    lines = [f'{k} {old!r} -> {new!r}' for k, old, new in config_differences(saved, config)]
  before = saved_processes(workdir)
  if before is not None and before != processes:
    lines.append(f'processes {before} -> {processes} (each process resumes its own data stream)')
  if lines:
    shown = ', '.join(lines[:6]) + (f' (and {len(lines) - 6} more)' if len(lines) > 6 else '')
    raise RunDirError(
        f'workdir {workdir!r} holds checkpoints of a run with another config: {shown}; use a '
        f'new --workdir, restore the original settings, or pass '
        f'--config.checkpoint.restore=params_only to start a new optimizer and data stream '
        f'from its newest weights')


def record_start(workdir: str, config, step: int, mesh) -> None:
  """config.json (the config the checkpoints follow), mesh.json, one history line per start."""
  processes = jax.process_count()
  with open(os.path.join(workdir, 'mesh.json'), 'w') as f:
    json.dump({'axes': dict(mesh.shape), 'processes': processes,
               'devices': [str(d) for d in mesh.devices.flat]}, f, indent=2)
  text = cfg_lib.to_json(config)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(text)
  entry = {'started': datetime.datetime.now().isoformat(timespec='seconds'), 'step': step,
           'host': socket.gethostname(), 'processes': processes, 'config': json.loads(text)}
  with open(os.path.join(workdir, 'config_history.jsonl'), 'a') as f:
    f.write(json.dumps(entry) + '\n')

