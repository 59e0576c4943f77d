"""One JAX primitive per pass (forward, input_grad, weight_grad), with its rules side by side.

Each primitive takes two canonical operands and the parameters `geometry` (a `_passes.Geometry`), `out_dtype`
and `precision`; `_passes` describes which tensors a pass reads and writes, and every rule here is derived from
that description:

  abstract evaluation   the pass's shape rule, the result's sharding from the operands'
  transpose (and JVP)   each pass is bilinear; its transpose with respect to an operand is the pass that produces
                        that operand's role from the other two, so grad of any order stays on our kernels
  batching              a vmapped operand folds into an axis of its own (see `_batch_rule`), without loops
  lowering              our custom call on CPU, and on CUDA where jaxseg/_gpu.py allows it; elsewhere XLA's
                        convolution of the same meaning
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from jaxseg import _compat, _ext, _gpu, _partitioning
from jaxseg._passes import (FORWARD, INPUT, KERNEL, OUTPUT, PASSES, RESULT_DTYPES, Geometry, Pass, precision_attribute,
                             producing)

# --------------------------------------------------------------------------------------------------------------
# Binding with dtype handling: the kernels take two operands of one dtype and write a dtype the table allows
# (_passes.RESULT_DTYPES). Cotangents may arrive in a wider dtype than the other operand (preferred_element_type),
# so mixed operands are promoted first and the result cast to what the caller needs.


def _varying_axes(x) -> frozenset:
  """shard_map's varying manual axes of x."""
  return _compat.varying_axes(jax.typeof(x))


def _match_varying(a, b):
  """Inside shard_map, makes both operands vary over the same manual axes, as jax's own binary ops do; the
  transpose of that cast sums the cotangent of the invariant operand over those axes."""
  va, vb = _varying_axes(a), _varying_axes(b)
  if vb - va:
    a = jax.lax.pcast(a, tuple(sorted(vb - va)), to="varying")
  if va - vb:
    b = jax.lax.pcast(b, tuple(sorted(va - vb)), to="varying")
  return a, b


def apply(p: Pass, a, b, *, geometry: Geometry, out_dtype, precision=None):
  """Pass `p` on canonical operands (a, b), its result in `out_dtype`."""
  out_dtype = np.dtype(out_dtype)
  if a.dtype != b.dtype:
    common = jnp.promote_types(a.dtype, b.dtype)
    a, b = a.astype(common), b.astype(common)
  a, b = _match_varying(a, b)
  compute = out_dtype if out_dtype in RESULT_DTYPES[np.dtype(a.dtype)] else np.dtype(a.dtype)
  out = PRIMITIVES[p].bind(a, b, geometry=geometry, out_dtype=compute, precision=precision)
  return out if compute == out_dtype else out.astype(out_dtype)


# --------------------------------------------------------------------------------------------------------------
# Abstract evaluation. The result is derived from the first operand's aval with `update`, so sharding and
# shard_map information carries through.


def _abstract_eval(p: Pass, a, b, *, geometry, out_dtype, precision):
  shape = p.result_shape(a.shape, b.shape, geometry)
  sharding = _partitioning.result_sharding(p, geometry, a, b)
  # lax's rule for its convolution (jax's standard weak-type rule): weak exactly when both operands are, whatever
  # preferred_element_type, so `y + bf16_array` stays bfloat16 where lax's would.
  return a.update(shape=shape, dtype=out_dtype, weak_type=a.weak_type and b.weak_type,
                  **({"sharding": sharding} if sharding is not None else {}))


# --------------------------------------------------------------------------------------------------------------
# Transposes (and so JVPs, through ad.defbilinear). With <.,.> the elementwise inner product,
#   <forward(x, w), c> = <x, input_grad(c, w)> = <w, weight_grad(x, c)>,
# so the transpose of any pass with respect to an operand is the pass producing that operand's role.


def _transpose(p: Pass, operand: int, ct, a, b, *, geometry, out_dtype, precision):
  primal = (a, b)[operand]
  given = {p.roles[1 - operand]: (a, b)[1 - operand], p.result_role: ct}
  q = producing(p.roles[operand])
  return apply(q, given[q.roles[0]], given[q.roles[1]], geometry=geometry, out_dtype=primal.aval.dtype,
               precision=precision)


# --------------------------------------------------------------------------------------------------------------
# Batching. A vmapped axis folds into an existing axis of the operand it maps, with a reshape (free when the
# mapped axis already sits next to that axis):
#   one operand mapped  -> into the factor it shares with the result alone (Pass.fold_factor): the batch of an
#                          activation, the channel of a kernel that the other operand does not have
#   both mapped         -> into the group axis G


def _fold(v, bdim, axis):
  """Moves mapped axis `bdim` of v to just before `axis` (an index of the unmapped shape) and merges them."""
  v = jnp.moveaxis(v, bdim, axis)
  return v.reshape(v.shape[:axis] + (v.shape[axis] * v.shape[axis + 1],) + v.shape[axis + 2:])


def _unfold(v, size, axis):
  """Splits axis `axis` of v into (size, rest); the mapped axis is then `axis`."""
  return v.reshape(v.shape[:axis] + (size, v.shape[axis] // size) + v.shape[axis + 1:]), axis


def _sharded_in_type(v, axis) -> bool:
  """Whether axis `axis` of v carries a mesh axis in its type (explicit sharding)."""
  spec = getattr(_compat.aval_sharding(jax.typeof(v)), "spec", None)
  return spec is not None and axis < len(spec) and spec[axis] is not None


def _batch_rule(p: Pass, args, dims, *, geometry, **params):
  args, dims = list(args), list(dims)
  bind = partial(PRIMITIVES[p].bind, geometry=geometry, **params)
  d, flip = geometry.ndim, geometry.transpose_kernel
  if (dims[0] is None) != (dims[1] is None):
    i = 0 if dims[0] is not None else 1
    factor = p.fold_factor(i)
    axis = p.factors(p.roles[i], d, flip).index(factor)
    v, dv = args[i], dims[i]
    # Under explicit sharding an unsharded mapped axis cannot merge into a sharded one; then broadcast the other
    # operand and fold both into G, as when both are mapped.
    if _sharded_in_type(v, axis + (axis >= dv)) and not _sharded_in_type(v, dv):
      args[1 - i], dims[1 - i] = jnp.broadcast_to(args[1 - i][None], (v.shape[dv],) + args[1 - i].shape), 0
    else:
      args[i] = _fold(v, dv, axis)
      out = bind(*args)
      return _unfold(out, v.shape[dv], p.factors(p.result_role, d, flip).index(factor))
  size = args[0].shape[dims[0]]
  return _unfold(bind(_fold(args[0], dims[0], 0), _fold(args[1], dims[1], 0)), size, 0)


# --------------------------------------------------------------------------------------------------------------
# Lowering: our custom calls where we have kernels; elsewhere XLA's convolution of the same meaning.


def _spans_devices(ctx) -> bool:
  """Whether this lowering is for a computation over several devices (then the partitioner needs our rules).
  Not inside a shard_map manual over every mesh axis: there each device runs the call on its own operands."""
  axis_context = ctx.module_context.axis_context
  devices = _compat.lowering_devices(axis_context)
  if devices is not None:
    return len(devices) > 1
  mesh = _compat.lowering_mesh(axis_context)
  return mesh is not None and mesh.size > 1 and _compat.manual_axes(axis_context) != set(mesh.axis_names)


def _cuda_can_implement(p: Pass, geometry: Geometry, shapes) -> bool:
  """Whether the CUDA kernels take this call (the same check their handlers make, cuda/conv_plan.h
  CanImplement): at most 3 spatial axes, kernel size at most 32 per axis, 32-bit row counts. Symbolic shapes
  are checked on their static parts; the rest the handler checks when it runs."""
  limits = _ext.cuda
  if any(not isinstance(d, (int, np.integer)) for shape in shapes for d in shape):
    return geometry.ndim <= limits.max_spatial_dims and max(geometry.kernel_spatial) <= limits.max_kernel_size
  why = limits.can_implement(p.name, *(list(map(int, shape)) for shape in shapes), list(geometry.strides),
                             list(geometry.dilation), [lo for lo, _ in geometry.padding],
                             [hi for _, hi in geometry.padding], geometry.transpose_kernel)
  return not why


def canonical_kernel(w, transpose_kernel):
  """A kernel in the canonical layout (a copy when flipped). Reversing the spatial axes and swapping the two
  channel axes commute and undo themselves, so the same call also takes a canonical kernel to the flipped one."""
  if not transpose_kernel:
    return w
  return jnp.flip(jnp.swapaxes(w, -1, -2), axis=tuple(range(1, w.ndim - 2)))


def _kernel_lowering(p: Pass, platform: str):
  direct = jax.ffi.ffi_lowering(p.target)
  fallback = mlir.lower_fun(partial(_lax_impl, p), multiple_results=False)

  def rule(ctx, a, b, *, geometry, out_dtype, precision):
    params = dict(geometry=geometry, out_dtype=out_dtype, precision=precision)
    shapes = [v.shape for v in ctx.avals_in] + [ctx.avals_out[0].shape]
    # On CUDA: the opt-in, the module and the GPUs first (each failure warned once), then the kernels' limits.
    if platform == "cuda" and not (_gpu.use_kernels(ctx) and _cuda_can_implement(p, geometry, shapes)):
      return fallback(ctx, a, b, **params)
    # Resolved here, where jax's default_matmul_precision is in effect, as lax resolves it.
    mode = precision_attribute(precision)
    if not _spans_devices(ctx):
      if platform == "cuda" and p.name == "weight_grad":
        return _cuda_weight_grad_call(ctx, a, b, geometry, mode, direct, partial(fallback, ctx, a, b, **params))
      return direct(ctx, a, b, **geometry.ffi_attributes(mode))
    if _compat.lowering_for_export(ctx):
      # custom_partitioning's rules are Python callbacks held by this process: jax cannot serialize them.
      raise NotImplementedError(
          f"jaxseg {p.name}: exporting a computation sharded over several devices is not supported (jaxseg's "
          "partitioning rules cannot be serialized). Export a shard_map of the function, or a single-device "
          "function.")
    call = partial(_partitioning.partitioned_call, p, geometry, out_dtype, mode)
    return mlir.lower_fun(call, multiple_results=False)(ctx, a, b)

  return rule


# --- The CUDA weight gradient's call (issue 23 item 5): its split-K partials are an XLA-allocated second result, so
# the handler allocates nothing at run time and XLA can record it into a CUDA graph.

_DEFAULT_MULTIPROCESSORS = 132  # an H100 SXM's, where jax names no device at lowering (export)


def _lowering_multiprocessors(ctx) -> int:
  """The multiprocessor count of the first device the lowering is for (jax's `core_count`), else an H100's. The
  handler splits within whatever buffer it gets, so a wrong count costs parallelism, never correctness."""
  try:
    axis_context = ctx.module_context.axis_context
    devices = _compat.lowering_devices(axis_context)
    if devices is None:
      mesh = _compat.lowering_mesh(axis_context)
      devices = None if mesh is None else list(np.asarray(mesh.devices).flat)  # an abstract mesh has none
    count = getattr(devices[0], "core_count", None) if devices else None
  except Exception:  # noqa: BLE001 (no concrete device here: the default)
    count = None
  return int(count) if isinstance(count, (int, np.integer)) and count > 0 else _DEFAULT_MULTIPROCESSORS


def _cuda_weight_grad_call(ctx, a, b, geometry, mode, direct, fallback):
  """The CUDA weight_grad custom call with its partials buffer (bytes, sized by the extension as the handler
  plans, cuda/conv_plan.h WeightGradPartialBytes) as a second result; returns the first. Symbolic shapes, whose
  partials have no static size, go to XLA's convolution (`fallback`)."""
  shapes = [v.shape for v in ctx.avals_in] + [ctx.avals_out[0].shape]
  if any(not isinstance(d, (int, np.integer)) for shape in shapes for d in shape):
    return fallback()
  nbytes = _ext.cuda.weight_grad_partial_bytes(
      *(list(map(int, shape)) for shape in shapes), list(geometry.strides), list(geometry.dilation),
      [lo for lo, _ in geometry.padding], [hi for _, hi in geometry.padding], geometry.transpose_kernel,
      np.dtype(ctx.avals_in[0].dtype).name, _lowering_multiprocessors(ctx))
  partials = jax.core.ShapedArray((nbytes,), np.uint8)
  results = direct(ctx.replace(avals_out=[ctx.avals_out[0], partials]), a, b, **geometry.ffi_attributes(mode))
  return results[:1]


def _lax_dimension_numbers(d):
  spatial = tuple(range(1, d + 1))
  return lax.ConvDimensionNumbers(lhs_spec=(0, d + 1) + spatial, rhs_spec=(d + 1, d) + tuple(range(d)),
                                  out_spec=(0, d + 1) + spatial)


def _lax_forward(x, w, geometry, out_dtype, precision):
  d = geometry.ndim
  w = canonical_kernel(w, geometry.transpose_kernel)

  def one(x, w):
    return lax.conv_general_dilated(x, w, (1,) * d, geometry.padding, lhs_dilation=geometry.strides,
                                    rhs_dilation=geometry.dilation, dimension_numbers=_lax_dimension_numbers(d),
                                    precision=precision, preferred_element_type=out_dtype)

  return jax.vmap(one)(x, w)


def _lax_impl(p: Pass, a, b, *, geometry, out_dtype, precision):
  """XLA's convolution with the meaning of pass `p`: the other platforms' lowering, and a reference. The
  gradients are the transposes of the forward with respect to the role the pass produces."""
  if p is FORWARD:
    return _lax_forward(a, b, geometry, out_dtype, precision)
  given = dict(zip(p.roles[:2], (a, b)))
  ct, other = given[OUTPUT], given[KERNEL if p.result_role == INPUT else INPUT]
  zeros = jnp.zeros(p.result_shape(a.shape, b.shape, geometry), other.dtype)
  fwd = lambda r: _lax_forward(*((r, other) if p.result_role == INPUT else (other, r)), geometry, ct.dtype, precision)
  return jax.linear_transpose(fwd, zeros)(ct)[0].astype(out_dtype)


# --------------------------------------------------------------------------------------------------------------
# The primitives, each with its rules registered together.


def _define(p: Pass) -> Primitive:
  prim = Primitive(f"jaxseg_conv_transpose_{p.name}")
  prim.def_impl(_compat.impl_by_apply_primitive(prim))  # eager calls compile the primitive alone, as jax's own do
  # Our lowering may emit a custom_partitioning call, which needs the concrete devices at lowering time.
  _compat.require_devices_during_lowering(prim)
  prim.def_abstract_eval(partial(_abstract_eval, p))
  mlir.register_lowering(prim, mlir.lower_fun(partial(_lax_impl, p), multiple_results=False))
  for platform in ("cpu", "cuda"):  # on CUDA the rule itself decides (jaxseg/_gpu.py)
    mlir.register_lowering(prim, _kernel_lowering(p, platform), platform=platform)
  ad.defbilinear(prim, partial(_transpose, p, 0), partial(_transpose, p, 1))
  batching.primitive_batchers[prim] = partial(_batch_rule, p)
  return prim


PRIMITIVES = {p: _define(p) for p in PASSES}
