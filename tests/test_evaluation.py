"""Evaluation: the detector, the scoring, every evaluator on a tiny trained run, the CLI,
and that an evaluation of a restored checkpoint reproduces the one made during training.

Shapes and glyphs examples come from the builders' own record functions
(`data.splits.scene_for`, `data.splits.glyph_for`: what a default build holds;
`test_built_records_are_the_computed_ones` builds tiny sets to check that), so the
tiny run (data.source='builtin') needs no data directory.
"""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageFilter

from dvlm_jax import config as cfg_lib
from dvlm_jax.errors import ConfigError
from dvlm_jax import variants
from dvlm_jax import evaluation
from dvlm_jax.data import shapes, splits
from dvlm_jax.evaluation import detector, grid, heldout, runner, shapes_eval, surprisal
from tests.conftest import ROOT, tiny_config

TINY = os.path.join(ROOT, 'experiments', 'tiny.py')
STEP = 2
# Small enough for the test budget; every probe still sees several examples and batches.
EVAL_FLAGS = ['--config.eval.num_examples=3', '--config.eval.batch_size=2',
              '--config.eval.max_new_tokens=24', '--config.eval.sample_steps=2']


# ------------------------------------------------------------------------- detector

@pytest.mark.parametrize('size_px', [30, 32, 64])
@pytest.mark.parametrize('blur', [0.0, 0.5])
def test_detector_reads_rendered_scenes(size_px, blur):
  """>= 98 % per attribute on ground truth at the small config's 30 px and the builder's 64,
  sharp and blurred like generated pictures (Gaussian sigma 0.5 px at 30 px: the hard-mask
  kind features read 96 % there, small triangles as squares)."""
  rng = np.random.default_rng(size_px)
  tally = shapes_eval.Tally()
  for _ in range(300):
    scene = shapes.sample_scene(rng, max_shapes=4)
    picture = shapes.render(scene, size_px)
    if blur:
      picture = np.asarray(Image.fromarray(picture).filter(
          ImageFilter.GaussianBlur(blur * size_px / 30)))
    shapes_eval.score(detector.detect(picture), scene, tally, drawn=True)
  rates = tally.rates('detector')
  for name in shapes_eval.ATTRIBUTES + ('count', 'relation'):
    assert rates[f'detector/{name}'] >= 0.98, (name, rates)


def test_detector_sees_nothing_on_background_and_reads_noisy_pictures():
  blank = np.zeros((32, 32, 3), np.uint8) + np.asarray(shapes.BACKGROUND, np.uint8)
  assert detector.detect(blank) == ()
  rng = np.random.default_rng(0)
  scene = shapes.Scene((shapes.Shape('triangle', 'blue', 'large', 'top', 'left'),
                        shapes.Shape('circle', 'yellow', 'large', 'bottom', 'right')))
  noisy = shapes.render(scene, 64) + rng.normal(0, 20, (64, 64, 3))
  assert detector.detect(np.clip(noisy, 0, 255).astype(np.uint8)) == scene.shapes


# -------------------------------------------------------------------------- scoring

def _scene(*specs, relation=None):
  return shapes.Scene(tuple(shapes.Shape(*s) for s in specs), relation)


def test_score_matches_shapes_in_any_order_and_counts_misses():
  label = _scene(('circle', 'red', 'large', 'top', 'left'),
                 ('square', 'blue', 'small', 'bottom', 'right'), relation='above')
  perfect = shapes_eval.Tally()
  shapes_eval.score(label.shapes[::-1], label, perfect, stated_relation='below')  # reversed caption
  assert set(perfect.rates('x').values()) == {1.0}

  wrong = shapes_eval.Tally()
  guess = (shapes.Shape('circle', 'green', 'large', 'top', 'left'),)     # one shape, wrong colour
  shapes_eval.score(guess, label, wrong, stated_relation=None)
  assert wrong.rates('x') == {'x/colour': 0.0, 'x/count': 0.0, 'x/kind': 0.5, 'x/position': 0.5,
                              'x/relation': 0.0, 'x/scene': 0.0, 'x/size': 0.5}

  extra = shapes_eval.Tally()   # the two right shapes and two more
  shapes_eval.score(label.shapes + (shapes.Shape('circle', 'red', 'large', 'middle', 'left'),
                                    shapes.Shape('square', 'blue', 'small', 'middle', 'right')),
                    label, extra, stated_relation='above')
  assert extra.rates('x')['x/kind'] == 0.5 and extra.rates('x')['x/count'] == 0.0

  false_relation = shapes_eval.Tally()
  shapes_eval.score(label.shapes, label, false_relation, stated_relation='below')
  assert false_relation.rates('x')['x/relation'] == 0.0

  unparseable = shapes_eval.Tally()
  shapes_eval.score(None, label, unparseable)
  assert set(unparseable.rates('x').values()) == {0.0}


class _Reader:
  """A stand-in VLM for the naming probe: continues a question with `answer(question)`."""

  def __init__(self, answer):
    from dvlm_jax.data import tokenizer
    self.tokenizer, self.answer = tokenizer.ByteTokenizer(), answer

  def describe(self, images, questions, **_):
    assert len(images) == len(questions) and all(questions)
    return [self.answer(q) for q in questions]


def test_naming_probe_reads_the_word_after_the_true_caption_prefix():
  """Each shape is asked twice: its kind after 'a SIZE COLOUR', its position after its
  kind. A reader that knows the scene scores 1; one that always says 'circle at the
  top' names circles (and top-centre shapes) only; per-kind rates show which."""
  labels = [_scene(('circle', 'red', 'large', 'top', 'center'),
                   ('square', 'blue', 'small', 'bottom', 'right'), relation='above'),
            _scene(('triangle', 'white', 'small', 'middle', 'left'))]
  scenes = [(label, shapes.render(label, 30)) for label in labels]
  captions = [shapes.caption(label) for label in labels]

  def knows(question):
    caption = next(c for c in captions if c.startswith(question))
    return '  ' + caption[len(question):].upper()        # spacing and case do not matter
  probe = shapes_eval.ShapesEval(tiny_config())
  probe.chance = {}
  assert set(probe._naming(_Reader(knows), scenes).values()) == {1.0}
  says_top_circles = lambda q: ' at the top.' if q.endswith(shapes.KINDS) else ' circle'
  rates = probe._naming(_Reader(says_top_circles), scenes)
  assert rates == {'shapes/named/kind': 1 / 3, 'shapes/named/kind_circle': 1.0,
                   'shapes/named/kind_square': 0.0, 'shapes/named/kind_triangle': 0.0,
                   'shapes/named/position': 1 / 3}
  assert probe.chance['shapes/named/kind_square'] == 1 / 3
  assert shapes.read_position('at the bottom right and') == ('bottom', 'right')
  assert shapes.read_position('at the bottom') == ('bottom', 'center')
  assert shapes.read_position('nowhere') is None


def test_score_of_pictures_checks_the_drawn_relation():
  label = _scene(('circle', 'red', 'large', 'top', 'left'),
                 ('square', 'blue', 'small', 'top', 'right'), relation='left of')
  swapped = (shapes.Shape('circle', 'red', 'large', 'top', 'right'),
             shapes.Shape('square', 'blue', 'small', 'top', 'left'))
  tally = shapes_eval.Tally()
  shapes_eval.score(swapped, label, tally, drawn=True)
  rates = tally.rates('g')
  assert rates['g/relation'] == 0.0 and rates['g/position'] == 0.0 and rates['g/colour'] == 1.0


def test_glyph_answers_are_read_separately():
  assert shapes_eval.read_glyph_answer('the letter Q made of small red circles') == (
      'Q', 'circle', 'red')
  assert shapes_eval.read_glyph_answer('the digit 7 made of small pink squares') == (
      '7', 'square', None)
  assert shapes_eval.read_glyph_answer('the letter QQ made of blue') == (None, None, None)


# ----------------------------------------------------------------- data and plumbing

def test_built_records_are_the_computed_ones(tmp_path):
  from dvlm_jax.data import build as build_lib
  for name in ('shapes', 'glyphs'):
    build_lib.build_dataset(name, str(tmp_path), train_size=1, validation_size=3, test_size=3)
  config = tiny_config()
  config.data.source = 'tfds'
  config.data.data_dir = str(tmp_path)
  read = heldout.HeldOut(config)
  config.data.data_dir = str(tmp_path / 'not_built')
  computed = heldout.HeldOut(config)
  for split in ('validation', 'test'):
    for (a, image_a), (b, image_b) in zip(read.scenes(split, 3), computed.scenes(split, 3)):
      assert a == b and np.array_equal(image_a, image_b)
    for (a, image_a), (b, image_b) in zip(read.glyphs(split, 3), computed.glyphs(split, 3)):
      assert a == b and np.array_equal(image_a, image_b)
  # A mixture that trains on the one-shape world is evaluated on it, built or computed.
  build_lib.build_dataset('shapes_single', str(tmp_path), train_size=1, validation_size=3,
                          test_size=3)
  config.data.mixture = (('shapes_single', 1.0),)
  for data_dir in (str(tmp_path), str(tmp_path / 'not_built')):
    config.data.data_dir = data_dir
    single = heldout.HeldOut(config).scenes('test', 3)
    assert [len(s.shapes) for s, _ in single] == [1, 1, 1]
    assert [s for s, _ in single] == [splits.scene_for(0, 'test', i, 1) for i in range(3)]
  builtin_scenes = heldout.HeldOut(tiny_config()).scenes('test', 3)
  assert [s for s, _ in builtin_scenes] == [splits.scene_for(0, 'test', i, 2)
                                            for i in range(3)]
  assert builtin_scenes[0][1].shape == (16, 16, 3)   # the tiny model's finest scale


def test_scene_edits_and_auroc():
  rng = np.random.default_rng(0)
  scene = shapes.Scene((shapes.Shape('circle', 'red', 'small', 'top', 'left'),
                        shapes.Shape('square', 'blue', 'large', 'bottom', 'right')), 'above')
  recoloured = surprisal.edit_scene(scene, 'recolour', rng)
  assert recoloured.shapes[0].colour != 'red' and recoloured.shapes[1:] == scene.shapes[1:]
  moved = surprisal.edit_scene(scene, 'move', rng)
  assert moved.shapes[0].cell not in {s.cell for s in scene.shapes} and moved.relation is None
  assert surprisal.edit_scene(scene, 'remove', rng).shapes == scene.shapes[1:]
  assert surprisal.edit_scene(shapes.Scene(scene.shapes[:1]), 'remove', rng) is None
  assert surprisal.auroc([3, 4], [1, 2]) == 1.0 and surprisal.auroc([1, 2], [3, 4]) == 0.0
  assert surprisal.auroc([1, 2], [1, 2]) == 0.5


def test_eval_config_is_validated():
  for name in evaluation.EVALUATORS:   # every registered name resolves to an evaluator
    assert callable(evaluation.evaluator_class(name).run)
  for key, value, message in (('evaluators', "'shapes','bleu'", "unknown ['bleu']"),
                              ('num_examples', '0', 'int >= 1'),
                              ('temperature', '-1', 'must be >= 0'),
                              ('split', 'train', 'validation | test')):
    with pytest.raises(ConfigError, match=f"eval.{key}'.*{re.escape(message)}"):
      cfg_lib.load(TINY, [f'eval.{key}={value}'])


def test_due_steps():
  config = tiny_config()
  config.train.steps = 10
  config.eval.every, config.eval.at_end = 4, True
  assert [s for s in range(1, 11) if runner.due(config, s)] == [4, 8, 10]
  config.eval.every, config.eval.at_end = 0, False
  assert not any(runner.due(config, s) for s in range(1, 11))


def test_summary_table_and_grid():
  table = runner.summary_table({'shapes/caption/kind': 0.5, 'text/loss': 3.25},
                               {'shapes/caption/kind': 1 / 3})
  lines = table.splitlines()
  assert lines[0].split() == ['metric', 'value', 'chance']
  assert lines[2].split() == ['shapes/caption/kind', '0.5000', '0.3333']
  assert lines[3].split() == ['text/loss', '3.2500']
  g = grid.Grid(('a', 'b'))
  g.add('a long prompt ' * 10, [np.zeros((8, 8, 3), np.uint8), np.full((32, 32, 3), 255, np.uint8)])
  picture = grid.render(g)
  assert picture.dtype == np.uint8 and picture.shape[0] > 96 and picture.shape[1] > 2 * 96


def test_what_a_variant_cannot_do_is_recorded_as_not_applicable(tmp_path):
  """Ablations without the diffusion head or the imun head, and the Janus-like baseline,
  evaluate: metrics they cannot be asked for are n/a with the reason, the rest is scored
  (the baseline's generation and inpainting too, patch by patch). With eval.shapes.self_correct
  the dream model also generates with calibrated self-correction; the baseline cannot."""
  from dvlm_jax.inference.api import VLM
  from tests.conftest import build, image_batch
  cases = [  # (config, evaluators, n/a groups)
      (tiny_config('no_diffusion'), ('inpainting', 'shapes'), {'inpainting', 'shapes/generation'}),
      (tiny_config('no_masked_modelling'), ('masked_patch_psnr',), {'masked_patch_psnr'}),
      # The baseline generates and inpaints patch by patch: only the imun metric and the
      # re-drawing of whole scales are n/a.
      (variants.janus_like(tiny_config()), ('masked_patch_psnr', 'inpainting', 'shapes'),
       {'masked_patch_psnr', 'shapes/generation_sc'}),
      (tiny_config(), ('shapes',), set())]
  for config, evaluators, expected in cases:
    config.eval.evaluators, config.eval.num_examples = evaluators, 2
    config.eval.shapes.self_correct = True
    config.eval.max_new_tokens = 8
    _, params = build(config, image_batch(config))
    metrics = runner.evaluate(VLM.from_params(config, params), config, 0, str(tmp_path))
    record = _record(str(tmp_path), '0.json')
    assert set(record['not_applicable']) == expected, record['not_applicable']
    assert all(reason for reason in record['not_applicable'].values())
    assert ('shapes' in evaluators) == ('shapes/caption/colour' in metrics)
    for group, prefix in (('inpainting', 'inpaint/'), ('shapes/generation', 'shapes/generation/'),
                          ('masked_patch_psnr', 'recon/'),
                          ('shapes/generation_sc', 'shapes/generation_sc/')):
      asked = group.split('/')[0] in evaluators
      # (self-corrected generation also waits on plain generation)
      possible = asked and group not in expected and 'shapes/generation' not in expected
      assert any(k.startswith(prefix) for k in metrics) == possible, (group, sorted(metrics))
    if 'shapes/generation_sc/resampled' in metrics:
      assert 0.0 <= metrics['shapes/generation_sc/resampled'] <= 1.0
      assert 'shapes/generation_sc/threshold_2' in metrics
      assert metrics['shapes/self_correction/colour'] == pytest.approx(
          metrics['shapes/generation_sc/colour'] - metrics['shapes/generation/colour'])
    assert ('shapes/self_correction/scene' in metrics) == ('shapes/generation_sc/scene' in metrics)
    table = runner.summary_table(metrics, record['chance'], record['not_applicable'])
    assert sum(' n/a ' in line for line in table.splitlines()) == len(expected)


# ------------------------------------------------------------ on a tiny trained run

def _training_time_evaluation(workdir):
  """What the training loop's hook does at STEP, for a train.py that does not call it yet.

  The train state is restored exactly as `dvlm_jax.train` holds it (sharded on the
  run's mesh) and its params go through `runner.maybe_evaluate`, the loop's call.
  """
  import jax
  from dvlm_jax import sharding
  from dvlm_jax.data import layout
  from dvlm_jax.inference import loading
  from dvlm_jax.training import checkpoints
  from dvlm_jax.training import optimizer as optim_lib
  from dvlm_jax.training import step as step_lib
  config = loading.read_config(workdir)
  ctx = sharding.Context.from_config(config)
  spec = layout.LayoutConfig.from_config(config).batch_spec(config.data.batch_size)
  spec = {k: jax.ShapeDtypeStruct(shape, dtype) for k, (shape, dtype) in spec.items()}
  abstract, _ = step_lib.abstract_state(
      loading.build_model(config), optim_lib.make_optimizer(config), spec,
      jax.random.key(config.train.seed), ctx)
  ckpt = checkpoints.Checkpointer(workdir, config)
  state, step = ckpt.restore_latest(abstract)
  ckpt.close()
  assert step == STEP
  assert runner.maybe_evaluate(config, state.params, STEP - 1, workdir, ctx) is None  # not due
  assert runner.maybe_evaluate(config, state.params, STEP, workdir, ctx) is not None


@pytest.fixture(scope='session')
def run_dir(tmp_path_factory):
  """A tiny run trained for STEP steps that evaluated at STEP; its record moved aside to
  eval/STEP.training.json so that the command's own record can be compared with it."""
  workdir = str(tmp_path_factory.mktemp('eval_run') / 'run')
  proc = subprocess.run(
      [sys.executable, '-m', 'dvlm_jax.train', '--config', TINY, '--workdir', workdir,
       f'--config.train.steps={STEP}', f'--config.checkpoint.every={STEP}',
       '--config.model.core_layers=1', f'--config.eval.every={STEP}'] + EVAL_FLAGS,
      capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert proc.returncode == 0, proc.stderr[:3000] + '\n...\n' + proc.stderr[-3000:]
  record = os.path.join(workdir, 'eval', f'{STEP}.json')
  if not os.path.exists(record):
    _training_time_evaluation(workdir)
  os.replace(record, os.path.join(workdir, 'eval', f'{STEP}.training.json'))
  return workdir


def _record(workdir, name):
  with open(os.path.join(workdir, 'eval', name)) as f:
    return json.load(f)


def test_every_evaluator_reports_its_metrics(run_dir):
  record = _record(run_dir, f'{STEP}.training.json')
  metrics, chance = record['metrics'], record['chance']
  assert record['step'] == STEP and set(record['seconds']) == set(evaluation.EVALUATORS)
  # TextPerplexity: an (almost) untrained LM is near the uniform guess, and consistent.
  for kind in ('loss', 'caption_loss'):
    assert 0.5 * chance[f'text/{kind}'] < metrics[f'text/{kind}'] < 2 * chance[f'text/{kind}']
    assert np.isclose(metrics[f'text/{kind.replace("loss", "perplexity")}'],
                      np.exp(metrics[f'text/{kind}']))
  # HeldOutLoss: per patch grid of the tiny model (2 x 2, 4 x 4).
  assert {k for k in metrics if k.startswith('loss/')} == {'loss/imgen/2x2', 'loss/imgen/4x4'}
  assert all(0 < metrics[k] < 10 for k in metrics if k.startswith('loss/'))
  # MaskedPatchPSNR: per scale of the tiny model (2 scales), PSNR and MSE agree.
  for k in (1, 2):
    psnr, mse = metrics[f'recon/psnr/scale_{k}'], metrics[f'recon/mse/scale_{k}']
    assert 0 < psnr < 60 and 0 < mse < 1 and f'recon/psnr/scale_{k}' in chance
  assert 'recon/psnr/scale_3' not in metrics
  # ShapesEval: accuracies in [0, 1] with a chance level next to each.
  for probe in ('caption', 'generation'):
    for name in shapes_eval.ATTRIBUTES + ('count', 'scene'):
      assert 0 <= metrics[f'shapes/{probe}/{name}'] <= 1
      assert 0 <= chance[f'shapes/{probe}/{name}'] <= 1
  assert 0 <= metrics['shapes/caption/unparseable'] <= 1
  # The naming probe: per-kind rates for the kinds the few test scenes hold.
  named = {k for k in metrics if k.startswith('shapes/named/')}
  assert {'shapes/named/kind', 'shapes/named/position'} < named
  assert named <= {'shapes/named/kind', 'shapes/named/position'} | {
      f'shapes/named/kind_{kind}' for kind in shapes.KINDS}
  assert all(0 <= metrics[k] <= 1 and k in chance for k in named)
  for name in ('glyph', 'kind', 'colour', 'both', 'unparseable'):
    assert 0 <= metrics[f'shapes/glyphs/{name}'] <= 1
  assert chance['shapes/glyphs/glyph'] == 1 / 36
  # SurprisalAUROC: an AUROC per edit, chance 0.5.
  for kind in surprisal.EDITS:
    assert 0 <= metrics[f'surprisal/auroc_{kind}'] <= 1
    assert chance[f'surprisal/auroc_{kind}'] == 0.5
  assert metrics['surprisal/clean'] > 0
  # InpaintingError: pixels outside the mask are untouched.
  assert metrics['inpaint/outside_changed'] == 0
  assert 0 < metrics['inpaint/psnr'] < 60 and 0 <= metrics['inpaint/shape_recovered'] <= 1


def test_command_reproduces_the_training_time_numbers(run_dir):
  # Another process, parameters restored from the checkpoint onto one device.
  proc = subprocess.run([sys.executable, '-m', 'dvlm_jax.eval', '--workdir', run_dir,
                         '--step', str(STEP)], capture_output=True, text=True, cwd=ROOT,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[:3000] + '\n...\n' + proc.stderr[-3000:]
  out = proc.stdout
  record = _record(run_dir, f'{STEP}.json')
  training = _record(run_dir, f'{STEP}.training.json')
  assert record['metrics'] == training['metrics']
  assert record['chance'] == training['chance']
  assert 'shapes/caption/kind' in out and 'chance' in out.splitlines()[1]
  for name, path in record['grids'].items():
    assert os.path.isfile(path) and path.endswith('.png'), name
    assert f'grid  {path}' in out
  assert {os.path.basename(p) for p in record['grids'].values()} >= {
      'shapes_generation.png', 'shapes_captions.png', 'glyphs_captions.png',
      'masked_patch_psnr_scales.png', 'inpainting_cells.png'}
  tensorboard = os.path.join(run_dir, 'tensorboard')
  events = b''.join(open(os.path.join(tensorboard, f), 'rb').read() for f in os.listdir(tensorboard))
  assert b'eval/shapes/caption/kind' in events and b'eval/recon/psnr/scale_2' in events


def _tensorboard_images(tensorboard_dir):
  """{(tag, step): decoded picture} of every image summary in the event files of a directory."""
  import io
  import struct
  from tensorboardX.proto import event_pb2
  images = {}
  for name in sorted(os.listdir(tensorboard_dir)):
    with open(os.path.join(tensorboard_dir, name), 'rb') as f:
      data = f.read()
    offset = 0
    while offset < len(data):   # TFRecord: u64 length, u32 crc, payload, u32 crc
      (length,) = struct.unpack('<Q', data[offset:offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 16 + length
      for value in event.summary.value:
        if value.HasField('image'):
          images[value.tag, event.step] = np.asarray(
              Image.open(io.BytesIO(value.image.encoded_image_string)))
  return images


def test_training_evaluation_shows_its_grids_in_tensorboard(run_dir):
  """The evaluation during training writes each grid as a TensorBoard image at its step,
  the same picture as its PNG."""
  images = _tensorboard_images(os.path.join(run_dir, 'tensorboard'))
  record = _record(run_dir, f'{STEP}.training.json')
  assert {'shapes_captions', 'shapes_generation', 'glyphs_captions'} <= set(record['grids'])
  for name, path in record['grids'].items():
    picture = images[f'eval/{name}', STEP]
    np.testing.assert_array_equal(picture[..., :3], np.asarray(Image.open(path))[..., :3])


def test_command_rejects_model_overrides_and_missing_steps(run_dir, capsys):
  from dvlm_jax import eval as eval_cli
  assert eval_cli.main(['--workdir', run_dir, '--config.model.core_layers=3']) == 2
  assert 'only eval.* keys can be changed' in capsys.readouterr().err
  assert eval_cli.main(['--workdir', run_dir, '--step', '7']) == 2
  assert 'no checkpoint of step 7' in capsys.readouterr().err
  assert eval_cli.main(['--workdir', run_dir, '--ema']) == 2   # the run kept no EMA
  assert "no 'ema'" in capsys.readouterr().err
