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
from jax._src import dispatch  # apply_primitive: eager calls compile the primitive alone, as jax's own do
from jax.interpreters import ad, batching, mlir

from jaxseg import _ext

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


def _bind(prim, a, b, *, out_dtype, **params):
  out_dtype = np.dtype(out_dtype)
  if a.dtype != b.dtype:
    common = jnp.promote_types(a.dtype, b.dtype)
    a, b = a.astype(common), b.astype(common)
  compute = out_dtype if out_dtype in _NATIVE_OUT[np.dtype(a.dtype)] else np.dtype(a.dtype)
  out = prim.bind(a, b, out_dtype=compute, **params)
  return out if compute == out_dtype else out.astype(out_dtype)


def forward(x, w, **params):
  return _bind(conv_transpose_p, x, w, **params)


def input_grad(dy, w, *, in_spatial, **params):
  return _bind(conv_transpose_input_grad_p, dy, w, in_spatial=tuple(in_spatial), **params)


def weight_grad(x, dy, *, kernel_spatial, **params):
  return _bind(conv_transpose_weight_grad_p, x, dy, kernel_spatial=tuple(kernel_spatial), **params)


# --------------------------------------------------------------------------------------------------------------
# Abstract evaluation. The result is derived from an operand's aval with `update`, so sharding and shard_map
# information carries through.


def _check_common(a, b, a_name, b_name, strides):
  d = len(strides)
  if a.ndim != d + 3 or b.ndim != d + 3:
    raise TypeError(f"{a_name} and {b_name} must have rank {d + 3}, got {a.shape} and {b.shape}")
  if a.shape[0] != b.shape[0]:
    raise TypeError(f"group axes differ: {a.shape} and {b.shape}")


def _forward_abstract_eval(x, w, *, strides, dilation, padding, out_dtype, precision):
  _check_common(x, w, "x", "w", strides)
  if x.shape[-1] != w.shape[-2]:
    raise TypeError(f"input channels differ: x {x.shape}, w {w.shape}")
  out = output_spatial(x.shape[2:-1], w.shape[1:-2], strides, dilation, padding)
  return x.update(shape=(x.shape[0], x.shape[1], *out, w.shape[-1]), dtype=out_dtype, weak_type=False)


def _input_grad_abstract_eval(dy, w, *, in_spatial, strides, dilation, padding, out_dtype, precision):
  _check_common(dy, w, "dy", "w", strides)
  out = output_spatial(in_spatial, w.shape[1:-2], strides, dilation, padding)
  if tuple(dy.shape[2:-1]) != out or dy.shape[-1] != w.shape[-1]:
    raise TypeError(f"dy {dy.shape} does not match w {w.shape} and input spatial {in_spatial}")
  return dy.update(shape=(dy.shape[0], dy.shape[1], *in_spatial, w.shape[-2]), dtype=out_dtype, weak_type=False)


def _weight_grad_abstract_eval(x, dy, *, kernel_spatial, strides, dilation, padding, out_dtype, precision):
  _check_common(x, dy, "x", "dy", strides)
  out = output_spatial(x.shape[2:-1], kernel_spatial, strides, dilation, padding)
  if tuple(dy.shape[2:-1]) != out or x.shape[1] != dy.shape[1]:
    raise TypeError(f"dy {dy.shape} does not match x {x.shape} and kernel spatial {kernel_spatial}")
  return x.update(shape=(x.shape[0], *kernel_spatial, x.shape[-1], dy.shape[-1]), dtype=out_dtype,
                  weak_type=False)


# --------------------------------------------------------------------------------------------------------------
# Transposes (and so JVPs, through ad.defbilinear). With <.,.> the elementwise inner product:
#   <fwd(x, w), c>  = <x, input_grad(c, w)> = <w, weight_grad(x, c)>


def _aval(v):
  return v.aval


def _fwd_transpose_x(ct, x, w, *, strides, dilation, padding, out_dtype, precision):
  return input_grad(ct, w, in_spatial=_aval(x).shape[2:-1], strides=strides, dilation=dilation, padding=padding,
                    out_dtype=_aval(x).dtype, precision=precision)


def _fwd_transpose_w(ct, x, w, *, strides, dilation, padding, out_dtype, precision):
  return weight_grad(x, ct, kernel_spatial=_aval(w).shape[1:-2], strides=strides, dilation=dilation,
                     padding=padding, out_dtype=_aval(w).dtype, precision=precision)


def _dgrad_transpose_dy(ct, dy, w, *, in_spatial, strides, dilation, padding, out_dtype, precision):
  return forward(ct, w, strides=strides, dilation=dilation, padding=padding, out_dtype=_aval(dy).dtype,
                 precision=precision)


def _dgrad_transpose_w(ct, dy, w, *, in_spatial, strides, dilation, padding, out_dtype, precision):
  return weight_grad(ct, dy, kernel_spatial=_aval(w).shape[1:-2], strides=strides, dilation=dilation,
                     padding=padding, out_dtype=_aval(w).dtype, precision=precision)


def _wgrad_transpose_x(ct, x, dy, *, kernel_spatial, strides, dilation, padding, out_dtype, precision):
  return input_grad(dy, ct, in_spatial=_aval(x).shape[2:-1], strides=strides, dilation=dilation, padding=padding,
                    out_dtype=_aval(x).dtype, precision=precision)


def _wgrad_transpose_dy(ct, x, dy, *, kernel_spatial, strides, dilation, padding, out_dtype, precision):
  return forward(x, ct, strides=strides, dilation=dilation, padding=padding, out_dtype=_aval(dy).dtype,
                 precision=precision)


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


def _make_batcher(fn, a_fold, b_fold, out_of_a, out_of_b):
  """fn(a, b, **params); a_fold / b_fold: axis of a / b that a lone mapped axis folds into (negative from the
  end); out_of_a / out_of_b: the axis of the result it then shows up in."""

  def rule(args, dims, **params):
    (a, b), (da, db) = args, dims
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


# --------------------------------------------------------------------------------------------------------------
# Lowering: our custom calls where we have kernels; elsewhere XLA's convolution of the same meaning.


def _kernel_lowering(target):
  lower = jax.ffi.ffi_lowering(target)

  def rule(ctx, a, b, *, strides, dilation, padding, **_):
    return lower(ctx, a, b, strides=np.asarray(strides, np.int64), dilation=np.asarray(dilation, np.int64),
                 padding_lo=np.asarray([p[0] for p in padding], np.int64),
                 padding_hi=np.asarray([p[1] for p in padding], np.int64))

  return rule


def _lax_dimension_numbers(d):
  spatial = tuple(range(1, d + 1))
  return lax.ConvDimensionNumbers(lhs_spec=(0, d + 1) + spatial, rhs_spec=(d + 1, d) + tuple(range(d)),
                                  out_spec=(0, d + 1) + spatial)


def lax_forward(x, w, *, strides, dilation, padding, out_dtype, precision):
  """XLA's convolution with the forward primitive's meaning (canonical operands): the reference."""
  d = len(strides)

  def one(x, w):
    return lax.conv_general_dilated(x, w, (1,) * d, padding, lhs_dilation=strides, rhs_dilation=dilation,
                                    dimension_numbers=_lax_dimension_numbers(d), precision=precision,
                                    preferred_element_type=out_dtype)

  return jax.vmap(one)(x, w)


def lax_input_grad(dy, w, *, in_spatial, **params):
  x0 = jnp.zeros((dy.shape[0], dy.shape[1], *in_spatial, w.shape[-2]), w.dtype)
  return jax.linear_transpose(lambda x: lax_forward(x, w, **{**params, "out_dtype": dy.dtype}), x0)(dy)[0].astype(
      params["out_dtype"])


def lax_weight_grad(x, dy, *, kernel_spatial, **params):
  w0 = jnp.zeros((x.shape[0], *kernel_spatial, x.shape[-1], dy.shape[-1]), x.dtype)
  return jax.linear_transpose(lambda w: lax_forward(x, w, **{**params, "out_dtype": dy.dtype}), w0)(dy)[0].astype(
      params["out_dtype"])


conv_transpose_p = Primitive("jaxseg_conv_transpose")
conv_transpose_input_grad_p = Primitive("jaxseg_conv_transpose_input_grad")
conv_transpose_weight_grad_p = Primitive("jaxseg_conv_transpose_weight_grad")


def _setup(p, abstract_eval, target, lax_impl, transpose_a, transpose_b, batcher):
  p.def_impl(partial(dispatch.apply_primitive, p))
  p.def_abstract_eval(abstract_eval)
  mlir.register_lowering(p, mlir.lower_fun(lax_impl, multiple_results=False))
  for platform in _ext.KERNEL_PLATFORMS:
    mlir.register_lowering(p, _kernel_lowering(target), platform=platform)
  ad.defbilinear(p, transpose_a, transpose_b)
  batching.primitive_batchers[p] = batcher


# x (G, N, H.., Ci), w (G, K.., Ci, Co) -> y (G, N, O.., Co): a lone x folds into N, a lone w into Co.
_setup(conv_transpose_p, _forward_abstract_eval, _ext.FORWARD, lax_forward, _fwd_transpose_x, _fwd_transpose_w,
       _make_batcher(conv_transpose_p.bind, a_fold=1, b_fold=-1, out_of_a=1, out_of_b=-1))
# dy (G, N, O.., Co), w (G, K.., Ci, Co) -> dx (G, N, H.., Ci): a lone dy folds into N, a lone w into Ci.
_setup(conv_transpose_input_grad_p, _input_grad_abstract_eval, _ext.INPUT_GRAD, lax_input_grad,
       _dgrad_transpose_dy, _dgrad_transpose_w,
       _make_batcher(conv_transpose_input_grad_p.bind, a_fold=1, b_fold=-2, out_of_a=1, out_of_b=-1))
# x (G, N, H.., Ci), dy (G, N, O.., Co) -> dw (G, K.., Ci, Co): a lone x folds into Ci, a lone dy into Co.
_setup(conv_transpose_weight_grad_p, _weight_grad_abstract_eval, _ext.WEIGHT_GRAD, lax_weight_grad,
       _wgrad_transpose_x, _wgrad_transpose_dy,
       _make_batcher(conv_transpose_weight_grad_p.bind, a_fold=-1, b_fold=-1, out_of_a=-2, out_of_b=-1))
