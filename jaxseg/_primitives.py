"""The three primitives of a transposed convolution and their rules, side by side.

All three work on canonical operands: channels-last with a leading group axis G (vmap over both operands folds
into it), and explicit per-axis padding of the dilated input:

  conv_transpose_p               x (G, N, H..., Ci), w (G, K..., Ci, Co)  -> y  (G, N, O..., Co)
  conv_transpose_input_grad_p    dy (G, N, O..., Co), w                   -> dx (G, N, H..., Ci)
  conv_transpose_weight_grad_p   x, dy                                    -> dw (G, K..., Ci, Co)

Each is bilinear, and the transpose of each, with respect to either operand, is one of the others, so grad of
any order stays on our kernels. Shapes come from the phase geometry in common/phase_geometry.h.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from jaxseg import _compat, _ext, _partitioning

# Output dtypes our kernels write for each operand dtype; anything else is computed in the operand dtype and cast.
_NATIVE_OUT = {
    np.dtype(np.float32): (np.dtype(np.float32),),
    np.dtype(np.float64): (np.dtype(np.float64),),
    np.dtype(jnp.bfloat16): (np.dtype(jnp.bfloat16), np.dtype(np.float32)),
    np.dtype(np.float16): (np.dtype(np.float16), np.dtype(np.float32)),
}
KERNEL_DTYPES = tuple(_NATIVE_OUT)


def output_spatial(in_spatial, kernel_spatial, strides, dilation, padding):
  return tuple(
      _ext.cpu.output_size(h, k, s, d, lo, hi)
      for h, k, s, d, (lo, hi) in zip(in_spatial, kernel_spatial, strides, dilation, padding))


# --------------------------------------------------------------------------------------------------------------
# Binding with dtype handling: the kernels take two operands of one dtype and write that dtype (or float32 for
# 16-bit operands). Cotangents may arrive in a wider dtype than the other operand (preferred_element_type), so
# mixed operands are promoted first and the result cast to what the caller needs.


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


def _bind(prim, a, b, *, out_dtype, **params):
  out_dtype = np.dtype(out_dtype)
  if a.dtype != b.dtype:
    common = jnp.promote_types(a.dtype, b.dtype)
    a, b = a.astype(common), b.astype(common)
  a, b = _match_varying(a, b)
  compute = out_dtype if out_dtype in _NATIVE_OUT[np.dtype(a.dtype)] else np.dtype(a.dtype)
  out = prim.bind(a, b, out_dtype=compute, **params)
  return out if compute == out_dtype else out.astype(out_dtype)


def forward(x, w, *, kernel_flipped=False, **params):
  return _bind(conv_transpose_p, x, w, kernel_flipped=bool(kernel_flipped), **params)


def input_grad(dy, w, *, in_spatial, kernel_flipped=False, **params):
  return _bind(conv_transpose_input_grad_p, dy, w, in_spatial=tuple(in_spatial), kernel_flipped=bool(kernel_flipped),
               **params)


def weight_grad(x, dy, *, kernel_spatial, kernel_flipped=False, **params):
  return _bind(conv_transpose_weight_grad_p, x, dy, kernel_spatial=tuple(kernel_spatial),
               kernel_flipped=bool(kernel_flipped), **params)


# --------------------------------------------------------------------------------------------------------------
# Abstract evaluation. The result is derived from an operand's aval with `update`, so sharding and shard_map
# information carries through.


def _check_common(a, b, a_name, b_name, strides):
  d = len(strides)
  if a.ndim != d + 3 or b.ndim != d + 3:
    raise TypeError(f"{a_name} and {b_name} must have rank {d + 3}, got {a.shape} and {b.shape}")
  if a.shape[0] != b.shape[0]:
    raise TypeError(f"group axes differ: {a.shape} and {b.shape}")


def kernel_channels(w_shape, kernel_flipped):
  """(Ci, Co) of a kernel: canonical (G, K.., Ci, Co), or with kernel_flipped (G, K.., Co, Ci) with its spatial
  axes reversed (a PyTorch-oriented kernel as the user holds it; the kernels read it in place, no copy)."""
  return (w_shape[-1], w_shape[-2]) if kernel_flipped else (w_shape[-2], w_shape[-1])


def canonical_kernel(w, kernel_flipped):
  """A kernel in the canonical layout (a copy when flipped). Reversing the spatial axes and swapping the two
  channel axes commute and undo themselves, so the same call also takes a canonical kernel to the flipped one."""
  if not kernel_flipped:
    return w
  return jnp.flip(jnp.swapaxes(w, -1, -2), axis=tuple(range(1, w.ndim - 2)))


def result_shape(target, a, b, strides, dilation, padding, extra):
  """Shape of a pass's result from its operands' shapes (the one shape rule, used by abstract evaluation and by
  the per-shard calls of the partitioner)."""
  flipped = extra.get("kernel_flipped", False)
  if target == _ext.FORWARD:
    return (a[0], a[1], *output_spatial(a[2:-1], b[1:-2], strides, dilation, padding), kernel_channels(b, flipped)[1])
  if target == _ext.INPUT_GRAD:
    return (a[0], a[1], *extra["in_spatial"], kernel_channels(b, flipped)[0])
  channels = (b[-1], a[-1]) if flipped else (a[-1], b[-1])
  return (a[0], *extra["kernel_spatial"], *channels)


def _result_aval(target, a, b, shape, dtype, kernel_flipped):
  """The result derived from operand a's aval (keeping shard_map's manual-axis information), with the sharding
  the partitioning rules give it."""
  sharding = _partitioning.result_sharding(target, len(shape) - 3, kernel_flipped, a, b, len(shape))
  kwargs = {"sharding": sharding} if sharding is not None else {}
  return a.update(shape=shape, dtype=dtype, weak_type=False, **kwargs)


def _forward_abstract_eval(x, w, *, strides, dilation, padding, out_dtype, precision, kernel_flipped):
  _check_common(x, w, "x", "w", strides)
  if x.shape[-1] != kernel_channels(w.shape, kernel_flipped)[0]:
    raise TypeError(f"input channels differ: x {x.shape}, w {w.shape}, kernel_flipped={kernel_flipped}")
  shape = result_shape(_ext.FORWARD, x.shape, w.shape, strides, dilation, padding, {"kernel_flipped": kernel_flipped})
  return _result_aval(_ext.FORWARD, x, w, shape, out_dtype, kernel_flipped)


def _input_grad_abstract_eval(dy, w, *, in_spatial, strides, dilation, padding, out_dtype, precision,
                              kernel_flipped):
  _check_common(dy, w, "dy", "w", strides)
  out = output_spatial(in_spatial, w.shape[1:-2], strides, dilation, padding)
  if tuple(dy.shape[2:-1]) != out or dy.shape[-1] != kernel_channels(w.shape, kernel_flipped)[1]:
    raise TypeError(f"dy {dy.shape} does not match w {w.shape} (kernel_flipped={kernel_flipped}) and input "
                    f"spatial {in_spatial}")
  shape = result_shape(_ext.INPUT_GRAD, dy.shape, w.shape, strides, dilation, padding,
                       {"in_spatial": in_spatial, "kernel_flipped": kernel_flipped})
  return _result_aval(_ext.INPUT_GRAD, dy, w, shape, out_dtype, kernel_flipped)


def _weight_grad_abstract_eval(x, dy, *, kernel_spatial, strides, dilation, padding, out_dtype, precision,
                               kernel_flipped):
  _check_common(x, dy, "x", "dy", strides)
  out = output_spatial(x.shape[2:-1], kernel_spatial, strides, dilation, padding)
  if tuple(dy.shape[2:-1]) != out or x.shape[1] != dy.shape[1]:
    raise TypeError(f"dy {dy.shape} does not match x {x.shape} and kernel spatial {kernel_spatial}")
  shape = result_shape(_ext.WEIGHT_GRAD, x.shape, dy.shape, strides, dilation, padding,
                       {"kernel_spatial": kernel_spatial, "kernel_flipped": kernel_flipped})
  return _result_aval(_ext.WEIGHT_GRAD, x, dy, shape, out_dtype, kernel_flipped)


# --------------------------------------------------------------------------------------------------------------
# Transposes (and so JVPs, through ad.defbilinear). With <.,.> the elementwise inner product:
#   <fwd(x, w), c>  = <x, input_grad(c, w)> = <w, weight_grad(x, c)>


def _aval(v):
  return v.aval


def _fwd_transpose_x(ct, x, w, *, strides, dilation, padding, out_dtype, precision, kernel_flipped):
  return input_grad(ct, w, in_spatial=_aval(x).shape[2:-1], strides=strides, dilation=dilation, padding=padding,
                    out_dtype=_aval(x).dtype, precision=precision, kernel_flipped=kernel_flipped)


def _fwd_transpose_w(ct, x, w, *, strides, dilation, padding, out_dtype, precision, kernel_flipped):
  return weight_grad(x, ct, kernel_spatial=_aval(w).shape[1:-2], strides=strides, dilation=dilation,
                     padding=padding, out_dtype=_aval(w).dtype, precision=precision, kernel_flipped=kernel_flipped)


def _dgrad_transpose_dy(ct, dy, w, *, in_spatial, strides, dilation, padding, out_dtype, precision, kernel_flipped):
  return forward(ct, w, strides=strides, dilation=dilation, padding=padding, out_dtype=_aval(dy).dtype,
                 precision=precision, kernel_flipped=kernel_flipped)


def _dgrad_transpose_w(ct, dy, w, *, in_spatial, strides, dilation, padding, out_dtype, precision, kernel_flipped):
  return weight_grad(ct, dy, kernel_spatial=_aval(w).shape[1:-2], strides=strides, dilation=dilation,
                     padding=padding, out_dtype=_aval(w).dtype, precision=precision, kernel_flipped=kernel_flipped)


def _wgrad_transpose_x(ct, x, dy, *, kernel_spatial, strides, dilation, padding, out_dtype, precision,
                       kernel_flipped):
  return input_grad(dy, ct, in_spatial=_aval(x).shape[2:-1], strides=strides, dilation=dilation, padding=padding,
                    out_dtype=_aval(x).dtype, precision=precision, kernel_flipped=kernel_flipped)


def _wgrad_transpose_dy(ct, x, dy, *, kernel_spatial, strides, dilation, padding, out_dtype, precision,
                        kernel_flipped):
  return forward(x, ct, strides=strides, dilation=dilation, padding=padding, out_dtype=_aval(dy).dtype,
                 precision=precision, kernel_flipped=kernel_flipped)


# --------------------------------------------------------------------------------------------------------------
# Batching. A vmapped axis folds into an existing axis of the operand it maps, with a reshape (free when the
# mapped axis already sits next to that axis):
#   only the activation-like operand is mapped    -> into N (batch)
#   only the other operand is mapped              -> into the channel axis that only it and the result share
#   both are mapped                               -> into G (groups)


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


def _make_batcher(fn, a_fold, b_fold, out_of_a, out_of_b):
  """fn(a, b, **params); a_fold / b_fold: axis of a / b that a lone mapped axis folds into (negative from the
  end); out_of_a / out_of_b: the axis of the result it then shows up in."""

  def rule(args, dims, **params):
    (a, b), (da, db) = args, dims
    if (da is None) != (db is None):
      # One operand mapped. Under explicit sharding an unsharded mapped axis cannot merge into a sharded one;
      # then broadcast the other operand and fold both into G, as when both are mapped.
      v, dv, fold = (a, da, a_fold) if da is not None else (b, db, b_fold)
      axis = fold % (v.ndim - 1)
      if _sharded_in_type(v, axis + (axis >= dv)) and not _sharded_in_type(v, dv):
        size = v.shape[dv]
        if da is None:
          a, da = jnp.broadcast_to(a[None], (size,) + a.shape), 0
        else:
          b, db = jnp.broadcast_to(b[None], (size,) + b.shape), 0
    if da is not None and db is not None:
      size = a.shape[da]
      out = fn(_fold(a, da, 0), _fold(b, db, 0), **params)
      return _unfold(out, size, 0)
    if da is not None:
      size = a.shape[da]
      axis = a_fold % (a.ndim - 1)
      out = fn(_fold(a, da, axis), b, **params)
      return _unfold(out, size, out_of_a % out.ndim)
    size = b.shape[db]
    axis = b_fold % (b.ndim - 1)
    out = fn(a, _fold(b, db, axis), **params)
    return _unfold(out, size, out_of_b % out.ndim)

  return rule


def _by_layout(canonical, flipped):
  """The batching rule for the kernel's layout (its channel axes swap places when flipped)."""
  return lambda args, dims, **params: (flipped if params["kernel_flipped"] else canonical)(args, dims, **params)


# --------------------------------------------------------------------------------------------------------------
# Lowering: our custom calls where we have kernels; elsewhere XLA's convolution of the same meaning.


def _spans_devices(ctx) -> bool:
  """Whether this lowering is for a computation over several devices (then the partitioner needs our rules)."""
  axis_context = ctx.module_context.axis_context
  devices = _compat.lowering_devices(axis_context)
  if devices is not None:
    return len(devices) > 1
  mesh = _compat.lowering_mesh(axis_context)
  return mesh is not None and mesh.size > 1


def _within_cuda_limits(ctx, target, strides, extra):
  """The CUDA kernels' tap tables hold at most 3 spatial axes, kernel size and stride 32 per axis."""
  cuda = _ext.cuda
  kernel = extra["kernel_spatial"] if target == _ext.WEIGHT_GRAD else ctx.avals_in[1].shape[1:-2]
  return (len(strides) <= cuda.max_spatial_dims and max(strides) <= cuda.max_stride and
          max(kernel) <= cuda.max_kernel_size)


def _kernel_lowering(target, lax_impl, platform):
  direct = jax.ffi.ffi_lowering(target)
  fallback = mlir.lower_fun(lax_impl, multiple_results=False)

  def rule(ctx, a, b, *, strides, dilation, padding, out_dtype, precision, **extra):
    if platform == "cuda" and not _within_cuda_limits(ctx, target, strides, extra):
      return fallback(ctx, a, b, strides=strides, dilation=dilation, padding=padding, out_dtype=out_dtype,
                      precision=precision, **extra)
    if platform == "cuda" and extra["kernel_flipped"]:
      # The CUDA kernels read the canonical layout only: copy the kernel into it (or the result out of it).
      return mlir.lower_fun(partial(_canonical_call, target, strides=strides, dilation=dilation, padding=padding,
                                    out_dtype=out_dtype, precision=precision, **extra),
                            multiple_results=False)(ctx, a, b)
    if not _spans_devices(ctx):
      return direct(ctx, a, b, **_partitioning.ffi_attributes(strides, dilation, padding, extra["kernel_flipped"]))
    call = partial(_partitioning.kernel_call, target, strides=strides, dilation=dilation, padding=padding,
                   out_dtype=out_dtype, extra=tuple(sorted(extra.items())))
    return mlir.lower_fun(call, multiple_results=False)(ctx, a, b)

  return rule


def _canonical_call(target, a, b, *, kernel_flipped, **params):
  """A pass with a flipped kernel computed by the canonical one."""
  if target == _ext.FORWARD:
    return conv_transpose_p.bind(a, canonical_kernel(b, True), kernel_flipped=False, **params)
  if target == _ext.INPUT_GRAD:
    return conv_transpose_input_grad_p.bind(a, canonical_kernel(b, True), kernel_flipped=False, **params)
  dw = conv_transpose_weight_grad_p.bind(a, b, kernel_flipped=False, **params)
  return canonical_kernel(dw, True)  # the permutation is its own inverse: back to the flipped layout


def _lax_dimension_numbers(d):
  spatial = tuple(range(1, d + 1))
  return lax.ConvDimensionNumbers(lhs_spec=(0, d + 1) + spatial, rhs_spec=(d + 1, d) + tuple(range(d)),
                                  out_spec=(0, d + 1) + spatial)


def lax_forward(x, w, *, strides, dilation, padding, out_dtype, precision, kernel_flipped=False):
  """XLA's convolution with the forward primitive's meaning: the reference."""
  d = len(strides)
  w = canonical_kernel(w, kernel_flipped)

  def one(x, w):
    return lax.conv_general_dilated(x, w, (1,) * d, padding, lhs_dilation=strides, rhs_dilation=dilation,
                                    dimension_numbers=_lax_dimension_numbers(d), precision=precision,
                                    preferred_element_type=out_dtype)

  return jax.vmap(one)(x, w)


def lax_input_grad(dy, w, *, in_spatial, **params):
  x0 = jnp.zeros((dy.shape[0], dy.shape[1], *in_spatial, kernel_channels(w.shape, params["kernel_flipped"])[0]),
                 w.dtype)
  return jax.linear_transpose(lambda x: lax_forward(x, w, **{**params, "out_dtype": dy.dtype}), x0)(dy)[0].astype(
      params["out_dtype"])


def lax_weight_grad(x, dy, *, kernel_spatial, **params):
  channels = (dy.shape[-1], x.shape[-1]) if params["kernel_flipped"] else (x.shape[-1], dy.shape[-1])
  w0 = jnp.zeros((x.shape[0], *kernel_spatial, *channels), x.dtype)
  return jax.linear_transpose(lambda w: lax_forward(x, w, **{**params, "out_dtype": dy.dtype}), w0)(dy)[0].astype(
      params["out_dtype"])


conv_transpose_p = Primitive("jaxseg_conv_transpose")
conv_transpose_input_grad_p = Primitive("jaxseg_conv_transpose_input_grad")
conv_transpose_weight_grad_p = Primitive("jaxseg_conv_transpose_weight_grad")


def _setup(p, abstract_eval, target, lax_impl, transpose_a, transpose_b, batcher):
  p.def_impl(_compat.impl_by_apply_primitive(p))  # eager calls compile the primitive alone, as jax's own do
  # Our lowering may emit a custom_partitioning call, which needs the concrete devices at lowering time.
  _compat.require_devices_during_lowering(p)
  p.def_abstract_eval(abstract_eval)
  mlir.register_lowering(p, mlir.lower_fun(lax_impl, multiple_results=False))
  for platform in _ext.KERNEL_PLATFORMS:
    mlir.register_lowering(p, _kernel_lowering(target, lax_impl, platform), platform=platform)
  ad.defbilinear(p, transpose_a, transpose_b)
  batching.primitive_batchers[p] = batcher


# x (G, N, H.., Ci), w (G, K.., Ci, Co) -> y (G, N, O.., Co): a lone x folds into N, a lone w into Co.
_setup(conv_transpose_p, _forward_abstract_eval, _ext.FORWARD, lax_forward, _fwd_transpose_x, _fwd_transpose_w,
       _by_layout(_make_batcher(conv_transpose_p.bind, a_fold=1, b_fold=-1, out_of_a=1, out_of_b=-1),
                  _make_batcher(conv_transpose_p.bind, a_fold=1, b_fold=-2, out_of_a=1, out_of_b=-1)))
# dy (G, N, O.., Co), w (G, K.., Ci, Co) -> dx (G, N, H.., Ci): a lone dy folds into N, a lone w into Ci.
_setup(conv_transpose_input_grad_p, _input_grad_abstract_eval, _ext.INPUT_GRAD, lax_input_grad,
       _dgrad_transpose_dy, _dgrad_transpose_w,
       _by_layout(_make_batcher(conv_transpose_input_grad_p.bind, a_fold=1, b_fold=-2, out_of_a=1, out_of_b=-1),
                  _make_batcher(conv_transpose_input_grad_p.bind, a_fold=1, b_fold=-1, out_of_a=1, out_of_b=-1)))
# x (G, N, H.., Ci), dy (G, N, O.., Co) -> dw (G, K.., Ci, Co): a lone x folds into Ci, a lone dy into Co.
_setup(conv_transpose_weight_grad_p, _weight_grad_abstract_eval, _ext.WEIGHT_GRAD, lax_weight_grad,
       _wgrad_transpose_x, _wgrad_transpose_dy,
       _by_layout(_make_batcher(conv_transpose_weight_grad_p.bind, a_fold=-1, b_fold=-1, out_of_a=-2, out_of_b=-1),
                  _make_batcher(conv_transpose_weight_grad_p.bind, a_fold=-1, b_fold=-1, out_of_a=-1, out_of_b=-2)))
