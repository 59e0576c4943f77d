#!/usr/bin/env bash
# One command on a GPU machine (H100/H200: Python 3.12, jax 0.11.2 preinstalled, no internet): build against the
# installed jaxlib, run the test suite (every test on CPU and GPU, plus memcheck), and record the GPU benchmarks.
#   bash benchmarks/gpu.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/results}"
mkdir -p "$out"
python3 -m pip install --no-build-isolation -q .
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu-device.txt"
(cd tests && python3 -m pytest -q -x .. 2>&1 | tee "../$out/gpu-tests.log") || true
device=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr ' ' '-' | tr -cd '[:alnum:]-')
for dtype in float32 bfloat16; do
  python3 -m jaxseg.bench --device gpu --dtype "$dtype" --json "$out/gpu-$device-$dtype.json" \
    --plot "$out/gpu-$device-$dtype.png" --no-progress | tee "$out/gpu-$device-$dtype.txt"
  python3 -m jaxseg.bench --device gpu --dtype "$dtype" --flax-kernel --impls jaxseg,xla \
    --json "$out/gpu-$device-$dtype-flaxkernel.json" --no-progress | tee "$out/gpu-$device-$dtype-flaxkernel.txt"
done
