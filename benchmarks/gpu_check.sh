#!/usr/bin/env bash
# One prepared GPU check (one GPU, under 9.5 minutes in all, each step under its own timeout and
# skipped when the time left would not hold it). Most important first:
#   1. SimCLR ResNet-18 (cifar stem) at 28x28, batch 512, bf16: images/s and the step split into data,
#      augmentation, forward+backward and optimizer, eager; then with train.compile (backbone + augmentation)
#   2. the default recipe at width 1.0 for train.minutes=1.25 (needs Fashion-MNIST: $SELFSUP_DATA), with
#      train.compile=false and =true: how much of the budget it used, the loop's seconds, images/s, kNN;
#      then the augmentation alone at 28 and 224 px, its kernels counted (with BEFORE also that checkout's),
#      and the late finiteness check on CUDA (benchmarks/late_check.py: a NaN at step 2 stops the run there)
#   3. ResNet-18 and ResNet-50 at 224x224 (imagenet stem), batch 256; then ResNet-50 streamed from a packed
#      store of 8,000 photo-like JPEGs with 14 data workers (issue 24: at least 85% of the synthetic row);
#      MAE ViT-S/16 at 224x224; the 28 px step with CUDA graphs (compile mode reduce-overhead); the late
#      check again under CUDA graphs
#   4. (if time is left) a clm step (GPT, 6 x 512, 512 tokens, batch 32) on packed and on padded rows, and
#      mlm on padded rows: eager, compiled and under CUDA graphs (benchmarks/text_step.py)
# Throughput lines go to $OUT/throughput.jsonl, augmentation lines to $OUT/augment.jsonl, the late checks to
# $OUT/late-check.jsonl, the text steps to $OUT/text-step.jsonl, everything else to $OUT/gpu-check.log.
#   bash benchmarks/gpu_check.sh            (needs .venv with a CUDA build of torch, or PYTHON=...)
#   BEFORE=path/to/older/checkout bash benchmarks/gpu_check.sh    also times that checkout's step 1, eager, and
#                                                                  its augmentation
set -uo pipefail          # not -e: a step that fails or times out is logged, and the next one runs
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
out=${OUT:-gpu-check}
runs=${RUNS:-/tmp/selfsup-gpu-runs}
mkdir -p "$out" "$runs"
log="$out/gpu-check.log"
deadline=$(( $(date +%s) + ${SECONDS_TOTAL:-570} ))
export PYTHONUNBUFFERED=1

step() {        # step LIMIT_S COMMAND...: run it under min(LIMIT_S, the time left), logging what happened
  local limit=$1; shift
  local left=$(( deadline - $(date +%s) - 5 ))
  (( left < limit )) && limit=$left
  if (( limit < 20 )); then echo "== skipped (time is up): $*" >> "$log"; return; fi
  echo "== $(date +%T) (limit ${limit} s) $*" >> "$log"
  local start=$(date +%s)
  timeout "$limit" "$@" >> "$log" 2>&1
  local rc=$?
  echo "== rc $rc after $(( $(date +%s) - start )) s" >> "$log"
}

throughput() {  # throughput PYTHONPATH ARGS...
  local path=$1; shift
  step "${LIMIT:-90}" env PYTHONPATH="$path" "$PY" "$path/benchmarks/throughput.py" --device cuda --precision bf16 \
    --steps 20 --warmup 5 --out "$out/throughput.jsonl" "$@"
}

budget_run() {  # budget_run COMPILE
  step 200 env PYTHONPATH="$PWD" "$PY" -m selfsup pretrain --quiet --runs-dir "$runs" --name "budget-compile-$1" \
    backbone.width=1.0 train.device=cuda train.minutes=1.25 "train.compile=$1" "eval.after_pretrain=[knn]" \
    "eval.labels=[100%]" eval.report=false
  cat "$runs/budget-compile-$1/train_summary.json" >> "$log" 2>/dev/null
  grep -h '"online_knn_top1"' "$runs/budget-compile-$1/metrics.jsonl" 2>/dev/null | tail -1 >> "$log"
}

{ nvidia-smi; "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
  torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"; } >> "$log" 2>&1

augmentation() {  # augmentation PYTHONPATH: the views of a training step alone, 28 and 224 px, kernels counted
  local path=$1
  for shape in "--batch 512 --size 28" "--batch 256 --size 224"; do
    step 60 env PYTHONPATH="$path" "$PY" "$PWD/benchmarks/augment.py" --device cuda $shape --channels 3 \
      --per-image-repeats 0 --repeats 50 --out "$out/augment.jsonl"
  done
}

small=(--method simclr --backbone resnet18 --stem cifar --size 28 --channels 3 --batch 512)
throughput "$PWD" "${small[@]}"
budget_run false
LIMIT=180 throughput "$PWD" "${small[@]}" --compile
budget_run true
augmentation "$PWD"
# the late finiteness check's CUDA path (pinned copy, event): a NaN at step 2 must stop the run naming it
step 60 env PYTHONPATH="$PWD" "$PY" benchmarks/late_check.py --device cuda --out "$out/late-check.jsonl"
[ -n "${BEFORE:-}" ] && augmentation "$BEFORE"
[ -n "${BEFORE:-}" ] && throughput "$BEFORE" "${small[@]}"
throughput "$PWD" --method simclr --backbone resnet18 --stem imagenet --size 224 --channels 3 --batch 256
throughput "$PWD" --method simclr --backbone resnet50 --stem imagenet --size 224 --channels 3 --batch 256
step 120 env PYTHONPATH="$PWD" "$PY" benchmarks/store.py --count 8000 --folder "$runs/photos" --store "$runs/photos.store"
step 240 env PYTHONPATH="$PWD" "$PY" benchmarks/stream.py --store "$runs/photos.store" --steps 60 --workers 14 \
  --size 224 --batch-size 256 backbone.name=resnet50 train.device=cuda train.precision=bf16
LIMIT=180 throughput "$PWD" "${small[@]}" --compile --compile-mode reduce-overhead
LIMIT=180 throughput "$PWD" --method simclr --backbone resnet18 --stem imagenet --size 224 --channels 3 --batch 256 \
  --compile
throughput "$PWD" --method mae --backbone vit_small --patch-size 16 --size 224 --channels 3 --batch 256
step 150 env PYTHONPATH="$PWD" "$PY" benchmarks/late_check.py --device cuda --compile --compile-mode reduce-overhead \
  --out "$out/late-check.jsonl"
# A GPT-style clm step on packed and on padded rows, and mlm on padded rows: eager, compiled, CUDA graphs
for text in "--method clm --padded 0" "--method clm --padded 1" "--method mlm --padded 1"; do
  step 150 env PYTHONPATH="$PWD" "$PY" benchmarks/text_step.py --device cuda --precision bf16 $text \
    --dim 512 --depth 6 --heads 8 --length 512 --batch 32 --compile-modes default reduce-overhead \
    --out "$out/text-step.jsonl"
done
echo "== done $(date +%T)" >> "$log"
echo "wrote $log, $out/throughput.jsonl, $out/augment.jsonl, $out/late-check.jsonl and $out/text-step.jsonl"
