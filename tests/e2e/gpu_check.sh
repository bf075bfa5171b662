#!/bin/bash
# The GPU check, for a machine with a CUDA GPU, PyTorch with CUDA and no package registry.
# Prepare here first (from the repository root):
#   bash ../shared/gpu/pack-onnxruntime-gpu.sh            # onnxruntime-gpu, in parts .ortgpu/p0..pN
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_17_x86_64 -d .whl \
#     lark pydantic pydantic_core annotated-types typing-inspection   # what dlspec needs beside
# then copy every part into /tmp/p on the GPU machine and run, from the repository root there:
#   bash tests/e2e/gpu_check.sh
# It checks where every train-step node runs, gradients against the CPU provider and CUDA-graph
# replay against node-by-node steps (the digits example, then a depthwise model), trains the
# digits example with --device cuda, evaluates it, benchmarks against PyTorch on the GPU and
# lists resnet18's GPU kernels; then the same for mixed precision (precision fp16 / bf16):
# placement, losses against float32 over an epoch, CUDA-graph replay, `dlspec train` with
# `precision fp16`, and the step against PyTorch's autocast + GradScaler; logs go to $OUT.
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
out=${OUT:-/tmp/gpu_check}; mkdir -p "$out"
mkdir -p /tmp/site && cat /tmp/p/part* | xz -d -T8 | tar -x -C /tmp/site || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:/tmp/site2:$PWD
nvidia-smi -L
python3 -c "import torch, onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
echo "== 1. placement, gradients, CUDA graph"
timeout 200 python3 tests/e2e/cuda_train_check.py --device cuda 2>&1 | tee "$out/check.log" | grep -v '^\s*$'
echo "== 1b. the same for depthwise and grouped convolutions"
timeout 100 python3 tests/e2e/cuda_train_check.py --device cuda --steps 10 --spec tests/e2e/digits_separable.dlspec \
  2>&1 | tee "$out/check_separable.log" | grep -v '^\s*$'
echo "== 2. dlspec train --device cuda, then eval"
( time timeout 200 python3 -m dlspec train examples/digits.dlspec --device cuda --out /tmp/runs/digits ) \
  > "$out/train_cuda.log" 2>&1
tail -9 "$out/train_cuda.log"
timeout 60 python3 -m dlspec eval /tmp/runs/digits 2>&1 | tail -2 | tee "$out/eval_cuda.log"
echo "== 3. train step against PyTorch on the GPU"
timeout 150 python3 bench/train_step_vs_torch.py --device cuda 2>&1 | tee "$out/bench.log"
echo "== 4. resnet18's GPU kernels"
timeout 100 python3 bench/gpu_kernels.py resnet18_cifar --rows 12 2>&1 | grep -v Warn | tee "$out/kernels.log"
echo "== 5. mixed precision: placement, an epoch's losses against float32, CUDA graph"
for p in fp16 bf16; do
  timeout 150 python3 tests/e2e/cuda_train_check.py --device cuda --precision $p 2>&1 \
    | tee "$out/check_$p.log" | grep -v '^\s*$'
done
echo "== 6. dlspec train --device cuda with precision fp16"
sed 's/^  seed      0$/  seed      0\n  precision fp16/' examples/digits.dlspec > /tmp/digits_fp16.dlspec
grep -q 'precision fp16' /tmp/digits_fp16.dlspec || echo "examples/digits.dlspec changed: no precision line added"
( time timeout 150 python3 -m dlspec train /tmp/digits_fp16.dlspec --device cuda --out /tmp/runs/digits_fp16 ) \
  > "$out/train_cuda_fp16.log" 2>&1
tail -9 "$out/train_cuda_fp16.log"
echo "== 7. the mixed-precision step against PyTorch AMP (autocast, GradScaler for fp16)"
for p in fp16 bf16; do
  timeout 200 python3 bench/train_step_vs_torch.py --device cuda --precision $p 2>&1 | tee "$out/bench_$p.log"
done
