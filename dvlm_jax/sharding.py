"""Device mesh and logical-axis sharding.

One mesh with named axes ('data', 'fsdp', 'expert', 'tensor'); sizes come from
`config.mesh`, -1 takes the remaining devices. 'expert' (size 1 unless MoE is sharded)
splits the experts of MoE layers and, like 'data' and 'fsdp', the rows of a batch. Parameters and activations carry logical names (see
`model/layers.py`); `config.sharding.rules` maps them to mesh axes. Everything that is
jitted gets explicit in/out shardings derived from those names.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from dvlm_jax.errors import ConfigError

MESH_AXES = ('data', 'fsdp', 'expert', 'tensor')


def mesh_axes(value) -> tuple[str, ...]:
  """A rule's (or a spec entry's) mesh axes as a tuple: None -> (), 'fsdp' -> ('fsdp',)."""
  return () if value is None else (value,) if isinstance(value, str) else tuple(value)


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
    axes = mesh_axes(axes)
    split = math.prod(sizes[a] for a in axes)
    if size % split:
      over = ' x '.join(f'mesh.{a}={sizes[a]}' for a in axes)
      raise ConfigError(f'config.{key}={size} does not divide over {over} ({split} devices); '
                       f'change one of them')
  if config.data.batch_size % num_processes:
    raise ConfigError(f'config.data.batch_size={config.data.batch_size} does not divide over '
                     f'{num_processes} processes (each feeds its own rows)')


def rules(config) -> tuple[tuple[str, Any], ...]:
  """The logical rules of `config`; with mesh.expert != 1, rows are split over 'expert' too.

  Added here rather than in the default rules so that a mesh without an 'expert' axis
  (size 1 by default) keeps its exact row sharding.
  """
  out = []
  for name, axes in config.sharding.rules:
    axes = tuple(axes) if isinstance(axes, list) else axes
    if name == 'batch' and config.mesh.expert != 1:
      axes = mesh_axes(axes)
      axes = axes if 'expert' in axes else axes + ('expert',)
    out.append((name, axes))
  return tuple(out)


def make_mesh(config, devices=None) -> Mesh:
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(config, len(devices))
  return Mesh(device_grid(shape, devices), MESH_AXES)


def device_grid(shape: tuple[int, ...], devices: list) -> np.ndarray:
  """`devices` as an array of `shape` (MESH_AXES order). TPUs: laid along the torus
  (`mesh_utils`), and with several slices (multi-slice over DCN) the 'data' axis spans
  the slices, every other axis stays inside one; other devices: in order."""
  if devices[0].platform != 'tpu':
    return np.asarray(devices).reshape(shape)
  from jax.experimental import mesh_utils
  slices = len({getattr(d, 'slice_index', 0) for d in devices})
  if slices == 1:
    return mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
  data = MESH_AXES.index('data')
  if shape[data] % slices:
    raise ConfigError(f'config.mesh.data={shape[data]} must be a multiple of the {slices} '
                      f'slices (the data axis spans them over DCN): set mesh.data={slices}')
  dcn = [1] * len(shape)
  dcn[data] = slices
  ici = [s // d for s, d in zip(shape, dcn)]
  return mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, allow_split_physical_axes=True)


def logical_shardings(abstract_tree, mesh: Mesh, axis_rules) -> Any:
  """NamedShardings for a tree with nn.Partitioned leaves (replicated where unboxed)."""
  specs = nn.get_partition_spec(abstract_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, axis_rules)


@dataclasses.dataclass(frozen=True)
class Context:
  """Where every program runs: the mesh and the logical rules. Training, evaluation and
  inference all run under one (`scope`), so a model is evaluated sharded as it trained.

  Rows are split over the mesh axes the 'batch' rule names; a program's row count must
  divide by `row_shards` (inference pads its rows to it, `rows_for`).
  """
  mesh: Mesh
  rules: tuple

  @classmethod
  def from_config(cls, config, devices=None) -> 'Context':
    return cls(make_mesh(config, devices), rules(config))

  @contextlib.contextmanager
  def scope(self):
    """Traces and runs under the mesh and rules: the model's logical constraints apply."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      yield

  @property
  def batch_sharding(self) -> NamedSharding:
    """Every batch field is split over its leading (row) dimension."""
    return NamedSharding(self.mesh, P(*nn.logical_to_mesh_axes(('batch',), self.rules)))

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  @property
  def row_shards(self) -> int:
    """Into how many parts the rows of a batch are split."""
    spec = self.batch_sharding.spec
    return math.prod(self.mesh.shape[a] for a in mesh_axes(spec[0] if spec else None))

  def rows_for(self, n: int) -> int:
    """The least multiple of `row_shards` that holds n rows."""
    return -(-n // self.row_shards) * self.row_shards

  def abstract_sharded(self, init, *args):
    """(ShapeDtypeStructs carrying their shardings, the shardings) of what `init(*args)`
    returns, its boxed leaves placed by their logical axes; allocates nothing."""
    with self.scope():
      abstract = jax.eval_shape(init, *args)
      shardings = logical_shardings(abstract, self.mesh, self.rules)
    structs = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                           nn.unbox(abstract), shardings)
    return structs, shardings

  def global_batch(self, local: dict) -> dict:
    """This process's rows (data.batch_size / process_count of them, numpy) -> global
    jax.Arrays split over the rows; assembled from process-local data, never gathered."""
    data = self.batch_sharding
    return {k: jax.make_array_from_process_local_data(data, np.asarray(v))
            for k, v in local.items()}

  def put_rows(self, tree):
    """Host arrays [rows, ...], the same on every process (inference builds its rows
    everywhere alike) -> global arrays split over the rows."""
    data = self.batch_sharding
    def one(x):
      x = np.asarray(x)
      return jax.make_array_from_callback(x.shape, data, lambda index: x[index])
    return jax.tree.map(one, tree)

  def to_host(self, tree):
    """Program outputs -> numpy on every process (gathered where they are split over
    devices of other processes)."""
    def one(x):
      if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(x)
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return jax.tree.map(one, tree)
