"""What jaxseg runs on this machine, and why: `environment_info` (a dict) and `print_environment_info` (text)."""

from __future__ import annotations

import os
import platform as _platform
import sys
from typing import IO

import jax

from jaxseg import _compat, _ext, _gpu


def _cpu_info() -> dict:
  pinned = os.environ.get("JAXSEG_CPU_ISA") or None
  selected = _ext.cpu.selected_isa()
  features = dict(_ext.cpu.cpu_features())
  if pinned is None:
    why = "the widest build this CPU runs (JAXSEG_CPU_ISA unset)"
  elif pinned == selected:
    why = f"pinned by JAXSEG_CPU_ISA={pinned}"
  else:
    why = f"JAXSEG_CPU_ISA={pinned} asks for a build this CPU cannot run; the widest it runs instead"
  return {"kernel_build": selected, "kernel_builds": list(_ext.cpu.kernel_builds()), "why": why,
          "pinned": pinned, "features": features, "machine": _platform.machine()}


def _cuda_module_info() -> dict:
  cuda = _ext.cuda
  return {"built": _ext.cuda_built, "loaded": cuda is not None, "error": _ext.cuda_error,
          "path": getattr(cuda, "__file__", None), "architectures": cuda.architectures() if cuda else None}


def _gpu_devices() -> tuple[list, str | None]:
  """jax's GPU devices, or ([], why there are none). jax initialises its backends here, as on any first use."""
  try:
    return list(jax.devices("gpu")), None
  except RuntimeError as e:  # no GPU backend: jax says why (not installed, no device, JAX_PLATFORMS...)
    return [], str(e).splitlines()[0] if str(e) else type(e).__name__


def _gpu_entry(device) -> dict:
  """One GPU: its compute capability and whether jaxseg's kernels run on it, else why not and the fix."""
  capability = _compat.compute_capability(device)
  problem = _gpu.switch_problem() or _gpu.module_problem() or _gpu.device_problem(device)
  return {"id": getattr(device, "id", None), "kind": getattr(device, "device_kind", None),
          "compute_capability": None if capability is None else f"{capability[0]}.{capability[1]}",
          "jaxseg_kernels": problem is None, "why_not": None if problem is None else problem[0],
          "fix": None if problem is None else problem[1]}


def environment_info() -> dict:
  """What jaxseg runs on this machine, and why, as a dict (for tests and bug reports).

  Asks jax for its GPU devices, which initialises jax's backends as any first jax computation does; where jax has
  no GPU backend (a CPU-only jaxlib, no GPU, or `JAX_PLATFORMS` excluding it) `gpus` is empty and `gpus_error`
  says why.

  Returns:
    A dict with the keys:

    - `jaxseg`, `jax`, `jaxlib`: the versions; `python`: Python's version; `platform`: the operating system.
    - `cpu`: `kernel_build` (the CPU kernel build in use), `kernel_builds` (those compiled in), `why` (why that
      one), `pinned` (JAXSEG_CPU_ISA, or None), `features` ({feature: present} of the CPU features the choice
      reads; empty off x86-64), `machine`.
    - `cuda_module`: `built`, `loaded` (bools), `error` (why a built module did not load, or None), `path`,
      `architectures` (the CUDA architectures compiled in, e.g. "80-real,90-real,90-virtual", or None).
    - `gpu_kernels`: the switch (`jaxseg.use_gpu_kernels`, `JAXSEG_GPU_KERNELS`): `enabled`, `set_by`
      ("default", "JAXSEG_GPU_KERNELS=1", "use_gpu_kernels(True)", ...), `default`, `environment` (the variable's
      value when jaxseg was imported, or None).
    - `gpus`: one dict per GPU jax sees: `id`, `kind`, `compute_capability` ("9.0"), `jaxseg_kernels` (whether
      jaxseg's kernels run on it), `why_not` and `fix` (None when they run).
    - `gpus_error`: why jax sees no GPU, or None.
  """
  import jaxlib

  from jaxseg import __version__
  devices, error = _gpu_devices()
  return {
      "jaxseg": __version__, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
      "python": sys.version.split()[0], "platform": _platform.platform(),
      "cpu": _cpu_info(), "cuda_module": _cuda_module_info(), "gpu_kernels": _gpu.switch_state(),
      "gpus": [_gpu_entry(d) for d in devices], "gpus_error": error,
  }


def format_environment_info(info: dict) -> str:
  """The text `print_environment_info` prints for an `environment_info()` dict."""
  cpu, module, switch = info["cpu"], info["cuda_module"], info["gpu_kernels"]
  lines = [f"jaxseg:      {info['jaxseg']}", f"jax:         {info['jax']}", f"jaxlib:      {info['jaxlib']}",
           f"python:      {info['python']}", f"platform:    {info['platform']}",
           f"CPU kernels: {cpu['kernel_build']}, {cpu['why']}",
           f"  compiled in: {', '.join(cpu['kernel_builds'])}"]
  if cpu["features"]:
    have = [f for f, present in cpu["features"].items() if present]
    lack = [f for f, present in cpu["features"].items() if not present]
    lines.append(f"  CPU ({cpu['machine']}) has: {' '.join(have) or '-'}; lacks: {' '.join(lack) or '-'}")
  if module["loaded"]:
    lines.append(f"CUDA module: loaded, architectures {module['architectures']} ({module['path']})")
  elif module["built"]:
    lines.append(f"CUDA module: built but does not load: {module['error']}")
  else:
    lines.append("CUDA module: not built (no CUDA compiler was found when jaxseg was installed)")
  state = "on" if switch["enabled"] else "off"
  lines.append(f"GPU kernels: {state} (set by {switch['set_by']}; the default is "
               f"{'on' if switch['default'] else 'off until validated on hardware'})")
  if not info["gpus"]:
    lines.append(f"GPUs:        none ({_no_gpu_reason(info['gpus_error'])})")
  for gpu in info["gpus"]:
    head = f"GPU {gpu['id']}:       {gpu['kind']}, compute capability {gpu['compute_capability']}: "
    if gpu["jaxseg_kernels"]:
      lines.append(head + "jaxseg's CUDA kernels")
    else:
      lines.append(head + f"XLA's convolution ({gpu['why_not']}; {gpu['fix']})")
  return "\n".join(lines)


def _no_gpu_reason(error):
  """Why jax sees no GPU: plain words for jax's "unknown backend" message, jax's own message for any other."""
  if not error:
    return "jax lists no GPU"
  if error.startswith("Unknown backend"):  # jax's words for a jaxlib without a GPU plugin, or JAX_PLATFORMS
    return "this jax has no GPU backend: a CPU-only install, or JAX_PLATFORMS leaves it out"
  return error


def print_environment_info(file: IO[str] | None = None) -> None:
  """Prints what jaxseg runs on this machine and why (jax's `jax.print_environment_info`, for jaxseg).

  Prints the jaxseg, jax and jaxlib versions, Python and the platform; the CPU kernel build in use, the builds
  compiled in and why that one was chosen (the CPU features it depends on, `JAXSEG_CPU_ISA`); whether the CUDA
  module is built and loaded, and for which architectures; the GPU switch (`JAXSEG_GPU_KERNELS`,
  `jaxseg.use_gpu_kernels`); and each GPU jax sees with its compute capability and whether jaxseg's kernels run
  on it, or why not and the fix. `environment_info()` returns the same as a dict.

  Args:
    file: a text stream to print to; None: `sys.stdout`.
  """
  print(format_environment_info(environment_info()), file=file if file is not None else sys.stdout)
