"""Data set builders: every builder writes ArrayRecord through TFDS (no TensorFlow)
and the records read back, through TFDS and Grain, in the record format of docs/data.md."""

import gzip
import io
import json
import os
import subprocess
import sys

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from dvlm_jax import build_data
from dvlm_jax.data import build as build_lib
from dvlm_jax.data import builders
from dvlm_jax.data import glyphs
from dvlm_jax.data import shapes
from dvlm_jax.data import splits
from dvlm_jax.data.builders import base
from dvlm_jax.data.builders import fashion_mnist as fashion_lib
from dvlm_jax.data.builders import twemoji as twemoji_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(train_size=6, validation_size=3, test_size=3)


def png_bytes(size=(5, 4), colour=(200, 10, 10), fmt='PNG'):
  buffer = io.BytesIO()
  Image.new('RGB', size, colour).save(buffer, format=fmt)
  return buffer.getvalue()


def write(path, data):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb' if isinstance(data, bytes) else 'w') as f:
    f.write(data)
  return path


def read_back(data_dir, name):
  """{split: [record]} read through Grain over the TFDS data sources; ids unique."""
  out = {}
  for split, source in builders.open_splits(str(data_dir), name).items():
    out[split] = list(grain.MapDataset.source(source))
  ids = [r['id'] for records in out.values() for r in records]
  assert len(ids) == len(set(ids))
  return out


def check_record(record, image_size=None, decodable=True):
  """The record format: field types, items consistent with texts and images."""
  assert set(record) == {'id', 'images', 'texts', 'items', 'labels'}
  assert isinstance(record['id'], bytes) and record['id']
  assert all(isinstance(b, bytes) and b for b in record['images'])
  texts = [t.decode('utf-8') for t in record['texts']]
  assert all(t.strip() for t in texts), texts
  items = record['items'].decode()
  if items:
    assert set(items) <= {'T', 'I'}
    assert items.count('T') == len(texts) and items.count('I') == len(record['images'])
  else:
    assert len(texts) == 1 and len(record['images']) == 1
  assert isinstance(json.loads(record['labels']), dict)
  if decodable:
    for data in record['images']:
      image = Image.open(io.BytesIO(data))
      image.load()
      if image_size is not None:
        assert image.size == image_size
  return texts


def build(tmp_path, name, **options):
  return build_lib.build_dataset(name, str(tmp_path / 'data'), **options)


# ------------------------------------------------------------------- record format

def test_features_need_no_tensorflow_and_round_trip_bytes(tmp_path):
  assert 'tensorflow' not in sys.modules   # TFDS alone, pure numpy
  features = base.record_features()
  record = base.make_record('x/1', [b'\x00\xffnot an image'], ['caf\u00e9'], '', {'a': 1})
  decoded = features.deserialize_example_np(features.serialize_example(record))
  assert decoded['images'] == [b'\x00\xffnot an image']   # stored exactly, even if corrupt
  assert decoded['texts'] == ['caf\u00e9'.encode()] and decoded['items'] == b''
  assert json.loads(decoded['labels']) == {'a': 1}


@pytest.mark.parametrize('args', [
    (['a'], ['t'], 'II'), ([b'a'], ['t'], 'TT'), ([b'a'], ['t'], 'TX'),
    ([b'a', b'b'], ['t'], ''), ([b'a'], ['  '], ''), ([b''], ['t'], '')])
def test_make_record_rejects_inconsistent_records(args):
  images, texts, items = args
  with pytest.raises(ValueError):
    base.make_record('x', images, texts, items)


def test_split_by_hash_is_stable_and_roughly_proportional():
  keys = [f'k{i}' for i in range(4000)]
  first = [splits.split_by_hash(k, 0.1) for k in keys]
  assert first == [splits.split_by_hash(k, 0.1) for k in keys]
  assert 0.07 < first.count('validation') / len(keys) < 0.13
  assert all(splits.split_by_hash(k, 0.0) == 'train' for k in keys)


# ------------------------------------------------------------------------- twemoji

def test_twemoji_names():
  name = lambda stem: twemoji_lib.english_name(twemoji_lib.emoji_from_filename(stem))
  assert name('1f600') == 'grinning face'
  assert name('1f1e8-1f1e6') == 'flag of Canada'
  assert name('1f485-1f3fe') == 'nail polish, medium-dark skin tone'
  assert name('2764') == 'red heart'            # file name without U+FE0F
  assert name('1f1e6') is None                   # lone regional indicator: no name


def test_twemoji_subset_builds_and_reads_back(tmp_path):
  result = build(tmp_path, 'twemoji', limit=4)
  assert result.splits == {'train': 4, 'validation': 4}
  assert result.skipped.get('no English name in the emoji package', 0) > 0
  records = read_back(tmp_path / 'data', 'twemoji')
  for record in records['train'] + records['validation']:
    assert record['id'].startswith(b'twemoji/')
    texts = check_record(record, image_size=(72, 72))
    assert record['items'] == b'' and json.loads(record['labels']) == {}
    stem = record['id'].decode().split('/', 1)[1]
    with open(os.path.join(twemoji_lib.assets_dir(), stem + '.png'), 'rb') as f:
      assert record['images'][0] == f.read()          # the file's bytes, not re-encoded
    assert texts[0] == twemoji_lib.english_name(twemoji_lib.emoji_from_filename(stem))


# ------------------------------------------------------------------------ tuxpaint

def tuxpaint_fixture(root):
  """A few stamps laid out like /usr/share/tuxpaint/stamps in tuxpaint-stamps-default."""
  amph = root / 'animals' / 'amphibians'
  write(str(amph / 'frog.png'), png_bytes((30, 20)))
  write(str(amph / 'frog.txt'), 'A frog.\nde.utf8=Ein Frosch.\nfr.utf8=Une grenouille.\n')
  write(str(amph / 'frog.dat'), 'noflip\n')
  write(str(amph / 'frog.ogg'), b'OggS')
  write(str(amph / 'frog_desc_fr.ogg'), b'OggS')
  write(str(amph / 'frog_mirror.png'), png_bytes((30, 20)))          # flipped copy: left out
  write(str(root / 'vehicles' / 'car.png'), png_bytes((12, 9)))
  write(str(root / 'vehicles' / 'car.txt'), b'A  red\tcar. \xe9\nde.utf8=Ein Auto.\n')
  write(str(root / 'symbols' / 'money' / 'gbp.svg'), '<svg/>')       # SVG only: left out
  write(str(root / 'symbols' / 'money' / 'gbp.txt'), 'A pound.\n')
  write(str(root / 'food' / 'pear.png'), png_bytes())                # no caption
  write(str(root / 'food' / 'apple.png'), png_bytes())
  write(str(root / 'food' / 'apple.txt'), '\nde.utf8=Ein Apfel.\n')   # empty English line
  return root


def test_tuxpaint_fixture(tmp_path):
  source = tuxpaint_fixture(tmp_path / 'stamps')
  result = build(tmp_path, 'tuxpaint', source_dir=str(source))
  assert result.splits == {'train': 2}   # both ids hash into train (5 % validation)
  assert result.skipped == {'mirrored copy of another stamp': 1, 'SVG-only stamp (no PNG)': 1,
                            'no caption file (.txt)': 1, 'empty caption': 1,
                            'split has no records (not written)': 1}
  assert result.repaired == {
      'text is not valid UTF-8 (decoded with replacement characters)': 1}
  records = [r for rs in read_back(tmp_path / 'data', 'tuxpaint').values() for r in rs]
  captions = {r['id'].decode(): check_record(r)[0] for r in records}
  assert captions == {'tuxpaint/animals/amphibians/frog': 'A frog.',
                      'tuxpaint/vehicles/car': 'A red car. \ufffd'}


def test_tuxpaint_missing_package_message(tmp_path):
  with pytest.raises(base.SourceError, match=r'tuxpaint-stamps-default.*apt-get install'):
    build(tmp_path, 'tuxpaint', source_dir=str(tmp_path / 'nowhere'))


# ------------------------------------------------------------------- fashion_mnist

def idx_gz(path, array, ndim):
  header = (0x800 + ndim).to_bytes(4, 'big') + b''.join(
      d.to_bytes(4, 'big') for d in array.shape)
  write(path, gzip.compress(header + array.astype(np.uint8).tobytes()))


def fashion_fixture(root, n=4):
  rng = np.random.default_rng(0)
  for prefix in ('train', 't10k'):
    idx_gz(str(root / f'{prefix}-images-idx3-ubyte.gz'), rng.integers(0, 256, (n, 28, 28)), 3)
    idx_gz(str(root / f'{prefix}-labels-idx1-ubyte.gz'), np.arange(n) % 10, 1)
  return root


def check_fashion(records, limit):
  assert sorted(records) == ['test', 'train'] and all(len(v) == limit for v in records.values())
  for record in records['train'] + records['test']:
    texts = check_record(record, image_size=(28, 28))
    labels = json.loads(record['labels'])
    assert fashion_lib.CLASS_NAMES[labels['label']] == labels['name']
    assert texts == [fashion_lib.CAPTIONS[labels['label']]]
    assert Image.open(io.BytesIO(record['images'][0])).mode == 'L'


def test_fashion_mnist_on_idx_fixture(tmp_path):
  source = fashion_fixture(tmp_path / 'fm')
  build(tmp_path, 'fashion_mnist', source_dir=str(source))
  records = read_back(tmp_path / 'data', 'fashion_mnist')
  check_fashion(records, 4)
  # The PNG holds exactly the IDX pixels.
  with gzip.open(source / 'train-images-idx3-ubyte.gz') as f:
    pixels = np.frombuffer(f.read()[16:], np.uint8).reshape(-1, 28, 28)
  record = [r for r in records['train'] if r['id'] == b'fashion_mnist/train/00002'][0]
  np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(record['images'][0]))),
                                pixels[2])


def test_fashion_mnist_rejects_a_broken_idx_file(tmp_path):
  source = fashion_fixture(tmp_path / 'fm')
  write(str(source / 'train-labels-idx1-ubyte.gz'), gzip.compress(b'\x00\x00\x08\x01junk'))
  with pytest.raises(base.SourceError, match='not a 1-d uint8 IDX file'):
    build(tmp_path, 'fashion_mnist', source_dir=str(source))


def test_fashion_mnist_debian_package(tmp_path):
  if not os.path.isdir(fashion_lib.DEFAULT_SOURCE):
    pytest.skip(f'Debian package {fashion_lib.PACKAGE} is not installed '
                f'({fashion_lib.DEFAULT_SOURCE} missing)')
  build(tmp_path, 'fashion_mnist', limit=8)
  check_fashion(read_back(tmp_path / 'data', 'fashion_mnist'), 8)


def test_fashion_mnist_missing_package_message(tmp_path):
  with pytest.raises(base.SourceError, match=r'dataset-fashion-mnist.*apt-get install'):
    build(tmp_path, 'fashion_mnist', source_dir=str(tmp_path / 'nowhere'))


# -------------------------------------------------------------------------- shapes

def by_id(records):
  return {r['id']: r for rs in records.values() for r in rs}


def test_shapes_build_labels_round_trip(tmp_path):
  result = build(tmp_path, 'shapes', image_size=48, seed=3, **TINY)
  assert result.splits == {'train': 6, 'validation': 3, 'test': 3}
  for record in by_id(read_back(tmp_path / 'data', 'shapes')).values():
    (text,) = check_record(record, image_size=(48, 48))
    scene = shapes.scene_from_dict(json.loads(record['labels']))
    assert shapes.parse_caption(text) == scene
    pixels = np.asarray(Image.open(io.BytesIO(record['images'][0])))
    np.testing.assert_array_equal(pixels, shapes.render(scene, 48))


def test_shapes_deterministic_from_the_seed(tmp_path):
  build_lib.build_dataset('shapes', str(tmp_path / 'a'), seed=3, **TINY)
  build_lib.build_dataset('shapes', str(tmp_path / 'b'), seed=3, **{**TINY, 'train_size': 9})
  build_lib.build_dataset('shapes', str(tmp_path / 'c'), seed=4, **TINY)
  a, b, c = (by_id(read_back(tmp_path / d, 'shapes')) for d in 'abc')
  assert all(a[k] == b[k] for k in a)       # same seed: same records, whatever the sizes
  assert len(b) == len(a) + 3
  assert [a[k]['texts'] for k in sorted(a)] != [c[k]['texts'] for k in sorted(c)]


def test_shapes_single_holds_one_shape_per_picture(tmp_path):
  build(tmp_path, 'shapes_single', image_size=32, **TINY)
  records = by_id(read_back(tmp_path / 'data', 'shapes_single'))
  assert len(records) == 12 and all(k.startswith(b'shapes_single/') for k in records)
  for record in records.values():
    (text,) = check_record(record, image_size=(32, 32))
    scene = shapes.scene_from_dict(json.loads(record['labels']))
    assert len(scene.shapes) == 1 and shapes.parse_caption(text) == scene
  with pytest.raises(base.OptionError, match='--max_shapes'):   # the world fixes it
    build(tmp_path, 'shapes_single', max_shapes=3)


def test_shapes_splits_never_share_a_caption():
  captions = {split: {shapes.caption(splits.scene_for(0, split, i, 1)) for i in range(300)}
              for split in splits.SPLITS}
  assert not captions['train'] & captions['test']
  assert not captions['train'] & captions['validation']
  assert not captions['validation'] & captions['test']
  # The one-shape world's 378 compositions: every split holds enough distinct ones.
  counts = splits.compositions(1)
  assert sum(counts.values()) == 378 and min(counts['validation'], counts['test']) >= 50
  assert len(captions['test']) <= counts['test'] and splits.compositions(2) is None


# -------------------------------------------------------------------------- glyphs

def test_glyph_font_is_unambiguous_and_captions_parse():
  bitmaps = {glyphs.bitmap(g).tobytes() for g in glyphs.GLYPHS}
  assert len(bitmaps) == len(glyphs.GLYPHS) == 36
  for glyph in glyphs.all_glyphs():
    assert glyphs.parse_caption(glyphs.caption(glyph)) == glyph
  assert (glyphs.caption(glyphs.Glyph('7', 'square', 'blue'))
          == 'the digit 7 made of small blue squares')
  with pytest.raises(ValueError):
    glyphs.parse_caption('the digit A made of small red circles')


def test_glyph_letter_at_low_resolution_shapes_at_high():
  """Downsampled to one pixel per cell the glyph reads exactly; at 64 px so do kind and colour."""
  for glyph in glyphs.all_glyphs():
    image = glyphs.render(glyph, 64)
    coarse = np.asarray(Image.fromarray(image).resize((8, 8), Image.Resampling.BOX))
    np.testing.assert_array_equal(glyphs.read_bitmap(coarse), glyphs.grid_bitmap(glyph.glyph))
    reading = glyphs.read(image)
    assert (reading.glyph, reading.bitmap_errors, reading.kind, reading.colour) == (
        glyph.glyph, 0, glyph.kind, glyph.colour), glyph
  # The coarse view carries no kind: the same letter in circles and in squares.
  coarse = [np.asarray(Image.fromarray(glyphs.render(glyphs.Glyph('A', k, 'white'), 64))
                       .resize((8, 8), Image.Resampling.BOX)) for k in ('circle', 'square')]
  np.testing.assert_array_equal(glyphs.read_bitmap(coarse[0]), glyphs.read_bitmap(coarse[1]))


def test_glyph_splits_hold_out_combinations_but_not_parts():
  parts = {split: splits.split_glyphs(split) for split in splits.SPLITS}
  assert sum(len(p) for p in parts.values()) == len(glyphs.all_glyphs())
  assert len(set().union(*parts.values())) == len(glyphs.all_glyphs())
  assert all(parts['validation']) and parts['test']
  train = parts['train']
  assert {g.glyph for g in train} == set(glyphs.GLYPHS)
  assert {g.kind for g in train} == set(shapes.KINDS)
  assert {g.colour for g in train} == set(shapes.COLOUR_NAMES)


def test_glyphs_build(tmp_path):
  result = build(tmp_path, 'glyphs', **TINY)
  assert result.splits == {'train': 6, 'validation': 3, 'test': 3}
  records = read_back(tmp_path / 'data', 'glyphs')
  for split, rs in records.items():
    for record in rs:
      (text,) = check_record(record, image_size=(64, 64))
      glyph = glyphs.from_dict(json.loads(record['labels']))
      assert glyphs.parse_caption(text) == glyph
      assert glyph in splits.split_glyphs(split)
      reading = glyphs.read(np.asarray(Image.open(io.BytesIO(record['images'][0]))))
      assert (reading.glyph, reading.kind, reading.colour) == (glyph.glyph, glyph.kind,
                                                               glyph.colour)


# -------------------------------------------------------------------------- folder

def test_folder_jsonl_documents_and_every_bad_case(tmp_path):
  src = tmp_path / 'src'
  good = write(str(src / 'img' / 'a.png'), png_bytes((7, 5)))
  elsewhere = write(str(tmp_path / 'elsewhere' / 'b.jpg'), png_bytes((3, 6), fmt='JPEG'))
  write(str(src / 'empty.png'), b'')
  os.makedirs(src / 'dir.png')
  corrupt = write(str(src / 'corrupt.png'), b'\x89PNG\r\n\x1a\nthis is not a png')
  lines = [
      {'items': [{'text': 'hello'}, {'image': 'img/a.png'}, {'text': 'bye'},
                 {'image': elsewhere}]},                                        # 1 kept: TITI
      {'items': [{'image': 'missing.png'}, {'text': 'still here'}]},            # 2 kept: T
      'this is { not json',                                                     # 3 skipped
      {'items': [{'image': 'empty.png'}]},                                      # 4 skipped
      {'items': [{'image': 'dir.png'}, {'text': '   '}]},                       # 5 skipped
      {'items': [{'video': 'x.mp4'}]},                                          # 6 skipped
      {'items': [{'image': 'corrupt.png'}, {'text': 'kept anyway'}], 'labels': {'k': 1}},  # 7
      {'no_items': 1},                                                          # 8 skipped
  ]
  raw = [(json.dumps(x) if isinstance(x, dict) else x).encode() for x in lines]
  raw += [b'', b'{"items": [{"text": "caf\xe9"}]}']                             # 10 kept
  write(str(src / 'docs.jsonl'), b'\n'.join(raw) + b'\n')
  result = build(tmp_path, 'folder', source=str(src / 'docs.jsonl'), validation_fraction=0.0)
  assert result.splits == {'train': 4}
  assert result.skipped == {'split has no records (not written)': 1,
      'image file missing': 1, 'line is not valid JSON': 1, 'empty file (0 bytes)': 1,
      'not a file (a directory or broken link named like an image)': 1, 'empty text': 1,
      'item is neither {"text": ...} nor {"image": ...}': 1, 'line has no "items" list': 1,
      'document has no usable items': 3}
  assert result.repaired == {
      'text is not valid UTF-8 (decoded with replacement characters)': 1}
  records = by_id(read_back(tmp_path / 'data', 'folder'))
  assert sorted(records) == [b'folder/docs/1', b'folder/docs/10', b'folder/docs/2',
                             b'folder/docs/7']
  first = records[b'folder/docs/1']
  assert check_record(first) == ['hello', 'bye'] and first['items'] == b'TITI'
  assert [Image.open(io.BytesIO(b)).size for b in first['images']] == [(7, 5), (3, 6)]
  assert records[b'folder/docs/1']['images'][0] == open(good, 'rb').read()
  assert check_record(records[b'folder/docs/2']) == ['still here']
  assert records[b'folder/docs/2']['items'] == b'T'
  seventh = records[b'folder/docs/7']
  check_record(seventh, decodable=False)
  assert seventh['images'] == [open(corrupt, 'rb').read()] and seventh['items'] == b'IT'
  assert json.loads(seventh['labels']) == {'k': 1}
  assert check_record(records[b'folder/docs/10']) == ['caf\ufffd']


def test_folder_of_pairs_and_every_bad_case(tmp_path):
  src = tmp_path / 'pairs'
  write(str(src / 'cat.png'), png_bytes((8, 8)))
  write(str(src / 'cat.txt'), 'a cat\n')
  write(str(src / 'sub' / 'dog.jpg'), png_bytes((9, 4), fmt='JPEG'))
  write(str(src / 'sub' / 'dog.txt'), 'a dog')
  write(str(src / 'corrupt.webp'), b'RIFF0000WEBPgarbage')
  write(str(src / 'corrupt.txt'), 'stored, decoded later')
  write(str(src / 'latin.png'), png_bytes())
  write(str(src / 'latin.txt'), b'caf\xe9 au lait')
  write(str(src / 'nocap.png'), png_bytes())
  write(str(src / 'empty.png'), b'')
  write(str(src / 'empty.txt'), 'empty image')
  os.makedirs(src / 'dir.png')
  write(str(src / 'dir.txt'), 'a directory')
  write(str(src / 'blank.png'), png_bytes())
  write(str(src / 'blank.txt'), '  \n ')
  write(str(src / 'orphan.txt'), 'no image')
  write(str(src / '.hidden.png'), b'ignored')
  write(str(src / 'notes.md'), 'ignored')
  result = build(tmp_path, 'folder', source=str(src), validation_fraction=0.0)
  assert result.splits == {'train': 4}
  assert result.skipped == {
      'no caption file (.txt)': 1, 'empty file (0 bytes)': 1,
      'not a file (a directory named like an image)': 1, 'empty caption': 1,
      'caption without an image': 1, 'split has no records (not written)': 1}
  assert result.repaired == {
      'text is not valid UTF-8 (decoded with replacement characters)': 1}
  records = by_id(read_back(tmp_path / 'data', 'folder'))
  assert sorted(records) == [b'folder/cat.png', b'folder/corrupt.webp', b'folder/latin.png',
                             b'folder/sub/dog.jpg']
  assert check_record(records[b'folder/cat.png'], image_size=(8, 8)) == ['a cat']
  assert check_record(records[b'folder/sub/dog.jpg'], image_size=(9, 4)) == ['a dog']
  assert check_record(records[b'folder/latin.png']) == ['caf\ufffd au lait']
  assert records[b'folder/corrupt.webp']['images'] == [b'RIFF0000WEBPgarbage']
  assert all(r['items'] == b'' for r in records.values())


def test_folder_with_nothing_usable_is_an_error(tmp_path):
  write(str(tmp_path / 'bad' / 'x.png'), b'')
  with pytest.raises(base.SourceError, match='no usable records'):
    build(tmp_path, 'folder', source=str(tmp_path / 'bad'))


# ---------------------------------------------------------------------------- text

def text_fixture(root):
  write(str(root / 'a.txt'), 'First paragraph,\ntwo lines.\r\n\r\nSecond.\n  \t\nThird one.\n')
  write(str(root / 'sub' / 'b.txt'), b'caf\xe9 paragraph')
  write(str(root / 'empty.txt'), b'')
  write(str(root / 'blank.txt'), ' \n\n \n')
  write(str(root / 'skip.md'), 'not a txt file')
  return root


def test_text_corpus_by_paragraph(tmp_path):
  source = text_fixture(tmp_path / 'corpus')
  result = build(tmp_path, 'text', source=str(source), validation_fraction=0.0)
  assert result.splits == {'train': 4}
  assert result.skipped == {'empty file (0 bytes)': 1, 'no text (whitespace only)': 1,
                            'split has no records (not written)': 1}
  records = by_id(read_back(tmp_path / 'data', 'text'))
  texts = {k.decode(): check_record(r) for k, r in records.items()}
  assert texts == {'text/a.txt#0': ['First paragraph,\ntwo lines.'], 'text/a.txt#1': ['Second.'],
                   'text/a.txt#2': ['Third one.'], 'text/sub/b.txt#0': ['caf\ufffd paragraph']}
  assert all(r['items'] == b'T' and r['images'] == [] for r in records.values())


def test_text_corpus_per_file(tmp_path):
  source = text_fixture(tmp_path / 'corpus')
  result = build(tmp_path, 'text', source=str(source), per_file=True, validation_fraction=0.0)
  assert result.splits == {'train': 2}
  records = by_id(read_back(tmp_path / 'data', 'text'))
  assert check_record(records[b'text/a.txt']) == [
      'First paragraph,\ntwo lines.\n\nSecond.\n  \t\nThird one.']


# ----------------------------------------------------------------------------- CLI

def test_cli_list(capsys):
  assert build_data.main(['--list']) == 0
  out = capsys.readouterr().out
  for name in builders.BUILDERS:
    assert f'dvlm_{name}' in out


def test_cli_build_noop_rebuild_and_overwrite(tmp_path, capsys):
  args = ['glyphs', '--data_dir', str(tmp_path), '--train_size', '4', '--validation_size', '2',
          '--test_size', '2']
  assert build_data.main(args) == 0
  out = capsys.readouterr().out
  assert 'built' in out and 'train' in out and '4 records' in out
  path = builders.dataset_dir(str(tmp_path), 'glyphs')
  stamp = os.path.getmtime(os.path.join(path, 'dataset_info.json'))
  assert build_data.main(args) == 0                                       # same options: no-op
  assert 'already built' in capsys.readouterr().out
  assert os.path.getmtime(os.path.join(path, 'dataset_info.json')) == stamp
  bigger = args[:4] + ['6'] + args[5:]
  assert build_data.main(bigger) == 2                                     # other options: refused
  err = capsys.readouterr().err
  assert err.startswith('error:') and '--overwrite' in err and err.count('\n') == 1
  assert len(builders.open_splits(str(tmp_path), 'glyphs')['train']) == 4   # old build intact
  assert build_data.main(bigger + ['--overwrite']) == 0
  assert len(builders.open_splits(str(tmp_path), 'glyphs')['train']) == 6
  assert sorted(os.listdir(tmp_path)) == ['dvlm_glyphs']                 # no leftovers
  # Readable by name through TFDS alone, with none of the builder code.
  assert len(tfds.data_source('dvlm_glyphs', data_dir=str(tmp_path))['train']) == 6


def test_a_build_is_byte_identical_in_another_process(tmp_path):
  """Protobuf writes a map in an order that changes between processes; builds sort it."""
  build_lib.build_dataset('glyphs', str(tmp_path / 'here'), **TINY)
  subprocess.run([sys.executable, '-m', 'dvlm_jax.build_data', 'glyphs', '--data_dir',
                  str(tmp_path / 'there')] + [f'--{k}={v}' for k, v in TINY.items()],
                 check=True, capture_output=True, cwd=ROOT, timeout=120)
  def shards(where):
    path = builders.dataset_dir(str(tmp_path / where), 'glyphs')
    return {f: open(os.path.join(path, f), 'rb').read() for f in os.listdir(path)
            if 'array_record' in f}
  assert shards('here') == shards('there') and len(shards('here')) == 3


def test_cli_builds_the_data_sets_an_experiment_mixes(tmp_path, capsys):
  # What `make train` runs: the demo reads shapes_single and nothing else.
  assert build_data.mixture_names(os.path.join(ROOT, 'experiments', 'small.py'), []) == [
      'shapes_single']
  tiny = os.path.join(ROOT, 'experiments', 'tiny.py')
  args = ['--config', tiny, '--config.data.mixture=twemoji', '--data_dir', str(tmp_path),
          '--limit', '3']
  assert build_data.main(args) == 0
  assert 'twemoji: built' in capsys.readouterr().out
  assert sorted(os.listdir(tmp_path)) == ['dvlm_twemoji']
  for bad, message in [(['--config.data.mixture=nosuchset'], 'unknown data set'),
                       (['--config.data.mixtur=twemoji'], "did you mean 'data.mixture'")]:
    assert build_data.main(['--config', tiny, '--data_dir', str(tmp_path)] + bad) == 2
    err = capsys.readouterr().err
    assert err.startswith('error:') and message in err and err.count('\n') == 1, err


@pytest.mark.parametrize('args, message', [
    (['tuxpaint', '--source_dir', '/nonexistent/stamps'],
     'apt-get install tuxpaint-stamps-default'),
    (['folder', '--source', '/nonexistent/docs.jsonl'], 'neither a JSONL file nor a folder'),
    (['folder'], 'needs --source'),
    (['twemoji', '--image_size', '8'], 'does not take --image_size'),
    (['shapes', '--train_size', '-1'], '--train_size must be >= 0'),
    (['nosuchset'], 'unknown data set'),
])
def test_cli_errors_are_one_line(tmp_path, capsys, args, message):
  assert build_data.main(args[:1] + ['--data_dir', str(tmp_path)] + args[1:]) == 2
  err = capsys.readouterr().err
  assert err.startswith('error:') and message in err and err.count('\n') == 1, err


def test_cli_module_entry_point(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'dvlm_jax.build_data', 'text', '--data_dir', str(tmp_path),
       '--source', str(tmp_path / 'missing')], capture_output=True, text=True, cwd=ROOT)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      f'error: text: --source {tmp_path / "missing"} is neither a file nor a folder']
