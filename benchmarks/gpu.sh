#!/usr/bin/env bash
# The one command of a lent GPU session (H100/H200, Python 3.12, the image's jax, torch, no internet): installs
# the wheel built here (dist/, benchmarks/GPU.md), then, each step with its own time limit inside one overall
# budget (JAXSEG_GPU_BUDGET, 480 s by default: the call is run with timeout_s=560), most important first:
#   1. gpu_check exact + overflow: every pass, dtype, path and tile width bit for bit against the CPU executor on
#      integer-valued operands, with NaN canaries at each operand's start; 3xTF32 near float32's maximum
#   2. compute-sanitizer memcheck, racecheck, synccheck, initcheck on a small workload that takes every kernel
#      path (refused on gVisor machines, the H200 kind: detected and recorded, not failed)
#   3. gpu_check accuracy: random operands against float64 references, with the error bound derived in
#      gpu_check.py; the weight gradient's determinism; our calls in the compiled program
#   4. ncu (where it reads counters): issue activity, shared-memory bank conflicts, occupancy of a few large layers
#   5. python -m jaxseg.bench --device gpu --dtype bfloat16 against XLA, the naive form and PyTorch (cuDNN)
#   6. what time is left: the HLO test, the float32 bench, flax's kernel orientation, the GPU conformance tests,
#      the EB-GAN train step
# JAXSEG_GPU_KERNELS=1 is set for every step: jaxseg's CUDA kernels are opt-in until a device run validates them.
# Results: $OUT/gpu-summary.json (date, commit, device, driver, versions, every step's status) and
# $OUT/gpu-results.tar.gz (every JSON, log and report) and $OUT/run.log, refreshed after each step, so that a run
# cut short keeps what it did. Without OUT they go to benchmarks/results/gpu-run.
#   bash benchmarks/gpu.sh              # on the device
#   bash benchmarks/gpu.sh --dry-run    # here, on the CPU: the same steps on the CPU kernels, tools found absent
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
dry_run=0
[ "${1:-}" = "--dry-run" ] && dry_run=1
out=${OUT:-$repo/benchmarks/results/gpu-run}
work=$(mktemp -d /tmp/jaxseg-gpu.XXXX)
mkdir -p "$out"
exec > >(tee "$work/run.log") 2>&1
deadline=$((SECONDS + ${JAXSEG_GPU_BUDGET:-480}))
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.5 JAXSEG_GPU_KERNELS=1
export JAXSEG_COMMIT=${JAXSEG_COMMIT:-$(git -C "$repo" rev-parse HEAD 2>/dev/null || cat "$repo/benchmarks/.commit" 2>/dev/null || echo unknown)}
python=${PYTHON:-python3}
check="$repo/benchmarks/gpu_check.py"
device_args=()
[ $dry_run = 1 ] && device_args=(--dry-run)

summarize() {
  (cd "$work" && $python - "$work" "$out/gpu-summary.json" <<'EOF'
import glob, json, os, sys, time
work, dest = sys.argv[1:3]
summary = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": os.environ.get("JAXSEG_COMMIT"),
           "steps": [], "checks": {}}
if os.path.exists(f"{work}/steps.txt"):
  summary["steps"] = [line.rstrip("\n") for line in open(f"{work}/steps.txt")]
for path in sorted(glob.glob(f"{work}/check-*.json")):
  try:
    r = json.load(open(path))
  except ValueError:
    continue
  summary.setdefault("environment", r.get("environment"))
  summary["checks"][os.path.basename(path)] = {
      "failed": r.get("failed"), "skipped": r.get("skipped"), "rows": len(r.get("rows", [])),
      "failures": [{k: v for k, v in row.items() if k != "error"} for row in r.get("rows", []) if row.get("ok") is False][:20]}
for path in sorted(glob.glob(f"{work}/sanitizer-*.txt")):
  text = open(path, errors="replace").read()
  tool = os.path.basename(path)[len("sanitizer-"):-4]
  summary.setdefault("sanitizer", {})[tool] = next(
      (line.strip() for line in text.splitlines()[::-1] if "ERROR SUMMARY" in line or "RACECHECK SUMMARY" in line
       or line.startswith("sanitizer:")), "no summary")
if os.path.exists(f"{work}/environment.txt"):
  summary["environment_text"] = open(f"{work}/environment.txt").read()
json.dump(summary, open(dest, "w"), indent=1)
EOF
  )
}

pack() {
  summarize 2>/dev/null
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
if [ $dry_run = 0 ]; then
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
fi

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || echo "no nvidia-smi"
  uname -r
  echo "commit $JAXSEG_COMMIT"
  for tool in compute-sanitizer ncu; do echo "$tool: $(command -v $tool || echo absent)"; done
  (cd "$work" && $python - <<'EOF'
import jax, jaxlib, jaxseg, sys
from jaxseg import _ext
print("python", sys.version.split()[0], "jax", jax.__version__, "jaxlib", jaxlib.__version__, "jaxseg",
      jaxseg.__version__, "devices", jax.devices(), "cuda module", _ext.cuda is not None)
try:
  import torch
  print("torch", torch.__version__, torch.version.cuda, "cudnn", torch.backends.cudnn.version())
except ImportError:
  print("no torch")
EOF
  )
} > "$work/environment.txt" 2>&1
cat "$work/environment.txt"

# 1. The hardware's semantics against the executor's, and the split near float32's maximum.
step exact 150 $python "$check" "${device_args[@]}" --sections exact,overflow --budget 140 --json "$work/check-exact.json"

# 2. compute-sanitizer, each tool on the small workload. gVisor (the H200 kind) refuses the device: a trivial
# program is tried first and a refusal recorded in sanitizer-refused.txt.
if command -v compute-sanitizer >/dev/null 2>&1; then
  probe=$( (cd "$work" && timeout 60 compute-sanitizer --tool memcheck --error-exitcode 3 $python -c \
    "import jax.numpy as jnp; jnp.ones(4).block_until_ready(); print('probe ok')") 2>&1)
  if echo "$probe" | grep -q "probe ok" && ! echo "$probe" | grep -qi "not supported"; then
    for tool in memcheck racecheck synccheck initcheck; do
      extra=()
      want=45
      [ $tool = memcheck ] && want=50
      [ $tool = racecheck ] && extra=(--racecheck-report all) && want=60
      step "sanitizer-$tool" $want bash -c 'log=$1; shift; "$@" > "$log" 2>&1; rc=$?; tail -5 "$log"; exit $rc' _ \
        "$work/sanitizer-$tool.txt" compute-sanitizer --tool $tool "${extra[@]}" --error-exitcode 3 \
        --kernel-name kns=jaxseg \
        $python "$check" --sections sanitizer --json "$work/sanitizer-$tool.json"
    done
  else
    echo "sanitizer: refused here (as on gVisor machines): $(echo "$probe" | tail -3 | tr '\n' ' ')" \
      | tee "$work/sanitizer-refused.txt" | tee -a "$work/steps.txt"
  fi
else
  echo "sanitizer: absent" | tee -a "$work/steps.txt"
fi

# 3. Accuracy against float64 references with the derived bound.
step accuracy 90 $python "$check" "${device_args[@]}" --sections accuracy --budget 80 --json "$work/check-accuracy.json"

# 4. Counters of a few large layers, where ncu reads them (not on gVisor).
if command -v ncu >/dev/null 2>&1; then
  step ncu 70 ncu --clock-control none --kernel-name-base demangled --kernel-name "regex:jaxseg" \
    --launch-count 12 --section LaunchStats --section Occupancy --section SchedulerStats --section WarpStateStats \
    --section MemoryWorkloadAnalysis_Tables --section SpeedOfLight --csv --page details --log-file "$work/ncu.csv" \
    $python "$check" --sections profile --json "$work/profile.json"
else
  echo "ncu: absent" | tee -a "$work/steps.txt"
fi

bench() {  # bench NAME SECONDS ARGS...
  local name=$1 want=$2
  shift 2
  if [ $dry_run = 1 ]; then
    step "bench-$name" "$want" $python -m jaxseg.bench --device cpu --repeats 3 --budget 0.01 --no-progress \
      --only ebgan-mnist-g2 --impls jaxseg,xla --json "$work/bench-$name.json" "$@"
  else
    step "bench-$name" "$want" $python -m jaxseg.bench --device gpu --repeats 5 --budget 0.1 --no-progress \
      --json "$work/bench-$name.json" "$@"
  fi
}
# 5. Speed.
if [ $dry_run = 1 ]; then
  bench bfloat16 60 --dtype bfloat16
else
  bench bfloat16 90 --dtype bfloat16
fi
# 6. With the time left.
step hlo 30 $python -m pytest "$repo/tests/test_cuda.py" --platform=gpu -k hlo -p no:cacheprovider -q -rA \
  --junitxml="$work/pytest-hlo.xml"
[ $dry_run = 0 ] && bench float32 60 --dtype float32 --impls jaxseg,xla,torch
# XLA's other orientation matters for the forward (cuDNN's backward-data or a zero-inserted input).
[ $dry_run = 0 ] && bench bfloat16-flax-kernel 25 --dtype bfloat16 --flax-kernel --impls jaxseg,xla --passes forward
[ $dry_run = 0 ] && step conformance-tests 60 $python -m pytest "$repo/tests/test_conformance.py" \
  --platform=gpu -k "test_grid or wide" -p no:cacheprovider -q -x --junitxml="$work/pytest-conformance.xml"
if [ $dry_run = 0 ] && (cd "$work" && $python -c "import mlxtend") 2>/dev/null; then
  step ebgan 60 $python "$repo/examples/ebgan/train.py" --compare --compare-steps 10 --quiet --out "$work/ebgan"
fi
echo "== done in ${SECONDS}s"
