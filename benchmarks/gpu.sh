#!/usr/bin/env bash
# The one command of a lent GPU session (H100/H200, Python 3.12, jax 0.11.2, torch, no internet): installs the
# wheel built here (dist/, benchmarks/GPU.md), then, each step with its own time limit inside one overall budget
# (7.5 minutes by default), most important first:
#   1. the GPU conformance subset: every pass, dtype and kernel path against float64 CPU references, both kernel
#      orientations, the weight gradient's determinism, the custom calls in the compiled program
#   2. the HLO check on the GPU (tests/test_cuda.py): our three calls in a compiled gradient
#   3. python -m jaxseg.bench --device gpu --dtype bfloat16 against XLA, the naive form and PyTorch (cuDNN), with
#      the card's matrix rate measured in the same run
#   4. compute-sanitizer memcheck over every kernel path (tests/test_cuda.py)
#   5. the same bench in float32, then the forward of both dtypes in XLA's other kernel orientation (flax's)
#   6. what time is left: the GPU variants of the conformance tests, the EB-GAN train step against flax's
# Results: $OUT/gpu-results.tar.gz (every JSON, log and test report) and $OUT/run.log, refreshed after each step,
# so that a run cut short keeps what it did. Without OUT they go to benchmarks/results/gpu-run.
#   bash benchmarks/gpu.sh
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$repo/benchmarks/results/gpu-run}
work=$(mktemp -d /tmp/jaxseg-gpu.XXXX)
mkdir -p "$out"
exec > >(tee "$work/run.log") 2>&1
deadline=$((SECONDS + ${JAXSEG_GPU_BUDGET:-450}))
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.5
python=${PYTHON:-python3}

pack() {
  tar czf "$out/gpu-results.tar.gz" -C "$work" --exclude=./.hypothesis . 2>/dev/null
  cp "$work/run.log" "$out/run.log"
}
trap pack EXIT

# step NAME SECONDS COMMAND...: runs COMMAND (from $work, away from the source tree, which would shadow the
# installed package) for at most SECONDS or the time left, records its exit status, packs the results.
step() {
  local name=$1 want=$2 left=$((deadline - SECONDS))
  shift 2
  local limit=$((want < left ? want : left))
  if [ "$limit" -lt 15 ]; then
    echo "== $name: skipped, ${left}s left" | tee -a "$work/steps.txt"
    return
  fi
  echo "== $name (at most ${limit}s)"
  local t0=$SECONDS
  (cd "$work" && timeout --kill-after=10 "$limit" "$@")
  echo "$name: exit $? after $((SECONDS - t0))s" | tee -a "$work/steps.txt"
  pack
}

echo "== install"
site=$(mktemp -d /tmp/jaxseg-site.XXXX)
if ls "$repo"/dist/jaxseg-*-cp312-*.whl >/dev/null 2>&1; then
  $python -m pip install -q --no-index --no-deps --no-compile --target "$site" "$repo"/dist/jaxseg-*-cp312-*.whl
  for extra in "$repo"/dist/mlxtend-*.whl; do
    [ -e "$extra" ] && $python -m pip install -q --no-index --no-deps --no-compile --target "$site" "$extra"
  done
fi
export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
if ! (cd "$work" && $python -c "import jaxseg._jaxseg_cuda"); then
  echo "the carried wheel does not import here: building on the machine"
  (cd "$repo" && $python -m pip install -q --no-build-isolation --no-deps --target "$site" \
     -Ccmake.define.JAXSEG_CUDA=ON -Cbuild-dir=/tmp/jaxseg-build .) || echo "build failed"
fi

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  (cd "$work" && $python - <<'EOF'
import jax, jaxlib, jaxseg, sys
print("python", sys.version.split()[0], "jax", jax.__version__, "jaxlib", jaxlib.__version__, "jaxseg",
      jaxseg.__version__, "devices", jax.devices())
try:
  import torch
  print("torch", torch.__version__, torch.version.cuda, "cudnn", torch.backends.cudnn.version())
except ImportError:
  print("no torch")
EOF
  )
} > "$work/environment.txt" 2>&1
cat "$work/environment.txt"

step conformance 90 $python "$repo/benchmarks/gpu_check.py" --budget 75 --json "$work/gpu-check.json"
step hlo 30 $python -m pytest "$repo/tests/test_cuda.py" -k "gpu and hlo" -p no:cacheprovider -q -rA \
  --junitxml="$work/pytest-hlo.xml"
bench() {  # bench NAME SECONDS ARGS...
  local name=$1 want=$2
  shift 2
  step "bench-$name" "$want" $python -m jaxseg.bench --device gpu --repeats 5 --budget 0.1 --no-progress \
    --json "$work/bench-$name.json" "$@"
}
bench bfloat16 100 --dtype bfloat16
step memcheck 80 env XLA_PYTHON_CLIENT_PREALLOCATE=false $python -m pytest "$repo/tests/test_cuda.py" \
  -k "gpu and memcheck" -p no:cacheprovider -q -rA --junitxml="$work/pytest-memcheck.xml"
bench float32 75 --dtype float32 --impls jaxseg,xla,torch
# XLA's other orientation matters for the forward (cuDNN's backward-data or a zero-inserted input).
bench bfloat16-flax-kernel 30 --dtype bfloat16 --flax-kernel --impls jaxseg,xla --passes forward
bench float32-flax-kernel 25 --dtype float32 --flax-kernel --impls jaxseg,xla --passes forward
step conformance-tests 60 $python -m pytest "$repo/tests/test_conformance.py" -k "gpu and (test_grid or wide)" \
  -p no:cacheprovider -q -x --junitxml="$work/pytest-conformance.xml"
if (cd "$work" && $python -c "import mlxtend") 2>/dev/null; then
  step ebgan 60 $python "$repo/examples/ebgan/train.py" --compare --compare-steps 10 --quiet --out "$work/ebgan"
fi
echo "== done in ${SECONDS}s"
