"""The Beam ingest command: WebDataset tars, parquet pairs and interleaved documents in,
ArrayRecord data sets out that the Grain pipeline and the train command read.

Small generated inputs with every kind of bad record; one run with two DirectRunner
worker processes (its shards must equal the one-worker run's byte for byte).
"""

import collections
import io
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from dvlm_jax import train
from dvlm_jax.data import builders
from dvlm_jax.data import decode
from dvlm_jax.data import ingest
from dvlm_jax.data import pipeline
from tests.conftest import ROOT, tiny_config

TINY = os.path.join(ROOT, 'experiments', 'tiny.py')
MAX_PIXELS = 20_000    # --max_image_pixels of the WebDataset runs: 200x200 is "huge"
MAX_SIDE = 48


def encode(pixels, fmt='PNG', mode=None):
  im = Image.fromarray(pixels)
  if mode:
    im = im.convert(mode)
  buffer = io.BytesIO()
  im.save(buffer, format=fmt)
  return buffer.getvalue()


def picture(rng, h=32, w=32):
  return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def float_tiff():
  buffer = io.BytesIO()
  Image.fromarray(np.ones((8, 8), np.float32)).save(buffer, format='TIFF')
  return buffer.getvalue()


def make_webdataset(folder, rng, n_good=240):
  """Shards of img2dataset-style samples; returns (good keys, {reason: count}, duplicates)."""
  good, bad = [], collections.Counter()
  samples = []
  for i in range(n_good):
    key = f'{i:06d}'
    kind = i % 8
    if kind == 0:    # caption in the .json only, metadata kept as labels
      samples.append({'__key__': key, 'jpg': encode(picture(rng), 'JPEG'),
                      'json': json.dumps({'caption': f'photo {i}', 'url': f'u{i}'}).encode()})
    elif kind == 1:  # odd but usable modes: 16-bit grayscale, palette, LA, CMYK JPEG
      pixels = picture(rng)
      image = [encode(pixels.mean(-1).astype(np.uint16) * 200, 'PNG'),
               encode(pixels, 'PNG', 'P'), encode(pixels, 'PNG', 'LA'),
               encode(pixels, 'JPEG', 'CMYK')][(i // 8) % 4]
      samples.append({'__key__': key, 'png' if (i // 8) % 4 < 3 else 'jpg': image,
                      'txt': f'odd mode {i}'.encode()})
    elif kind == 2:  # large: stored at MAX_SIDE on its longest side
      samples.append({'__key__': key, 'png': encode(picture(rng, 100, 180)),
                      'txt': f'wide {i}'.encode()})
    elif kind == 3:  # caption not UTF-8: kept, repaired
      samples.append({'__key__': key, 'png': encode(picture(rng)),
                      'txt': b'caf\xe9 ' + str(i).encode()})
    else:
      samples.append({'__key__': key, 'png': encode(picture(rng)),
                      'txt': f'a picture {i}'.encode()})
    good.append(key)
  broken = [
      ('empty_image', {'png': b'', 'txt': b'x'}),
      ('not_an_image', {'jpg': b'<html>not found</html>', 'txt': b'x'}),
      ('corrupt_image', {'png': encode(picture(rng))[:60], 'txt': b'x'}),
      ('too_many_pixels', {'png': encode(picture(rng, 200, 200)), 'txt': b'x'}),
      ('unsupported_mode', {'tif': float_tiff(), 'txt': b'x'}),
      ('empty_caption', {'png': encode(picture(rng)), 'txt': b'  \n'}),
      ('empty_caption', {'png': encode(picture(rng))}),                      # no caption
      ('malformed_record', {'txt': b'a caption without its image'}),
      ('malformed_record', {'png': encode(picture(rng)), 'json': b'{not json'}),
  ]
  for k, (reason, files) in enumerate(broken):
    samples.append({'__key__': f'bad{k:03d}', **files})
    bad[reason] += 1
  duplicate = dict(samples[4], __key__='zdup')    # same image and caption as 000004
  samples.append(duplicate)
  order = rng.permutation(len(samples))
  for shard in range(2):
    with wds.TarWriter(str(folder / f'shard-{shard:05d}.tar')) as sink:
      for i in order[shard::2]:
        sink.write(samples[i])
  shard_of = {int(i): f'shard-{position % 2:05d}' for position, i in enumerate(order)}
  ids = {samples[i]['__key__']: f'{shard_of[i]}/{samples[i]["__key__"]}' for i in shard_of}
  good_ids = {ids[k] for k in good}
  # Of two records with the same content the smaller id stays.
  kept, dropped = sorted([ids['000004'], ids['zdup']])
  # A shard cut short in its third sample: the two samples before the break are kept.
  with wds.TarWriter(str(folder / 'shard-00002.tar')) as sink:
    for k in range(3):
      sink.write({'__key__': f'cut{k}', 'png': encode(picture(rng)), 'txt': b'cut short'[k:]})
  data = (folder / 'shard-00002.tar').read_bytes()
  (folder / 'shard-00002.tar').write_bytes(data[:data.rindex(b'\x89PNG') + 100])
  bad['unreadable_shard'] += 1
  good_ids |= {'shard-00002/cut0', 'shard-00002/cut1'}
  return (good_ids - {ids['000004']}) | {kept}, bad, {dropped}


def make_parquet(folder, rng):
  """LAION-style rows (key, jpg, caption) in two files; returns (good keys, bad counts)."""
  good, bad = set(), collections.Counter()
  for part in range(2):
    rows = []
    for i in range(20):
      rows.append({'key': f'p{part}{i:03d}', 'jpg': encode(picture(rng), 'JPEG'),
                   'caption': f'row {part} {i}'})
      good.add(f'part-{part}/p{part}{i:03d}')
    rows += [{'key': f'p{part}n', 'jpg': None, 'caption': 'no image'},
             {'key': f'p{part}c', 'jpg': encode(picture(rng), 'JPEG')[:200], 'caption': 'cut'},
             {'key': f'p{part}e', 'jpg': encode(picture(rng)), 'caption': None}]
    bad.update(['empty_image', 'corrupt_image', 'empty_caption'])
    pq.write_table(pa.Table.from_pylist(rows), folder / f'part-{part}.parquet')
  return good, bad


def make_interleaved(folder, rng):
  """OBELICS-style documents; returns (good key -> expected items, bad counts)."""
  docs, expected, bad = [], {}, collections.Counter()
  for i in range(30):
    n = 2 + i % 4
    items = ''.join('TI'[(i + k) % 2] for k in range(n))
    texts = [f'paragraph {k} of document {i}.' if c == 'T' else None for k, c in enumerate(items)]
    images = [encode(picture(rng)) if c == 'I' else None for c in items]
    if i == 3:      # an empty span is dropped, the document kept
      texts[items.index('T')] = ''
    docs.append({'id': f'doc{i}', 'texts': texts, 'images': images})
    expected[f'docs/docs/doc{i}'] = items if i != 3 else items.replace('T', '', 1)
  docs.append({'id': 'bad0', 'texts': ['a', None], 'images': [None, b'corrupt']})
  docs.append({'id': 'bad1', 'texts': ['a', 'b'], 'images': [None]})
  docs.append({'id': 'bad2', 'texts': ['a', None], 'images': [encode(picture(rng)), None]})
  bad.update(['not_an_image', 'malformed_record', 'malformed_record'])
  schema = pa.schema([('id', pa.string()), ('texts', pa.list_(pa.string())),
                      ('images', pa.list_(pa.binary()))])
  pq.write_table(pa.Table.from_pylist(docs, schema=schema), folder / 'docs.parquet')
  return expected, bad


def read_all(data_dir, name):
  """{split: [record]} through TFDS's data source, as the pipeline reads them."""
  return {split: [source[i] for i in range(len(source))]
          for split, source in builders.open_splits(str(data_dir), name).items()}


def shard_bytes(data_dir, name):
  path = builders.dataset_dir(str(data_dir), name)
  return {f: open(os.path.join(path, f), 'rb').read() for f in sorted(os.listdir(path))
          if 'array_record' in f}


def ids_of(records):
  return [r['id'].decode() for r in records]


def check_splits(data_dir, name, expected_ids):
  splits = read_all(data_dir, name)
  per_split = [set(ids_of(records)) for records in splits.values()]
  assert sum(len(s) for s in per_split) == len(set().union(*per_split))    # disjoint
  assert set().union(*per_split) == {f'{name}/{k}' for k in expected_ids}
  return splits


def counts(data_dir, name):
  with open(os.path.join(builders.dataset_dir(str(data_dir), name), 'metadata.json')) as f:
    return json.load(f)


@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
  root = tmp_path_factory.mktemp('inputs')
  rng = np.random.default_rng(0)
  for name in ('web', 'pairs', 'docs'):
    (root / name).mkdir()
  return {'root': root, 'web': make_webdataset(root / 'web', rng),
          'pairs': make_parquet(root / 'pairs', rng), 'docs': make_interleaved(root / 'docs', rng)}


@pytest.fixture(scope='module')
def ingested(inputs, tmp_path_factory):
  """The three sets ingested into one data dir (WebDataset with 2 worker processes)."""
  data_dir = tmp_path_factory.mktemp('data')
  root = inputs['root']
  args = ['--data_dir', str(data_dir), '--max_side', str(MAX_SIDE)]
  assert ingest.main(['--format', 'webdataset', '--input', str(root / 'web' / '*.tar'),
                      '--name', 'web', '--workers', '2', '--max_image_pixels', str(MAX_PIXELS),
                      '--max_bad_fraction', '0.1', '--image_format', 'png'] + args) == 0
  assert ingest.main(['--format', 'parquet', '--input', str(root / 'pairs' / '*.parquet'),
                      '--name', 'pairs', '--max_bad_fraction', '0.2',
                      '--validation_fraction', '0.2', '--test_fraction', '0.2'] + args) == 0
  assert ingest.main(['--format', 'interleaved', '--input', str(root / 'docs' / '*.parquet'),
                      '--name', 'docs', '--max_bad_fraction', '0.1',
                      '--validation_fraction', '0.2', '--test_fraction', '0'] + args) == 0
  return data_dir


def test_webdataset_good_in_equals_out_bad_counted_splits_disjoint(inputs, ingested):
  good, bad, duplicates = inputs['web']
  splits = check_splits(ingested, 'web', good)
  assert set(splits) == {'train', 'validation', 'test'}
  meta = counts(ingested, 'web')
  assert meta['skipped'] == dict(bad)
  assert meta['repaired'] == {'text_not_utf8': 30}
  assert meta['duplicates'] == len(duplicates) == 1
  assert meta['records_read'] == len(good) + sum(bad.values()) + 1
  with open(meta['bad_records_file']) as f:
    listed = [json.loads(line) for line in f]
  assert collections.Counter(b['reason'] for b in listed) == bad + collections.Counter(duplicate=1)
  assert {b['id'] for b in listed if b['reason'] == 'duplicate'} == {
      f'web/{k}' for k in duplicates}
  records = {r['id'].decode(): r for rs in splits.values() for r in rs}
  for rid, record in records.items():
    image = Image.open(io.BytesIO(record['images'][0]))
    assert image.mode == 'RGB' and image.format == 'PNG' and max(image.size) <= MAX_SIDE
    assert record['items'] == b'' and len(record['texts']) == 1
  wide = next(r for k, r in records.items() if k.endswith('000002'))
  assert Image.open(io.BytesIO(wide['images'][0])).size == (MAX_SIDE, 27)   # 180x100 scaled
  labelled = json.loads(next(r for k, r in records.items() if k.endswith('000000'))['labels'])
  assert labelled == {'caption': 'photo 0', 'url': 'u0'}
  assert records[next(k for k in records if k.endswith('000003'))]['texts'][0] == \
      'caf\ufffd 3'.encode()


def test_two_workers_and_a_rerun_give_byte_identical_shards(inputs, ingested, tmp_path):
  root = inputs['root']
  assert ingest.main(['--format', 'webdataset', '--input', str(root / 'web' / '*.tar'),
                      '--name', 'web', '--data_dir', str(tmp_path), '--max_side', str(MAX_SIDE),
                      '--max_image_pixels', str(MAX_PIXELS), '--max_bad_fraction', '0.1',
                      '--image_format', 'png']) == 0   # one in-process worker
  again = shard_bytes(tmp_path, 'web')
  assert again == shard_bytes(ingested, 'web') and len(again) >= 3


def test_parquet_pairs(inputs, ingested):
  good, bad = inputs['pairs']
  check_splits(ingested, 'pairs', good)
  assert counts(ingested, 'pairs')['skipped'] == dict(bad)


def test_interleaved_documents_keep_their_order(inputs, ingested):
  expected, bad = inputs['docs']
  splits = check_splits(ingested, 'docs', [k.split('/', 1)[1] for k in expected])  # less name
  assert set(splits) == {'train', 'validation'}      # --test_fraction 0
  meta = counts(ingested, 'docs')
  assert meta['skipped'] == dict(bad) and meta['repaired'] == {'empty_text_dropped': 1}
  options = pipeline.decode_options(tiny_config())
  for record in (r for rs in splits.values() for r in rs):
    rid = record['id'].decode()
    assert record['items'].decode() == expected[rid]
    number = int(rid.removeprefix('docs/docs/doc'))
    spans = [k for k, c in enumerate(expected[rid]) if c == 'T']
    texts = [t.decode() for t in record['texts']]
    assert all(t.endswith(f'of document {number}.') for t in texts)
    assert [int(t.split()[1]) for t in texts] == sorted(int(t.split()[1]) for t in texts)
    assert len(texts) == len(spans)
    # The pipeline's document keeps that order (what the layout then lays out).
    doc, _ = decode.record_to_document(record, rid, options, np.random.default_rng(0))
    assert ''.join('T' if isinstance(x, str) else 'I' for x in doc) == expected[rid]


def test_train_and_grain_resume_on_ingested_sets(ingested, tmp_path, capsys):
  """The ingested sets are data sets like the built ones: the Grain pipeline resumes
  exactly, and the train command runs a few steps on them."""
  config = tiny_config()
  config.data.source = 'tfds'
  config.data.data_dir = str(ingested)
  config.data.mixture = (('web', 1.0), ('docs', 1.0), ('pairs', 1.0))
  first = pipeline.batches_for(config, 0, 1)
  next(first)
  state = first.get_state()
  expected = next(first)
  resumed = pipeline.batches_for(config, 0, 1)
  resumed.set_state(json.loads(json.dumps(state)))
  got = next(resumed)
  assert all(np.array_equal(got[k], expected[k]) for k in expected)
  assert set(state['source_counts']) == {'web', 'docs', 'pairs'}
  workdir = str(tmp_path / 'run')
  assert train.main(['--config', TINY, '--workdir', workdir, '--config.train.steps=3',
                     '--config.train.log_every=3', '--config.model.core_layers=1',
                     '--config.data.source=tfds', f'--config.data.data_dir={ingested}',
                     '--config.data.mixture=web:1,docs:1']) == 0
  assert 'step 3/3' in capsys.readouterr().out


def test_too_many_bad_records_fail_with_one_line_and_write_nothing(inputs, tmp_path, capsys):
  args = ['--format', 'interleaved', '--input', str(inputs['root'] / 'docs' / '*.parquet'),
          '--name', 'docs', '--data_dir', str(tmp_path), '--max_bad_fraction', '0.05',
          '--validation_fraction', '0', '--test_fraction', '0']
  assert ingest.main(args) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and '3 of 33 records skipped' in err
  assert '--max_bad_fraction=0.05' in err and 'bad_records.jsonl' in err
  assert not builders.is_built(str(tmp_path), 'docs')
  assert not os.path.exists(builders.dataset_dir(str(tmp_path), 'docs'))


def run_command(*args):
  return subprocess.run([sys.executable, '-m', 'dvlm_jax.data.ingest', *args],
                        capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_a_tar_that_is_not_webdataset_is_one_line(tmp_path, capsys):
  import tarfile
  (tmp_path / 'notes.md').write_text('# notes\n')
  (tmp_path / 'code.py').write_text('print(1)\n')
  with tarfile.open(tmp_path / 'src.tar', 'w') as tar:
    tar.add(tmp_path / 'notes.md', 'notes.md')
    tar.add(tmp_path / 'code.py', 'code.py')
  (tmp_path / 'plain.tar').write_bytes(b'not a tar at all' * 100)
  # As a command: one line on stderr, exit 2, no traceback.
  proc = run_command('--format', 'webdataset', '--input', str(tmp_path / 'src.tar'),
                     '--data_dir', str(tmp_path / 'data'), '--name', 'x')
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
  assert 'is a tar but not a WebDataset shard' in proc.stderr
  assert ingest.main(['--format', 'webdataset', '--input', str(tmp_path / 'plain.tar'),
                      '--data_dir', str(tmp_path / 'data'), '--name', 'x']) == 2
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1 and 'is not a tar file' in err


def test_parquet_without_an_image_column_is_one_line(tmp_path, capsys):
  pq.write_table(pa.Table.from_pylist([{'url': 'u', 'caption': 'c'}]), tmp_path / 'a.parquet')
  args = ['--format', 'parquet', '--input', str(tmp_path / '*.parquet'),
          '--data_dir', str(tmp_path / 'data'), '--name', 'x']
  assert ingest.main(args) == 2
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1
  assert 'has no image column' in err and 'columns: url, caption' in err
  assert ingest.main(args[:-1] + ['twemoji']) == 2        # a builder's name is taken
  assert "that is a builder's data set" in capsys.readouterr().err
  args[3] = str(tmp_path / 'none*.parquet')
  assert ingest.main(args) == 2
  assert 'matches no file' in capsys.readouterr().err
