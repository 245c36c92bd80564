"""Base dream VLM, about 300M parameters: 256-px images at 4 scales, rows of 4096.

  python -m dvlm_jax.train --config experiments/base.py --workdir runs/base
  python -m dvlm_jax.train --config experiments/base.py:no_out_blocks --workdir runs/base_noout

The optional argument names one ablation from `dvlm_jax.variants.ABLATIONS`
(`variants.ablate`: removed modality blocks give their depth and parameters to the core).
"""

from dvlm_jax import config as cfg_lib
from dvlm_jax import variants


def get_config(arg=None):
  c = variants.apply_size(cfg_lib.defaults(), 'base')
  c.diffusion.width = 1024
  c.diffusion.depth = 3
  c.image.patch_size = 16
  c.image.scales = (2, 4, 8, 16)          # 16 x 16 patches of 16 px = 256-px images
  # Procedural shapes documents at the image size, no files (what the benchmarks time);
  # the built sets (data.mixture) with --config.data.source=tfds (docs/data.md).
  c.data.source = 'builtin'
  c.data.seq_len = 4096
  c.data.batch_size = 64
  c.model.dtype = 'bfloat16'
  c.model.remat = 'dots'
  c.optim.lr = 3e-4
  c.optim.warmup_steps = 2000
  c.train.steps = 100_000
  c.train.log_every = 50
  if arg:
    variants.ablate(c, arg)
  return c
