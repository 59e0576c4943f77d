"""How the three custom calls take part in SPMD partitioning (jit with shardings, Shardy or GSPMD).

Each axis of a pass's operands and result carries a factor name (`_passes.Pass.factors`). Factors that reach
the result unchanged (g, n, and the channel only one operand has) stay sharded and the call runs on local
shards. The weight gradient's batch factor n is a reduction: each device computes its shard's gradient and one
all-reduce (psum) sums them. Spatial factors and a contracted channel are replicated first (an all-gather where
they were sharded). On one device, or inside shard_map, the call is emitted directly.
"""

from __future__ import annotations

from functools import partial

import jax
import numpy as np
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec

from jaxseg import _compat
from jaxseg._passes import PASSES, Geometry, Pass


def _sharding_rule(p: Pass, geometry, out_dtype, precision, mesh, operand_types, result_types):
  a, b, out = p.all_factors(geometry.ndim, geometry.transpose_kernel)
  kept = set(p.kept + p.reduced)
  replicated = tuple(f for f in dict.fromkeys(a + b + out) if f not in kept)
  return f"{' '.join(a)}, {' '.join(b)} -> {' '.join(out)}", {
      "need_replication_factors": replicated,
      "reduction_factors": p.reduced,
  }


def _spec(sharding, ndim):
  spec = tuple(sharding.spec) if isinstance(sharding, NamedSharding) else ()
  return spec + (None,) * (ndim - len(spec))


def _choose(p: Pass, geometry: Geometry, shardings, ndims):
  """Mesh axes per kept or reduced factor: the first operand that shards it decides, without using a mesh axis
  twice."""
  names = p.all_factors(geometry.ndim, geometry.transpose_kernel)[:2]
  chosen, used = {}, set()
  for factor in p.kept + p.reduced:
    for operand_names, sharding, ndim in zip(names, shardings, ndims):
      if factor not in operand_names:
        continue
      axis = _spec(sharding, ndim)[operand_names.index(factor)]
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


def local_call(p: Pass, geometry: Geometry, out_dtype, precision: int, a, b):
  """The custom call itself on (a, b), with the result shape of the pass's shape rule; `precision` is the
  attribute's value (_passes.precision_attribute)."""
  out_shape = p.result_shape(a.shape, b.shape, geometry)
  return jax.ffi.ffi_call(p.target, jax.ShapeDtypeStruct(out_shape, out_dtype))(
      a, b, **geometry.ffi_attributes(precision))


def _partition(p: Pass, geometry, out_dtype, precision, mesh, arg_shapes, result_shape):
  a_names, b_names, out_names = p.all_factors(geometry.ndim, geometry.transpose_kernel)
  chosen = _choose(p, geometry, [s.sharding for s in arg_shapes], [len(s.shape) for s in arg_shapes])
  # Reduced factors stay sharded on the operands and leave the result; their mesh axes are summed over.
  reduced = {f: chosen.pop(f) for f in p.reduced if f in chosen}
  arg_out = (_named(mesh, a_names, {**chosen, **reduced}), _named(mesh, b_names, {**chosen, **reduced}))
  psum_axes = tuple(a for r in reduced.values() for a in (r if isinstance(r, tuple) else (r,)))

  def lower(a, b):
    out = local_call(p, geometry, out_dtype, precision, a, b)
    return jax.lax.psum(out, psum_axes) if psum_axes else out

  return mesh, lower, _named(mesh, out_names, chosen), arg_out


def _result_chosen(p: Pass, geometry: Geometry, shardings, ndims):
  chosen = _choose(p, geometry, shardings, ndims)
  for f in p.reduced:
    chosen.pop(f, None)
  return chosen


def _infer(p: Pass, geometry, out_dtype, precision, mesh, arg_shapes, result_shape):
  chosen = _result_chosen(p, geometry, [s.sharding for s in arg_shapes], [len(s.shape) for s in arg_shapes])
  return _named(mesh, p.factors(p.result_role, geometry.ndim, geometry.transpose_kernel), chosen)


def result_sharding(p: Pass, geometry: Geometry, a_aval, b_aval):
  """The sharding of a pass's result as abstract evaluation sees it (sharding in types): kept factors carry
  over from the operands, reduced ones are summed away, everything else is replicated. None without one."""
  shardings = [_compat.aval_sharding(a_aval), _compat.aval_sharding(b_aval)]
  if not all(isinstance(s, NamedSharding) for s in shardings):
    return None
  chosen = _result_chosen(p, geometry, shardings, [a_aval.ndim, b_aval.ndim])
  return _named(shardings[0].mesh, p.factors(p.result_role, geometry.ndim, geometry.transpose_kernel), chosen)


def _make(p: Pass):
  @partial(custom_partitioning, static_argnums=(0, 1, 2))
  def call(geometry, out_dtype, precision, a, b):
    return local_call(p, geometry, out_dtype, precision, a, b)

  call.def_partition(
      partition=partial(_partition, p),
      infer_sharding_from_operands=partial(_infer, p),
      sharding_rule=partial(_sharding_rule, p))
  return call


_CALLS = {p: _make(p) for p in PASSES}


def partitioned_call(p: Pass, geometry: Geometry, out_dtype, precision: int, a, b):
  """The custom call of pass `p` on (a, b), partitioned by the rules above when lowered for several devices."""
  return _CALLS[p](geometry, np.dtype(out_dtype), int(precision), a, b)
