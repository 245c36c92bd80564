"""TPU pod slices by name, as devices to compile for on a host that has none.

  slice = topology.parse('v5p-32')            # or 'v5e-16', 'v5e:4x4', 'v4-8', 'v6e-256'
  devices = slice.devices()                   # TPU devices of that slice (libtpu, no TPU needed)

Names follow Cloud TPU (and MaxText's ahead-of-time compile): v4-N and v5p-N count
TensorCores, two per chip (v5p-32 is 16 chips, 2x2x4); v5e-N (v5litepod-N) and v6e-N
count chips (v5e-16 is 4x4). A generation and a chip shape name a slice directly:
'v5p:2x2x4', 'v5e:4x4'. `num_slices` > 1 is that many slices joined over the data-center
network (DCN). The devices come from libtpu's topology description
(`jax.experimental.topologies`); `jax.jit(...).lower(...).compile()` over a mesh of them
runs the real TPU compiler, Mosaic kernels included, without a TPU.
"""

from __future__ import annotations

import dataclasses
import math
import re

from dvlm_jax import backends
from dvlm_jax.errors import ConfigError

GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Generation:
  libtpu_name: str        # the generation in libtpu's topology names ('v5' is v5p)
  chip_config: str        # megacore: the chip's two TensorCores are one JAX device
  dims: int               # 3-D torus (v4, v5p) or 2-D (v5e, v6e)
  cores_per_name_unit: int  # what the N of 'gen-N' counts per chip: 2 cores, or 1 chip
  hbm_bytes: int          # HBM per chip (vendor figures)
  max_chips: int          # the largest slice (one ICI domain)


GENERATIONS = {
    'v4': Generation('v4', 'megacore', 3, 2, 32 * GIB, 4096),
    'v5p': Generation('v5', 'megacore', 3, 2, 95 * GIB, 8960),
    'v5e': Generation('v5e', 'default', 2, 1, 16 * GIB, 256),
    'v6e': Generation('v6e', 'default', 2, 1, 32 * GIB, 256),
}
ALIASES = {'v5litepod': 'v5e', 'v5lite': 'v5e', 'v6litepod': 'v6e', 'v5': 'v5p'}
EXAMPLES = "e.g. v5p-32, v5e-16, v5e:4x4, v4-8, v6e-256"


@dataclasses.dataclass(frozen=True)
class Slice:
  generation: str
  shape: tuple[int, ...]   # chips along each torus axis
  num_slices: int = 1

  @property
  def spec(self) -> Generation:
    return GENERATIONS[self.generation]

  @property
  def chips(self) -> int:
    """Chips (JAX devices) of one slice."""
    return math.prod(self.shape)

  @property
  def name(self) -> str:
    n = self.chips * self.spec.cores_per_name_unit
    return f'{self.generation}-{n} ({self.generation}:{"x".join(map(str, self.shape))})' + (
        f' x {self.num_slices} slices' if self.num_slices > 1 else '')

  @property
  def hbm_bytes(self) -> int:
    return self.spec.hbm_bytes

  def host_bounds(self) -> tuple[int, int, int]:
    """Chips per host: 2x2 (4 per VM); a single 8-chip v5e/v6e host is 2x4."""
    shape = tuple(self.shape) + (1,) * (3 - len(self.shape))
    if self.spec.dims == 2 and shape[:2] == (2, 4):
      return (2, 4, 1)
    return tuple(min(s, b) for s, b in zip(shape, (2, 2, 1)))

  def devices(self) -> list:
    """The TPU devices of the slice(s), as libtpu describes them (nothing to run on)."""
    from jax.experimental import topologies
    topology = 'x'.join(map(str, self.shape))
    with backends.quiet_libtpu():
      desc = topologies.get_topology_desc(
          platform='tpu', topology_name=f'{self.spec.libtpu_name}:{topology}',
          chip_config_name=self.spec.chip_config, chips_per_host_bounds=self.host_bounds(),
          num_slices=self.num_slices)
    return list(desc.devices)


def parse(name: str, num_slices: int = 1) -> Slice:
  """'v5p-32' | 'v5e:4x4' | ... -> Slice; ConfigError (one line) for anything else."""
  if num_slices < 1:
    raise ConfigError(f'--num_slices must be >= 1, got {num_slices}')
  text = name.strip().lower()
  m = re.fullmatch(r'(v\d+[a-z]*)(?:-(\d+)|:(\d+(?:x\d+)*))', text)
  generation = m and ALIASES.get(m.group(1), m.group(1))
  if not m or generation not in GENERATIONS:
    raise ConfigError(f'--topology {name!r}: not a TPU slice name; {EXAMPLES} '
                      f'(generations {", ".join(GENERATIONS)})')
  spec = GENERATIONS[generation]
  if m.group(3):
    shape = tuple(int(s) for s in m.group(3).split('x'))
    if len(shape) != spec.dims or min(shape) < 1:
      raise ConfigError(f'--topology {name!r}: {generation} slices have {spec.dims} axes, '
                        f'e.g. {generation}:{"x".join(["2"] * spec.dims)}')
  else:
    units = int(m.group(2))
    chips, odd = divmod(units, spec.cores_per_name_unit)
    if odd or not chips:
      raise ConfigError(f'--topology {name!r}: {generation}-N counts TensorCores, 2 per chip; '
                        f'N must be even')
    shape = default_shape(chips, spec.dims)
    if shape is None:
      raise ConfigError(f'--topology {name!r}: no standard {generation} slice of {chips} '
                        f'chips; name the shape instead ({generation}:'
                        f'{"x".join(["4"] * spec.dims)})')
  if math.prod(shape) > spec.max_chips:
    raise ConfigError(f'--topology {name!r}: {math.prod(shape)} chips; a {generation} slice '
                      f'has at most {spec.max_chips} (use --num_slices for more)')
  return Slice(generation, shape, num_slices)


def default_shape(chips: int, dims: int) -> tuple[int, ...] | None:
  """The standard slice shape of `chips` chips: 2x2(x1) doubled one axis at a time, the
  last of the shortest first (v5e-8: 2x4, v5e-16: 4x4, v5p-32: 2x2x4, v5p-64: 2x4x4);
  one chip is 1x1(x1)."""
  if chips == 1:
    return (1,) * dims
  shape = [2, 2] + [1] * (dims - 2)
  while math.prod(shape) < chips:
    low = min(shape)
    shape[max(i for i, s in enumerate(shape) if s == low)] *= 2
  return tuple(shape) if math.prod(shape) == chips else None


