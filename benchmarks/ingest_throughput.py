"""Records per second of the Beam ingest (python -m dvlm_jax.data.ingest) on the DirectRunner.

  python benchmarks/ingest_throughput.py [--records 4000] [--small 200] [--side 64]

Writes WebDataset shards of `--records` random `--side`-px JPEG image-caption pairs (and
a `--small` set), ingests each with: --workers 1 (in-process), and the multi-processing
DirectRunner with 1 and 2 worker processes. A run has a fixed cost (building the Beam
graph, starting workers) that dwarfs small inputs, so besides records / wall second the
table gives the marginal rate, (records - small) / (time - small time): what more data
costs, the figure that scales with workers; and the marginal CPU milliseconds per record
(this process and the worker processes), which a busy machine does not change much. The
ratio is 2 workers over 1 (both multi-processing).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time

import numpy as np
import webdataset as wds
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dvlm_jax.data import ingest  # noqa: E402

SHARDS = 8


def write_shards(folder: str, records: int, side: int, seed: int = 0) -> str:
  rng = np.random.default_rng(seed)
  os.makedirs(folder)
  for shard in range(SHARDS):
    with wds.TarWriter(os.path.join(folder, f'shard-{shard:05d}.tar')) as sink:
      for i in range(shard, records, SHARDS):
        buffer = io.BytesIO()
        pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(buffer, format='JPEG', quality=90)
        sink.write({'__key__': f'{i:08d}', 'jpg': buffer.getvalue(),
                    'txt': f'random picture number {i}'.encode()})
  return os.path.join(folder, '*.tar')


def cpu_seconds() -> float:
  """CPU time of this process and of its finished children (the Beam worker processes)."""
  t = os.times()
  return t.user + t.system + t.children_user + t.children_system


def timed_ingest(pattern: str, data_dir: str, workers: int, multi: bool) -> tuple[float, float]:
  """(wall seconds, CPU seconds) of one ingest."""
  extra = ['--direct_running_mode=multi_processing'] if multi and workers == 1 else []
  start, cpu = time.perf_counter(), cpu_seconds()
  ingest.ingest('webdataset', pattern, data_dir, 'bench', workers=workers, pipeline_args=extra)
  return time.perf_counter() - start, cpu_seconds() - cpu


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--records', type=int, default=4000)
  parser.add_argument('--small', type=int, default=200)
  parser.add_argument('--side', type=int, default=64)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    big = write_shards(os.path.join(tmp, 'big'), args.records, args.side)
    small = write_shards(os.path.join(tmp, 'small'), args.small, args.side, seed=1)
    print(f'{args.records} (and {args.small}) {args.side}-px JPEG pairs in {SHARDS} tars; '
          f'{os.cpu_count()} CPUs', flush=True)
    print(f'{"mode":<30} {"small s":>8} {"big s":>8} {"rec/s":>7} {"marginal rec/s":>15} '
          f'{"CPU ms/rec":>11}')
    rates = {}
    for label, workers, multi in (('--workers 1 (in-process)', 1, False),
                                  ('multi_processing, 1 worker', 1, True),
                                  ('--workers 2 (multi_processing)', 2, True)):
      t_small, cpu_small = timed_ingest(small, os.path.join(tmp, f's-{workers}-{multi}'),
                                        workers, multi)
      t_big, cpu_big = timed_ingest(big, os.path.join(tmp, f'b-{workers}-{multi}'),
                                    workers, multi)
      extra = args.records - args.small
      marginal = extra / max(t_big - t_small, 1e-9)
      rates[(workers, multi)] = marginal
      print(f'{label:<30} {t_small:8.1f} {t_big:8.1f} {args.records / t_big:7.0f} '
            f'{marginal:15.0f} {1000 * (cpu_big - cpu_small) / extra:11.1f}', flush=True)
    print(f'ratio, marginal rate 2 workers / 1 worker (multi_processing): '
          f'{rates[(2, True)] / rates[(1, True)]:.2f}x; 2 workers / in-process: '
          f'{rates[(2, True)] / rates[(1, False)]:.2f}x')


if __name__ == '__main__':
  main()
