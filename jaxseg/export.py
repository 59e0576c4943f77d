"""Exporting and serving functions that use jaxseg (`jax.export`).

A function that calls `jaxseg.conv_transpose` (or a jaxseg flax module, or their gradients) exports like any
other, with one difference: its StableHLO holds jaxseg's custom calls, and `jax.export` serializes a custom call
only when told that its target may be trusted. `export` below is `jax.export.export` with exactly jaxseg's targets
allowed; `disabled_checks()` gives the same allowances to pass to `jax.export.export` yourself::

  import jax, jax.numpy as jnp, jaxseg.export

  b, = jax.export.symbolic_shape("b")                # any batch size
  exported = jaxseg.export.export(jax.jit(generator))(params_specs, jax.ShapeDtypeStruct((b, 100), jnp.float32))
  blob = exported.serialize()                        # bytes: store them (serialization needs `flatbuffers`)

  # in the serving process
  exported = jaxseg.export.deserialize(blob)         # imports jaxseg, checks its targets are registered
  y = exported.call(params, z)                       # z of any batch size

What an artifact needs where it is called: jaxseg imported in that process (the import registers the FFI
targets with XLA), and a jaxseg that registers every target the artifact names. Target names carry the version
of their calling convention (operands, attributes, meaning: `jaxseg_conv_transpose_forward_v2`); a change to a
calling convention gets a new name, never a new meaning under an old one, so an artifact runs with the handlers
it was exported for or not at all. `TARGETS` lists what this jaxseg registers. An artifact naming a target that
is not registered fails when it is compiled (its first `call`) with XLA's `NOT_FOUND: No FFI handler registered
for <target> on a platform Host`; `deserialize` reports the same at load time, naming the targets.

The exported computation holds the jaxseg custom calls for each platform it was exported for that has jaxseg
kernels in the exporting process (CPU always; CUDA when the CUDA module was built and the exporting process opted
in to jaxseg's GPU kernels, also on a machine without a GPU: docs/gpu.md); for other platforms it holds XLA's
convolution. Exporting for several devices with shardings is not
supported (jaxseg's partitioning rules are Python callbacks, which an artifact cannot carry); export a
`shard_map` of the function instead, or a single-device function.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import jax

from jaxseg import _ext

__all__ = ["TARGETS", "disabled_checks", "export", "deserialize", "jaxseg_targets", "check_targets"]

# Every custom-call target this jaxseg registers with XLA (each with its calling-convention version suffix), on
# CPU and, where built, on CUDA. The targets the primitives emit today are those of `_passes.PASSES`.
TARGETS: tuple[str, ...] = tuple(sorted(_ext.cpu.registrations()))

_TARGET_PREFIX = "jaxseg_"
# A custom call's target in the StableHLO text of an exported module: `stablehlo.custom_call @name(` (quoted
# when the name has characters outside [A-Za-z0-9_$.-]).
_CUSTOM_CALL = re.compile(r'custom_call\s+@"?([A-Za-z0-9_$.\-]+)"?')


def disabled_checks() -> list[jax.export.DisabledSafetyCheck]:
  """The `jax.export` safety checks to disable so that jaxseg's custom calls may be serialized: one
  `DisabledSafetyCheck.custom_call(target)` per target in `TARGETS`, no other check."""
  return [jax.export.DisabledSafetyCheck.custom_call(t) for t in TARGETS]


_jaxseg_checks = disabled_checks  # for `export`, whose argument of that name hides the function


def export(fun_jit: Any, *, platforms: Sequence[str] | None = None,
           disabled_checks: Sequence[jax.export.DisabledSafetyCheck] = (),
           **kwargs) -> Callable[..., jax.export.Exported]:
  """`jax.export.export` that allows jaxseg's custom calls.

  Args:
    fun_jit: the function to export, the result of `jax.jit`.
    platforms: as in `jax.export.export` (None: the default backend); e.g. `("cpu", "cuda")`.
    disabled_checks: further checks to disable, added to jaxseg's (`disabled_checks()`).
    **kwargs: passed on to `jax.export.export`.

  Returns:
    As `jax.export.export`: a function of argument specs (`jax.ShapeDtypeStruct`s, whose shapes may be
    symbolic) that returns a `jax.export.Exported`.
  """
  checks = [*disabled_checks, *_jaxseg_checks()]
  return jax.export.export(fun_jit, platforms=platforms, disabled_checks=checks, **kwargs)


def jaxseg_targets(exported: jax.export.Exported) -> tuple[str, ...]:
  """The jaxseg custom-call targets that an exported computation calls, sorted."""
  found = _CUSTOM_CALL.findall(exported.mlir_module())
  return tuple(sorted({t for t in found if t.startswith(_TARGET_PREFIX)}))


def check_targets(exported: jax.export.Exported) -> None:
  """Raises ValueError, naming them, if `exported` or a VJP serialized with it (`serialize(vjp_order=...)`)
  calls jaxseg targets that this jaxseg does not register."""
  modules = [exported]
  while modules[-1].has_vjp():
    modules.append(modules[-1].vjp())
  missing = sorted({t for m in modules for t in jaxseg_targets(m)} - set(TARGETS))
  if missing:
    from jaxseg import __version__
    raise ValueError(
        f"this computation calls the custom-call targets {missing}, which jaxseg {__version__} does not "
        f"register (it registers {list(TARGETS)}). The suffix _vN is the version of a target's calling "
        f"convention: load the artifact with a jaxseg release that registers it, or export it again with this "
        f"one.")


def deserialize(blob: bytes | bytearray) -> jax.export.Exported:
  """`jax.export.deserialize`, then `check_targets`: an artifact that this jaxseg cannot run fails here, at load
  time, rather than at its first call. Importing jaxseg (which this module does) registers its targets."""
  exported = jax.export.deserialize(blob)
  check_targets(exported)
  return exported
