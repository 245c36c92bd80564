"""Surprisal as a result: does the model notice a picture that contradicts its caption?

Each test scene's caption, then its picture: clean, or edited (one shape recoloured, moved
to an empty cell, or removed). A picture's score is how much more its caption makes it
surprising: its surprise after the caption minus its surprise alone (`VLM.surprise`:
surprisal-mode masks, the core output at masked M_k against U_k, averaged over scales;
the same masks everywhere for a scene). The difference takes out what makes a picture
hard to predict whatever the text says (a busy picture against an empty one), so that
what is left is the caption's say; it should be higher for the edited pictures.

  surprisal/auroc_recolour   P(edited picture's score above a clean one's), per edit
  surprisal/auroc_move       (0.5 = the model does not notice; ties count half)
  surprisal/auroc_remove
  surprisal/clean            mean surprise of the clean pictures after their captions
  surprisal/caption_gain     mean of (alone - after the caption) over clean pictures: how
                             much the caption makes its own picture less surprising

A recolour the model misses while it notices moves says the caption's colours do not
reach the image positions (what generation colour at chance says too).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dvlm_jax.data import shapes
from dvlm_jax.evaluation.base import Evaluator
from dvlm_jax.evaluation.grid import Grid

EDITS = ('recolour', 'move', 'remove')


def edit_scene(scene: shapes.Scene, kind: str, rng: np.random.Generator) -> shapes.Scene | None:
  """The scene with its first shape recoloured, moved to an empty cell, or removed (None:
  nothing left). The relation sentence is dropped where the edit would falsify it."""
  first, rest = scene.shapes[0], scene.shapes[1:]
  if kind == 'recolour':
    colour = rng.choice([c for c in shapes.COLOUR_NAMES if c != first.colour])
    return dataclasses.replace(scene, shapes=(dataclasses.replace(first, colour=str(colour)),)
                               + rest)
  if kind == 'move':
    taken = {s.cell for s in scene.shapes}
    free = [(r, c) for r in range(3) for c in range(3) if (r, c) not in taken]
    row, col = free[int(rng.integers(len(free)))]
    moved = dataclasses.replace(first, row=shapes.ROWS[row], col=shapes.COLS[col])
    return shapes.Scene((moved,) + rest)
  if kind == 'remove':
    return shapes.Scene(rest) if rest else None
  raise ValueError(f'unknown edit {kind!r}; choose from {EDITS}')


def auroc(positive, negative) -> float:
  """P(a positive score > a negative one), ties counting half (Mann-Whitney U / n m)."""
  positive, negative = np.asarray(positive, float), np.asarray(negative, float)
  greater = (positive[:, None] > negative[None, :]).sum()
  ties = (positive[:, None] == negative[None, :]).sum()
  return float((greater + 0.5 * ties) / (positive.size * negative.size))


class SurprisalAUROC(Evaluator):
  """Surprise of edited against clean pictures after their captions, as AUROC per edit."""

  def run(self, vlm, step: int) -> dict[str, float]:
    del step
    self.chance, self.grids = {}, {}
    scenes = self.heldout.scenes(self.split, self.n)
    captions = [shapes.caption(label) for label, _ in scenes]
    size = scenes[0][1].shape[0]
    surprise = lambda images, texts: np.nanmean(vlm.surprise(images, texts, seed=self.seed), 1)
    score = lambda images: surprise(images, captions) - surprise(images, None)
    clean_images = [image for _, image in scenes]
    after = surprise(clean_images, captions)
    clean = after - surprise(clean_images, None)
    metrics = {'surprisal/clean': float(np.mean(after)),
               'surprisal/caption_gain': float(-np.mean(clean))}
    grid = Grid(('clean',) + EDITS)
    edited = {}
    for kind in EDITS:
      rng = np.random.default_rng([self.seed, EDITS.index(kind)])
      pictures = []
      for label, image in scenes:
        scene = edit_scene(label, kind, rng)
        pictures.append(shapes.render(scene, size) if scene is not None
                        else np.broadcast_to(np.uint8(shapes.BACKGROUND), image.shape).copy())
      edited[kind] = pictures
      metrics[f'surprisal/auroc_{kind}'] = auroc(score(pictures), clean)
      self.chance[f'surprisal/auroc_{kind}'] = 0.5
    for i in range(min(4, len(scenes))):
      grid.add(captions[i], [scenes[i][1]] + [edited[k][i] for k in EDITS])
    self.grids['edits'] = grid
    return metrics
