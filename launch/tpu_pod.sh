#!/usr/bin/env bash
# Starts the same train command on every worker of a Cloud TPU pod slice, after checking
# on this machine that the train step compiles for that slice and fits its HBM.
#   launch/tpu_pod.sh TPU_NAME ZONE SLICE --config experiments/b1.py --workdir gs://BUCKET/runs/b1 [--config.x=y]
# SLICE is the slice's accelerator type, as `gcloud compute tpus tpu-vm create
# --accelerator-type` names it (v5p-32, v5litepod-16, v4-8, v6e-256): step 1 runs
#   python -m dvlm_jax.compile --topology SLICE --config ... [--config.x=y]
# (libtpu compiles for the slice on this host, a few minutes for a 7B model); a config that
# does not fit ends there with one line and exit 2, and nothing starts on the pod.
# SKIP_COMPILE_CHECK=1 skips it.
# Every worker needs this repository at ~/dvlm_jax with `make venv` done (e.g. with
# `--worker=all --command "cd ~/dvlm_jax && make venv"` once). JAX finds the other workers
# through the TPU runtime (DVLM_DISTRIBUTED=auto). The workdir must be shared (a bucket).
set -euo pipefail
if [ $# -lt 5 ]; then
  echo "usage: $0 TPU_NAME ZONE SLICE --config experiments/NAME.py --workdir DIR [--config.x=y ...]" >&2
  exit 2
fi
tpu=$1 zone=$2 slice=$3
shift 3
here=$(cd "$(dirname "$0")/.." && pwd)
if [ "${SKIP_COMPILE_CHECK:-0}" != 1 ]; then
  check=()   # the train arguments less the workdir, which the compile does not take
  skip=0
  for a in "$@"; do
    if [ $skip = 1 ]; then skip=0; continue; fi
    case $a in
      --workdir) skip=1 ;;
      --workdir=*) ;;
      *) check+=("$a") ;;
    esac
  done
  (cd "$here" && python -m dvlm_jax.compile --topology "$slice" "${check[@]}")
fi
args=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all \
  --command "cd ~/dvlm_jax && DVLM_DISTRIBUTED=auto .venv/bin/python -m dvlm_jax.train${args}"
