"""The three passes of a transposed convolution, described once, and the rules derived from the descriptions.

Every pass reads two of three canonical tensors and writes the third (channels last, a leading group axis G that
vmap over both operands folds into):

  input  x (G, N, H..., Ci)        kernel w (G, K..., Ci, Co)        output y (G, N, O..., Co)

  forward      (x, w)  -> y
  input_grad   (dy, w) -> dx
  weight_grad  (x, dy) -> dw

Which pass reads which roles, and its custom-call target, come from the extension (common/passes.h), so the
handlers and the Python rules cannot disagree. From the roles alone follow the result's shape, the factor names
of the sharding rules, the axis a lone vmapped operand folds into, which pass transposes which, and where the
channel axes of a PyTorch-oriented kernel (`transpose_kernel`, stored (G, K..., Co, Ci) with its spatial axes
reversed) swap places.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from jax import lax

from jaxseg import _ext

INPUT, KERNEL, OUTPUT = "input", "kernel", "output"

# Factor names of each role's axes; "*x", "*k" and "*o" stand for the input, kernel and output spatial axes.
_ROLE_FACTORS = {
    INPUT: ("g", "n", "*x", "ci"),
    KERNEL: ("g", "*k", "ci", "co"),
    OUTPUT: ("g", "n", "*o", "co"),
}


def output_size(in_size, kernel_size: int, stride: int, dilation: int, pad_lo: int, pad_hi: int):
  """Length of an output axis: (H-1)*s + 1 + lo + hi - (d*(K-1)+1) + 1, as common/phase_geometry.h computes it.

  Written in Python so that it also takes jax's symbolic dimensions (jax.export with symbolic shapes) and then
  returns a symbolic expression (`2*h` for 'SAME' at stride 2); a test holds it to the extension's `output_size`
  on random geometries. A symbolic `in_size` is taken as >= 1: `conv_transpose` proves that before it builds a
  Geometry (an empty input axis goes to lax), so the kernels' rule for an empty axis is needed for ints only.
  """
  dilated_in = 0 if isinstance(in_size, (int, np.integer)) and in_size == 0 else (in_size - 1) * stride + 1
  effective_kernel = 0 if kernel_size == 0 else dilation * (kernel_size - 1) + 1
  return dilated_in + pad_lo + pad_hi - effective_kernel + 1


@dataclasses.dataclass(frozen=True)
class Geometry:
  """Everything about a call's spatial axes, one entry per axis: a hashable primitive parameter.

  `padding` is the explicit (low, high) padding of the dilated input (negative crops); `transpose_kernel` says
  that the kernel is stored PyTorch-oriented (see the module docstring).
  """
  strides: tuple[int, ...]
  dilation: tuple[int, ...]
  padding: tuple[tuple[int, int], ...]
  in_spatial: tuple[Any, ...]
  kernel_spatial: tuple[int, ...]
  transpose_kernel: bool = False

  @property
  def ndim(self) -> int:
    return len(self.strides)

  @property
  def out_spatial(self) -> tuple[Any, ...]:
    return tuple(output_size(h, k, s, d, lo, hi) for h, k, s, d, (lo, hi) in
                 zip(self.in_spatial, self.kernel_spatial, self.strides, self.dilation, self.padding))

  def spatial(self, role: str) -> tuple[Any, ...]:
    return {INPUT: self.in_spatial, KERNEL: self.kernel_spatial, OUTPUT: self.out_spatial}[role]

  def ffi_attributes(self, precision: int = 0) -> dict[str, Any]:
    """The custom calls' attributes, typed as the handlers decode them (common/ffi_binding.h); `precision` is
    `precision_attribute`'s value."""
    return dict(strides=np.asarray(self.strides, np.int64), dilation=np.asarray(self.dilation, np.int64),
                padding_lo=np.asarray([p[0] for p in self.padding], np.int64),
                padding_hi=np.asarray([p[1] for p in self.padding], np.int64),
                transpose_kernel=bool(self.transpose_kernel), precision=np.int64(precision))


# Values of the `precision` attribute (common/dtypes.h Precision).
PRECISION_DEFAULT, PRECISION_HIGHEST = 0, 1


def _asks_float32(precision) -> bool:
  """Whether one precision (a lax.Precision, a dot algorithm, or a name of either) asks for float32 accuracy."""
  if precision is None:
    return False
  if isinstance(precision, lax.Precision):
    return precision == lax.Precision.HIGHEST
  if isinstance(precision, lax.DotAlgorithm):
    return True
  if isinstance(precision, lax.DotAlgorithmPreset):
    name = precision.name
  else:
    try:
      return lax.Precision(precision) == lax.Precision.HIGHEST  # 'highest', 'float32', 'tensorfloat32', ...
    except (ValueError, KeyError, TypeError):
      name = str(precision)  # a preset's name, as default_matmul_precision takes it
  # A dot-algorithm preset: float32 operands, or several passes of a narrower type.
  name = name.upper()
  return name.startswith(("F32_", "F64_")) or name.endswith(("_X3", "_X6", "_X9"))


def precision_attribute(precision) -> int:
  """How the kernels multiply float32 operands for the primitives' `precision` parameter, with None read as jax's
  `default_matmul_precision` (as lax reads it): PRECISION_HIGHEST where float32 accuracy is asked for (HIGHEST,
  'float32', F32_F32_F32, TF32_TF32_F32_X3, ...), else PRECISION_DEFAULT, which the CUDA kernels compute as XLA's
  GPU convolutions do by default: TF32 on the tensor cores (jax.lax.Precision: DEFAULT and HIGH "On GPU: uses
  tensorfloat32 if available"). The CPU kernels compute exactly either way."""
  if precision is None:
    precision = jax.config.jax_default_matmul_precision
  pair = precision if isinstance(precision, tuple) else (precision,)
  return PRECISION_HIGHEST if any(_asks_float32(p) for p in pair) else PRECISION_DEFAULT


@dataclasses.dataclass(frozen=True)
class Pass:
  """One pass: its name, custom-call target and the roles of (first operand, second operand, result)."""
  name: str
  target: str
  roles: tuple[str, str, str]

  @property
  def result_role(self) -> str:
    return self.roles[2]

  def factors(self, role: str, ndim: int, transpose_kernel: bool) -> tuple[str, ...]:
    """Factor names of a role's axes, spatial groups expanded; a flipped kernel has co before ci."""
    names = []
    for f in _ROLE_FACTORS[role]:
      names.extend(f"{f[1]}{i}" for i in range(ndim)) if f.startswith("*") else names.append(f)
    if role == KERNEL and transpose_kernel:
      names[-2:] = names[-1], names[-2]
    return tuple(names)

  def all_factors(self, ndim: int, transpose_kernel: bool) -> tuple[tuple[str, ...], ...]:
    """Factor names of (first operand, second operand, result)."""
    return tuple(self.factors(r, ndim, transpose_kernel) for r in self.roles)

  @property
  def kept(self) -> tuple[str, ...]:
    """Non-spatial factors of the result: a device holding a shard of them computes that shard alone."""
    return tuple(f for f in _ROLE_FACTORS[self.result_role] if not f.startswith("*"))

  @property
  def reduced(self) -> tuple[str, ...]:
    """Factors the pass sums over that may stay sharded (partial results are summed across devices). Only the
    batch: its partial sums have the size of a kernel, whereas a sharded channel contraction would need an
    all-reduce of a whole activation, so contracted channels are gathered instead."""
    operands = set(_ROLE_FACTORS[self.roles[0]]) & set(_ROLE_FACTORS[self.roles[1]])
    return tuple(f for f in ("n",) if f in operands and f not in _ROLE_FACTORS[self.result_role])

  def fold_factor(self, operand: int) -> str:
    """The factor a vmapped axis of operand `operand` (0 or 1) alone folds into: the non-spatial factor it shares
    with the result and not with the other operand (n for activations, a channel for the kernel)."""
    mine, other = _ROLE_FACTORS[self.roles[operand]], _ROLE_FACTORS[self.roles[1 - operand]]
    (factor,) = (f for f in mine if f in _ROLE_FACTORS[self.result_role] and f not in other
                 and not f.startswith("*"))
    return factor

  def result_shape(self, a_shape, b_shape, geometry: Geometry) -> tuple[Any, ...]:
    """The result's shape from the operands' shapes; raises TypeError where they disagree with each other or
    with `geometry`. The one shape rule: abstract evaluation and the partitioner's per-shard calls use it."""
    d = geometry.ndim
    sizes = {f"{axis}{i}": size for axis, spatial in (("x", geometry.in_spatial), ("k", geometry.kernel_spatial),
                                                      ("o", geometry.out_spatial))
             for i, size in enumerate(spatial)}
    for role, shape in zip(self.roles[:2], (a_shape, b_shape)):
      names = self.factors(role, d, geometry.transpose_kernel)
      if len(shape) != len(names) or any(sizes.setdefault(f, size) != size for f, size in zip(names, shape)):
        raise TypeError(f"jaxseg {self.name}: operand shapes {tuple(a_shape)} and {tuple(b_shape)} do not match "
                        f"each other or the geometry {geometry}")
    return tuple(sizes[f] for f in self.factors(self.result_role, d, geometry.transpose_kernel))


PASSES = tuple(Pass(name, target, tuple(roles)) for name, target, roles in _ext.cpu.passes())
FORWARD, INPUT_GRAD, WEIGHT_GRAD = PASSES
BY_NAME = {p.name: p for p in PASSES}


def producing(role: str) -> Pass:
  """The pass whose result has `role`."""
  (p,) = (p for p in PASSES if p.result_role == role)
  return p


# What the kernels compute (common/dtypes.h): operand dtype -> result dtypes they may write.
RESULT_DTYPES = {np.dtype(operand): tuple(np.dtype(r) for r in results)
                 for operand, _, results in _ext.cpu.dtype_table()}
KERNEL_DTYPES = tuple(RESULT_DTYPES)
MAX_SPATIAL_DIMS = _ext.cpu.max_spatial_dims
