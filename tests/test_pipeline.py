"""Tests of the Grain input pipeline (data/pipeline.py) and its bad-input policy (data/decode.py).

Every bad file is written by the test itself; the record sources are in-memory
lists in the record format of the TFDS builders (docs/data.md).
"""

import io
import json
import pickle
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from dvlm_jax import config as cfg_lib
from dvlm_jax.errors import ConfigError
from dvlm_jax.data.mixture import parse_mixture
from dvlm_jax.overrides import set_key
from dvlm_jax.validation import validate
from dvlm_jax import contract
from dvlm_jax.data import build
from dvlm_jax.data import builtin
from dvlm_jax.data import decode
from dvlm_jax.data import layout
from dvlm_jax.data import pipeline
from dvlm_jax.data import sentencepiece_tokenizer as sp_tok
from dvlm_jax.data import tokenizer as tk


def make_config(**data):
  c = cfg_lib.defaults()
  c.image.patch_size = 4
  c.image.scales = (2, 4)            # 44 tokens per image
  c.data.seq_len = 128
  c.data.batch_size = 4
  c.data.source = 'tfds'
  c.data.mixture = (('a', 1.0), ('b', 1.0))
  for key, value in data.items():
    c.data[key] = value
  validate(c)
  return c


# ------------------------------------------------------------------------- files

def encode(image: Image.Image, fmt: str = 'PNG', **kw) -> bytes:
  out = io.BytesIO()
  image.save(out, fmt, **kw)
  return out.getvalue()


def noise_png(rng, side=16) -> bytes:
  return encode(Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)))


def noise_jpeg(rng, side=64) -> bytes:
  return encode(Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)), 'JPEG')


def png_header_only(width: int, height: int) -> bytes:
  """A PNG that declares `width` x `height` RGB pixels but holds almost no data."""
  def chunk(kind, data):
    return (struct.pack('>I', len(data)) + kind + data
            + struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff))
  ihdr = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
  return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr)
          + chunk(b'IDAT', zlib.compress(b'\0' * 1024)) + chunk(b'IEND', b''))


def caption_pair(rid, image, caption):
  return {'id': rid, 'images': [image], 'texts': [caption], 'items': '', 'labels': '{}'}


def pixel(image_bytes):
  return decode.decode_image(image_bytes, max_pixels=10**8)


# ---------------------------------------------------------------------- decoding

def test_modes_decode_to_rgb_uint8():
  gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
  out = pixel(encode(Image.fromarray(gray, 'L')))
  assert out.dtype == np.uint8 and out.shape == (8, 8, 3)
  np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, -1))

  rgba = np.zeros((4, 4, 4), np.uint8)
  rgba[0, 0] = (200, 10, 20, 255)   # opaque: its colour
  rgba[1, 1] = (200, 10, 20, 0)     # transparent: white, whatever the colour underneath
  out = pixel(encode(Image.fromarray(rgba, 'RGBA')))
  assert tuple(out[0, 0]) == (200, 10, 20) and tuple(out[1, 1]) == (255, 255, 255)

  la = Image.fromarray(np.stack([np.full((4, 4), 50, np.uint8), np.zeros((4, 4), np.uint8)], -1),
                       'LA')
  assert (pixel(encode(la)) == 255).all()   # fully transparent gray -> white

  palette = Image.new('P', (4, 4))
  palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
  palette.putpixel((2, 1), 1)
  out = pixel(encode(palette))
  assert tuple(out[1, 2]) == (10, 200, 30) and tuple(out[0, 0]) == (0, 0, 0)
  palette.info['transparency'] = 0    # palette entry 0 transparent -> white
  out = pixel(encode(palette, transparency=0))
  assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[1, 2]) == (10, 200, 30)

  cmyk = Image.new('CMYK', (8, 8), (255, 0, 0, 0))   # pure cyan
  out = pixel(encode(cmyk, 'JPEG', quality=95))
  assert np.abs(out.astype(int) - (0, 255, 255)).max() < 12


def test_16bit_is_scaled_not_clipped():
  values = np.array([[0, 257, 30000, 32896, 65535, 1000]], np.uint16)
  image = Image.fromarray(values)
  assert image.mode.startswith('I;16')
  out = pixel(encode(image))
  np.testing.assert_array_equal(out[0, :, 0], [0, 1, 117, 128, 255, 4])
  # 32-bit 'I' mode (how some decoders hand over 16-bit data) gets the same scale.
  tiff = encode(Image.fromarray(values.astype(np.int32), 'I'), 'TIFF')
  assert Image.open(io.BytesIO(tiff)).mode == 'I'
  out = pixel(tiff)
  np.testing.assert_array_equal(out[0, :, 0], [0, 1, 117, 128, 255, 4])


@pytest.mark.parametrize('name, data, reason', [
    ('zero bytes', b'', 'empty_image'),
    ('text file', b'a caption, not a picture\n' * 10, 'not_an_image'),
    ('html', b'<html><body>404</body></html>', 'not_an_image'),
])
def test_unreadable_bytes(name, data, reason):
  with pytest.raises(decode.BadRecord) as e:
    pixel(data)
  assert e.value.reason == reason, name


def test_truncated_files():
  rng = np.random.default_rng(0)
  for data in (noise_png(rng, 32), noise_jpeg(rng)):
    pixel(data)   # the whole file decodes
    with pytest.raises(decode.BadRecord) as e:
      pixel(data[:len(data) // 2])
    assert e.value.reason == 'corrupt_image'
  flipped = bytearray(noise_png(rng, 32))
  flipped[60:80] = b'\xff' * 20     # damaged compressed stream
  with pytest.raises(decode.BadRecord) as e:
    pixel(bytes(flipped))
  assert e.value.reason == 'corrupt_image'


def test_decompression_bomb_is_refused_from_the_header():
  # Above Pillow's own hard limit, and between ours and Pillow's: both refused unread.
  for side in (100_000, 9_000):
    with pytest.raises(decode.BadRecord) as e:
      decode.decode_image(png_header_only(side, side), max_pixels=64_000_000)
    assert e.value.reason == 'too_many_pixels'
  # The limit is the configured one.
  small = noise_png(np.random.default_rng(0), 20)    # 400 pixels
  assert decode.decode_image(small, max_pixels=400).shape == (20, 20, 3)
  with pytest.raises(decode.BadRecord) as e:
    decode.decode_image(small, max_pixels=399)
  assert e.value.reason == 'too_many_pixels' and '20x20' in e.value.detail


def test_jpeg_draft_keeps_at_least_the_requested_size():
  big = noise_jpeg(np.random.default_rng(0), side=256)
  out = decode.decode_image(big, max_pixels=10**8, draft_side=32)
  assert 32 <= min(out.shape[:2]) < 256


# ------------------------------------------------------------------ records -> docs

def prepare(record, config=None, index=0):
  config = config or make_config()
  fn = pipeline.PrepareRecord(layout.LayoutConfig.from_config(config), tk.ByteTokenizer(),
                              pipeline.decode_options(config), seed=0, process_index=0)
  return fn(index, ('src', record))


def test_each_bad_record_is_skipped_or_fixed_and_counted():
  rng = np.random.default_rng(1)
  good = noise_png(rng)
  png, jpeg = noise_png(rng, 32), noise_jpeg(rng)
  cases = [
      (caption_pair('ok', good, 'a red circle'), None, ()),
      (caption_pair(b'bytes-id', good, b'a blue square'), None, ()),
      (caption_pair('trunc-png', png[:len(png) // 2], 'x'), 'corrupt_image', ()),
      (caption_pair('trunc-jpeg', jpeg[:len(jpeg) // 2], 'x'), 'corrupt_image', ()),
      (caption_pair('zero', b'', 'x'), 'empty_image', ()),
      (caption_pair('text', b'just text\n', 'x'), 'not_an_image', ()),
      (caption_pair('bomb', png_header_only(50_000, 50_000), 'x'), 'too_many_pixels', ()),
      (caption_pair('empty-caption', good, ''), 'empty_caption', ()),
      (caption_pair('blank-caption', good, '   '), 'empty_caption', ()),
      (caption_pair('latin1', good, 'caf\xe9'.encode('latin-1')), None, ('text_not_utf8',)),
      (caption_pair('long', good, 'é' * 500), None, ('text_truncated',)),
      ({'id': 'no-image', 'images': [], 'texts': ['x'], 'items': ''}, 'malformed_record', ()),
      ({'id': 'counts', 'images': [], 'texts': ['x'], 'items': 'TI'}, 'malformed_record', ()),
      ({'id': 'letters', 'images': [good], 'texts': ['x'], 'items': 'TX'}, 'malformed_record', ()),
      ({'id': 'empty-doc', 'images': [], 'texts': [''], 'items': 'T'}, 'empty_document', ()),
      ({'id': 'gap', 'images': [good], 'texts': ['', 'y'], 'items': 'TIT'}, None,
       ('empty_text_dropped',)),
      ({'id': 'three', 'images': [good] * 3, 'texts': [], 'items': 'III'}, 'too_long_for_row', ()),
      (caption_pair('a-path', 'cat.png', 'x'), 'malformed_record', ()),
      ({'id': np.array(b'np-id', dtype=object), 'images': np.array([good], dtype=object),
        'texts': np.array([b'numpy fields'], dtype=object), 'items': np.bytes_(b'IT')}, None, ()),
  ]
  counter = decode.BadRecordCounter(1.0)
  for record, skip_reason, fixes in cases:
    element = prepare(record)
    counter.add(element['issues'])
    rid = element['id']
    if skip_reason:
      assert element['doc'] is None, rid
      assert [(i.reason, i.skipped) for i in element['issues']] == [(skip_reason, True)], rid
      assert element['issues'][0].record_id == rid
    else:
      assert element['doc'] is not None, rid
      assert sorted(i.reason for i in element['issues']) == sorted(fixes), rid
      assert len(element['doc']['tokens']) <= 128
  assert prepare(cases[1][0])['id'] == 'src/bytes-id'
  assert counter.seen == len(cases)
  assert counter.skipped == {'corrupt_image': 2, 'empty_image': 1, 'not_an_image': 1,
                             'too_many_pixels': 1, 'empty_caption': 2, 'malformed_record': 4,
                             'empty_document': 1, 'too_long_for_row': 1}
  assert counter.fixed == {'text_not_utf8': 1, 'text_truncated': 1, 'empty_text_dropped': 1}
  assert counter.examples['corrupt_image'] == ['src/trunc-png', 'src/trunc-jpeg']


def text_of(doc):
  ids = doc['tokens'][doc['modality'] == contract.MODALITY_TEXT]
  return tk.ByteTokenizer().decode(ids)


def test_caption_text_survives_decoding():
  good = noise_png(np.random.default_rng(2))
  doc = prepare(caption_pair('x', good, 'caf\xe9'.encode('latin-1')))['doc']
  assert 'caf\ufffd' in text_of(doc)
  long = prepare(caption_pair('x', good, 'é' * 500))['doc']
  assert len(long['tokens']) == 128              # cut to fill the row exactly...
  assert set(text_of(long).replace('draw: ', '')) == {'é'}   # ...at a character boundary


def test_caption_order_follows_generation_share():
  good = noise_png(np.random.default_rng(3))
  first_is_text = []
  for share in (0.0, 1.0, 0.5):
    config = make_config(generation_share=share)
    config.image.caption_dropout = 0.0
    firsts = [prepare(caption_pair('x', good, 'cap'), config, i)['doc']['tokens'][1] != tk.IMG
              for i in range(200)]
    first_is_text.append(np.mean(firsts))
  assert first_is_text[0] == 0.0 and first_is_text[1] == 1.0
  assert 0.4 < first_is_text[2] < 0.6
  doc = prepare(caption_pair('x', good, 'cap'), make_config(generation_share=1.0), 0)['doc']
  assert text_of(doc).startswith(builtin.GENERATION_PROMPT)


def test_counter_stops_past_the_bad_fraction_with_counts_and_ids():
  bad = decode.Issue('corrupt_image', 'src/broken-1', True)
  counter = decode.BadRecordCounter(0.01, min_records=100)
  counter.add([bad])                  # early noise does not trip the check
  for _ in range(98):
    counter.add([])
  counter.add([])                     # 1 of 100: at the limit, not past it
  with pytest.raises(decode.TooManyBadRecords) as e:
    counter.add([decode.Issue('not_an_image', 'src/html-2', True)])
  message = str(e.value)
  assert '2 of 101' in message and 'corrupt_image 1' in message and 'src/html-2' in message
  assert 'data.max_bad_fraction=0.01' in message


def test_iterator_stops_on_a_bad_data_set():
  rng = np.random.default_rng(4)
  good = noise_png(rng)
  records = [caption_pair(f'r{i}', b'' if i % 10 == 0 else good, f'caption {i}')
             for i in range(50)]
  config = make_config(mixture=(('a', 1.0),), max_bad_fraction=0.05)
  it = pipeline.batches_for(config, process_index=0, process_count=1, sources={'a': records})
  with pytest.raises(decode.TooManyBadRecords, match=r'empty_image \d+ skipped \(e\.g\. a/r'):
    for _ in range(100):
      next(it)
  config = make_config(mixture=(('a', 1.0),), max_bad_fraction=0.2)
  it = pipeline.batches_for(config, process_index=0, process_count=1, sources={'a': records})
  for _ in range(20):
    next(it)
  state = it.get_state()['bad_records']
  assert 0.05 < state['skipped']['empty_image'] / state['seen'] < 0.15   # 1 in 10 is bad


# ------------------------------------------------------------------------ pipeline

def sources(n_a=40, n_b=30, seed=0):
  """Two in-memory sources: caption pairs (a) and interleaved documents (b)."""
  rng = np.random.default_rng(seed)
  a = [caption_pair(f'a{i}', noise_png(rng, int(rng.integers(8, 40))), 'w' * int(rng.integers(1, 60)))
       for i in range(n_a)]
  b = [{'id': f'b{i}'.encode(), 'images': [noise_png(rng)],
        'texts': ['first ' * int(rng.integers(0, 5)), b'then'], 'items': 'TIT', 'labels': '{}'}
       for i in range(n_b)]
  return {'a': a, 'b': b}


def take(it, n):
  return [next(it) for _ in range(n)]


def assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for x, y in zip(batches_a, batches_b):
    assert set(x) == set(y)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_batches_match_the_contract_exactly():
  config = make_config()
  it = pipeline.batches_for(config, process_index=0, process_count=1, sources=sources())
  spec = layout.LayoutConfig.from_config(config).batch_spec(4)
  for batch in take(it, 3):
    assert set(batch) == set(spec)
    for name, (shape, dtype) in spec.items():
      assert batch[name].shape == shape and batch[name].dtype == dtype, name
    assert batch['segment_ids'].max() >= 1 and (batch['modality'] == 2).any()
    assert np.abs(batch['patches']).max() <= 1.0


def test_same_seed_same_batches_other_seed_other_batches():
  srcs = sources()
  def run(seed):
    return take(pipeline.batches_for(make_config(seed=seed), process_index=0, process_count=1,
                                       sources=srcs), 3)
  assert_same(run(0), run(0))
  other = run(1)
  assert not np.array_equal(run(0)[0]['tokens'], other[0]['tokens'])


def test_mixture_weights_are_respected():
  config = make_config(mixture=(('a', 3.0), ('b', 1.0)), pack_lookahead=1)
  it = pipeline.batches_for(config, process_index=0, process_count=1, sources=sources())
  take(it, 25)
  counts = it.source_counts
  assert counts['a'] / counts['b'] == pytest.approx(3.0, rel=0.15), counts


def test_process_slices_are_disjoint_and_cover_the_split():
  records = [f'r{i}' for i in range(11)]
  slices = []
  for index in range(2):
    ds = pipeline.source_dataset(records, seed=5, shuffle=True, process_index=index,
                                 process_count=2)
    per_epoch = len(records[index::2])
    epoch_1 = [ds[i] for i in range(per_epoch)]
    epoch_2 = [ds[i] for i in range(per_epoch, 2 * per_epoch)]
    assert sorted(epoch_1) == sorted(epoch_2)      # the same records, every epoch...
    slices.append(set(epoch_1))
  assert not slices[0] & slices[1]
  assert slices[0] | slices[1] == set(records)
  # Through the whole pipeline: two processes read disjoint records.
  srcs = sources()
  ids = []
  for index in range(2):
    prepared = pipeline.prepared_dataset(make_config(), srcs, index, 2)
    ids.append({prepared[i]['id'] for i in range(60)})
  assert not ids[0] & ids[1]
  assert len(ids[0] | ids[1]) == 70


def test_rows_per_process_and_divisibility():
  config = make_config(batch_size=4)
  it = pipeline.batches_for(config, process_index=1, process_count=2, sources=sources())
  assert next(it)['tokens'].shape == (2, 128)
  with pytest.raises(pipeline.DataError, match='not divisible'):
    pipeline.batches_for(config, process_index=0, process_count=3, sources=sources())


def test_restore_mid_epoch_gives_the_same_next_batches():
  srcs = sources()
  config = make_config()
  it = pipeline.batches_for(config, process_index=0, process_count=1, sources=srcs)
  take(it, 3)
  state = json.loads(json.dumps(it.get_state()))    # what a checkpoint stores
  assert state['packed'] and state['next_index'] < 70   # mid-batch, within the first epoch
  expected = take(it, 4)
  restored = pipeline.batches_for(config, process_index=0, process_count=1, sources=srcs)
  take(restored, 1)                                   # a used iterator restores too
  restored.set_state(state)
  assert_same(take(restored, 4), expected)
  assert restored.get_state() == it.get_state()
  with pytest.raises(pipeline.DataError, match='missing'):
    restored.set_state({'batches': 3})


def test_worker_processes_give_the_same_batches_and_restore_across_worker_counts():
  srcs = sources(n_a=16, n_b=12)
  config = make_config()
  in_process = pipeline.batches_for(config, process_index=0, process_count=1, sources=srcs)
  expected = take(in_process, 5)
  in_process.set_state(json.loads(json.dumps(in_process.get_state())))
  state = None
  workers = pipeline.batches_for(make_config(worker_count=2), process_index=0, process_count=1,
                                   sources=srcs)
  try:
    first = take(workers, 2)
    state = workers.get_state()
    assert_same(first + take(workers, 3), expected)
  finally:
    workers.close()
  # A state written with 2 workers restores in-process (and vice versa: same format).
  fresh = pipeline.batches_for(config, process_index=0, process_count=1, sources=srcs)
  fresh.set_state(state)
  assert_same(take(fresh, 3), expected[2:])


def test_builtin_source_is_checkpointable_and_sliced():
  """The built-in records go through the same pipeline: disjoint per-process slices,
  a restore from the iterator state without replaying the stream."""
  config = make_config(source='builtin')
  it = pipeline.batches_for(config, process_index=1, process_count=2)
  other = pipeline.batches_for(config, process_index=0, process_count=2)
  first = take(it, 2)
  assert first[0]['tokens'].shape == (2, config.data.seq_len)
  assert not np.array_equal(first[0]['tokens'], next(other)['tokens'])
  state = it.get_state()
  assert state['next_index'] > 0 and it.source_counts == {'builtin': state['next_index']}
  expected = take(it, 2)
  again = pipeline.batches_for(config, process_index=1, process_count=2)
  again.set_state(state)
  assert_same(take(again, 2), expected)
  with pytest.raises(ConfigError, match="data.source"):
    make_config(source='files')


def test_mixture_settings():
  assert parse_mixture((('a', 1.0), ('b', 2))) == (('a', 1.0), ('b', 2.0))
  assert parse_mixture(('a:3', 'b')) == (('a', 3.0), ('b', 1.0))
  assert parse_mixture('a:1,b:0.5') == (('a', 1.0), ('b', 0.5))
  for bad in ((), (('a', 0.0),), (('a', 1.0), ('a', 2.0)), ((1, 2),)):
    with pytest.raises(ConfigError, match='data.mixture'):
      parse_mixture(bad)
  # The command-line form of the config key; a bad one fails with the config's check.
  config = make_config()
  set_key(config, 'data.mixture', "'a:2','b:1'")
  assert parse_mixture(config.data.mixture) == (('a', 2.0), ('b', 1.0))
  set_key(config, 'data.mixture', "'a:0'")
  with pytest.raises(ConfigError, match='data.mixture'):
    validate(config)
  with pytest.raises(pipeline.DataError, match='only'):
    pipeline.batches_for(make_config(mixture=(('c', 1.0),)), process_index=0, process_count=1,
                           sources=sources())


def test_missing_data_set_names_the_build_command(tmp_path):
  config = make_config(data_dir=str(tmp_path), mixture=(('twemoji', 1.0),))
  with pytest.raises(pipeline.DataError, match='python -m dvlm_jax.build_data twemoji'):
    pipeline.batches_for(config, 0, 1)


# -------------------------------------------------------------------- sentencepiece

def test_sentencepiece_tokenizer_keeps_the_special_ids(tmp_path):
  words = ['red', 'green', 'blue', 'circle', 'square', 'triangle', 'small', 'large']
  rng = np.random.default_rng(0)
  texts = [' '.join(rng.choice(words, 4)) + ' at the top left.' for _ in range(400)]
  path = tmp_path / 'tok.model'
  path.write_bytes(sp_tok.train(texts, vocab_size=300))
  tok = sp_tok.load(str(path))
  assert tok.vocab_size > tk.BYTE_OFFSET + 256      # byte fallback pieces included
  for text in ('a red circle at the top left.', 'ünïcode 猫 🙂  two  spaces\n'):
    ids = tok.encode(text)
    assert ids.dtype == np.int32 and ids.min() >= tk.BYTE_OFFSET and ids.max() < tok.vocab_size
    assert tok.decode(np.concatenate([[tk.BOS], ids, [tk.EOS, tk.PATCH]])) == text
  assert len(tok.encode('a red circle')) < len('a red circle')   # it learnt merges
  clone = pickle.loads(pickle.dumps(tok))           # how data workers receive it
  np.testing.assert_array_equal(clone.encode('blue square'), tok.encode('blue square'))
  assert isinstance(sp_tok.load('byte'), tk.ByteTokenizer)
  with pytest.raises(ValueError, match='SentencePiece'):
    sp_tok.load(str(tmp_path / 'missing.model'))
  # The pipeline lays documents out with it, long captions cut by its token count.
  config = make_config(tokenizer=str(path), mixture=(('a', 1.0),))
  config.model.vocab_size = tok.vocab_size - 1      # one id short of the tokenizer's
  with pytest.raises(pipeline.DataError, match='model.vocab_size'):
    pipeline.batches_for(config, process_index=0, process_count=1, sources={'a': []})
  config.model.vocab_size = tok.vocab_size
  record = caption_pair('x', noise_png(rng), 'red circle ' * 200)
  it = pipeline.batches_for(config, process_index=0, process_count=1, sources={'a': [record]})
  batch = next(it)
  text = batch['tokens'][batch['modality'] == 1]
  assert text.max() < tok.vocab_size and it.counter.fixed['text_truncated'] >= 1


# ------------------------------------------------------------------- end to end

def test_built_data_sets_through_batches_for(tmp_path):
  """Tiny shapes and twemoji builds, read by the train command's entry point."""
  data_dir = str(tmp_path / 'data')
  build.build_dataset('shapes', data_dir, train_size=24, validation_size=2, test_size=2)
  build.build_dataset('twemoji', data_dir, limit=24)
  config = make_config(data_dir=data_dir, mixture=(('shapes', 1.0), ('twemoji', 1.0)))
  it = pipeline.batches_for(config, process_index=0, process_count=1)
  spec = layout.LayoutConfig.from_config(config).batch_spec(4)
  batches = take(it, 4)
  for batch in batches:
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
        k: (shape, np.dtype(dtype)) for k, (shape, dtype) in spec.items()}
  assert it.counter.seen > 0 and it.counter.total_skipped == 0
  assert it.source_counts['shapes'] > 0 and it.source_counts['twemoji'] > 0
  # The captions arrive as text (shapes captions name their shapes).
  texts = [tk.ByteTokenizer().decode(row[(m == 1)]) for b in batches
           for row, m in zip(b['tokens'], b['modality'])]
  assert any('circle' in t or 'square' in t or 'triangle' in t for t in texts)
  state = it.get_state()
  expected = take(it, 2)
  again = pipeline.batches_for(config, process_index=0, process_count=1)
  again.set_state(state)
  assert_same(take(again, 2), expected)
  # A SentencePiece tokenizer trained on the built captions, by its command.
  model = str(tmp_path / 'tok.model')
  assert sp_tok.main(['--data_dir', data_dir, '--out', model, '--vocab_size', '260']) == 2
  assert sp_tok.main(['--data_dir', data_dir, '--out', model, '--vocab_size', '400']) == 0
  tok = sp_tok.load(model)
  assert tok.decode(tok.encode('grinning face')) == 'grinning face'
  assert sp_tok.main(['--data_dir', data_dir, '--out', model, '--datasets', 'glyphs']) == 2
  # The other process reads the other half.
  other = pipeline.batches_for(config, process_index=1, process_count=2)
  assert next(other)['tokens'].shape == (2, 128)
