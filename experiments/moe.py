"""MoE dream VLM: b1 with a mixture-of-experts core (8 experts of b1's MLP width, top 2
per token; about 4.6B parameters, 1.5B active per token), for TPU pod slices.

Slice: v5p-32 (16 chips: fsdp 4 x expert 4); on v5p-64 fsdp grows to 8 (mesh.fsdp=-1).

  python -m dvlm_jax.train --config experiments/moe.py --workdir runs/moe   # on the slice
  python -m dvlm_jax.compile --config experiments/moe.py --topology v5p-32
  launch/tpu_pod.sh TPU_NAME ZONE --config experiments/moe.py --workdir gs://BUCKET/runs/moe

expert splits the experts (2 per device at expert=4) and, with fsdp, the rows, so each
expert group routes its own tokens; fsdp splits every weight's model dimension as in b7.
"""

import os

from dvlm_jax import config as cfg_lib

_B1 = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'b1.py')


def get_config(arg=None):
  c = cfg_lib.load(_B1 + (f':{arg}' if arg else ''))
  c.model.moe_experts = 8
  c.model.moe_top_k = 2
  c.data.batch_size = 64
  c.model.remat = 'full'
  c.mesh.fsdp = -1
  c.mesh.expert = 4
  return c
