"""Small dream VLM, the CPU demo that `make train` runs (32-px images at 3 scales).

  python -m dvlm_jax.train --config experiments/small.py --workdir runs/small
  python -m dvlm_jax.train --config experiments/small.py:single_copy --workdir runs/small_1copy

The optional argument names one ablation from `dvlm_jax.config.ABLATIONS`.
"""

from dvlm_jax import config as cfg_lib


def get_config(arg=None):
  c = cfg_lib.apply_size(cfg_lib.defaults(), 'small')
  c.diffusion.width = 128
  c.diffusion.depth = 2
  c.image.patch_size = 4
  c.image.scales = (2, 4, 8)
  c.data.seq_len = 512
  c.data.batch_size = 8
  c.optim.lr = 2e-3
  c.optim.warmup_steps = 30
  c.train.steps = 300
  c.train.log_every = 25
  if arg:
    cfg_lib.apply_ablation(c, arg)
  return c


def get_sweep(arg=None):
  """The ablation study: the dream config, then each seed claim switched off alone.

    python launch/sweep.py --config experiments/small.py --workdir runs/ablations --run
  """
  del arg
  return [{}] + [{'arg': name} for name in sorted(cfg_lib.ABLATIONS)]
