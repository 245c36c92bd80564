"""B1 dream VLM, about 1B parameters, for GPUs: 256-px images at 4 scales, rows of 4096.

  python -m dvlm_jax.train --config experiments/b1.py --workdir runs/b1
  python -m dvlm_jax.train --config experiments/b1.py --workdir runs/b1 --config.model.remat=full

The optional argument names one ablation from `dvlm_jax.variants.ABLATIONS`
(`variants.ablate`: removed modality blocks give their depth and parameters to the core).
"""

from dvlm_jax import config as cfg_lib
from dvlm_jax import variants


def get_config(arg=None):
  c = variants.apply_size(cfg_lib.defaults(), 'b1')
  c.diffusion.width = 1536
  c.diffusion.depth = 3
  c.image.patch_size = 16
  c.image.scales = (2, 4, 8, 16)
  # Procedural shapes documents at the image size, no files (what the benchmarks time);
  # the built sets (data.mixture) with --config.data.source=tfds (docs/data.md).
  c.data.source = 'builtin'
  c.data.seq_len = 4096
  c.data.batch_size = 256
  # Per-row stream capacities (docs/architecture.md): a row holds 5 images (3400 image
  # tokens, the layout's bound); built-in rows carry <= 700 text tokens and ~860 image
  # targets (<= 1460), so the packer moves the few rows past 1024 targets to other rows
  # (no extra padding at 32+ rows). benchmarks/flops_audit.py: 1.096 x the useful FLOPs.
  c.data.max_text_tokens = 768
  c.data.max_text_targets = 768
  c.data.max_image_targets = 1024
  c.model.dtype = 'bfloat16'
  c.model.remat = 'dots'
  c.optim.lr = 3e-4
  c.optim.warmup_steps = 2000
  c.train.steps = 200_000
  c.train.log_every = 50
  if arg:
    variants.ablate(c, arg)
  return c
