"""How the three custom calls take part in SPMD partitioning (jit with shardings, Shardy or GSPMD).

Each pass names the factor every axis of its canonical operands carries (a flipped kernel has co before ci):

  forward       x  (g n h.. ci), w  (g k.. ci co)  -> y  (g n o.. co)
  input grad    dy (g n o.. co), w  (g k.. ci co)  -> dx (g n h.. ci)
  weight grad   x  (g n h.. ci), dy (g n o.. co)  -> dw (g k.. ci co)

Factors that reach the result unchanged (g, n, and the channel axis only one operand has) stay sharded and the
call runs on local shards. The weight gradient's batch factor n is a reduction: each device computes its shard's
gradient and one all-reduce (psum) sums them. Spatial factors and the contracted channel are replicated first
(an all-gather where they were sharded). On one device, or inside shard_map, the call is emitted directly.
"""

from __future__ import annotations

from functools import partial

import jax
import numpy as np
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec

from jaxseg import _compat, _ext

# (a axes, b axes, result axes); "*x", "*o", "*k" stand for the input, output and kernel spatial axes.
_AXES = {
    _ext.FORWARD: (("g", "n", "*x", "ci"), ("g", "*k", "ci", "co"), ("g", "n", "*o", "co")),
    _ext.INPUT_GRAD: (("g", "n", "*o", "co"), ("g", "*k", "ci", "co"), ("g", "n", "*x", "ci")),
    _ext.WEIGHT_GRAD: (("g", "n", "*x", "ci"), ("g", "n", "*o", "co"), ("g", "*k", "ci", "co")),
}
# Factors kept sharded; reductions are kept too and summed after the local call.
_KEPT = {
    _ext.FORWARD: ("g", "n", "co"),
    _ext.INPUT_GRAD: ("g", "n", "ci"),
    _ext.WEIGHT_GRAD: ("g", "n", "ci", "co"),
}
_REDUCED = {_ext.WEIGHT_GRAD: ("n",)}


def _expand(axes, d):
  out = []
  for a in axes:
    out.extend(f"{a[1]}{i}" for i in range(d)) if a.startswith("*") else out.append(a)
  return out


def _factors(target, d, kernel_flipped):
  """Factor names of (a, b, result); a flipped kernel (see _primitives.kernel_channels) has co before ci."""
  names = [_expand(axes, d) for axes in _AXES[target]]
  if kernel_flipped:
    w = 2 if target == _ext.WEIGHT_GRAD else 1
    names[w][-2:] = names[w][-1], names[w][-2]
  return tuple(names)


def _geometry(call):
  """(spatial dims, kernel_flipped) of a call tuple (see kernel_call)."""
  return call[0], dict(call[5]).get("kernel_flipped", False)


def _sharding_rule(target, call, mesh, operand_types, result_types):
  a, b, out = _factors(target, *_geometry(call))
  kept = set(_KEPT[target])
  replicated = tuple(f for f in dict.fromkeys(a + b + out) if f not in kept)
  return f"{' '.join(a)}, {' '.join(b)} -> {' '.join(out)}", {
      "need_replication_factors": replicated,
      "reduction_factors": _REDUCED.get(target, ()),
  }


def _spec(sharding, ndim):
  spec = tuple(sharding.spec) if isinstance(sharding, NamedSharding) else ()
  return spec + (None,) * (ndim - len(spec))


def _choose(target, d, kernel_flipped, arg_shardings, ndims):
  """Mesh axes per kept factor: the first operand that shards it decides, without using a mesh axis twice."""
  names = _factors(target, d, kernel_flipped)[:2]
  chosen, used = {}, set()
  for factor in _KEPT[target]:
    for spec_names, sharding, ndim in zip(names, arg_shardings, ndims):
      if factor not in spec_names:
        continue
      axis = _spec(sharding, ndim)[spec_names.index(factor)]
      if axis is None:
        continue
      axes = axis if isinstance(axis, tuple) else (axis,)
      if not used.intersection(axes):
        chosen[factor] = axis
        used.update(axes)
      break
  return chosen


def _named(mesh, factors, chosen):
  return NamedSharding(mesh, PartitionSpec(*(chosen.get(f) for f in factors)))


def ffi_attributes(strides, dilation, padding, kernel_flipped):
  """The custom calls' attributes, typed as the handlers bind them (common/ffi_binding.h)."""
  return dict(strides=np.asarray(strides, np.int64), dilation=np.asarray(dilation, np.int64),
              padding_lo=np.asarray([p[0] for p in padding], np.int64),
              padding_hi=np.asarray([p[1] for p in padding], np.int64), kernel_flipped=np.int64(kernel_flipped))


def _local_call(target, call, a, b):
  d, strides, dilation, padding, out_dtype, extra = call
  from jaxseg import _primitives  # the shape rule lives with the primitives

  out_shape = _primitives.result_shape(target, a.shape, b.shape, strides, dilation, padding, dict(extra))
  return jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(out_shape, out_dtype))(
      a, b, **ffi_attributes(strides, dilation, padding, dict(extra).get("kernel_flipped", False)))


def _partition(target, call, mesh, arg_shapes, result_shape):
  a_names, b_names, out_names = _factors(target, *_geometry(call))
  shardings = [s.sharding for s in arg_shapes]
  chosen = _choose(target, *_geometry(call), shardings, [len(s.shape) for s in arg_shapes])
  # Reduced factors stay sharded on the operands and leave the result; their mesh axes are summed over.
  reduced = {f: chosen.pop(f) for f in _REDUCED.get(target, ()) if f in chosen}
  arg_out = (_named(mesh, a_names, {**chosen, **reduced}), _named(mesh, b_names, {**chosen, **reduced}))
  psum_axes = tuple(a for r in reduced.values() for a in (r if isinstance(r, tuple) else (r,)))

  def lower(a, b):
    out = _local_call(target, call, a, b)
    return jax.lax.psum(out, psum_axes) if psum_axes else out

  return mesh, lower, _named(mesh, out_names, chosen), arg_out


def _infer(target, call, mesh, arg_shapes, result_shape):
  chosen = _choose(target, *_geometry(call), [s.sharding for s in arg_shapes], [len(s.shape) for s in arg_shapes])
  for f in _REDUCED.get(target, ()):
    chosen.pop(f, None)
  return _named(mesh, _factors(target, *_geometry(call))[2], chosen)


def result_sharding(target, d, kernel_flipped, a_aval, b_aval, result_ndim):
  """The sharding of a pass's result as abstract evaluation sees it (sharding in types): kept factors carry
  over from the operands, reduced ones are summed away, everything else is replicated. None without one."""
  shardings = [_compat.aval_sharding(a_aval), _compat.aval_sharding(b_aval)]
  if not all(isinstance(s, NamedSharding) for s in shardings):
    return None
  chosen = _choose(target, d, kernel_flipped, shardings, [a_aval.ndim, b_aval.ndim])
  for f in _REDUCED.get(target, ()):
    chosen.pop(f, None)
  out_names = _factors(target, d, kernel_flipped)[2]
  assert len(out_names) == result_ndim
  return NamedSharding(shardings[0].mesh, PartitionSpec(*(chosen.get(f) for f in out_names)))


def _make(target):
  @partial(custom_partitioning, static_argnums=(0,))
  def call_kernel(call, a, b):
    return _local_call(target, call, a, b)

  call_kernel.def_partition(
      partition=partial(_partition, target),
      infer_sharding_from_operands=partial(_infer, target),
      sharding_rule=partial(_sharding_rule, target))
  return call_kernel


_CALLS = {target: _make(target) for target in _AXES}


def kernel_call(target, a, b, *, strides, dilation, padding, out_dtype, extra=()):
  """The custom call `target` on (a, b), partitioned by the rules above when lowered for several devices."""
  call = (len(strides), tuple(strides), tuple(dilation), tuple(tuple(p) for p in padding), np.dtype(out_dtype),
          tuple(extra))
  return _CALLS[target](call, a, b)
