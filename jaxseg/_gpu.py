"""When jaxseg's CUDA kernels run on a GPU, and what a user is told when XLA's convolution runs instead.

The kernels are used where three things hold: the user opted in (`JAXSEG_GPU_KERNELS=1` or
`jaxseg.use_gpu_kernels(True)`; off by default until a recorded device run validates them), the CUDA module was
built and loaded, and every GPU the computation runs on has compute capability 8.0 or newer. Otherwise a GPU
computation lowers to XLA's convolution, and the first such lowering in the process warns once per reason (a
`GpuFallbackWarning`) saying why and what to do; an explicit `JAXSEG_GPU_KERNELS=0` is obeyed silently. The shape
limits of the CUDA kernels (`_primitives._cuda_can_implement`) are a separate, silent, per-call fallback.

The decision is taken when a computation is lowered (jaxseg/_primitives.py). The switch is part of jax's jit cache
key and trace context (`_compat.keyed_setting`), so after `use_gpu_kernels` a function compiled before compiles
again on its next call, under the new value.
"""

from __future__ import annotations

import os
import sys
import warnings

import jax
import numpy as np

from jaxseg import _compat, _ext

ENV_VAR = "JAXSEG_GPU_KERNELS"

# Whether jaxseg's CUDA kernels are used when neither JAXSEG_GPU_KERNELS nor use_gpu_kernels says. Off until a
# device run validates them on hardware: benchmarks/GPU.md says how; turning this on goes with that run's results
# in benchmarks/results/gpu-*.json (issue 23).
DEFAULT_ENABLED = False

# The kernels use sm_80 instructions (bf16 mma.sync, cp.async, ldmatrix); older GPUs get XLA's convolution.
MIN_COMPUTE_CAPABILITY = (8, 0)

_DOCS = "docs/gpu.md"
_BUILD_DOCS = "docs/building.md"


class GpuFallbackWarning(RuntimeWarning):
  """Warned once per process and reason when a jaxseg call on a GPU runs XLA's convolution instead of jaxseg's
  CUDA kernels: not opted in (the default), the CUDA module not built or not loadable, or a GPU older than compute
  capability 8.0. Silence it with `warnings.filterwarnings("ignore", category=jaxseg.GpuFallbackWarning)`, or, for
  the default case, by choosing explicitly (`JAXSEG_GPU_KERNELS=0` or `=1`)."""


def _read_environment() -> tuple[bool, str]:
  """The switch's value at import and what set it; ValueError for a value other than 0 or 1."""
  value = os.environ.get(ENV_VAR, "")
  if value == "":
    return DEFAULT_ENABLED, "default"
  if value not in ("0", "1"):
    raise ValueError(f"{ENV_VAR}={value!r} is not allowed: set it to 1 (use jaxseg's CUDA kernels on GPUs that can "
                     f"run them), 0 (always XLA's convolution on GPU), or leave it unset (the default: "
                     f"{'on' if DEFAULT_ENABLED else 'off, with a one-time warning on GPUs'})")
  return value == "1", f"{ENV_VAR}={value}"


_initial, _set_by = _read_environment()
_at_import = os.environ.get(ENV_VAR)  # what print_environment_info reports: the value read, not a later change
_setting = _compat.keyed_setting("jaxseg_gpu_kernels", _initial,
                                 "Whether jaxseg's calls on CUDA GPUs run its own kernels (jaxseg.use_gpu_kernels).")
del _initial


def use_gpu_kernels(enabled: bool) -> None:
  """Chooses, for this process, whether jaxseg's CUDA kernels run on GPUs; overrides `JAXSEG_GPU_KERNELS`.

  With `True` jaxseg's calls on a CUDA GPU of compute capability 8.0 or newer run jaxseg's kernels (where the CUDA
  module is built); with `False` they always run XLA's convolution. The choice is made when a computation is
  compiled and is part of jax's compilation cache key: a jitted function called again after a change compiles
  again, under the new choice. CPU computations are unaffected.

  Args:
    enabled: a Python bool (or NumPy bool).

  Raises:
    TypeError: `enabled` is not a bool.
  """
  global _set_by
  if not isinstance(enabled, (bool, np.bool_)):
    raise TypeError(f"use_gpu_kernels: enabled must be True or False, not {enabled!r}")
  _setting.set_global(bool(enabled))
  _set_by = f"use_gpu_kernels({bool(enabled)})"


def gpu_kernels_enabled() -> bool:
  """Whether jaxseg's CUDA kernels are switched on for this process (`use_gpu_kernels`, else `JAXSEG_GPU_KERNELS`,
  else the default, off until the kernels are validated on hardware). Even when on, a GPU computation runs XLA's
  convolution where the CUDA module is missing or the GPU is older than compute capability 8.0; see
  `print_environment_info`."""
  return bool(_setting.value)


def switch_state() -> dict:
  """The switch for environment_info: its value, what set it, the default and the variable's value at import."""
  return {"enabled": gpu_kernels_enabled(), "set_by": _set_by, "default": DEFAULT_ENABLED,
          "environment": _at_import}


# --------------------------------------------------------------------------------------------------------------
# Why the kernels cannot run. Each function returns (reason, what to do) or None; the warnings and
# print_environment_info say both.

_OPT_IN = f"set {ENV_VAR}=1 in the environment or call jaxseg.use_gpu_kernels(True)"


def switch_problem() -> tuple[str, str] | None:
  """Why the switch keeps the kernels off, or None when it lets them run."""
  if gpu_kernels_enabled():
    return None
  if _set_by == "default":
    return ("jaxseg's CUDA kernels are opt-in until they are validated on GPU hardware",
            f"to use them, {_OPT_IN}; to keep XLA's convolution without this warning, set {ENV_VAR}=0 (see "
            f"{_DOCS})")
  return (f"switched off ({_set_by})", f"to use them, {_OPT_IN}")


def module_problem() -> tuple[str, str] | None:
  """Why the CUDA module is not there, or None when it loaded."""
  if _ext.cuda is not None:
    return None
  if not _ext.cuda_built:
    return ("this jaxseg was built without its CUDA module (no CUDA compiler was found when it was installed)",
            f'install jax for CUDA first (pip install -U "jax[cuda13]"), then reinstall jaxseg from its source tree '
            f"so that the build finds nvcc (see {_BUILD_DOCS})")
  return (f"jaxseg's CUDA module did not load: {_ext.cuda_error}",
          f"rebuild jaxseg for this Python and jaxlib (see {_BUILD_DOCS})")


def device_problem(device) -> tuple[str, str] | None:
  """Why the kernels cannot run on `device` (a jax device, or anything with `compute_capability`), or None."""
  capability = _compat.compute_capability(device)
  if capability is None:
    return (f"{_describe(device)} is not a CUDA device", "nothing to fix: jaxseg has CUDA kernels only")
  if capability < MIN_COMPUTE_CAPABILITY:
    need = ".".join(map(str, MIN_COMPUTE_CAPABILITY))
    return (f"{_describe(device)} has compute capability {capability[0]}.{capability[1]}; jaxseg's CUDA kernels "
            f"need {need} or newer (A100, H100 and later)",
            f"nothing to fix: XLA's convolution runs on it; set {ENV_VAR}=0 to choose that without this warning")
  return None


def _describe(device) -> str:
  kind = getattr(device, "device_kind", None)
  return f"GPU {getattr(device, 'id', '?')}" + (f" ({kind})" if kind else "")


# --------------------------------------------------------------------------------------------------------------
# The decision at lowering time.


def lowering_gpus(ctx) -> list:
  """The CUDA devices a lowering is for, where jax names them (a jit on a GPU machine); empty where it does not
  (jax.export from a machine without a GPU, which may run anywhere). The seam tests replace to simulate a GPU."""
  axis_context = ctx.module_context.axis_context
  devices = _compat.lowering_devices(axis_context)
  if devices is None:
    mesh = _compat.lowering_mesh(axis_context)
    devices = list(mesh.devices.flat) if mesh is not None else []
  return [d for d in devices if _compat.compute_capability(d) is not None]


def use_kernels(ctx) -> bool:
  """Whether a CUDA lowering (context `ctx`) may emit jaxseg's custom calls; warns once per reason when not."""
  problem = switch_problem()
  if problem is not None:
    if _set_by == "default":  # an explicit 0 is obeyed silently
      _warn_once("default", *problem)
    return False
  problem = module_problem()
  if problem is not None:
    _warn_once("module", *problem)
    return False
  for device in lowering_gpus(ctx):
    problem = device_problem(device)
    if problem is not None:
      _warn_once(f"device {_compat.compute_capability(device)}", *problem)
      return False
  return True


_warned: set[str] = set()


def _warn_once(kind: str, reason: str, fix: str) -> None:
  if kind in _warned:
    return
  _warned.add(kind)
  warnings.warn(f"jaxseg runs XLA's convolution on the GPU, not its own CUDA kernels: {reason}. "
                f"{fix[:1].upper()}{fix[1:]}.",
                GpuFallbackWarning, stacklevel=_caller_stacklevel())


def _caller_stacklevel() -> int:
  """The stacklevel of the first frame outside jax, jaxlib, jaxseg and the standard library (the user's call that
  compiled the computation), counted from _warn_once."""
  import jaxlib
  internal = tuple(os.path.dirname(m.__file__) + os.sep for m in (jax, jaxlib, sys.modules["jaxseg"], os))
  frame, level = sys._getframe(2), 2  # 2: _warn_once's caller
  while frame is not None and frame.f_code.co_filename.startswith(internal):
    frame, level = frame.f_back, level + 1
  return level if frame is not None else 2
