#!/usr/bin/env bash
# Every GPU measurement of docs/performance.md, in one call, on one H100 / H200:
#
#   bash benchmarks/gpu_check.sh [PARTS] [OUT_DIR]
#
# PARTS (comma-separated, default all): env, attention (document scope, 2k..16k: every
# implementation checked against float32 XLA, values and gradients, then fwd+bwd timed
# against cuDNN causal flash attention), scopes (the text-in / image-in scopes at 4k),
# train (the b1 train step, bf16: attention x remat variants), tune (range-kernel tiles).
# Logs and JSON lines go to OUT_DIR (default $OUT, else gpu_check_out/):
#   gpu_check.log   everything printed, attention.jsonl, train_step.jsonl
# GPU_CHECK_BUDGET_S (default 540) bounds the whole run: a step that would start past it
# is skipped and named, so a lease never ends mid-way without a summary.
# Python packages missing on the machine may be carried as wheels in .whl/ (installed
# to /tmp/site first; see docs/performance.md).
# GPU_CHECK_SMOKE=1 runs every part on a CPU at tiny sizes (each benchmark's --smoke,
# one variant per loop): tests/test_gpu_check.py, so the script is known to run before a
# GPU lease is spent on it. PYTHON picks the interpreter (default python3).
set -u
parts=${1:-all}
out=${2:-${OUT:-gpu_check_out}}
budget=${GPU_CHECK_BUDGET_S:-540}
smoke=${GPU_CHECK_SMOKE:-0}
py=${PYTHON:-python3}
if ((smoke)); then
  train_smoke=(--smoke)
  # one short length, and the float32 checks only once (in the attention part)
  attention_smoke=(--smoke --lengths 256)
  scope_smoke=(--smoke --lengths 256 --no-check)
  train_variants=("auto dots")
  scopes=(text)
  tile_settings=(64,64,64,64,4,3)
else
  train_smoke=() attention_smoke=() scope_smoke=()
  # auto = pallas_gpu on GPUs; tokamax last: it did not build under jax 0.11.2 (docs/performance.md)
  train_variants=("auto dots" "auto full" "xla dots" "auto none" "tokamax dots")
  scopes=(text image)
  # around the tuned default (64,64,64,64, 4 warps, 3 stages), at the b1 length and at 16k
  tile_settings=(64,64,64,64,4,3 128,64,64,64,4,3 64,64,64,64,4,4 128,128,64,64,8,3)
fi
mkdir -p "$out"
log="$out/gpu_check.log"
export PYTHONUNBUFFERED=1
start=$SECONDS
cd "$(dirname "$0")/.."

want() { [[ $parts == all || ,$parts, == *,$1,* ]]; }

# step NAME LIMIT_S COMMAND...: run with a time limit inside the budget; print its summary.
step() {
  local name=$1 limit=$2; shift 2
  local left=$((budget - (SECONDS - start)))
  if ((left < 30)); then echo "--- $name: skipped (budget of ${budget}s spent)" | tee -a "$log"; return; fi
  ((limit > left)) && limit=$left
  echo "--- $name (limit ${limit}s): $*" >>"$log"
  local t0=$SECONDS
  timeout "$limit" "$@" >"$out/step.log" 2>&1
  local rc=$?
  cat "$out/step.log" >>"$log"
  echo "--- $name: rc=$rc in $((SECONDS - t0))s" | tee -a "$log"
  grep -E "^(L=|  [a-z]|  check|median step|backend|[a-z/0-9_.]+\.py on)|Error|error:" "$out/step.log" \
    | grep -v "^  File" | cut -c1-220 | tail -n 60
  rm -f "$out/step.log"
}

if [[ -d .whl ]] && ls .whl/*.whl >/dev/null 2>&1; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl >>"$log" 2>&1 && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}

if want env; then
  { date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
    "$py" -c "import jax, jaxlib, flax; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, 'flax', flax.__version__, jax.devices())"
    "$py" -c "import tokamax; print('tokamax', tokamax.__version__)"; } 2>&1 | tee -a "$log"
fi

if want attention; then
  step attention 300 "$py" benchmarks/attention.py ${attention_smoke[@]+"${attention_smoke[@]}"} \
    --json "$out/attention.jsonl"
fi

if want train; then
  for variant in "${train_variants[@]}"; do
    set -- $variant
    step "train_step $1 $2" 150 "$py" benchmarks/train_step.py --config experiments/b1.py \
      --batch_size 4 --dtype bfloat16 --attention "$1" --remat "$2" --steps 5 --warmup 2 \
      ${train_smoke[@]+"${train_smoke[@]}"} --json "$out/train_step.jsonl"
  done
fi

if want scopes; then
  for scope in "${scopes[@]}"; do
    step "attention scope $scope" 120 "$py" benchmarks/attention.py --scope "$scope" \
      --lengths 4096,16384 --check_max_len 4096 ${scope_smoke[@]+"${scope_smoke[@]}"} \
      --json "$out/attention.jsonl"
  done
fi

if want tune; then
  for tiles in "${tile_settings[@]}"; do
    step "range tiles $tiles" 90 "$py" benchmarks/attention.py --impls range,cudnn \
      --lengths 4096,16384 --no-check --range_blocks "$tiles" ${scope_smoke[@]+"${scope_smoke[@]}"} \
      --json "$out/attention.jsonl"
  done
fi
echo "--- done in $((SECONDS - start))s" | tee -a "$log"
