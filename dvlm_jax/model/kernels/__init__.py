"""Attention kernels behind `dvlm_jax.model.attention.attend`.

  range_attention  block-sparse Pallas/Triton kernel for GPUs (`pallas_gpu`), also run in
                   Pallas interpret mode anywhere (`pallas_interpret`, used by the CPU tests)
  splash           TPU splash attention with masks built from the same per-row ranges
"""
