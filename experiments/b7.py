"""B7 dream VLM, about 7B parameters, for TPU pod slices: b1's data and layout (256-px
images at 4 scales, rows of 4096) on a 4096-wide, 32-layer core, sharded FSDP x tensor.

Slice: v5p-64 (32 chips: fsdp 8 x tensor 4); on v5p-128 fsdp grows to 16 (mesh.fsdp=-1).
Check it fits before a launch (docs/performance.md has the figures):

  python -m dvlm_jax.train --config experiments/b7.py --workdir runs/b7   # on the slice
  python -m dvlm_jax.compile --config experiments/b7.py --topology v5p-64
  launch/tpu_pod.sh TPU_NAME ZONE --config experiments/b7.py --workdir gs://BUCKET/runs/b7

Sharding plan (dvlm_jax/config.py default_logical_rules):
  fsdp    splits every weight's model dimension and the optimizer state with it (ZeRO-3),
          and the batch rows: each layer's weights are gathered before use, gradients
          reduce-scattered after; memory for the 7B state falls as 1/fsdp.
  tensor  splits attention heads (q/o: 32 heads, k/v: 8), the MLP width, the vocabulary
          and the diffusion head's width (Megatron-style): 4 keeps every split whole (8 kv
          heads / 4) and its all-reduces inside a chip's ICI neighbours.
  data    1: within one slice FSDP already replicates nothing; with --num_slices N set
          mesh.data=N so the slices only all-reduce gradients over DCN.
  expert  1: a dense model.
"""

import os

from dvlm_jax import config as cfg_lib

_B1 = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'b1.py')


def get_config(arg=None):
  c = cfg_lib.load(_B1 + (f':{arg}' if arg else ''))
  c.model.update(d_model=4096, n_heads=32, n_kv_heads=8, head_dim=128, mlp_dim=11008,
                 core_layers=32)
  c.diffusion.width = 2048
  c.data.batch_size = 128
  c.model.remat = 'full'
  c.mesh.fsdp = -1
  c.mesh.tensor = 4
  return c
