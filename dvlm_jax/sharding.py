"""Device mesh and logical-axis sharding.

One mesh with named axes ('data', 'fsdp', 'expert', 'tensor'); sizes come from
`config.mesh`, -1 takes the remaining devices. 'expert' (size 1 unless MoE is sharded)
splits the experts of MoE layers and, like 'data' and 'fsdp', the rows of a batch. Parameters and activations carry logical names (see
`model/layers.py`); `config.sharding.rules` maps them to mesh axes. Everything that is
jitted gets explicit in/out shardings derived from those names.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from dvlm_jax.config import ConfigError

MESH_AXES = ('data', 'fsdp', 'expert', 'tensor')


def mesh_shape(config, num_devices: int) -> tuple[int, ...]:
  sizes = [int(config.mesh[a]) for a in MESH_AXES]
  free = [i for i, s in enumerate(sizes) if s == -1]
  if len(free) > 1:
    raise ValueError(f'config.mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}')
  known = math.prod(s for s in sizes if s != -1)
  if free:
    if num_devices % known:
      raise ValueError(f'config.mesh: {num_devices} devices do not divide by {known}')
    sizes[free[0]] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(f'config.mesh: {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} '
                     f'devices, have {num_devices}')
  experts, expert_axis = config.model.moe_experts, sizes[MESH_AXES.index('expert')]
  if experts and experts % expert_axis:
    raise ValueError(f'config.mesh.expert: model.moe_experts={experts} do not divide over '
                     f'{expert_axis} expert devices')
  return tuple(sizes)


def check(config, num_devices: int, num_processes: int = 1) -> None:
  """Everything the mesh must divide, checked before any parameter is built.

  Raises ConfigError (one line naming the key): the mesh against the device count, the
  batch rows against the data-parallel axes and the processes, and each sharded model
  dimension (heads, kv heads, MLP width, vocabulary, experts) against its mesh axes.
  """
  try:
    sizes = dict(zip(MESH_AXES, mesh_shape(config, num_devices)))
  except ValueError as e:
    raise ConfigError(str(e)) from e
  m = config.model
  dims = {'batch': ('data.batch_size', config.data.batch_size),
          'heads': ('model.n_heads', m.n_heads), 'kv_heads': ('model.n_kv_heads', m.n_kv_heads),
          'mlp': ('model.mlp_dim', m.mlp_dim), 'vocab': ('model.vocab_size', m.vocab_size),
          'embed': ('model.d_model', m.d_model),
          'diff_width': ('diffusion.width', config.diffusion.width),
          'exp': ('model.moe_experts', m.moe_experts)}
  for name, axes in rules(config):
    if name not in dims or not dims[name][1]:
      continue
    key, size = dims[name]
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    split = math.prod(sizes[a] for a in axes)
    if size % split:
      over = ' x '.join(f'mesh.{a}={sizes[a]}' for a in axes)
      raise ConfigError(f'config.{key}={size} does not divide over {over} ({split} devices); '
                       f'change one of them')
  if config.data.batch_size % num_processes:
    raise ConfigError(f'config.data.batch_size={config.data.batch_size} does not divide over '
                     f'{num_processes} processes (each feeds its own rows)')


def make_mesh(config, devices=None) -> Mesh:
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(config, len(devices))
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def rules(config) -> tuple[tuple[str, Any], ...]:
  """The logical rules of `config`; with mesh.expert != 1, rows are split over 'expert' too.

  Added here rather than in the default rules so that a mesh without an 'expert' axis
  (size 1 by default) keeps its exact row sharding.
  """
  out = []
  for name, axes in config.sharding.rules:
    axes = tuple(axes) if isinstance(axes, list) else axes
    if name == 'batch' and config.mesh.expert != 1:
      axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
      axes = axes if 'expert' in axes else axes + ('expert',)
    out.append((name, axes))
  return tuple(out)


def logical_shardings(abstract_tree, mesh: Mesh, axis_rules) -> Any:
  """NamedShardings for a tree with nn.Partitioned leaves (replicated where unboxed)."""
  specs = nn.get_partition_spec(abstract_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, axis_rules)


def abstract_sharded(init, mesh: Mesh, axis_rules, *args):
  """(ShapeDtypeStructs carrying their shardings, the shardings) of what `init(*args)`
  returns, its boxed leaves placed by their logical axes; allocates nothing."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(axis_rules):
    abstract = jax.eval_shape(init, *args)
    shardings = logical_shardings(abstract, mesh, axis_rules)
  structs = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                         nn.unbox(abstract), shardings)
  return structs, shardings


def batch_sharding(mesh: Mesh, axis_rules) -> NamedSharding:
  """Every batch field is split over its leading (batch) dimension."""
  spec = nn.logical_to_mesh_axes(('batch',), axis_rules)
  return NamedSharding(mesh, P(*spec))


def global_batch_fn(mesh: Mesh, axis_rules):
  """local numpy batch -> global jax.Arrays split over the batch axis.

  Each process passes its own rows (data.batch_size / process_count of them); the global
  batch is assembled from process-local data, never gathered on one host.
  """
  data = batch_sharding(mesh, axis_rules)

  def to_global(local: dict) -> dict:
    return {k: jax.make_array_from_process_local_data(data, np.asarray(v)) for k, v in local.items()}
  return to_global
