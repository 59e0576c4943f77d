"""`jaxseg.conv_transpose`: `jax.lax.conv_transpose`'s signature and meaning, computed by our kernels."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax import export, lax
from jax.errors import InconclusiveDimensionOperation

from jaxseg import _compat, _ext, _primitives
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


def torch_padding(kernel_size, padding, output_padding=0, dilation=1, *, stride=None
                  ) -> tuple[tuple[int, int], ...]:
  """Explicit `conv_transpose` padding that reproduces a PyTorch `ConvTranspose{1,2,3}d`.

  PyTorch's `ConvTranspose2d(c_in, c_out, k, stride, padding, output_padding, dilation=d)` with weight `W` of
  shape `(c_in, c_out, kh, kw)` equals::

    jaxseg.conv_transpose(x_nhwc, W.permute(2, 3, 1, 0), strides,
                          jaxseg.torch_padding(k, padding, output_padding, d, stride=strides),
                          rhs_dilation=(d, d), transpose_kernel=True)

  that is, the weight permuted to `(k..., c_out, c_in)` and the pads `(d*(k-1) - p, d*(k-1) - p + output_padding)`
  per spatial dimension.

  Args:
    kernel_size: int or sequence of ints, the kernel's spatial size.
    padding: int or sequence, PyTorch's `padding` (of the forward convolution; >= 0).
    output_padding: int or sequence, PyTorch's `output_padding` (>= 0).
    dilation: int or sequence, PyTorch's `dilation` (>= 1).
    stride: int or sequence, PyTorch's `stride` (>= 1). Only checked: with it, `output_padding` must be smaller
      than the stride or the dilation, as PyTorch requires.

  Returns:
    A tuple of `(low, high)` pairs, one per spatial dimension.

  Raises:
    TypeError: an argument is not an int or a sequence of ints.
    ValueError: an argument breaks one of PyTorch's rules (named in the message) or the lengths differ.
  """
  args = {"kernel_size": kernel_size, "padding": padding, "output_padding": output_padding, "dilation": dilation}
  if stride is not None:
    args["stride"] = stride
  lengths = [len(v) for v in args.values() if isinstance(v, Sequence)]
  n = lengths[0] if lengths else 1
  v = {name: _int_tuple(value, n, name) for name, value in args.items()}
  rules = [("kernel_size", 1, "kernel size should be greater than zero"),
           ("dilation", 1, "dilation should be greater than zero"),
           ("stride", 1, "non-positive stride is not supported"),
           ("padding", 0, "negative padding is not supported"),
           ("output_padding", 0, "negative output_padding is not supported")]
  for name, least, rule in rules:
    if name in v and any(x < least for x in v[name]):
      raise ValueError(f"{name} {args[name]!r}: {rule} (PyTorch's rule)")
  if "stride" in v and any(op >= max(s, d) for op, s, d in zip(v["output_padding"], v["stride"], v["dilation"])):
    raise ValueError(f"output_padding {output_padding!r} must be smaller than either stride {stride!r} or dilation "
                     f"{dilation!r} in every dimension (PyTorch's rule)")
  return tuple(tuple(_ext.cpu.torch_padding(*a)) for a in
               zip(v["kernel_size"], v["padding"], v["output_padding"], v["dilation"]))


def _transpose_padding(padding, in_spatial, kernel_spatial, strides, dilation, use_consistent_padding):
  """Explicit (low, high) padding of the dilated input, as jax.lax.conv_transpose reads `padding`.

  Exactly 'SAME' and 'VALID' are the padding of the forward convolution this is the transpose of (the geometry's
  StringPadding). Any other string is, as in lax, handed to the stride-1 convolution of the dilated input as
  its own padding type ('same', 'valid', 'SAME_LOWER', ... computed on the undilated input), which lax only
  allows at unit stride. With use_consistent_padding pairs are the forward convolution's padding (PyTorch's)."""
  n = len(strides)
  eff = [_ext.cpu.effective_kernel_size(k, d) for k, d in zip(kernel_spatial, dilation)]
  if isinstance(padding, str):
    if padding in ("SAME", "VALID"):
      return tuple(tuple(_ext.cpu.string_padding(padding, k, s)) for k, s in zip(eff, strides))
    if use_consistent_padding:
      raise ValueError(f"padding must be 'SAME', 'VALID' or (low, high) pairs with use_consistent_padding=True, "
                       f"got {padding!r}")
    if padding.upper() not in ("SAME", "VALID", "SAME_LOWER"):
      raise ValueError(f"padding must be 'SAME', 'VALID', a sequence of (low, high) pairs, or (at unit strides, "
                       f"as in lax) 'same', 'valid' or 'SAME_LOWER', got {padding!r}")
    if any(s != 1 for s in strides):
      raise ValueError(f"padding {padding!r} (not exactly 'SAME' or 'VALID') is read as the padding type of the "
                       f"stride-1 convolution of the dilated input, which jax.lax.conv_transpose allows only with "
                       f"unit strides; got strides {strides}. Use 'SAME', 'VALID' or explicit pairs.")
    return tuple(tuple(int(v) for v in p) for p in lax.padtype_to_pads(in_spatial, eff, (1,) * n, padding))
  pads = _pairs(padding, n)
  if use_consistent_padding:
    return tuple(tuple(_ext.cpu.consistent_padding(k, lo, hi)) for k, (lo, hi) in zip(eff, pads))
  return pads


def _at_least(size, bound: int, what: str) -> bool:
  """Whether an axis size, an int or a jax.export symbolic dimension, is >= bound.

  Symbolic dimension variables are >= 1, but an expression of them (an output size `2*h - 2`, an input sliced to
  `h - 1`) may be smaller for some values; jax decides the comparison where it can. Where it cannot, jaxseg
  cannot pick between its kernels and the empty-axis path at trace time, so this raises ValueError saying which
  constraint to declare (jax.export.symbolic_shape(..., constraints=...)).
  """
  try:
    return bool(size >= bound)
  except InconclusiveDimensionOperation as e:
    raise ValueError(
        f"{what} has the symbolic size {size}, which is not >= {bound} for every value of its dimension "
        f"variables, and jaxseg must know at trace time which case it is. Declare it where the symbolic shape "
        f"is made, e.g. jax.export.symbolic_shape(..., constraints=('{size} >= {bound}',)).") from e


def _check_dimension_numbers(dn: lax.ConvDimensionNumbers, lhs, rhs, given) -> None:
  """Each spec of `dn` must order all the operands' axes: lax passes a ConvDimensionNumbers object through
  unchecked, and one of another rank would fail later as an IndexError or give a wrong layout."""
  for name, spec in zip(("lhs", "rhs", "out"), dn):
    try:
      ok = sorted(operator.index(a) for a in spec) == list(range(lhs.ndim))
    except TypeError:
      ok = False
    if not ok:
      raise ValueError(f"dimension_numbers {given!r}: its {name} spec {spec!r} must order the {lhs.ndim} axes of "
                       f"lhs {lhs.shape} and rhs {rhs.shape} (a permutation of 0..{lhs.ndim - 1})")


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


def _result_dtype(dtype, preferred_element_type):
  """The result dtype, with lax's rules for `preferred_element_type`: integer operands may give an integer or a
  floating result, floating ones a floating result, complex ones a complex result; signed integers stay signed;
  never narrower than the operands."""
  dtype = np.dtype(dtype)
  if preferred_element_type is None:
    return dtype
  pref = np.dtype(preferred_element_type)
  kind = lambda d: next((k for k in (np.integer, np.floating, np.complexfloating) if jnp.issubdtype(d, k)), None)
  if not (kind(dtype) is np.integer and kind(pref) is np.floating):
    if kind(dtype) is not kind(pref):
      raise TypeError(f"preferred_element_type {pref} is incompatible with {dtype} operands: the combinations are "
                      "(integral, integral), (integral, floating), (floating, floating), (complex, complex)")
    if jnp.issubdtype(dtype, np.signedinteger) and not jnp.issubdtype(pref, np.signedinteger):
      raise TypeError(f"preferred_element_type {pref} must be signed like the {dtype} operands")
  if pref.itemsize < dtype.itemsize:
    raise TypeError(f"preferred_element_type {pref} must not be narrower than the operands' {dtype}")
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
    precision: as in `lax.conv_general_dilated` (None reads jax's `default_matmul_precision`). The CPU kernels
      always compute exactly in the accumulation type; on GPU, float32 operands are rounded to TF32 at
      None/DEFAULT/HIGH, as XLA's own GPU convolutions are, and keep float32 accuracy at HIGHEST.
    preferred_element_type: None or the result dtype, as lax allows it: for floating operands a floating dtype not
      narrower than the operands, for integer operands an integer or floating one. 16-bit operands accumulate
      in float32 either way.
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

  Operands of integer or complex dtype, empty kernels and empty input spatial dimensions go to XLA's
  convolution (the `lax.conv_general_dilated` above, the kernel regrouped by `lax_kernel`); every other
  configuration runs on jaxseg's kernels.

  Shape polymorphism (`jax.export` with symbolic shapes): the batch, feature and input spatial sizes may be
  symbolic; the kernel's spatial sizes, strides, dilation and padding must be concrete. Output sizes are symbolic
  expressions as in `lax.conv_transpose` (e.g. `2*h` for stride 2, 'SAME'). See `jaxseg.export`.

  Raises:
    TypeError: operands of different ranks or dtypes, non-integer strides, dilations, paddings or
      `feature_group_count`, malformed `dimension_numbers`, or a `preferred_element_type` that lax's rules refuse
      (narrower than the operands, or of another kind).
    ValueError: an argument of the wrong length or value (non-positive strides, dilations or
      `feature_group_count`); a `feature_group_count` that does not divide the input features or the kernel's
      'O' axis; features of `lhs` and `rhs` that disagree; a padding that crops more than the dilated input; a
      kernel with symbolic spatial sizes; a symbolic size that jax cannot decide (the message names the
      constraint to declare).
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
  _check_dimension_numbers(dn, lhs, rhs, dimension_numbers)
  if lhs.dtype != rhs.dtype:
    raise TypeError(f"lhs and rhs must have the same dtype, got {lhs.dtype} and {rhs.dtype}")
  groups = _feature_group_count(feature_group_count)
  out_dtype = _result_dtype(lhs.dtype, preferred_element_type)

  kernel_spatial = tuple(rhs.shape[i] for i in dn.rhs_spec[2:])
  in_spatial = tuple(lhs.shape[i] for i in dn.lhs_spec[2:])
  # The kernels' tap tables need the kernel's spatial size; batch, channels and input sizes may be symbolic.
  if any(export.is_symbolic_dim(k) for k in kernel_spatial):
    raise ValueError(f"rhs must have concrete spatial sizes (jaxseg plans its taps from them at trace time), got "
                     f"{kernel_spatial} (rhs {rhs.shape}, dimension_numbers {dimension_numbers!r})")
  pads = _transpose_padding(padding, in_spatial, kernel_spatial, strides, dilation, use_consistent_padding)
  precision = _canonical_precision(precision)

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
              or 0 in kernel_spatial
              or not all(_at_least(h, 1, f"spatial dimension {i} of lhs") for i, h in enumerate(in_spatial)))
  if fallback:
    return lax.conv_general_dilated(lhs, lax_kernel(rhs, dn, transpose_kernel, groups), (1,) * n, pads,
                                    lhs_dilation=strides, rhs_dilation=dilation, dimension_numbers=dn,
                                    feature_group_count=groups, precision=precision,
                                    preferred_element_type=preferred_element_type)
  geometry = Geometry(strides, dilation, pads, in_spatial, kernel_spatial, bool(transpose_kernel))
  out_spatial = []
  for i, (h, size, s, (lo, hi)) in enumerate(zip(in_spatial, geometry.out_spatial, strides, pads)):
    if _at_least(size, 1, f"spatial dimension {i} of the output"):
      out_spatial.append(size)
      continue
    dilated = (h - 1) * s + 1
    if not _at_least(dilated + lo + hi, 0, f"the padded input of spatial dimension {i}"):
      # lax's check: the padded, dilated input may be empty, not negative.
      raise ValueError(f"padding {pads[i]} crops more than the {dilated} elements of the dilated input on "
                       f"spatial dimension {i} (input size {h}, stride {s})")
    out_spatial.append(0)
  if 0 in out_spatial:  # as in lax, a kernel longer than the padded input gives an empty result
    out_features = rhs.shape[dn.rhs_spec[1]] * groups if transpose_kernel else rhs.shape[dn.rhs_spec[0]]
    shape = dict(zip(dn.out_spec, (lhs.shape[dn.lhs_spec[0]], out_features, *out_spatial)))
    return jnp.zeros(tuple(shape[a] for a in range(n + 2)), out_dtype)

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
  x, w = (_compat.astype_keeping_weak_type(v, compute_dtype) for v in (x, w))
  y = _primitives.apply(FORWARD, x, w, geometry=geometry,
                        out_dtype=out_dtype, precision=precision)
  if n == 0:
    y = y[:, :, 0]
  y = jnp.moveaxis(y, 0, -2)  # (G, N, O..., Co/G) -> (N, O..., G * Co/G)
  y = y.reshape(y.shape[:-2] + (y.shape[-2] * y.shape[-1],))
  # Canonical (N, O..., Co) to the requested output layout.
  canonical_axis = {dn.out_spec[0]: 0, dn.out_spec[1]: n + 1}
  canonical_axis.update({a: 1 + i for i, a in enumerate(dn.out_spec[2:])})
  return jnp.transpose(y, tuple(canonical_axis[a] for a in range(n + 2)))


def _canonical_precision(precision):
  """A hashable precision parameter, as lax takes it: None, a lax.Precision or its name, a pair of those, or a
  dot algorithm (lax.DotAlgorithmPreset, lax.DotAlgorithm). The CPU kernels compute exactly in the accumulation
  type whatever is asked, as XLA's CPU convolutions do."""
  if precision is None or isinstance(precision, (lax.DotAlgorithmPreset, lax.DotAlgorithm)):
    return precision
  if isinstance(precision, (tuple, list)):
    if len(precision) != 2:
      raise ValueError(f"precision must be None, a Precision or a pair of them, got {precision!r}")
    return tuple(_canonical_precision(p) if p is not None else None for p in precision)
  try:
    return lax.Precision(precision)
  except (ValueError, KeyError, TypeError):
    raise ValueError(f"precision must be None, a lax.Precision, a string such as 'highest', a pair of them, or a "
                     f"lax.DotAlgorithmPreset; got {precision!r}") from None
