"""Input pipeline throughput: sequences/s and tokens/s per CPU core, and where the time goes.

  python benchmarks/data_throughput.py [--config experiments/base.py] [--data_dir data]
      [--batches 12] [--batch_size 8] [--workers 0,2] [--cprofile]

Uses the data settings of the config (base: 256-px images at 4 scales, rows of
4096 tokens) on the shapes + twemoji mixture: the built data sets under
--data_dir when they are there, else generated stand-ins of the same kind
(64-px shapes-world PNGs with their captions, 72-px RGBA emoji-like PNGs with
short names), which the report says. The global batch is --batch_size rows (the
per-token cost does not depend on it; a small one keeps the run short).

Per stage (in-process, on the same records): decode (PNG/JPEG -> RGB), resize
(every scale, patchify), layout (tokens, masks, fields of one document), pack
(rows and batch assembly). Then the whole Grain pipeline end to end, in-process
and with worker processes. Tokens are non-padding tokens. "Per core" is tokens
per CPU-second of the main process and its workers together (their user + system
time over the measured batches), so it does not depend on what else the machine
runs; tokens/s is wall-clock throughput.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time

import numpy as np
import psutil
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dvlm_jax import config as cfg_lib  # noqa: E402
from dvlm_jax import contract  # noqa: E402
from dvlm_jax.data import decode, layout, pipeline, shapes  # noqa: E402
from dvlm_jax.data import sentencepiece_tokenizer  # noqa: E402

MIXTURE = (('shapes', 1.0), ('twemoji', 1.0))


def png(pixels: np.ndarray) -> bytes:
  out = io.BytesIO()
  Image.fromarray(pixels).save(out, 'PNG')
  return out.getvalue()


def generated_sources(n: int, seed: int = 0) -> dict[str, list[dict]]:
  """Stand-ins for the built shapes and twemoji sets, in the record format."""
  rng = np.random.default_rng(seed)
  shape_records, emoji_records = [], []
  for i in range(n):
    scene = shapes.sample_scene(rng, max_shapes=3)
    shape_records.append({'id': f'shapes/{i}', 'images': [png(shapes.render(scene, 64))],
                          'texts': [shapes.caption(scene)], 'items': '', 'labels': '{}'})
    # An emoji-like picture: a filled disc on transparency, some smooth shading.
    y, x = np.mgrid[:72, :72]
    disc = ((y - 36) ** 2 + (x - 36) ** 2 < 30 ** 2).astype(np.uint8) * 255
    colour = rng.integers(0, 256, 3)
    rgb = np.clip(colour[None, None] + (y[..., None] - 36), 0, 255).astype(np.uint8)
    emoji_records.append({'id': f'twemoji/{i}', 'images': [png(np.dstack([rgb, disc]))],
                          'texts': [f'smiling face number {i}'], 'items': '', 'labels': '{}'})
  return {'shapes': shape_records, 'twemoji': emoji_records}


def load_sources(config, data_dir: str | None, n: int) -> tuple[dict, str]:
  if data_dir:
    try:
      return ({name: pipeline.open_source(name, config) for name, _ in MIXTURE},
              f'built data sets in {data_dir}')
    except pipeline.DataError as e:
      print(f'(built data not usable: {e})')
  return generated_sources(n), f'{n} generated records per source (data sets not built)'


def stage_profile(config, sources, n_docs: int, rows: int) -> dict[str, float]:
  """Seconds per stage for `n_docs` documents, run stage by stage in-process."""
  cfg = layout.LayoutConfig.from_config(config)
  tok = sentencepiece_tokenizer.load(str(config.data.tokenizer))
  options = pipeline.decode_options(config)
  times = dict.fromkeys(('decode', 'resize', 'layout', 'pack'), 0.0)
  resize = layout.resize_to_scales

  def timed_resize(image, c):
    t = time.perf_counter()
    out = resize(image, c)
    times['resize'] += time.perf_counter() - t
    return out

  names = list(sources)
  packer, tokens = layout.Packer(cfg, rows), 0
  layout.resize_to_scales = timed_resize     # encode_document looks it up at call time
  try:
    for i in range(n_docs):
      records = sources[names[i % len(names)]]
      record = records[(i // len(names)) % len(records)]
      rng = np.random.default_rng(i)
      t0 = time.perf_counter()
      doc, _ = decode.record_to_document(record, str(i), options, rng)
      doc, _ = decode.fit_to_row(doc, cfg, tok)
      t1 = time.perf_counter()
      resized_before = times['resize']
      encoded = layout.encode_document(doc, cfg, tok, rng)
      t2 = time.perf_counter()
      if not packer.add(encoded):
        _, stats = packer.finish()
        tokens += stats.tokens
        packer.add(encoded)
      t3 = time.perf_counter()
      times['decode'] += t1 - t0
      times['layout'] += (t2 - t1) - (times['resize'] - resized_before)
      times['pack'] += t3 - t2
    t = time.perf_counter()
    _, stats = packer.finish()
    times['pack'] += time.perf_counter() - t
    tokens += stats.tokens
  finally:
    layout.resize_to_scales = resize
  times['tokens'] = tokens
  return times


def cpu_seconds() -> float:
  """User + system time of this process and its live children (the data workers)."""
  total = 0.0
  me = psutil.Process()
  for proc in [me] + me.children(recursive=True):
    try:
      t = proc.cpu_times()
      total += t.user + t.system
    except psutil.NoSuchProcess:
      pass
  return total


def end_to_end(config, sources, workers: int, batches: int, profile: bool = False):
  """(wall seconds, cpu seconds, rows, tokens) for `batches` batches after a warm-up."""
  config = cfg_lib.ConfigDict(config)
  config.data.worker_count = workers
  it = pipeline.batches_for(config, process_index=0, process_count=1, sources=sources)
  try:
    next(it)   # start-up (worker processes, first reads) is not throughput
    next(it)
    profiler = cProfile.Profile() if profile else None
    if profiler:
      profiler.enable()
    start, cpu, rows, tokens = time.perf_counter(), cpu_seconds(), 0, 0
    for _ in range(batches):
      batch = next(it)
      rows += batch['tokens'].shape[0]
      tokens += int(np.count_nonzero(batch['segment_ids']))
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    if profiler:
      profiler.disable()
      print('\ncProfile, in-process pipeline, top functions by own time:')
      pstats.Stats(profiler).sort_stats('tottime').print_stats(15)
  finally:
    it.close()
  return seconds, cpu, rows, tokens


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', default='experiments/base.py')
  parser.add_argument('--data_dir', default='data', help="built data sets ('' = generate)")
  parser.add_argument('--batches', type=int, default=12)
  parser.add_argument('--batch_size', type=int, default=8)
  parser.add_argument('--workers', default='0,2', help='comma-separated worker counts')
  parser.add_argument('--records', type=int, default=300, help='generated records per source')
  parser.add_argument('--cprofile', action='store_true', help='cProfile the in-process run')
  args = parser.parse_args(argv)

  config = cfg_lib.load(args.config, [f'data.batch_size={args.batch_size}', 'data.source=tfds'])
  config.data.mixture = MIXTURE
  if args.data_dir:
    config.data.data_dir = args.data_dir
  sources, what = load_sources(config, args.data_dir, args.records)
  cores = os.cpu_count() or 1
  cfg = layout.LayoutConfig.from_config(config)
  print(f'config {args.config}: {contract.image_side(config)}-px images, '
        f'scales {tuple(config.image.scales)}, patch {config.image.patch_size}, rows of '
        f'{cfg.seq_len} ({cfg.image_tokens} tokens per image), {args.batch_size} rows per batch')
  print(f'data: shapes + twemoji, {what}; machine: {cores} CPU cores, load average '
        f'{os.getloadavg()[0]:.1f} at start')

  n_docs = 240
  times = stage_profile(config, sources, n_docs, args.batch_size)
  total = sum(times[k] for k in ('decode', 'resize', 'layout', 'pack'))
  print(f'\nper stage, {n_docs} documents in-process ({times["tokens"] / total:,.0f} tokens/s '
        'through the stages alone):')
  for stage in ('decode', 'resize', 'layout', 'pack'):
    print(f'  {stage:7s} {1e3 * times[stage] / n_docs:6.2f} ms/doc  {times[stage] / total:5.1%}')

  print('\nend to end (Grain pipeline):')
  for workers in [int(w) for w in args.workers.split(',') if w.strip()]:
    seconds, cpu, rows, tokens = end_to_end(config, sources, workers, args.batches,
                                            profile=args.cprofile and workers == 0)
    print(f'  workers={workers}: {rows / seconds:6.1f} sequences/s {tokens / seconds:9,.0f} '
          f'tokens/s | per core: {rows / cpu:6.1f} sequences/s {tokens / cpu:9,.0f} tokens/s '
          f'({cpu / seconds:.1f} cores busy) | rows {tokens / rows / cfg.seq_len:.0%} full')
  return 0


if __name__ == '__main__':
  sys.exit(main())
