"""`jaxseg.conv_general_dilated`: `jax.lax.conv_general_dilated`, with its input-dilated calls on jaxseg's kernels.

A convolution whose input is dilated (`lhs_dilation` > 1 on some axis) is a transposed convolution; it is how
much JAX code writes one (audio vocoders' up-samplers, hand-written decoders). Three mappings take such calls:

  window stride 1          `conv_transpose(lhs, rhs, strides=lhs_dilation, padding)` exactly (transpose_kernel
                           False, the same kernel, the same explicit padding of the dilated input).
  window stride w > 1      per axis with s = lhs_dilation and g = gcd(s, w): only kernel taps t with
                           t*d = lo (mod g) ever meet an input element; they form a sub-kernel with a new dilation,
                           and the call becomes one with lhs_dilation s/g and window stride w/g (`_reduce`). A
                           remaining window stride w/g > 1 is taken by computing every output of the stride-1
                           call in the window's span and keeping one in w/g.
  batch_group_count B > 1  the form of lax's own weight gradient of a transposed convolution: our weight_grad
                           pass, with the window stride as its kernel dilation.

Everything else goes to `lax.conv_general_dilated` unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxseg import _conv, _primitives
from jaxseg._passes import KERNEL_DTYPES, MAX_SPATIAL_DIMS, WEIGHT_GRAD, Geometry, output_size

# lax's function as imported, so that the calls passed on reach lax even where a user has patched
# `jax.lax.conv_general_dilated` to be this module's function (docs/routing.md).
_lax_conv_general_dilated = lax.conv_general_dilated


def _reduce(s: int, w: int, d: int, k: int, lo: int):
  """One spatial axis of an input-dilated call, reduced to lhs dilation s/g and window stride w/g, g = gcd(s, w).

  Output o reads the dilated, padded input at o*w + t*d - lo for tap t; an input element sits there only if s
  divides it, which needs t*d = lo (mod g) since g divides o*w. Those taps are t0, t0 + m, t0 + 2m, ... with
  m = g / gcd(g, d), and (t*d - lo) / g = q0 + j*d' along them (d' = d / gcd(g, d)): the same call with the
  sub-kernel rhs[t0::m], rhs dilation d', input dilation s/g, window stride w/g and low padding -q0.

  Returns:
    (t0, m, s', w', d', lo'), or None where no tap meets an input element (every output is zero).
  """
  g = math.gcd(s, w)
  t0 = next((t for t in range(min(k, g)) if (t * d - lo) % g == 0), None)
  if t0 is None:
    return None
  m = g // math.gcd(g, d)
  return t0, m, s // g, w // g, d // math.gcd(g, d), -((t0 * d - lo) // g)


def _takes(lhs, rhs, lhs_dilation, padding, feature_group_count, batch_group_count, rhs_dilation, out_sharding,
           out) -> bool:
  """Whether jaxseg's kernels take a call that lax accepted (its result's abstract value is `out`)."""
  if out_sharding is not None or isinstance(padding, str) or lhs_dilation is None:
    return False
  if not all(v > 0 for v in (*lhs.shape, *rhs.shape, *out.shape)):
    return False  # empty operands and results: lax's business
  if lhs.ndim - 2 > MAX_SPATIAL_DIMS or not any(int(s) > 1 for s in lhs_dilation):
    return False
  if np.dtype(lhs.dtype) not in KERNEL_DTYPES or lhs.dtype != rhs.dtype:
    return False
  if not jnp.issubdtype(out.dtype, jnp.floating):
    return False
  if batch_group_count > 1:  # the weight-gradient form; its rhs dilation would be a strided forward's stride
    return feature_group_count == 1 and (rhs_dilation is None or all(int(r) == 1 for r in rhs_dilation))
  return True


def conv_general_dilated(lhs, rhs, window_strides: Sequence[int], padding: str | Sequence[tuple[int, int]],
                         lhs_dilation: Sequence[int] | None = None, rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers: Any = None, feature_group_count: int = 1, batch_group_count: int = 1,
                         precision: Any = None, preferred_element_type: Any = None, out_sharding: Any = None):
  """`jax.lax.conv_general_dilated` (same signature, defaults, result and errors), with every input-dilated call
  that jaxseg's kernels can take computed by them, forward and both gradients.

  Taken by jaxseg's kernels: `lhs_dilation` > 1 on at least one spatial axis, explicit `padding` pairs (lax
  refuses string padding with `lhs_dilation`, and so does this function, by passing the call on), floating
  operands of a dtype the kernels compute (float32, float64, bfloat16, float16) with a floating result, at most 3
  spatial axes, no empty operand or result, `out_sharding` None, and

  - `batch_group_count` 1, any `window_strides`, `rhs_dilation`, `feature_group_count` (depthwise included),
    `dimension_numbers`, `precision` and `preferred_element_type`. With window stride 1 this is
    `jaxseg.conv_transpose(lhs, rhs, lhs_dilation, padding, rhs_dilation, dimension_numbers,
    feature_group_count=feature_group_count)`. A window stride w > 1 together with input dilation s on an axis
    first keeps only the kernel taps that can meet an input element, which turns the axis into one with input
    dilation s / gcd(s, w) and window stride w' = w / gcd(s, w) (no extra work: at w = s it is a stride-1 call on
    the undilated input); a remaining w' > 1 is paid for: every output in the window's span is computed, and one
    in w' kept, so the forward costs w' times (per axis, multiplied) the useful work, and the input gradient
    and weight gradient as much again (their cotangent is the kept outputs with zeros between them). Where no tap
    can meet an input element on some axis the result is zeros, with no kernel call.
  - `batch_group_count` B > 1 with `feature_group_count` 1 and no `rhs_dilation`: the convolution lax writes
    for the weight gradient of a (grouped) transposed convolution, computed by jaxseg's weight_grad pass (its
    window stride is that pass's kernel dilation).

  Every other call (no input dilation, integer or complex operands, string padding, `out_sharding`, or
  `batch_group_count` > 1 with an `rhs_dilation`) is `jax.lax.conv_general_dilated` unchanged.

  Args:
    lhs: input, rank n+2 (n >= 1 spatial axes), laid out by `dimension_numbers` (default 'NCH...').
    rhs: kernel, rank n+2, laid out by `dimension_numbers` (default 'OIH...'); not flipped (a correlation, as in
      lax).
    window_strides: n positive ints.
    padding: n (low, high) pairs of padding of the dilated input (negative crops), or a string (lax's padding
      types; with `lhs_dilation` lax raises ValueError).
    lhs_dilation: None or n positive ints, the input dilation (a transposed convolution's stride).
    rhs_dilation: None or n positive ints, the kernel dilation.
    dimension_numbers: None, a `lax.ConvDimensionNumbers`, or a tuple of three layout strings.
    feature_group_count: as in lax.
    batch_group_count: as in lax.
    precision: as in lax. The CPU kernels compute exactly in the accumulation type.
    preferred_element_type: as in lax.
    out_sharding: as in lax; a call with one goes to lax.

  Returns:
    The array `jax.lax.conv_general_dilated` returns, of the same shape and dtype.

  Raises:
    TypeError: as `jax.lax.conv_general_dilated` raises it (the arguments are checked by lax's own shape rule
      first, so the errors are lax's).
    ValueError: as `jax.lax.conv_general_dilated` raises it.
  """
  passthrough = lambda: _lax_conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
      batch_group_count, precision, preferred_element_type, out_sharding)
  if not (hasattr(lhs, "shape") and hasattr(lhs, "dtype") and hasattr(rhs, "shape") and hasattr(rhs, "dtype")):
    lhs, rhs = jnp.asarray(lhs), jnp.asarray(rhs)
  # lax's shape and dtype rules check every argument and give the result's abstract value.
  out = jax.eval_shape(
      lambda a, b: _lax_conv_general_dilated(a, b, window_strides, padding, lhs_dilation, rhs_dilation,
                                            dimension_numbers, feature_group_count, batch_group_count, precision,
                                            preferred_element_type, out_sharding),
      jax.ShapeDtypeStruct(lhs.shape, lhs.dtype), jax.ShapeDtypeStruct(rhs.shape, rhs.dtype))
  if not _takes(lhs, rhs, lhs_dilation, padding, feature_group_count, batch_group_count, rhs_dilation,
                out_sharding, out):
    return passthrough()
  lhs, rhs = jnp.asarray(lhs), jnp.asarray(rhs)
  n = lhs.ndim - 2
  dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  strides = tuple(int(v) for v in window_strides)
  lhs_dilation = tuple(int(v) for v in lhs_dilation)
  rhs_dilation = (1,) * n if rhs_dilation is None else tuple(int(v) for v in rhs_dilation)
  pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  in_spatial = tuple(lhs.shape[i] for i in dn.lhs_spec[2:])
  out_spatial = tuple(out.shape[i] for i in dn.out_spec[2:])
  if batch_group_count > 1:
    return _weight_grad_form(lhs, rhs, dn, strides, lhs_dilation, pads, in_spatial, out_spatial,
                             int(batch_group_count), out.dtype, precision)

  kernel = rhs
  new_pads, new_strides, new_dilation, keep = [], [], [], []
  for i in range(n):
    k = rhs.shape[dn.rhs_spec[2 + i]]
    reduced = _reduce(lhs_dilation[i], strides[i], rhs_dilation[i], k, pads[i][0])
    if reduced is None:  # no tap meets an input element: lax's result is zeros
      return jnp.zeros(out.shape, out.dtype)
    t0, m, s, w, d, lo = reduced
    kernel = lax.slice_in_dim(kernel, t0, k, m, axis=dn.rhs_spec[2 + i])
    # The high padding that makes the stride-1 call end at the last kept output ((out - 1) * w + 1 outputs).
    span = output_size(in_spatial[i], kernel.shape[dn.rhs_spec[2 + i]], s, d, lo, 0)
    new_pads.append((lo, (out_spatial[i] - 1) * w + 1 - span))
    new_strides.append(s)
    new_dilation.append(d)
    keep.append(w)
  y = _conv.conv_transpose(lhs, kernel, tuple(new_strides), tuple(new_pads), tuple(new_dilation), dn,
                           precision=precision, preferred_element_type=preferred_element_type,
                           feature_group_count=int(feature_group_count))
  if any(w > 1 for w in keep):
    step = [1] * (n + 2)
    for i, w in enumerate(keep):
      step[dn.out_spec[2 + i]] = w
    y = lax.slice(y, (0,) * y.ndim, y.shape, step)
  return y


def _weight_grad_form(lhs, rhs, dn, strides, lhs_dilation, pads, in_spatial, out_spatial, groups, out_dtype,
                      precision):
  """A call with `batch_group_count` = groups > 1 on jaxseg's weight_grad pass.

  Read as the weight gradient of a transposed convolution: lhs's feature axis is that convolution's batch (the
  contracted axis), lhs's batch axis its G groups of input channels, rhs (O, I, spatial) its output cotangent
  (G groups of output channels, batch, output positions), the window stride its kernel dilation and this call's
  output spatial size its kernel size. The padding's high side is trimmed to what the last window reaches."""
  n = len(strides)
  kernel_spatial = out_spatial
  cot_spatial = tuple(rhs.shape[i] for i in dn.rhs_spec[2:])
  trimmed = []
  for h, k, o, s, d, (lo, hi) in zip(in_spatial, kernel_spatial, cot_spatial, lhs_dilation, strides, pads):
    trimmed.append((lo, hi - (output_size(h, k, s, d, lo, hi) - o)))
  geometry = Geometry(lhs_dilation, strides, tuple(trimmed), in_spatial, kernel_spatial)
  # x (G, N, H..., Ci/G): lhs's features are N, its batch the G groups of Ci/G; dy (G, N, O..., Co/G).
  x = _conv._split_groups(jnp.transpose(lhs, (dn.lhs_spec[1], *dn.lhs_spec[2:], dn.lhs_spec[0])), groups)
  dy = _conv._split_groups(jnp.transpose(rhs, (dn.rhs_spec[1], *dn.rhs_spec[2:], dn.rhs_spec[0])), groups)
  compute_dtype = out_dtype if out_dtype == np.float64 else x.dtype
  dw = _primitives.apply(WEIGHT_GRAD, x.astype(compute_dtype), dy.astype(compute_dtype), geometry=geometry,
                         out_dtype=out_dtype, precision=_conv._canonical_precision(precision))
  dw = jnp.moveaxis(dw, 0, -2)  # (G, K..., Ci/G, Co/G) -> (K..., Ci/G, G * Co/G): batch Ci/G, features Co
  dw = dw.reshape(dw.shape[:-2] + (dw.shape[-2] * dw.shape[-1],))
  canonical_axis = {dn.out_spec[0]: n, dn.out_spec[1]: n + 1}
  canonical_axis.update({a: i for i, a in enumerate(dn.out_spec[2:])})
  return jnp.transpose(dw, tuple(canonical_axis[a] for a in range(n + 2)))
