"""Inference command: image generation, understanding, inpainting and text from a run.

  python -m dvlm_jax.generate --workdir DIR [--step N] [--ema] --prompt TEXT --out img.png \\
      [--cfg_scale G] [--cfg_schedule constant|linear] [--steps N] [--temperature 1] [--seed 0] \\
      [--self_correct --surprise activation|pixel --threshold 0.5 --max_tries 3]
  python -m dvlm_jax.generate --workdir DIR --image PATH [--question TEXT] [--mode clean|surprisal]
  python -m dvlm_jax.generate --workdir DIR --inpaint PATH --mask PATH --out out.png [--prompt TEXT]
  python -m dvlm_jax.generate --workdir DIR --text PROMPT [--max_new_tokens 64]

Image generation also writes every scale side by side (upsampled) to OUT_STEM.scales.png.
A mask image is True (regenerate) where its grey value is above 127; it must have the
image's size. Errors (no workdir, no checkpoint, unreadable image) end with one line.
"""

from __future__ import annotations

import os
import sys

import numpy as np
from PIL import Image, UnidentifiedImageError

from dvlm_jax import backends
from dvlm_jax import cli


def parse_args(argv):
  p = cli.parser('python -m dvlm_jax.generate', __doc__)
  p.add_argument('--workdir', required=True, help='run directory of python -m dvlm_jax.train')
  p.add_argument('--step', type=int, default=None, help='checkpoint step (default: newest)')
  p.add_argument('--ema', action='store_true', help='restore the EMA parameters')
  mode = p.add_mutually_exclusive_group()
  mode.add_argument('--image', help='describe this image (caption, or answer --question)')
  mode.add_argument('--inpaint', help='regenerate the --mask region of this image')
  mode.add_argument('--text', help='continue this text')
  p.add_argument('--prompt', help='generate an image of this (alone), or the inpainting caption')
  p.add_argument('--out', help='output PNG (generation, inpainting)')
  p.add_argument('--mask', help='mask PNG for --inpaint (white = regenerate)')
  p.add_argument('--question', default=None)
  p.add_argument('--mode', choices=('clean', 'surprisal'), default='clean')
  p.add_argument('--max_new_tokens', type=int, default=64)
  p.add_argument('--top_k', type=int, default=0)
  p.add_argument('--top_p', type=float, default=1.0)
  p.add_argument('--cfg_scale', type=float, default=None,
                 help="classifier-free guidance (default: the run's eval.cfg_scale)")
  p.add_argument('--cfg_schedule', choices=('constant', 'linear'), default='constant')
  p.add_argument('--steps', type=int, default=None, help='diffusion steps (default: config)')
  p.add_argument('--temperature', type=float, default=None,
                 help="image noise scale (default: the run's eval.temperature) or text "
                      'temperature (default 0, greedy)')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--self_correct', action='store_true')
  p.add_argument('--surprise', choices=('activation', 'pixel'), default='activation',
                 help='what self-correction measures (docs/inference.md)')
  p.add_argument('--threshold', type=float, default=0.5)
  p.add_argument('--max_tries', type=int, default=3)
  args = p.parse_args(argv)
  # --prompt alone generates an image; with --inpaint it is the caption.
  args.generate = args.image is None and args.inpaint is None and args.text is None
  if args.generate and args.prompt is None:
    p.error('choose one of --prompt (image generation), --image, --inpaint, --text')
  if args.prompt is not None and (args.image is not None or args.text is not None):
    p.error('--prompt goes with image generation or --inpaint')
  if (args.generate or args.inpaint) and not args.out:
    p.error('--out is required for image generation and inpainting')
  if args.inpaint and not args.mask:
    p.error('--inpaint needs --mask')
  return args


def read_image(path: str, mode: str = 'RGB') -> np.ndarray:
  """A uint8 image from a file; ValueError naming the file when it cannot be read."""
  try:
    with Image.open(path) as im:
      im.load()
      if mode == 'RGB' and im.mode in ('RGBA', 'LA', 'P'):
        im = im.convert('RGBA')
        return np.asarray(im)    # composited over white by the layout, as in training
      return np.asarray(im.convert(mode))
  except FileNotFoundError as e:
    raise ValueError(f'cannot read image {path!r}: no such file') from e
  except (UnidentifiedImageError, OSError) as e:
    raise ValueError(f'cannot read image {path!r}: {e}') from e


def save_png(path: str, image: np.ndarray) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(image).save(path)


def scale_strip(scales: list[np.ndarray]) -> np.ndarray:
  """Every scale upsampled (nearest: patches stay visible) to the finest size, side by side."""
  side = scales[-1].shape[0]
  ups = [np.asarray(Image.fromarray(s).resize((side, side), Image.Resampling.NEAREST))
         for s in scales]
  gap = np.full((side, 2, 3), 255, np.uint8)
  parts = []
  for i, u in enumerate(ups):
    parts += [gap, u] if i else [u]
  return np.concatenate(parts, axis=1)


def strip_path(out: str) -> str:
  stem, _ = os.path.splitext(out)
  return stem + '.scales.png'


def run(args) -> None:
  from dvlm_jax.inference.api import VLM   # jax starts here, after the arguments are read
  # Inputs are read before the model so that a bad path fails in a second, not after loading.
  image = read_image(args.image or args.inpaint) if (args.image or args.inpaint) else None
  mask = read_image(args.mask, 'L') > 127 if args.inpaint else None
  vlm = VLM.from_workdir(args.workdir, step=args.step, ema=args.ema)
  image_opts = dict(cfg_schedule=args.cfg_schedule, steps=args.steps, seed=args.seed,
                    self_correct=args.self_correct, surprise=args.surprise,
                    threshold=args.threshold, max_tries=args.max_tries)
  # Unset guidance and noise scale: the run's own (eval.cfg_scale, eval.temperature).
  image_opts.update({k: v for k, v in (('cfg_scale', args.cfg_scale),
                                       ('temperature', args.temperature)) if v is not None})
  text_opts = dict(max_new_tokens=args.max_new_tokens, seed=args.seed,
                   temperature=args.temperature or 0.0, top_k=args.top_k, top_p=args.top_p)
  if args.generate:
    g = vlm.generate_images([args.prompt], **image_opts)[0]
    save_png(args.out, g.image)
    save_png(strip_path(args.out), scale_strip(g.scales))
    print(f'wrote {args.out} and {strip_path(args.out)} (step {vlm.step}); surprise per scale '
          + ' '.join(f'{s:.3f}' for s in g.surprise) + '; tries ' + ' '.join(map(str, g.tries)))
  elif args.inpaint:
    if mask.shape != image.shape[:2]:
      raise ValueError(f'mask {args.mask!r} is {mask.shape[1]}x{mask.shape[0]} pixels, image '
                       f'{args.inpaint!r} is {image.shape[1]}x{image.shape[0]}: sizes must match')
    prompts = None if args.prompt is None else [args.prompt]
    out = vlm.inpaint([image], [mask], prompts, **image_opts)[0]
    save_png(args.out, out)
    print(f'wrote {args.out} (step {vlm.step}); {int(mask.sum())} pixels regenerated')
  elif args.image:
    questions = None if args.question is None else [args.question]
    text_opts.pop('max_new_tokens')
    out = vlm.describe([image], questions, mode=args.mode, max_new_tokens=args.max_new_tokens,
                       with_surprise=args.mode == 'surprisal', **text_opts)[0]
    if args.mode == 'surprisal':   # the caption, then how much each scale surprised the model
      text, surprise = out
      print(text)
      print('surprise per scale ' + ' '.join(f'{x:.4f}' for x in surprise))
    else:
      print(out)
  else:
    print(vlm.generate_text([args.text], **text_opts)[0])


def main(argv=None) -> int:
  from dvlm_jax.training.checkpoints import CheckpointError
  args = parse_args(sys.argv[1:] if argv is None else argv)
  backends.start()
  return cli.guarded(lambda: run(args), (FileNotFoundError, ValueError, CheckpointError))


if __name__ == '__main__':
  sys.exit(main())
