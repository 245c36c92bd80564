"""Attention kernels behind `dvlm_jax.model.attention.attend`.

  range_attention  block-sparse Pallas/Triton kernel for GPUs (`pallas_gpu`), also run in
                   Pallas interpret mode anywhere (`pallas_interpret`, used by the CPU tests)
  splash           TPU splash attention with masks built from the same per-row ranges

`sharded` runs either one per device under the mesh in context: XLA cannot partition
a kernel's custom call, and would otherwise gather the whole batch onto every device.
"""

from __future__ import annotations

import math
from typing import Callable

import flax.linen as nn
import jax
from jax.sharding import PartitionSpec as P


def _axes_size(mesh, axes) -> int:
  if axes is None:
    return 1
  return math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))


def sharded(kernel: Callable, q, k, v, q_scope, k_scope, q_end):
  """kernel(q, k, v, q_scope, k_scope, q_end) per device, split over batch and heads.

  Batch and heads follow the logical rules in context ('batch', 'act_heads'), as the
  activations around attention do; a dimension the mesh axes do not divide (or kv heads
  that do not split like the query heads) stays whole. The sequence is never split:
  every query needs its whole key range. Without a multi-device mesh: a plain call.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return kernel(q, k, v, q_scope, k_scope, q_end)
  batch_axes, head_axes = nn.logical_to_mesh_axes(('batch', 'act_heads'))
  if q.shape[0] % _axes_size(mesh, batch_axes):
    batch_axes = None
  heads = _axes_size(mesh, head_axes)
  if q.shape[2] % heads or k.shape[2] % heads:
    head_axes = None
  q_spec = P(batch_axes, None, head_axes, None)
  row_spec = P(batch_axes, None)
  return jax.shard_map(kernel, mesh=mesh, in_specs=(q_spec, q_spec, q_spec, row_spec, row_spec, row_spec),
                       out_specs=q_spec, check_vma=False)(q, k, v, q_scope, k_scope, q_end)
