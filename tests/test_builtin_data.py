"""The shapes world, the built-in source and its batches, and the inspect CLI."""

import os

import numpy as np
import pytest
from PIL import Image

from dvlm_jax import config as config_lib
from dvlm_jax.validation import validate
from dvlm_jax import contract
from dvlm_jax.data import builtin
from dvlm_jax import build_data
from dvlm_jax import inspect_data
from dvlm_jax.data import inspect as inspect_lib
from dvlm_jax.data import layout
from dvlm_jax.data import pipeline
from dvlm_jax.data import shapes
from dvlm_jax.data import splits
from dvlm_jax.data import tokenizer as tk

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_EXPERIMENT = os.path.join(REPO, 'experiments', 'tiny.py')

# A stand-alone experiment file, so these tests need nothing but the data package.
SMALL_EXPERIMENT = '''
from dvlm_jax import config as config_lib

def get_config(arg=None):
  c = config_lib.defaults()
  c.data.seq_len = 256
  c.data.batch_size = 2
  c.image.patch_size = 4
  c.image.scales = (2, 4)
  return c
'''


@pytest.fixture
def small_experiment(tmp_path):
  path = tmp_path / 'small.py'
  path.write_text(SMALL_EXPERIMENT)
  return str(path)


def small_config():
  c = config_lib.defaults()
  c.data.seq_len = 256
  c.data.batch_size = 2
  c.image.patch_size = 4
  c.image.scales = (2, 4)
  validate(c)
  return c


def contract_configs():
  """The small config, and experiments/tiny.py once it exists."""
  configs = [small_config()]
  if os.path.isfile(TINY_EXPERIMENT):
    configs.append(config_lib.load(TINY_EXPERIMENT))
  return configs


# ------------------------------------------------------------------------- shapes

def test_caption_round_trip_over_many_scenes():
  rng = np.random.default_rng(0)
  seen_relations = set()
  for _ in range(2000):
    scene = shapes.sample_scene(rng, max_shapes=3)
    text = shapes.caption(scene)
    assert shapes.parse_caption(text) == scene, text
    seen_relations.add(scene.relation)
  assert seen_relations == {None, *shapes.RELATIONS}


def test_caption_example_and_relation_sentence():
  scene = shapes.Scene((shapes.Shape('circle', 'red', 'large', 'top', 'left'),
                        shapes.Shape('square', 'blue', 'small', 'bottom', 'right')),
                       relation='above')
  assert shapes.caption(scene) == ('a large red circle at the top left and a small blue square '
                                    'at the bottom right. the red circle is above the blue square.')


@pytest.mark.parametrize('text', [
    'a large red circle at the top left',                        # no full stop
    'a large red circle at the top left. ',                      # trailing space
    'a huge red circle at the top left.',                        # unknown size
    'a large red circle at the top left and a small blue square at the top left.',  # one cell
    'a large red circle at the top left and a small blue square at the bottom right. '
    'the red circle is below the blue square.',                  # false relation
    'a large red circle at the top left and a small blue square at the bottom right. '
    'the green circle is above the blue square.',                # names another shape
    'draw: a large red circle at the top left.',                 # not a bare caption
])
def test_parse_caption_rejects_what_caption_never_writes(text):
  with pytest.raises(ValueError):
    shapes.parse_caption(text)


def test_read_caption_reads_what_a_reader_would():
  rng = np.random.default_rng(2)
  for _ in range(500):   # every caption reads back exactly
    scene = shapes.sample_scene(rng, max_shapes=3)
    reading = shapes.read_caption(shapes.caption(scene))
    assert (reading.shapes, reading.relation) == (scene.shapes, scene.relation)
  red = shapes.Shape('circle', 'red', 'large', 'top', 'left')
  blue = shapes.Shape('square', 'blue', 'small', 'bottom', 'right')
  both = 'a large red circle at the top left and a small blue square at the bottom right'
  for text in (both, both + '.', '  A large red circle  at the top left and\na small blue '
               'square at the bottom right', both + '. and then some'):
    assert shapes.read_caption(text) == shapes.Reading((red, blue)), text
  assert shapes.read_caption(both + '. the red circle is above the blue square') == \
      shapes.Reading((red, blue), 'above')
  # A garbled relation, or one about other shapes, states no relation; the shapes stand.
  assert shapes.read_caption(both + '. the green circle is above the blue square.') == \
      shapes.Reading((red, blue))
  # Two shapes in one cell are a wrong answer, not an unreadable one.
  assert len(shapes.read_caption('a large red circle at the top left, a small blue square at '
                                 'the top left.').shapes) == 2
  for text in ('', 'hello.', 'a large red circle at the top left and a small blue',
               'draw: a large red circle at the top left.', 'a huge red circle at the top left.',
               'a large red circle at the top left blue square.'):
    assert shapes.read_caption(text) is None, text


def test_render_is_deterministic_and_puts_each_colour_in_its_cell():
  rng = np.random.default_rng(1)
  for size_px in (16, 32, 48):
    for _ in range(50):
      scene = shapes.sample_scene(rng, max_shapes=2)
      image = shapes.render(scene, size_px)
      assert image.shape == (size_px, size_px, 3) and image.dtype == np.uint8
      np.testing.assert_array_equal(image, shapes.render(scene, size_px))
      painted = np.any(image != shapes.BACKGROUND, axis=-1)
      inside = np.zeros_like(painted)
      for shape in scene.shapes:
        x0, y0, x1, y1 = shapes.cell_box(*shape.cell, size_px)
        cell = image[y0:y1, x0:x1]
        assert np.all(cell == shapes.COLOURS[shape.colour], axis=-1).any(), (scene, size_px)
        inside[y0:y1, x0:x1] = True
      assert not painted[~inside].any(), 'a shape left its cell'


def test_large_shapes_cover_more_than_small_ones():
  for kind in shapes.KINDS:
    area = {size: np.any(shapes.render(shapes.Scene((shapes.Shape(kind, 'white', size, 'middle',
                                                                  'center'),)), 32)
                         != shapes.BACKGROUND, axis=-1).sum()
            for size in shapes.SIZES}
    assert area['large'] > area['small'] > 0, (kind, area)


# ----------------------------------------------------------------------- records

def _records(config, n, start=0):
  source = builtin.BuiltinSource(config)
  return [source[i] for i in range(start, start + n)]


def _fingerprint(record):
  return (record['items'], tuple(record['texts']),
          tuple(image.tobytes() for image in record['images']))


def test_builtin_records_are_deterministic_held_out_and_mixed():
  config = small_config()
  first, again = _records(config, 300), _records(config, 300)
  config.data.seed = 1
  other = _records(config, 300)
  assert [_fingerprint(r) for r in first] == [_fingerprint(r) for r in again]
  assert [_fingerprint(r) for r in first] != [_fingerprint(r) for r in other]
  texts = [r for r in first if r['items'] == 'T']
  pairs = [r for r in first if r['items'] == '']
  assert 10 < len(texts) < 60 and len(texts) + len(pairs) == 300   # data.builtin_text = 0.1
  for record in texts:
    assert not record['images'] and shapes.parse_caption(record['texts'][0]).relation is not None
  for record in pairs:
    scene = shapes.parse_caption(record['texts'][0])
    np.testing.assert_array_equal(record['images'][0], shapes.render(scene, 16))
  # Only the training split's captions: the held-out probes' captions are never trained on.
  assert {splits.scene_split(shapes.parse_caption(r['texts'][0])) for r in first} == {'train'}
  assert builtin.BuiltinSource(config)[7]['id'] == 'builtin/7'


def test_builtin_mix_is_configurable():
  config = small_config()
  config.data.builtin_text = 0.0
  config.data.builtin_max_shapes = 1
  records = _records(config, 50)
  assert all(r['items'] == '' and len(shapes.parse_caption(r['texts'][0]).shapes) == 1
             for r in records)


def test_builtin_scenes_is_a_fixed_world_shared_with_the_held_out_probes():
  from dvlm_jax.evaluation.heldout import HeldOut
  from tests.conftest import tiny_config
  config = tiny_config(data__builtin_scenes=3, data__builtin_max_shapes=1, data__builtin_text=0.0)
  mix = builtin.Mix.from_config(config)
  fixed = builtin.fixed_scenes(mix)
  assert len(fixed) == 3 and fixed == builtin.fixed_scenes(mix)   # the same set every time
  captions = {shapes.caption(scene) for scene in fixed}
  assert {r['texts'][0] for r in _records(config, 60)} == captions  # all three, nothing else
  held = HeldOut(config).scenes('test', 5)
  assert [scene for scene, _ in held] == fixed + fixed[:2]
  config.data.builtin_scenes = 0
  assert len({r['texts'][0] for r in _records(config, 60)}) > 10


# ------------------------------------------------------------------------ batches

@pytest.mark.parametrize('config', contract_configs())
def test_batches_yield_the_contract(config):
  cfg = layout.LayoutConfig.from_config(config)
  spec = cfg.batch_spec(config.data.batch_size)
  stream = pipeline.batches_for(config, process_index=0, process_count=1)
  for _ in range(4):
    batch = next(stream)
    assert set(batch) == set(spec)
    for name, (shape, dtype) in spec.items():
      assert batch[name].shape == shape and batch[name].dtype == dtype, name
    assert (batch['modality'] == 2).any() and (batch['modality'] == 1).any()
    assert batch['image_weights'].sum() > 0 and batch['text_weights'].sum() > 0
    image = batch['modality'] == 2
    assert np.all(np.abs(batch['patches'][image]) <= 1.0)


def test_batches_encode_text_with_the_configured_tokenizer():
  """The demo's word tokenizer: built-in documents are written in its ids (one per word),
  the ids the model's text decoder reads back; the train command's stream too."""
  config = small_config()
  config.data.tokenizer = os.path.join(REPO, 'experiments', 'assets', 'shapes_bpe.model')
  config.model.vocab_size = 400
  tokenizer = pipeline.load_tokenizer(config)
  for batch in (pipeline.first_batch(config),):
    text = batch['modality'] == 1
    ids = batch['tokens'][text]
    assert ids.max() >= 272                     # past the byte range: word pieces
    words = tokenizer.decode(ids[ids >= 16]).split()
    assert {'circle', 'square', 'triangle'} & set(words), words[:20]


def test_batches_are_deterministic_per_seed():
  config = small_config()
  config.data.seed = 5
  a, b = pipeline.first_batch(config), pipeline.first_batch(config)
  config.data.seed = 6
  c = pipeline.first_batch(config)
  for name in a:
    np.testing.assert_array_equal(a[name], b[name])
  assert not np.array_equal(a['tokens'], c['tokens'])


# ------------------------------------------------------------------------ inspect

def test_numpy_mask_matches_the_model_mask():
  batch = pipeline.first_batch(small_config())
  expected = np.asarray(contract.make_mask(batch['segment_ids'], batch['segment_ids'],
                                            batch['attn_end']))
  for r in range(batch['tokens'].shape[0]):
    np.testing.assert_array_equal(
        inspect_lib.attention_mask(batch['segment_ids'][r], batch['attn_end'][r]), expected[r])


def test_patches_reassemble_into_the_rendered_image():
  config = small_config()
  config.image.caption_dropout = 0.0
  cfg = layout.LayoutConfig.from_config(config)
  scene = shapes.Scene((shapes.Shape('square', 'yellow', 'large', 'top', 'right'),))
  image = shapes.render(scene, contract.image_side(config))
  doc = layout.encode_document([image, shapes.caption(scene)], cfg,
                               tk.ByteTokenizer(), np.random.default_rng(0))
  sel = (doc['copy'] == 2) & (doc['scale'] == len(cfg.scales))
  pixels = inspect_lib.patches_to_image(doc['patches'][sel], doc['positions'][sel],
                                        cfg.patch_size)
  np.testing.assert_array_equal(pixels, image)


def test_inspect_lib_writes_npz_and_png(small_experiment, tmp_path, capsys):
  out, png = tmp_path / 'batch.npz', tmp_path / 'layout.png'
  rc = inspect_data.main(['--config', small_experiment, '--config.data.seq_len=320',
                         '--config.data.batch_size', '3', '--out', str(out), '--png', str(png),
                         '--row', '1'])
  assert rc == 0
  with np.load(out) as saved:
    spec = layout.LayoutConfig.from_config(small_config()).batch_spec(3)
    assert set(saved.files) == set(spec)
    assert saved['tokens'].shape == (3, 320)
  picture = Image.open(png)
  assert picture.width > 300 and picture.height > 300
  assert len(np.unique(np.asarray(picture.convert('RGB')).reshape(-1, 3), axis=0)) > 8
  printed = capsys.readouterr().out
  assert 'masked:' in printed and 'image_targets' in printed


def test_inspect_lib_rejects_unknown_keys(small_experiment, tmp_path, capsys):
  rc = inspect_data.main(['--config', small_experiment, '--config.data.seq_lenn=3',
                         '--out', str(tmp_path / 'x.npz')])
  assert rc == 2 and 'seq_len' in capsys.readouterr().err
  assert not (tmp_path / 'x.npz').exists()


def test_inspect_lib_reads_a_built_data_set(small_experiment, tmp_path, capsys):
  data_dir = str(tmp_path / 'data')
  assert build_data.main(['glyphs', '--data_dir', data_dir, '--train_size', '12',
                     '--validation_size', '4', '--test_size', '4']) == 0
  out, png = tmp_path / 'glyphs.npz', tmp_path / 'glyphs.png'
  rc = inspect_data.main(['--config', small_experiment, '--dataset', 'glyphs', '--data_dir',
                         data_dir, '--out', str(out), '--png', str(png)])
  assert rc == 0 and png.exists()
  with np.load(out) as saved:
    assert np.count_nonzero(saved['modality'] == 2) > 0
  assert inspect_data.main(['--config', small_experiment, '--dataset', 'shapes', '--data_dir',
                           data_dir, '--out', str(out)]) == 2   # not built: a clear error
  assert 'python -m dvlm_jax.build_data shapes' in capsys.readouterr().err
