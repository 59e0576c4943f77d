"""`jaxseg.conv_transpose`: `jax.lax.conv_transpose`'s signature and meaning, computed by our kernels."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxseg import _ext, _primitives
from jaxseg._passes import FORWARD, KERNEL_DTYPES, MAX_SPATIAL_DIMS, Geometry

_DEFAULT_DIMENSION_NUMBERS = {
    2: ("NC", "IO", "NC"),
    3: ("NHC", "HIO", "NHC"),
    4: ("NHWC", "HWIO", "NHWC"),
    5: ("NHWDC", "HWDIO", "NHWDC"),
}


def _int_tuple(value, n: int, name: str) -> tuple[int, ...]:
  """`value` as n ints: a sequence of n integers, or one integer for every axis."""
  if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
    return (int(value),) * n
  if not isinstance(value, Sequence) and not isinstance(value, np.ndarray):
    raise TypeError(f"{name} must be a sequence of {n} integers, got {value!r}")
  try:
    out = tuple(operator.index(v) for v in value)
  except TypeError:
    raise TypeError(f"{name} must be a sequence of {n} integers, got {value!r}") from None
  if len(out) != n:
    raise ValueError(f"{name} must have one entry per spatial dimension ({n}), got {len(out)}: {value!r}")
  return out


def _pairs(padding, n: int, name: str = "padding") -> tuple[tuple[int, int], ...]:
  if not isinstance(padding, (Sequence, np.ndarray)) or isinstance(padding, str):
    raise TypeError(f"{name} must be 'SAME', 'VALID' or a sequence of {n} (low, high) pairs, got {padding!r}")
  if len(padding) != n:
    raise ValueError(f"{name} must have one (low, high) pair per spatial dimension ({n}), got {len(padding)}: "
                     f"{padding!r}")
  out = []
  for p in padding:
    try:
      lo, hi = (operator.index(v) for v in p)
    except (TypeError, ValueError):
      raise TypeError(f"each entry of {name} must be a (low, high) pair of integers, got {p!r}") from None
    out.append((lo, hi))
  return tuple(out)


def torch_padding(kernel_size, padding, output_padding=0, dilation=1) -> tuple[tuple[int, int], ...]:
  """Explicit `conv_transpose` padding that reproduces a PyTorch `ConvTranspose{1,2,3}d`.

  PyTorch's `ConvTranspose2d(c_in, c_out, k, stride, padding, output_padding, dilation=d)` with weight `W` of
  shape `(c_in, c_out, kh, kw)` equals::

    jaxseg.conv_transpose(x_nhwc, W.permute(2, 3, 1, 0), strides,
                          jaxseg.torch_padding(k, padding, output_padding, d),
                          rhs_dilation=(d, d), transpose_kernel=True)

  that is, the weight permuted to `(k..., c_out, c_in)` and the pads `(d*(k-1) - p, d*(k-1) - p + output_padding)`
  per spatial dimension.

  Args:
    kernel_size: int or sequence of ints, the kernel's spatial size.
    padding: int or sequence, PyTorch's `padding`.
    output_padding: int or sequence, PyTorch's `output_padding`.
    dilation: int or sequence, PyTorch's `dilation`.

  Returns:
    A tuple of `(low, high)` pairs, one per spatial dimension.
  """
  lengths = [len(v) for v in (kernel_size, padding, output_padding, dilation) if isinstance(v, Sequence)]
  n = lengths[0] if lengths else 1
  k = _int_tuple(kernel_size, n, "kernel_size")
  p = _int_tuple(padding, n, "padding")
  op = _int_tuple(output_padding, n, "output_padding")
  d = _int_tuple(dilation, n, "dilation")
  if any(v < 1 for v in k):
    raise ValueError(f"kernel_size must be positive, got {kernel_size!r}")
  if any(v < 1 for v in d):
    raise ValueError(f"dilation must be positive, got {dilation!r}")
  if any(v < 0 for v in p) or any(v < 0 for v in op):
    raise ValueError(f"padding and output_padding must be non-negative, got {padding!r} and {output_padding!r}")
  return tuple(tuple(_ext.cpu.torch_padding(*a)) for a in zip(k, p, op, d))


def _transpose_padding(padding, kernel_spatial, strides, dilation, use_consistent_padding):
  """Explicit (low, high) padding of the dilated input, as jax.lax.conv_transpose reads `padding`."""
  n = len(strides)
  eff = [_ext.cpu.effective_kernel_size(k, d) for k, d in zip(kernel_spatial, dilation)]
  if isinstance(padding, str):
    mode = padding.upper()
    if mode not in ("SAME", "VALID"):
      raise ValueError(f"padding must be 'SAME', 'VALID' or a sequence of (low, high) pairs, got {padding!r}")
    return tuple(tuple(_ext.cpu.string_padding(mode, k, s)) for k, s in zip(eff, strides))
  pads = _pairs(padding, n)
  if use_consistent_padding:
    return tuple(tuple(_ext.cpu.consistent_padding(k, lo, hi)) for k, (lo, hi) in zip(eff, pads))
  return pads


def _feature_group_count(value) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"feature_group_count must be an integer, got {value!r}")
  if value < 1:
    raise ValueError(f"feature_group_count must be >= 1, got {value}")
  return int(value)


def _split_groups(v, groups: int):
  """(..., G * c) -> (G, ..., c): the group axis of the last (feature) axis to the front."""
  v = v.reshape(v.shape[:-1] + (groups, v.shape[-1] // groups))
  return jnp.moveaxis(v, -2, 0)


def lax_kernel(rhs, dn: lax.ConvDimensionNumbers, transpose_kernel: bool, groups: int):
  """The kernel of the `lax.conv_general_dilated(..., feature_group_count=groups)` that `conv_transpose` equals.

  Without `transpose_kernel` that is `rhs` itself. With it, the spatial axes are reversed and the features
  regrouped: `rhs`'s 'O' axis holds the G groups of C_in / G input features and its 'I' axis the C_out / G
  outputs of a group (PyTorch's grouped weight); the result's 'O' axis holds the G groups of C_out / G outputs
  and its 'I' axis the C_in / G inputs of a group, in `rhs`'s layout. At G = 1 this is the flip and swap of
  `lax.conv_transpose`.
  """
  if not transpose_kernel:
    return rhs
  n = rhs.ndim - 2
  to_last = (*dn.rhs_spec[2:], dn.rhs_spec[1], dn.rhs_spec[0])
  w = jnp.flip(jnp.transpose(rhs, to_last), tuple(range(n)))  # (K..., C_out/G, G * C_in/G)
  spatial, out_per_group, in_features = w.shape[:n], w.shape[n], w.shape[n + 1]
  w = w.reshape(spatial + (out_per_group, groups, in_features // groups))
  w = jnp.transpose(w, (*range(n), n + 2, n + 1, n)).reshape(spatial + (in_features // groups,
                                                                        groups * out_per_group))
  return jnp.transpose(w, np.argsort(to_last))


def _out_dtype(dtype, preferred_element_type):
  if preferred_element_type is None:
    return np.dtype(dtype)
  pref = np.dtype(preferred_element_type)
  if jnp.issubdtype(dtype, jnp.floating) != jnp.issubdtype(pref, jnp.floating) or (
      pref.itemsize < np.dtype(dtype).itemsize):
    raise TypeError(f"preferred_element_type {pref} must not be narrower than the operands' {np.dtype(dtype)}")
  return pref


def conv_transpose(lhs, rhs, strides: Sequence[int], padding: str | Sequence[tuple[int, int]],
                   rhs_dilation: Sequence[int] | None = None, dimension_numbers: Any = None,
                   transpose_kernel: bool = False, precision: Any = None, preferred_element_type: Any = None,
                   use_consistent_padding: bool = False, *, feature_group_count: int = 1):
  """Transposed convolution by unified kernel segregation; a drop-in for `jax.lax.conv_transpose`.

  Same arguments, defaults, output shape, dtype and values as `jax.lax.conv_transpose` (jax 0.10), plus
  grouped convolution (`feature_group_count`), which lax's function lacks. Instead of
  convolving a zero-inserted input, every output phase (output index modulo the stride, per spatial dimension)
  is computed from the original input with that phase's sub-kernel, in one kernel launch per pass; the input and
  weight gradients are custom calls of their own, so `grad`, `vmap` and `jit` stay on jaxseg's kernels.

  Args:
    lhs: input, rank n+2.
    rhs: kernel, rank n+2.
    strides: n positive ints, the fractional strides (one int is taken for every dimension).
    padding: 'SAME', 'VALID', or n (low, high) pairs of padding of the dilated input (negative crops). With
      `use_consistent_padding=True` pairs are read as the padding of the forward convolution (PyTorch's meaning).
    rhs_dilation: None or n positive ints, the kernel dilation.
    dimension_numbers: as in `lax.conv_general_dilated`; defaults to NHC/HIO, NHWC/HWIO and NHWDC/HWDIO.
    transpose_kernel: if True, flip the kernel's spatial axes and swap its input/output feature axes (the
      gradient-of-convolution / Keras / PyTorch convention).
    precision: as in `lax.conv_general_dilated`. The CPU kernels always compute exactly in the accumulation type.
    preferred_element_type: None, or a floating dtype not narrower than the operands: the result dtype. 16-bit
      operands accumulate in float32 either way.
    use_consistent_padding: see `padding`.
    feature_group_count: G >= 1 (keyword only): G independent transposed convolutions side by side, each from
      C_in / G of the input features to C_out / G of the output features, group g reading and writing the g-th
      slice of each. The kernel's 'O' axis is the one split into groups, as in `lax.conv_general_dilated`:
      without `transpose_kernel` the kernel is (k..., C_in / G, C_out) in HWIO terms and the result equals
      `lax.conv_general_dilated(lhs, rhs, 1, pads, lhs_dilation=strides, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers, feature_group_count=G)`; with `transpose_kernel=True` it is
      (k..., C_out / G, C_in), PyTorch's grouped `ConvTranspose` weight `(C_in, C_out / G, k...)` permuted,
      and the result equals PyTorch's `ConvTranspose{1,2,3}d(..., groups=G)`.

  Returns:
    The transposed convolution, laid out by `dimension_numbers`' output spec.

  Raises:
    TypeError: for operands of different rank or dtype, non-integer strides, dilations, paddings or
      `feature_group_count`, malformed `dimension_numbers`.
    ValueError: for non-positive strides, dilations or `feature_group_count`, a `feature_group_count` that does
      not divide the input features or the kernel's 'O' axis, features of `lhs` and `rhs` that disagree, or a
      padding that leaves the output empty.

  Operands of integer or complex dtype, empty kernels and empty input spatial dimensions go to XLA's
  convolution (the `lax.conv_general_dilated` above, the kernel regrouped by `lax_kernel`); every other
  configuration runs on jaxseg's kernels.
  """
  lhs = jnp.asarray(lhs)
  rhs = jnp.asarray(rhs)
  if lhs.ndim != rhs.ndim:
    raise TypeError(f"lhs and rhs must have the same rank, got lhs {lhs.shape} and rhs {rhs.shape}")
  if lhs.ndim < 2:
    raise TypeError(f"lhs and rhs must have rank >= 2 (batch and feature axes), got {lhs.shape}")
  n = lhs.ndim - 2
  if n > MAX_SPATIAL_DIMS:
    raise ValueError(f"lhs and rhs have {n} spatial dimensions; jaxseg supports at most {MAX_SPATIAL_DIMS}")
  strides = _int_tuple(strides, n, "strides")
  if any(s < 1 for s in strides):
    raise ValueError(f"strides must be positive, got {strides}")
  dilation = (1,) * n if rhs_dilation is None else _int_tuple(rhs_dilation, n, "rhs_dilation")
  if any(d < 1 for d in dilation):
    raise ValueError(f"rhs_dilation must be positive, got {dilation}")
  if dimension_numbers is None:
    if lhs.ndim not in _DEFAULT_DIMENSION_NUMBERS:
      raise ValueError(f"dimension_numbers must be given for rank {lhs.ndim} operands (defaults exist up to 3 "
                       "spatial dimensions)")
    dimension_numbers = _DEFAULT_DIMENSION_NUMBERS[lhs.ndim]
  try:
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  except (TypeError, ValueError) as e:
    raise type(e)(f"invalid dimension_numbers {dimension_numbers!r}: {e}") from None
  if lhs.dtype != rhs.dtype:
    raise TypeError(f"lhs and rhs must have the same dtype, got {lhs.dtype} and {rhs.dtype}")
  groups = _feature_group_count(feature_group_count)
  out_dtype = _out_dtype(lhs.dtype, preferred_element_type)

  kernel_spatial = tuple(rhs.shape[i] for i in dn.rhs_spec[2:])
  in_spatial = tuple(lhs.shape[i] for i in dn.lhs_spec[2:])
  pads = _transpose_padding(padding, kernel_spatial, strides, dilation, use_consistent_padding)

  # The kernel's input-feature axis after an optional transpose_kernel swap must match lhs's features (one
  # group's worth of them without transpose_kernel, where groups split the other axis).
  in_features = lhs.shape[dn.lhs_spec[1]]
  if in_features % groups:
    raise ValueError(f"feature_group_count={groups} must divide lhs's {in_features} feature channels")
  in_axis = dn.rhs_spec[0] if transpose_kernel else dn.rhs_spec[1]
  if in_features != rhs.shape[in_axis] * (1 if transpose_kernel else groups):
    raise ValueError(
        f"lhs has {in_features} feature channels but rhs expects {rhs.shape[in_axis]}"
        f"{'' if transpose_kernel or groups == 1 else f' per group, {groups} groups'} "
        f"(lhs {lhs.shape}, rhs {rhs.shape}, dimension_numbers {dimension_numbers!r}, "
        f"transpose_kernel={transpose_kernel})")
  if rhs.shape[dn.rhs_spec[0]] % groups:
    raise ValueError(f"feature_group_count={groups} must divide rhs's output features, the size "
                     f"{rhs.shape[dn.rhs_spec[0]]} of its 'O' axis (axis {dn.rhs_spec[0]} of {rhs.shape})")

  fallback = (np.dtype(lhs.dtype) not in KERNEL_DTYPES or not jnp.issubdtype(out_dtype, jnp.floating)
              or 0 in kernel_spatial or 0 in in_spatial)
  if fallback:
    return lax.conv_general_dilated(lhs, lax_kernel(rhs, dn, transpose_kernel, groups), (1,) * n, pads,
                                    lhs_dilation=strides, rhs_dilation=dilation, dimension_numbers=dn,
                                    feature_group_count=groups, precision=precision,
                                    preferred_element_type=preferred_element_type)
  geometry = Geometry(strides, dilation, pads, in_spatial, kernel_spatial, bool(transpose_kernel))
  for i, size in enumerate(geometry.out_spatial):
    if size < 1:
      raise ValueError(
          f"padding {pads[i]} leaves spatial dimension {i} of the output empty (size {size}) for input size "
          f"{in_spatial[i]}, kernel size {kernel_spatial[i]}, stride {strides[i]}, dilation {dilation[i]}")

  # Canonical operands: x (G, N, H..., Ci/G), w (G, K..., Ci/G, Co/G), the groups split off the features into
  # the group axis (where vmap over both operands also folds; the two compose). transpose_kernel flips the
  # spatial axes and reads the kernel's feature axes the other way round; the kernels read such a kernel as it
  # is (Co/G before Ci/G, spatial axes reversed), so at G = 1 it is not copied.
  x = _split_groups(jnp.transpose(lhs, (dn.lhs_spec[0], *dn.lhs_spec[2:], dn.lhs_spec[1])), groups)
  w = _split_groups(jnp.transpose(rhs, (*dn.rhs_spec[2:], dn.rhs_spec[1], dn.rhs_spec[0])), groups)
  if n == 0:  # a plain matmul: give it one unit spatial axis
    x, w = x[:, :, None], w[:, None]
    geometry = Geometry((1,), (1,), ((0, 0),), (1,), (1,))
  compute_dtype = out_dtype if out_dtype == np.float64 else x.dtype
  y = _primitives.apply(FORWARD, x.astype(compute_dtype), w.astype(compute_dtype), geometry=geometry,
                        out_dtype=out_dtype, precision=_canonical_precision(precision))
  if n == 0:
    y = y[:, :, 0]
  y = jnp.moveaxis(y, 0, -2)  # (G, N, O..., Co/G) -> (N, O..., G * Co/G)
  y = y.reshape(y.shape[:-2] + (y.shape[-2] * y.shape[-1],))
  # Canonical (N, O..., Co) to the requested output layout.
  canonical_axis = {dn.out_spec[0]: 0, dn.out_spec[1]: n + 1}
  canonical_axis.update({a: 1 + i for i, a in enumerate(dn.out_spec[2:])})
  return jnp.transpose(y, tuple(canonical_axis[a] for a in range(n + 2)))


def _canonical_precision(precision):
  """A hashable precision parameter: None, a lax.Precision, or a pair of them."""
  if precision is None:
    return None
  if isinstance(precision, (tuple, list)):
    if len(precision) != 2:
      raise ValueError(f"precision must be None, a Precision or a pair of them, got {precision!r}")
    return tuple(lax.Precision(p) if p is not None else None for p in precision)
  try:
    return lax.Precision(precision)
  except (ValueError, KeyError, TypeError):
    raise ValueError(f"precision must be None, a lax.Precision, a string such as 'highest', or a pair of them; got "
                     f"{precision!r}") from None
