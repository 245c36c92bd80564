"""Where a prompt's words stop on their way to the picture: linear probes of a trained run.

  python benchmarks/binding_probe.py --workdir runs/small [--prompts 768]

One-shape shapes scenes are laid out as training lays out generation (the caption, then
the picture with every M_k masked) and run through the model once. For each scene a
softmax-regression probe (fit on 2/3 of the scenes, scored on the rest) reads the shape's
kind, colour and size from hidden states at:

  cond             the diffusion condition (imgen-out) that draws the shape's cell at the
                   scale that is the world's 3 x 3 grid
  core@cell        the core's output at that masked cell
  core@kind_word   the core's output at the prompt's kind word
  core@phrase_end  the core's output at the last word of the prompt's position phrase

Chance is 1/3 (kind), 1/7 (colour), 1/2 (size). An attribute readable at the kind word but
not at the cell never reached the picture's tokens: the backbone did not bind it, whatever
the diffusion head can draw (docs/findings.md, "Kind: read with time, not drawn").

Then a word swap: one-shape prompts that differ in one word only (the kind, the colour, the
size or the position) are drawn at temperature 0 from the same start, and the mean absolute
pixel change (0-255) between the pictures says how much the picture listens to that word:
0 means the model draws the same picture whatever the word says.
"""

import argparse
import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from dvlm_jax import contract
from dvlm_jax.contract import COPY_MASKED, MODALITY_IMAGE
from dvlm_jax.data import builtin, layout, shapes
from dvlm_jax.data import tokenizer as tok
from dvlm_jax.inference.api import VLM

ATTRIBUTES = (('kind', shapes.KINDS), ('colour', shapes.COLOUR_NAMES), ('size', shapes.SIZES))
# The values a word swap cycles through, per attribute ((row, col) for positions).
SWAPS = {'kind': shapes.KINDS, 'colour': ('red', 'blue', 'yellow'), 'size': shapes.SIZES,
         'position': (('top', 'left'), ('middle', 'center'), ('bottom', 'right'))}
BATCH = 16


def hidden_states(vlm: VLM, n: int, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """Per probe site [n, d_model] states, and the [n, 3] attribute labels."""
  cfg = dataclasses.replace(vlm.layout, prompted_fully_masked=1.0, caption_dropout=0.0)
  if 3 not in cfg.scales:
    raise SystemExit(f'image.scales={cfg.scales}: the probe reads the cell of the scale that is '
                     "the shapes world's 3 x 3 grid (a scale of 3)")
  grid_scale = cfg.scales.index(3) + 1
  rng = np.random.default_rng(seed)
  apply = jax.jit(lambda p, b: vlm.model.apply({'params': p}, b, return_hidden=True))
  sites, labels = {'cond': [], 'core@cell': [], 'core@kind_word': [], 'core@phrase_end': []}, []
  size_px = contract.image_side(vlm.config)
  for _ in range(0, n, BATCH):
    scenes = [shapes.sample_scene(rng, max_shapes=1) for _ in range(BATCH)]
    docs = [[builtin.GENERATION_PROMPT + shapes.caption(s), shapes.render(s, size_px)]
            for s in scenes]
    rows = []   # one document per row, so that row r is scene r
    for doc in docs:
      row, stats = layout.make_batch([doc], cfg, vlm.tokenizer, rng, 1)
      if stats.documents != 1:
        raise SystemExit(f'a row of data.seq_len={cfg.seq_len} holds no one-shape document')
      rows.append(row)
    batch = {k: np.concatenate([row[k] for row in rows]) for k in rows[0]}
    out = apply(vlm.params, {k: jnp.asarray(v) for k, v in batch.items()})
    core, cond = np.asarray(out['hidden']['core']), np.asarray(out['hidden']['imgen_out'])
    for r, scene in enumerate(scenes):
      shape = scene.shapes[0]
      row, col = shape.cell
      coarse = np.flatnonzero((batch['scale'][r] == grid_scale) & (batch['copy'][r] == COPY_MASKED)
                              & (batch['modality'][r] == MODALITY_IMAGE))
      cell = coarse[row * 3 + col]
      tokens = batch['tokens'][r]
      image_start = int(np.flatnonzero(tokens == tok.IMG)[0])
      kind_word = int(np.flatnonzero(tokens[:image_start] ==
                                     vlm.tokenizer.encode(' ' + shape.kind)[-1])[-1])
      sites['cond'].append(cond[r, cell - cfg.target_shift])   # where the cell is predicted
      sites['core@cell'].append(core[r, cell])
      sites['core@kind_word'].append(core[r, kind_word])
      sites['core@phrase_end'].append(core[r, image_start - 2])  # '... bottom' '.' <IMG>
      labels.append([names.index(getattr(shape, a)) for a, names in ATTRIBUTES])
  return {k: np.asarray(v) for k, v in sites.items()}, np.asarray(labels)


def probe_accuracy(x: np.ndarray, y: np.ndarray, classes: int, steps: int = 500) -> float:
  """Held-out accuracy of an L2-regularised softmax regression (full-batch gradient descent)."""
  x = (x - x.mean(0)) / (x.std(0) + 1e-6)
  n = len(x) * 2 // 3
  xt, yt = jnp.asarray(x[:n]), jnp.asarray(y[:n])

  def loss(w):
    return -jnp.mean(jax.nn.log_softmax(xt @ w)[jnp.arange(n), yt]) + 1e-3 * jnp.sum(w * w)

  grad = jax.jit(jax.grad(loss))
  w = jnp.zeros((x.shape[1], classes))
  for _ in range(steps):
    w = w - 0.1 * grad(w)
  return float(np.mean(np.argmax(x[n:] @ np.asarray(w), axis=1) == y[n:]))


def word_swap(vlm: VLM, n: int, seed: int = 0) -> dict[str, float]:
  """Per attribute: the mean |pixel change| (0-255) between temperature-0 pictures of `n`
  one-shape prompts when only that attribute's word changes (one batch, one compile)."""
  rng = np.random.default_rng(seed)
  bases = [shapes.sample_scene(rng, max_shapes=1).shapes[0] for _ in range(n)]
  prompts = []
  for name, values in SWAPS.items():
    for shape in bases:
      for value in values:
        change = dict(zip(('row', 'col'), value)) if name == 'position' else {name: value}
        prompts.append(shapes.caption(shapes.Scene((dataclasses.replace(shape, **change),))))
  pictures = np.asarray([g.image for g in vlm.generate_images(prompts, temperature=0.0)],
                        np.float32).reshape(len(prompts), -1)
  out, start = {}, 0
  for name, values in SWAPS.items():
    group = pictures[start:start + n * len(values)].reshape(n, len(values), -1)
    start += n * len(values)
    out[name] = float(np.mean([np.abs(group[:, i] - group[:, j]).mean()
                               for i, j in itertools.combinations(range(len(values)), 2)]))
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--step', type=int, default=None)
  parser.add_argument('--prompts', type=int, default=768)
  parser.add_argument('--swaps', type=int, default=12, help='one-shape prompts per word swap')
  args = parser.parse_args()
  vlm = VLM.from_workdir(args.workdir, step=args.step)
  sites, labels = hidden_states(vlm, args.prompts)
  print(f'{args.workdir} step {vlm.step}, {len(labels)} one-shape prompts, held-out probe accuracy')
  print(f"{'site':<16}" + ''.join(f'{a:>8}' for a, _ in ATTRIBUTES))
  for site, x in sites.items():
    print(f'{site:<16}' + ''.join(f'{probe_accuracy(x, labels[:, i], len(names)):8.2f}'
                                  for i, (_, names) in enumerate(ATTRIBUTES)))
  swaps = word_swap(vlm, args.swaps)
  print(f'word swap, mean |pixel change| (0-255) of a temperature-0 picture, {args.swaps} prompts: '
        + ', '.join(f'{name} {change:.2f}' for name, change in swaps.items()))


if __name__ == '__main__':
  main()
