"""Loads the compiled extension and registers its XLA FFI targets, once, at import of jaxseg."""

from __future__ import annotations

import jax

try:
  from jaxseg import _jaxseg_cpu as cpu
except ImportError as e:  # pragma: no cover - only without a build
  raise ImportError(
      "jaxseg's compiled extension (_jaxseg_cpu) is missing: install the package with `pip install .` from its "
      "source tree (it needs a C++17 compiler and cmake). If it is installed, the source folder is shadowing it "
      "on sys.path (e.g. `python -m pytest` run from the source tree): run `pytest` instead, or from elsewhere."
  ) from e

try:
  from jaxseg import _jaxseg_cuda as cuda  # built when a CUDA compiler was found
except ImportError:
  cuda = None

for _name, _capsule in cpu.registrations().items():
  jax.ffi.register_ffi_target(_name, _capsule, platform="cpu")
if cuda is not None:
  for _name, _capsule in cuda.registrations().items():
    jax.ffi.register_ffi_target(_name, _capsule, platform="CUDA")

# Platforms whose lowering goes to our own kernels; elsewhere the primitives lower to XLA's convolution.
KERNEL_PLATFORMS = ("cpu",) + (("cuda",) if cuda is not None else ())
