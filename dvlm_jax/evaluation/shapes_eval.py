"""ShapesEval: the shapes world as an evaluation with exact answers.

Probes on the held-out split (`eval.split`, default validation); `glyphs` is its own
evaluator (GlyphsEval), the other three are `shapes`:

  captions    describe each image (clean mode), read the text with
              `shapes.read_caption` (tolerant of case, whitespace, a missing
              period) and score it against the label scene per attribute; text
              with no readable shape list is a miss on every attribute and is
              also counted as `unparseable`;
  generation  draw each test caption, read the picture back with the
              deterministic `detector`, score the same way;
  naming      each test picture followed by its true caption cut before a shape's
              kind (then before its position): the word the model says next,
              greedily, scored against the shape (`shapes/named/*`). What the
              model sees, without its grammar or the order it lists shapes in;
              per kind, the share of shapes of that kind named right;
  self-correction   with `eval.shapes.self_correct`, generation again re-drawing the
              scales that surprise the model (`generation_sc/*`), and the change it
              makes per attribute (`self_correction/*`: with minus without);
  glyphs      describe glyph pictures (a large letter made of small shapes) and
              read both answers from the one caption: the letter (coarse view)
              and the small shapes' kind and colour (fine view).

Scoring (`score`): predicted shapes are matched one-to-one to the label's shapes
so as to agree on the most attributes (captions may list shapes in any order);
each attribute's accuracy is over the label's shapes plus the predicted shapes
left without a partner, and every unpaired shape (missing or added) is wrong on
every attribute. `count` is the share of scenes
with the right number of shapes; `relation` is scored on scenes whose caption
states one: a stated relation (captions) or the drawn geometry (pictures) must
be true of the matched shapes; `scene` needs everything right.

Chance levels come from the same scoring applied to independent random scenes
of the same distribution (a guesser that knows the grammar and the prior but not
the picture), averaged over several draws per example; for pictures the random
scenes are rendered and detected like generated ones.
"""

from __future__ import annotations

import collections
import re

import numpy as np
from scipy.optimize import linear_sum_assignment

from dvlm_jax import contract
from dvlm_jax.data import glyphs as glyphs_lib
from dvlm_jax.data import shapes
from dvlm_jax.evaluation import detector
from dvlm_jax.evaluation.grid import Grid
from dvlm_jax.evaluation.base import Evaluator
from dvlm_jax.inference.generation import Unsupported

ATTRIBUTES = ('kind', 'colour', 'size', 'position')
_CHANCE_DRAWS = 16     # random scenes per example for the chance levels
_GRID_ROWS = 16


def _agreement(a: shapes.Shape, b: shapes.Shape) -> dict[str, bool]:
  return {'kind': a.kind == b.kind, 'colour': a.colour == b.colour, 'size': a.size == b.size,
          'position': a.cell == b.cell}


def match(predicted, label) -> dict[int, int]:
  """label shape index -> predicted shape index, one-to-one, most agreeing attributes."""
  if not predicted or not label:
    return {}
  agree = np.asarray([[sum(_agreement(p, l).values()) for p in predicted] for l in label])
  rows, cols = linear_sum_assignment(-agree)
  return dict(zip(rows.tolist(), cols.tolist()))


class Tally:
  """Hits and totals per metric name; `rates()` gives the accuracies."""

  def __init__(self):
    self.hits = collections.Counter()
    self.totals = collections.Counter()

  def add(self, name: str, hit: bool) -> None:
    self.hits[name] += int(hit)
    self.totals[name] += 1

  def rates(self, prefix: str) -> dict[str, float]:
    return {f'{prefix}/{k}': self.hits[k] / self.totals[k] for k in sorted(self.totals)}


def score(predicted: tuple[shapes.Shape, ...] | None, label: shapes.Scene, tally: Tally, *,
          stated_relation: str | None = None, drawn: bool = False) -> None:
  """Adds one example to `tally` (see the module docstring).

  Args:
    predicted: the shapes read from the model's output, None when it was unparseable.
    label: the true scene.
    stated_relation: the relation the caption states about its first two shapes.
    drawn: the prediction is a picture: a relation is checked on the drawn geometry.
  """
  pairs = match(predicted or (), label.shapes)
  all_right = predicted is not None and len(predicted) == len(label.shapes)
  tally.add('count', all_right)
  for i, shape in enumerate(label.shapes):
    agree = _agreement(predicted[pairs[i]], shape) if i in pairs else dict.fromkeys(ATTRIBUTES, False)
    for name in ATTRIBUTES:
      tally.add(name, agree[name])
    all_right &= all(agree.values())
  # Shapes the model added are misses too: otherwise a picture full of shapes (or
  # noise read as shapes) would find a partner for every label shape.
  for _ in range(len(predicted or ()) - len(pairs)):
    for name in ATTRIBUTES:
      tally.add(name, False)
  if label.relation is not None:
    if drawn:
      # The picture must put the shapes matched to the label's first two where the
      # label's relation holds.
      ok = (0 in pairs and 1 in pairs and label.relation in shapes.true_relations(
          predicted[pairs[0]], predicted[pairs[1]]))
    else:
      # The stated relation, about the caption's first two shapes, must be true of the
      # label shapes they were matched to.
      by_predicted = {p: l for l, p in pairs.items()}
      ok = (stated_relation is not None and 0 in by_predicted and 1 in by_predicted
            and stated_relation in shapes.true_relations(label.shapes[by_predicted[0]],
                                                         label.shapes[by_predicted[1]]))
    tally.add('relation', ok)
    all_right &= ok
  tally.add('scene', all_right)


_GLYPH_RE = re.compile(r'the (?:letter|digit) ([A-Z0-9])(?![A-Za-z0-9])')
_SMALL_RE = re.compile(r'made of small ([a-z]+) (' + '|'.join(shapes.KINDS) + r')s\b')


def read_glyph_answer(text: str) -> tuple[str | None, str | None, str | None]:
  """(glyph, kind, colour) from a glyph caption; each is None when that part is unreadable.

  The two answers are read separately, so a model that names the letter but
  garbles the shapes still gets the letter counted.
  """
  glyph = _GLYPH_RE.search(text)
  small = _SMALL_RE.search(text)
  colour = small.group(1) if small and small.group(1) in shapes.COLOURS else None
  return (glyph.group(1) if glyph else None, small.group(2) if small else None, colour)


class ShapesEval(Evaluator):
  """Caption accuracy and generation accuracy (via the detector)."""

  def __init__(self, config):
    super().__init__(config)
    self.max_new_tokens = int(config.eval.max_new_tokens)
    self.self_correct = bool(config.eval.shapes.self_correct)
    self.surprise_percentile = float(config.eval.shapes.surprise_percentile)
    self.image_px = contract.image_side(config)   # what generation draws

  def _batches(self, items):
    for index, start in enumerate(range(0, len(items), self.batch_size)):
      yield self.seed + index, items[start:start + self.batch_size]

  def _describe(self, vlm, images, questions=None, max_new_tokens=None) -> list[str]:
    out = []
    for seed, chunk in self._batches(list(zip(images, questions or [''] * len(images)))):
      images_, questions_ = zip(*chunk)
      out += vlm.describe(list(images_), list(questions_), mode='clean',
                          max_new_tokens=max_new_tokens or self.max_new_tokens, seed=seed)
    return out

  def run(self, vlm, step: int) -> dict[str, float]:
    del step  # the numbers depend on the parameters and the seed only
    self.chance, self.grids = {}, {}
    scenes = self.heldout.scenes(self.split, self.n)
    metrics = self._captions(vlm, scenes)
    metrics.update(self._naming(vlm, scenes))
    try:
      metrics.update(self._generation(vlm, scenes))
    except Unsupported as e:   # e.g. a variant without the diffusion head
      self.not_applicable['shapes/generation'] = str(e)
      return metrics
    if self.self_correct:
      try:
        corrected = self._self_corrected(vlm, scenes)
      except Unsupported as e:   # e.g. the baseline, which draws patch by patch
        self.not_applicable['shapes/generation_sc'] = str(e)   # and self_correction/*
        return metrics
      metrics.update(corrected)
      # The change self-correction makes: the same prompts and noise, with and without it.
      for name in ATTRIBUTES + ('count', 'scene'):
        metrics[f'shapes/self_correction/{name}'] = (
            corrected[f'shapes/generation_sc/{name}'] - metrics[f'shapes/generation/{name}'])
    return metrics

  def _random_scenes(self, index: int):
    """The chance-level guesses for example `index`: fixed, independent of the model."""
    rng = np.random.default_rng([self.seed, index])
    return [shapes.sample_scene(rng, max_shapes=self.heldout.max_shapes)
            for _ in range(_CHANCE_DRAWS)]

  def _captions(self, vlm, scenes) -> dict[str, float]:
    texts = self._describe(vlm, [image for _, image in scenes])
    tally, chance = Tally(), Tally()
    grid = Grid(('image',))
    for i, ((label, image), text) in enumerate(zip(scenes, texts)):
      parsed = shapes.read_caption(text)
      tally.add('unparseable', parsed is None)
      score(parsed.shapes if parsed else None, label, tally,
            stated_relation=parsed.relation if parsed else None)
      for guess in self._random_scenes(i):
        score(guess.shapes, label, chance, stated_relation=guess.relation)
      if i < _GRID_ROWS:
        grid.add(f'model: {text!r}  truth: {shapes.caption(label)!r}', [image])
    self.grids['captions'] = grid
    self.chance.update(chance.rates('shapes/caption'))
    return tally.rates('shapes/caption')

  def _naming(self, vlm, scenes) -> dict[str, float]:
    images, questions, truths = [], [], []
    for label, image in scenes:
      text = shapes.caption(label)
      for shape in label.shapes:
        start = text.index(shapes.describe(shape))   # each shape's phrase is unique
        prefix = f'{text[:start]}a {shape.size} {shape.colour}'
        for name, question in (('kind', prefix), ('position', f'{prefix} {shape.kind}')):
          images.append(image)
          questions.append(question)
          truths.append((name, shape))
    # The longest answer (a position phrase) in tokens, and a token more.
    longest = max(len(vlm.tokenizer.encode(' ' + p)) for p in shapes.POSITION_PHRASES.values())
    answers = self._describe(vlm, images, questions, max_new_tokens=longest + 1)
    tally = Tally()
    for (name, shape), answer in zip(truths, answers):
      if name == 'kind':
        words = answer.split()
        said = words[0].strip('.,').lower() if words else ''
        tally.add('kind', said == shape.kind)
        tally.add(f'kind_{shape.kind}', said == shape.kind)
      else:
        tally.add('position', shapes.read_position(answer) == (shape.row, shape.col))
    rates = tally.rates('shapes/named')
    self.chance.update({name: 1 / len(shapes.KINDS) for name in rates if '/kind' in name})
    self.chance['shapes/named/position'] = 1 / len(shapes.POSITION_PHRASES)
    return rates

  def _self_corrected(self, vlm, scenes) -> dict[str, float]:
    """Generation again with self-correction, its thresholds the `surprise_percentile` of
    the surprise of training pictures with their captions; `resampled`: the share of
    (image, scale) draws that were drawn again."""
    train = self.heldout.scenes('train', self.n)
    thresholds = vlm.calibrate_surprise([image for _, image in train],
                                        [shapes.caption(label) for label, _ in train],
                                        percentile=self.surprise_percentile)
    metrics = self._generation(vlm, scenes, prefix='shapes/generation_sc', self_correct=True,
                               threshold=thresholds, max_tries=3)
    for k, value in enumerate(thresholds):
      metrics[f'shapes/generation_sc/threshold_{k + 1}'] = value
    return metrics

  def _generation(self, vlm, scenes, prefix: str = 'shapes/generation',
                  **correction) -> dict[str, float]:
    prompts = [shapes.caption(label) for label, _ in scenes]
    generated = []
    for seed, chunk in self._batches(prompts):
      generated += vlm.generate_images(list(chunk), cfg_scale=self.cfg_scale, steps=self.steps,
                                       temperature=self.temperature, seed=seed, **correction)
    tally, chance = Tally(), Tally()
    grid = Grid(('truth',) + tuple(f'scale {k + 1}' for k in range(len(generated[0].scales))))
    for i, ((label, _), prompt, out) in enumerate(zip(scenes, prompts, generated)):
      found = detector.detect(out.image)
      score(found, label, tally, drawn=True)
      for guess in self._random_scenes(i):
        score(detector.detect(shapes.render(guess, self.image_px)), label, chance, drawn=True)
      if i < _GRID_ROWS:
        read = ', '.join(shapes.describe(s) for s in found) or 'nothing'
        grid.add(f'prompt: {prompt}  detected: {read}',
                 [shapes.render(label, self.image_px)] + list(out.scales))
    self.grids[prefix.split('/')[-1]] = grid
    self.chance.update(chance.rates(prefix))
    rates = tally.rates(prefix)
    if correction:
      rates[f'{prefix}/resampled'] = float(np.mean([t > 1 for g in generated for t in g.tries]))
    return rates


class GlyphsEval(ShapesEval):
  """The glyphs probe: the letter (coarse view) and the small shapes (fine view) of glyph
  pictures, read from one caption. Its own evaluator, so that a run without glyphs in its
  data (the make-train demo) does not spend time on a probe it can only fail. Shares
  ShapesEval's captioning (`_describe`)."""

  def run(self, vlm, step: int) -> dict[str, float]:
    del step
    self.chance, self.grids = {}, {}
    examples = self.heldout.glyphs(self.split, self.n)
    texts = self._describe(vlm, [image for _, image in examples])
    tally = Tally()
    grid = Grid(('image',))
    for i, ((label, image), text) in enumerate(zip(examples, texts)):
      glyph, kind, colour = read_glyph_answer(text)
      tally.add('glyph', glyph == label.glyph)
      tally.add('kind', kind == label.kind)
      tally.add('colour', colour == label.colour)
      tally.add('both', glyph == label.glyph and kind == label.kind)
      tally.add('unparseable', _glyph_caption(text) is None)
      if i < _GRID_ROWS:
        grid.add(f'model: {text!r}  truth: {glyphs_lib.caption(label)!r}', [image])
    self.grids['captions'] = grid
    # A uniform guess from the vocabularies (held-out combinations are spread evenly).
    n_glyphs, n_kinds = len(glyphs_lib.GLYPHS), len(shapes.KINDS)
    self.chance.update({'shapes/glyphs/glyph': 1 / n_glyphs, 'shapes/glyphs/kind': 1 / n_kinds,
                        'shapes/glyphs/colour': 1 / len(shapes.COLOUR_NAMES),
                        'shapes/glyphs/both': 1 / (n_glyphs * n_kinds)})
    return tally.rates('shapes/glyphs')


def _glyph_caption(text: str) -> glyphs_lib.Glyph | None:
  try:
    return glyphs_lib.parse_caption(text.strip())
  except ValueError:
    return None
