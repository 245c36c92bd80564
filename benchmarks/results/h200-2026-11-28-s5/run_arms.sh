#!/bin/bash
# One device call: (1) the b1 train step after #9 (stages on their own positions),
# (2) small.py training arms for #14, PAR at a time on the one GPU, each with eval.
# Usage: bash benchmarks/results/h200-2026-11-28-s5/run_arms.sh BUDGET_S PAR [smoke]
# (carry .whl: grain, array_record, portpicker, tensorboardX, ml_collections wheels).
# Call 2 ran this file as it is (`run_arms.sh 215 3`, eval on 64 scenes). Call 1 ran
# `B1=1 run_arms.sh 555 8` with EXAMPLES=128 and these 16 arms: base_s0..s3,
# steps6000_s0, steps2400_s0, igw3_s0/s1/s2 (loss.imgen_weight=3), dwide_s0/s1
# (diffusion.width=256 depth=3), gen07_s0/s1 (data.builtin_generation=0.7),
# pallas_s0 (model.attention=auto), igw3dwide_s0, steps2400igw3_s0.
set -u
budget=${1:-480}; par=${2:-8}; smoke=${3:-}
cd "$(dirname "$0")/../../.."
out=${OUT:-/tmp/gpuout}; mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
if [[ -z $smoke ]]; then
  $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    > "$out/pip.log" 2>&1 && export PYTHONPATH=/tmp/site || { echo pip failed; cat "$out/pip.log"; exit 1; }
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
start=$SECONDS
$py -c "import jax, flax, grain; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"

if [[ -z $smoke && -n ${B1:-} ]]; then
  echo "=== b1 train step auto dots bs4"
  timeout 110 $py benchmarks/train_step.py --config experiments/b1.py --batch_size 4 --dtype bfloat16 \
    --attention auto --remat dots --steps 5 --warmup 2 --json "$out/train_step.jsonl" > "$out/b1.log" 2>&1
  echo "rc=$? in $((SECONDS - start))s"; grep -E "median|tokens|MFU|memory|rror" "$out/b1.log" | tail -12
  examples=${EXAMPLES:-64}
else
  examples=4
fi
[[ -n $smoke ]] || examples=${EXAMPLES:-64}

runs=runs_gpu; mkdir -p $runs
common=(--config.data.source=builtin --config.eval.evaluators=shapes --config.eval.num_examples=$examples
        --config.model.attention=xla --config.train.log_every=25 --config.checkpoint.every=100000)
arms=(
  "dwide_s0 diffusion.width=256 diffusion.depth=3"
  "dwide2000_s0 diffusion.width=256 diffusion.depth=3 train.steps=2000"
  "base_s0"
)
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.09
[[ -n $smoke ]] && arms=("${arms[@]:0:1}")
run_arm() {
  local name=$1; shift
  local left=$((budget - (SECONDS - start)))
  if ((left < 60)); then echo "skip $name (${left}s left)"; return; fi
  local ov=()
  for kv in "$@"; do ov+=("--config.$kv"); done
  if [[ -n $smoke ]]; then ov+=(--config.train.steps=3 --config.model.attention=xla); fi
  local t0=$SECONDS
  timeout $((left - 15)) $py -m dvlm_jax.train --config experiments/small.py --workdir $runs/$name \
    "${common[@]}" "${ov[@]}" > $runs/$name.log 2>&1
  echo "$name rc=$? $((SECONDS - t0))s"
}
i=0
for arm in "${arms[@]}"; do
  while (($(jobs -rp | wc -l) >= par)); do sleep 2; done
  run_arm $arm &
  sleep 1
done
wait
echo "=== arms done at $((SECONDS - start))s"
$py benchmarks/results/h200-2026-11-28-s5/summ_arms.py $runs/* > "$out/arms.txt" 2>&1; cat "$out/arms.txt"
tar czf "$out/arms.tgz" --exclude=checkpoints --exclude=tensorboard $runs
