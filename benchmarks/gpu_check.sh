#!/usr/bin/env bash
# One prepared GPU check (single GPU, under 8 minutes): training throughput in bf16 of
#   SimCLR ResNet-18 at 32x32 (cifar stem) and at 224x224 (imagenet stem), and MAE ViT-S/16 at 224x224,
# each as JSON lines in ${OUT:-gpu-check}/throughput.jsonl, plus nvidia-smi and the torch build.
#   bash benchmarks/gpu_check.sh            (needs .venv with a CUDA build of torch, or PYTHON=...)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
out=${OUT:-gpu-check}
mkdir -p "$out"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
"$PY" -c "import torch, json; print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda,
  'gpu': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}))" | tee "$out/torch.json"
run() { timeout 150 "$PY" benchmarks/throughput.py --device cuda --precision bf16 --steps 20 --warmup 5 \
          --out "$out/throughput.jsonl" "$@" || echo "{\"failed\": \"$*\"}" >> "$out/throughput.jsonl"; }
run --method simclr --backbone resnet18 --stem cifar --size 32 --channels 3 --batch 512
run --method simclr --backbone resnet18 --stem imagenet --size 224 --channels 3 --batch 256
run --method mae --backbone vit_small --patch-size 16 --size 224 --channels 3 --batch 256
echo "wrote $out/throughput.jsonl"
