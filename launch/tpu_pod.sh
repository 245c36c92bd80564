#!/usr/bin/env bash
# Starts the same train command on every worker of a Cloud TPU pod slice.
#   launch/tpu_pod.sh TPU_NAME ZONE --config experiments/b1.py --workdir gs://BUCKET/runs/b1 [--config.x=y]
# Every worker needs this repository at ~/dvlm_jax with `make venv` done (e.g. with
# `--worker=all --command "cd ~/dvlm_jax && make venv"` once). JAX finds the other workers
# through the TPU runtime (DVLM_DISTRIBUTED=auto). The workdir must be shared (a bucket).
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 TPU_NAME ZONE --config experiments/NAME.py --workdir DIR [--config.x=y ...]" >&2
  exit 2
fi
tpu=$1 zone=$2
shift 2
args=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all \
  --command "cd ~/dvlm_jax && DVLM_DISTRIBUTED=auto .venv/bin/python -m dvlm_jax.train${args}"
