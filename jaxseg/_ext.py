"""Loads the compiled extension and registers its XLA FFI targets, once, at import of jaxseg."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import warnings

import jax


def _load(name):
  """jaxseg.<name>, or None where no such module was built; an ImportError that says why when it cannot load."""
  spec = importlib.util.find_spec(f"jaxseg.{name}")
  if spec is None:
    return None
  try:
    return importlib.import_module(f"jaxseg.{name}")
  except ImportError as e:
    raise ImportError(f"jaxseg's compiled extension {spec.origin} was found but does not load ({e}). Rebuild it for "
                      f"this Python and jax: pip install -e . (or pip install .) from the source tree.") from e


cpu = _load("_jaxseg_cpu")
if cpu is None:
  raise ImportError(
      f"jaxseg's compiled extension (_jaxseg_cpu) is not in {list(sys.modules['jaxseg'].__path__)} for this Python "
      f"({sys.version.split()[0]}, {sys.executable}). Either jaxseg is not installed for this interpreter (from the "
      "source tree: `pip install -e .`, which needs a C++17 compiler and cmake), or it was built for another Python "
      "version (reinstall it with this one), or a non-editable install (`pip install .`) is hidden by the source "
      "folder, which Python puts first on sys.path when run from the repository root (there, install with -e).")
# JAXSEG_CPU_ISA pins a kernel build (tests, benchmarks): a name that is none is an error, not a silent default.
_pinned = os.environ.get("JAXSEG_CPU_ISA")
if _pinned:
  if _pinned not in cpu.kernel_builds():
    raise ValueError(f"JAXSEG_CPU_ISA={_pinned!r} names no kernel build of jaxseg; choose one of "
                     f"{', '.join(cpu.kernel_builds())} or unset it (the widest build this CPU runs)")
  if cpu.selected_isa() != _pinned:
    warnings.warn(f"JAXSEG_CPU_ISA={_pinned!r}: this CPU cannot run that build; using {cpu.selected_isa()!r}",
                  RuntimeWarning, stacklevel=2)
# The CUDA module is built where a CUDA compiler was found. Whether it was built, and why it did not load, is kept
# for the GPU lowering (jaxseg/_gpu.py), which warns on a GPU, and for print_environment_info: a machine without a
# GPU has no use for the module, so a failure to load it is no error here.
cuda_built = importlib.util.find_spec("jaxseg._jaxseg_cuda") is not None
cuda_error: str | None = None  # why the built module did not load
try:
  cuda = _load("_jaxseg_cuda")
except ImportError as e:
  cuda, cuda_error = None, str(e)

for _name, _capsule in cpu.registrations().items():
  jax.ffi.register_ffi_target(_name, _capsule, platform="cpu")
if cuda is not None:
  for _name, _capsule in cuda.registrations().items():
    jax.ffi.register_ffi_target(_name, _capsule, platform="CUDA")

# Platforms where our kernels are registered with XLA. On CUDA they are used only where jaxseg/_gpu.py allows.
KERNEL_PLATFORMS = ("cpu",) + (("cuda",) if cuda is not None else ())
