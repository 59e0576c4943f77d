"""The jax internals jaxseg looks up (jaxseg/_compat.py) exist and mean what jaxseg takes them to mean on the jax
that runs. CI runs this on the oldest supported jax and on the newest release."""

import re
import types
from importlib import metadata

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.core import Primitive
from jax.interpreters import mlir
from jax.sharding import Mesh, PartitionSpec as P

import jaxseg
from jaxseg import _compat

pytestmark = pytest.mark.cpu_only


def _version(text):
  return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def test_running_jax_is_in_the_declared_range():
  declared = {re.split(r"[ ;\[<>=!~]", r, maxsplit=1)[0]: r for r in metadata.requires("jaxseg")}
  for name in ("jax", "jaxlib"):
    lower = re.search(r">=\s*([\d.]+)", declared[name]).group(1)
    assert _version(metadata.version(name)) >= _version(lower), (name, metadata.version(name), declared[name])


def test_nothing_missing():
  assert _compat.MISSING == [], f"jax {jax.__version__} lacks {_compat.MISSING}: update jaxseg/_compat.py"


def test_primitives_registered_for_devices_during_lowering():
  from jax._src import dispatch  # the set _compat adds to
  names = {p.name for p in dispatch.prim_requires_devices_during_lowering}
  assert len({n for n in names if n.startswith("jaxseg")}) >= 3, names  # forward, input and weight gradient


def test_eager_call_goes_through_apply_primitive(rng):
  x = rng.standard_normal((2, 5, 3)).astype(np.float32)
  w = rng.standard_normal((4, 3, 2)).astype(np.float32)
  eager = jaxseg.conv_transpose(x, w, (2,), "SAME")
  jitted = jax.jit(lambda a, b: jaxseg.conv_transpose(a, b, (2,), "SAME"))(x, w)
  np.testing.assert_allclose(eager, jitted, rtol=1e-6, atol=1e-6)


def _mesh():
  return Mesh(np.array(jax.devices("cpu")[:1]), ("x",))


def test_varying_axes_inside_shard_map():
  seen = {}

  def body(v, u):
    seen["v"], seen["u"] = _compat.varying_axes(jax.typeof(v)), _compat.varying_axes(jax.typeof(u))
    return v

  jax.jit(jax.shard_map(body, mesh=_mesh(), in_specs=(P("x"), P()), out_specs=P("x"))).lower(
      jnp.ones(4), jnp.ones(4))
  assert seen == {"v": frozenset({"x"}), "u": frozenset()}
  assert _compat.varying_axes(jax.typeof(jnp.ones(4))) == frozenset()


def test_aval_sharding():
  mesh = Mesh(np.array(jax.devices("cpu")[:1]), ("x",), axis_types=(jax.sharding.AxisType.Explicit,))
  x = jax.device_put(jnp.ones(4), jax.sharding.NamedSharding(mesh, P("x")))
  sharding = _compat.aval_sharding(jax.typeof(x))
  assert isinstance(sharding, jax.sharding.NamedSharding) and tuple(sharding.spec) == ("x",)


def test_lowering_axis_contexts():
  """A jit lowering of a primitive that asked for devices sees them; inside shard_map it sees the mesh."""
  seen = []
  probe = Primitive("jaxseg_compat_probe")
  probe.def_impl(lambda x: x)
  probe.def_abstract_eval(lambda x: x)

  def rule(ctx, x):
    axis_context = ctx.module_context.axis_context
    seen.append((_compat.lowering_devices(axis_context), _compat.lowering_mesh(axis_context),
                 _compat.manual_axes(axis_context), _compat.lowering_for_export(ctx)))
    return [x]

  mlir.register_lowering(probe, rule)
  _compat.require_devices_during_lowering(probe)
  x = jnp.ones(4)
  jax.jit(probe.bind).lower(x)
  devices, mesh, manual, for_export = seen[-1]
  assert devices is not None and len(devices) == 1 and mesh is None and manual == frozenset() and not for_export
  m = _mesh()
  jax.jit(jax.shard_map(probe.bind, mesh=m, in_specs=P("x"), out_specs=P("x"))).lower(x)
  devices, mesh, manual, for_export = seen[-1]
  assert devices is None and mesh is not None and mesh.shape == m.shape and manual == frozenset({"x"})
  jax.export.export(jax.jit(probe.bind), platforms=["cpu"])(x)
  assert seen[-1][3] is True


_probe_setting = _compat.keyed_setting("jaxseg_compat_probe_setting", False, "a test's probe")


def test_keyed_setting_is_part_of_jit_and_lowering_caches():
  """A function jitted and lowered under one value is compiled and lowered again under another, as it is for
  jax's own options in the jit key (jaxseg.use_gpu_kernels relies on it)."""
  probe = Primitive("jaxseg_compat_setting_probe")
  probe.def_impl(lambda x: x)
  probe.def_abstract_eval(lambda x: x)

  def rule(ctx, x):  # reads the setting when lowering, as jaxseg's CUDA rule reads use_gpu_kernels
    return mlir.lower_fun(lambda v: -v if _probe_setting.value else v, multiple_results=False)(ctx, x)

  mlir.register_lowering(probe, rule)
  f = jax.jit(probe.bind)
  x = jnp.ones(3)
  try:
    assert "negate" not in f.lower(x).as_text()
    np.testing.assert_array_equal(f(x), x)
    _probe_setting.set_global(True)
    assert "negate" in f.lower(x).as_text()
    np.testing.assert_array_equal(f(x), -x)
    assert f._cache_size() == 2
  finally:
    _probe_setting.set_global(False)
  np.testing.assert_array_equal(f(x), x)


@pytest.mark.parametrize("text,want", [("9.0", (9, 0)), ("12.0", (12, 0)), ("8.6", (8, 6)), ("gfx90a", None),
                                       (None, None)])
def test_compute_capability(text, want):
  device = types.SimpleNamespace(platform="gpu") if text is None else types.SimpleNamespace(compute_capability=text)
  assert _compat.compute_capability(device) == want


def test_cpu_devices_have_no_compute_capability():
  assert _compat.compute_capability(jax.devices("cpu")[0]) is None
