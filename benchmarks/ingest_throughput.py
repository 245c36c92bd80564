"""Records per second of the Beam ingest (python -m dvlm_jax.data.ingest) on the DirectRunner.

  python benchmarks/ingest_throughput.py [--records 4000] [--small 200] [--side 64]

Writes WebDataset shards of `--records` random `--side`-px JPEG image-caption pairs (and
a `--small` set), ingests each with: --workers 1 (in-process), and the multi-processing
DirectRunner with 1 and 2 worker processes. A run has a fixed cost (building the Beam
graph, starting workers) that dwarfs small inputs, so besides records / wall second the
table gives the marginal rate, (records - small) / (time - small time): what more data
costs, the figure that scales with workers. The ratio is 2 workers over 1 (both
multi-processing).
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


def timed_ingest(pattern: str, data_dir: str, workers: int, multi: bool) -> float:
  extra = ['--direct_running_mode=multi_processing'] if multi and workers == 1 else []
  start = time.perf_counter()
  ingest.ingest('webdataset', pattern, data_dir, 'bench', workers=workers, pipeline_args=extra)
  return time.perf_counter() - start


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
    print(f'{"mode":<34} {"small s":>8} {"big s":>8} {"rec/s":>8} {"marginal rec/s":>15}')
    rates = {}
    for label, workers, multi in (('--workers 1 (in-process)', 1, False),
                                  ('multi_processing, 1 worker', 1, True),
                                  ('multi_processing, 2 workers (--workers 2)', 2, True)):
      t_small = timed_ingest(small, os.path.join(tmp, f'out-s-{workers}-{multi}'), workers, multi)
      t_big = timed_ingest(big, os.path.join(tmp, f'out-b-{workers}-{multi}'), workers, multi)
      marginal = (args.records - args.small) / max(t_big - t_small, 1e-9)
      rates[(workers, multi)] = marginal
      print(f'{label:<34} {t_small:8.1f} {t_big:8.1f} {args.records / t_big:8.0f} '
            f'{marginal:15.0f}', flush=True)
    print(f'ratio, marginal rate 2 workers / 1 worker (multi_processing): '
          f'{rates[(2, True)] / rates[(1, True)]:.2f}x; 2 workers / in-process: '
          f'{rates[(2, True)] / rates[(1, False)]:.2f}x')


if __name__ == '__main__':
  main()
