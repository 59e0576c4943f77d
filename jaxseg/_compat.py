"""The jax internals jaxseg relies on, looked up in this one place.

jax has no public spelling for these. Each is looked up once, when jaxseg is imported; what the running jax lacks
is listed in MISSING and named in a warning, the feature that needs it falls back as its function says, and
tests/test_compat.py fails, so that a rename in a new jax release shows up in CI instead of a rule silently
ceasing to apply. Checked on jax 0.10.2 and 0.12.0.1 (the supported range is in pyproject.toml and the README).

  jax._src.dispatch.apply_primitive                        eager calls compile a primitive alone, as jax's own do
  jax._src.dispatch.prim_requires_devices_during_lowering  primitives that need the concrete devices when lowered
  ShapedArray.mat.varying                                  the manual mesh axes a value varies over in shard_map
  ShapedArray.sharding                                     the sharding in an abstract value's type (public in
                                                           jax, looked up here because not every aval has one)
  jax._src.sharding_impls.ShardingContext.device_assignment  the devices a jit lowering is for
  jax._src.sharding_impls.SPMDAxisContext.mesh             the mesh of a lowering inside shard_map
  jax._src.sharding_impls.SPMDAxisContext.manual_axes      the mesh axes a shard_map is manual over
  jax._src.interpreters.mlir.LoweringParameters.for_export whether a lowering is for jax.export
  jax._src.config.State (include_in_jit_key,               a process setting that is part of jit's cache keys
    include_in_trace_context)                              (jaxseg.use_gpu_kernels), as jax's own options are
  Device.compute_capability                                a CUDA device's compute capability ("9.0"); not
                                                           probed here (only CUDA devices have it)
  jax._src.lax.lax._convert_element_type                   a cast that keeps a weakly typed value weak
"""

from __future__ import annotations

import inspect
import warnings

import jax
import numpy as np

MISSING: list[str] = []


def _lookup(module_name, name):
  try:
    module = __import__(module_name, fromlist=[name])
    return getattr(module, name)
  except (ImportError, AttributeError):
    MISSING.append(f"{module_name}.{name}")
    return None


_apply_primitive = _lookup("jax._src.dispatch", "apply_primitive")
_devices_during_lowering = _lookup("jax._src.dispatch", "prim_requires_devices_during_lowering")
_ShardingContext = _lookup("jax._src.sharding_impls", "ShardingContext")
_SPMDAxisContext = _lookup("jax._src.sharding_impls", "SPMDAxisContext")
_LoweringParameters = _lookup("jax._src.interpreters.mlir", "LoweringParameters")
_State = _lookup("jax._src.config", "State")
_convert_element_type = _lookup("jax._src.lax.lax", "_convert_element_type")

# Attributes of instances: probed on a value of each kind.
_probe = jax.typeof(np.zeros((1,), np.float32))
if not hasattr(getattr(_probe, "mat", None), "varying"):
  MISSING.append("ShapedArray.mat.varying")
if not hasattr(_probe, "sharding"):
  MISSING.append("ShapedArray.sharding")
if _ShardingContext is not None and "device_assignment" not in getattr(_ShardingContext, "__dataclass_fields__", {}):
  MISSING.append("jax._src.sharding_impls.ShardingContext.device_assignment")
if _SPMDAxisContext is not None and "mesh" not in getattr(_SPMDAxisContext, "__dataclass_fields__", {}):
  MISSING.append("jax._src.sharding_impls.SPMDAxisContext.mesh")
if _SPMDAxisContext is not None and "manual_axes" not in getattr(_SPMDAxisContext, "__dataclass_fields__", {}):
  MISSING.append("jax._src.sharding_impls.SPMDAxisContext.manual_axes")
if _State is not None and not {"include_in_jit_key", "include_in_trace_context"} <= set(
    inspect.signature(_State.__init__).parameters):
  MISSING.append("jax._src.config.State(include_in_jit_key, include_in_trace_context)")
  _State = None
if _LoweringParameters is not None and "for_export" not in getattr(_LoweringParameters, "__dataclass_fields__", {}):
  MISSING.append("jax._src.interpreters.mlir.LoweringParameters.for_export")
del _probe

if MISSING:
  warnings.warn(f"jaxseg: this jax ({jax.__version__}) lacks {', '.join(MISSING)}; jaxseg supports the jax versions "
                "named in its README, and the features that use these may fall back or fail", RuntimeWarning,
                stacklevel=2)


def impl_by_apply_primitive(prim):
  """The eager implementation of `prim`: compile it alone, as jax's own primitives do."""
  if _apply_primitive is None:
    return lambda *args, **params: jax.jit(lambda *a: prim.bind(*a, **params))(*args)
  return lambda *args, **params: _apply_primitive(prim, *args, **params)


def require_devices_during_lowering(prim) -> None:
  """Asks jax for the concrete devices when lowering `prim` (for custom_partitioning); without it, a no-op."""
  if _devices_during_lowering is not None:
    _devices_during_lowering.add(prim)


def varying_axes(aval) -> frozenset:
  """shard_map's varying manual axes of an abstract value (empty outside shard_map)."""
  mat = getattr(aval, "mat", None)
  return frozenset(getattr(mat, "varying", ()))


def aval_sharding(aval):
  """The sharding in an abstract value's type, or None."""
  return getattr(aval, "sharding", None)


def lowering_devices(axis_context):
  """The devices a jit lowering is for (None inside shard_map, or when jax did not resolve them)."""
  if _ShardingContext is not None and isinstance(axis_context, _ShardingContext):
    return axis_context.device_assignment
  return None


def lowering_mesh(axis_context):
  """The mesh of a lowering inside shard_map (None elsewhere)."""
  if _SPMDAxisContext is not None and isinstance(axis_context, _SPMDAxisContext):
    return axis_context.mesh
  return None


def manual_axes(axis_context) -> frozenset:
  """The mesh axes a lowering inside shard_map is manual over (empty elsewhere)."""
  if _SPMDAxisContext is not None and isinstance(axis_context, _SPMDAxisContext):
    return frozenset(getattr(axis_context, "manual_axes", ()))
  return frozenset()


def lowering_for_export(ctx) -> bool:
  """Whether the lowering context `ctx` lowers for `jax.export` (False where jax does not say)."""
  return bool(getattr(getattr(ctx.module_context, "lowering_parameters", None), "for_export", False))


class _PlainSetting:
  """A process setting outside jax's cache keys: the fallback where jax has no `config.State`."""

  def __init__(self, value):
    self.value = value

  def set_global(self, value):
    self.value = value


def keyed_setting(name: str, value: bool, help: str):
  """A process-wide setting that is part of jax's jit cache key and trace context, so that a function compiled
  under one value is compiled again under another (as with jax's own `jax_default_matmul_precision`). Returns an
  object with `.value` and `.set_global(value)`. Where jax lacks `config.State` (listed in MISSING), a plain
  holder: a change then reaches only functions lowered after it."""
  if _State is None:
    return _PlainSetting(value)
  return _State(name, value, help, include_in_jit_key=True, include_in_trace_context=True)


def compute_capability(device) -> tuple[int, int] | None:
  """A CUDA device's compute capability as (major, minor); None for other devices (or an unreadable value)."""
  text = getattr(device, "compute_capability", None)
  try:
    major, minor = str(text).split(".")[:2]
    return int(major), int(minor)
  except (TypeError, ValueError):
    return None


def astype_keeping_weak_type(x, dtype):
  """x cast to `dtype`, weakly typed where x is (`astype` makes a value strong; lax's rules keep a result weak
  when its operands are, and so must ours). Without the internal: astype."""
  dtype = np.dtype(dtype)
  if x.dtype == dtype:
    return x
  if _convert_element_type is None:
    return x.astype(dtype)
  return _convert_element_type(x, dtype, weak_type=jax.typeof(x).weak_type)
