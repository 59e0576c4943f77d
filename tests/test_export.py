"""jax.export of functions that use jaxseg: symbolic shapes, serialization, loading, and the shape rule against
the extension's geometry."""

import os
import re
import subprocess
import sys
import textwrap

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec as P

import jaxseg
import jaxseg.export
from jaxseg import _ext
from jaxseg._passes import PASSES, output_size
from tolerances import assert_close

HERE = os.path.dirname(os.path.abspath(__file__))
OUR_TARGETS = sorted(p.target for p in PASSES)
JAX_PLATFORM = {"cpu": "cpu", "gpu": "cuda"}


def _specs(shapes, constraints=()):
  """ShapeDtypeStructs (float32) for shapes given as tuples or as jax.export symbolic-shape strings, in one
  symbolic scope."""
  scope = jax.export.SymbolicScope(constraints)
  return [jax.ShapeDtypeStruct(jax.export.symbolic_shape(s, scope=scope) if isinstance(s, str) else s,
                               jnp.float32) for s in shapes]


def _round_trip(exported):
  """Serialized and loaded back as a serving process would."""
  return jaxseg.export.deserialize(exported.serialize())


def _with_grads(conv):
  """(x, w) -> (y, dx, dw): the forward and both gradients of 0.5 * sum(y**2) (so dy = y)."""
  def f(x, w):
    y, vjp = jax.vjp(conv, x, w)
    return (y, *vjp(y))
  return f


# Each case: n spatial dims, conv_transpose's arguments, the kernel shape, a symbolic input shape and its
# constraints, and the concrete input shapes it is called at.
CASES = {
    # The two harness cases of issue 19 (jax's shape-polymorphism tests of lax.conv_transpose).
    "1d-batch": dict(args=((2,), "SAME"), w=(4, 16, 16), x="b, 12, 16", calls=[(5, 12, 16), (1, 12, 16)]),
    "1d-spatial": dict(args=((2,), "SAME"), w=(4, 16, 16), x="5, b, 16", calls=[(5, 12, 16), (5, 1, 16)]),
    "2d-batch": dict(args=((2, 3), [(1, 2), (1, 1)]), kw=dict(rhs_dilation=(2, 1), transpose_kernel=True),
                     w=(3, 3, 5, 3), x="n, 6, 5, 3", calls=[(2, 6, 5, 3), (3, 6, 5, 3)]),
    # Output rows 2*h - 2 are >= 1 only for h >= 2: the constraint says so.
    "2d-spatial": dict(args=((2, 3), [(1, 2), (1, 1)]), kw=dict(rhs_dilation=(2, 1), transpose_kernel=True),
                       w=(3, 3, 5, 3), x="n, h, w, 3", constraints=("h >= 2",),
                       calls=[(2, 6, 5, 3), (1, 2, 1, 3)]),
    "3d-batch": dict(args=((2, 1, 2), "VALID"), w=(3, 2, 2, 3, 4), x="n, 3, 4, 2, 3",
                     calls=[(2, 3, 4, 2, 3), (1, 3, 4, 2, 3)]),
    "3d-spatial": dict(args=((2, 1, 2), "VALID"), kw=dict(dimension_numbers=("NCHWD", "OIHWD", "NCHWD")),
                       w=(4, 3, 3, 2, 2), x="n, 3, h, w, d", calls=[(2, 3, 3, 4, 2), (1, 3, 1, 2, 3)]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_and_gradients_with_symbolic_shapes(platform, rng, name):
  case = CASES[name]
  kw = case.get("kw", {})
  ours = _with_grads(lambda x, w: jaxseg.conv_transpose(x, w, *case["args"], **kw))
  theirs = jax.jit(_with_grads(lambda x, w: lax.conv_transpose(x, w, *case["args"], **kw)))
  exported = jaxseg.export.export(jax.jit(ours), platforms=(JAX_PLATFORM[platform],))(
      *_specs([case["x"], case["w"]], case.get("constraints", ())))
  # All three passes are our custom calls, not XLA's convolution.
  assert list(jaxseg.export.jaxseg_targets(exported)) == OUR_TARGETS
  assert "stablehlo.convolution" not in exported.mlir_module()
  loaded = _round_trip(exported)
  w = rng.standard_normal(case["w"], np.float32)
  for shape in case["calls"]:
    x = rng.standard_normal(shape, np.float32)
    for got, want, what in zip(loaded.call(x, w), theirs(x, w), ("y", "dx", "dw")):
      assert_close(got, want, err_msg=f"{what} at input {shape}")


@pytest.mark.parametrize("x_spec", ["b, 12, 16", "5, b, 16"])
def test_harness_cases_match_lax_exported_shapes(rng, x_spec):
  """The cases of issue 19: the exported output shape is lax's (b, 24, 16) and (5, 2*b, 16)."""
  f = lambda conv: jax.jit(lambda x, w: conv(x, w, (2,), "SAME"))
  specs = _specs([x_spec, (4, 16, 16)])
  ours = jaxseg.export.export(f(jaxseg.conv_transpose))(*specs)
  theirs = jax.export.export(f(lax.conv_transpose))(*specs)
  assert str(ours.out_avals) == str(theirs.out_avals)
  x, w = rng.standard_normal((5, 12, 16), np.float32), rng.standard_normal((4, 16, 16), np.float32)
  assert_close(_round_trip(ours).call(x, w), theirs.call(x, w))


def test_vmap_with_symbolic_shapes(rng):
  """vmap over both operands folds into the group axis, over one into the batch or a channel: reshapes of
  symbolic sizes."""
  conv = lambda x, w: jaxseg.conv_transpose(x, w, (2,), "SAME")
  f = jax.jit(lambda x, w, w1: (jax.vmap(conv)(x, w), jax.vmap(conv, (0, None))(x, w1),
                                jax.vmap(conv, (None, 0))(x[0], w)))
  exported = jaxseg.export.export(f)(*_specs(["v, b, h, 4", "v, 3, 4, 2", (3, 4, 2)]))
  x, w = rng.standard_normal((2, 3, 5, 4), np.float32), rng.standard_normal((2, 3, 4, 2), np.float32)
  ref = lambda x, w: lax.conv_transpose(x, w, (2,), "SAME")
  want = (jax.vmap(ref)(x, w), jax.vmap(ref, (0, None))(x, w[1]), jax.vmap(ref, (None, 0))(x[0], w))
  for got, want in zip(_round_trip(exported).call(x, w, w[1]), want):
    assert_close(got, want)


@pytest.mark.parametrize("api", ["linen", "nnx"])
def test_flax_module_exports_with_symbolic_batch(rng, api):
  """A generator layer exported for serving: parameters concrete, the batch symbolic; the result is flax's."""
  cfg = dict(kernel_size=(4, 4), strides=(2, 2), padding="SAME")
  x0 = jnp.ones((1, 7, 7, 6), jnp.float32)
  if api == "linen":
    params = fnn.ConvTranspose(features=3, **cfg).init(jax.random.key(0), x0)
    ours = lambda p, x: jaxseg.linen.ConvTranspose(features=3, **cfg).apply(p, x)
    theirs = lambda p, x: fnn.ConvTranspose(features=3, **cfg).apply(p, x)
  else:
    # The state as a list of arrays: an artifact's argument tree must be made of pytrees jax can serialize.
    ours_graph, state = nnx.split(jaxseg.nnx.ConvTranspose(6, 3, **cfg, rngs=nnx.Rngs(0)))
    theirs_graph, _ = nnx.split(nnx.ConvTranspose(6, 3, **cfg, rngs=nnx.Rngs(0)))
    params, tree = jax.tree.flatten(state)
    ours = lambda p, x: nnx.merge(ours_graph, jax.tree.unflatten(tree, p))(x)
    theirs = lambda p, x: nnx.merge(theirs_graph, jax.tree.unflatten(tree, p))(x)
  param_specs = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params)
  exported = jaxseg.export.export(jax.jit(ours))(param_specs, *_specs(["b, 7, 7, 6"]))
  assert list(jaxseg.export.jaxseg_targets(exported)) == ["jaxseg_conv_transpose_forward_v2"]
  loaded = _round_trip(exported)
  for batch in (1, 4):
    x = rng.standard_normal((batch, 7, 7, 6), np.float32)
    assert_close(loaded.call(params, x), jax.jit(theirs)(params, x))


def test_gradient_of_a_loaded_artifact(rng):
  """An artifact serialized with its VJP (`vjp_order=1`) is differentiable where it is loaded, on our kernels."""
  f = jax.jit(lambda x, w: jaxseg.conv_transpose(x, w, (2,), "SAME"))
  loaded = jaxseg.export.deserialize(
      jaxseg.export.export(f)(*_specs(["b, h, 16", (4, 16, 16)])).serialize(vjp_order=1))
  # The VJP's module holds both gradient passes.
  assert list(jaxseg.export.jaxseg_targets(loaded.vjp())) == OUR_TARGETS[1:]
  x, w = rng.standard_normal((3, 5, 16), np.float32), rng.standard_normal((4, 16, 16), np.float32)
  loss = lambda conv: jax.grad(lambda x, w: jnp.sum(conv(x, w) ** 2), (0, 1))
  for got, want in zip(loss(loaded.call)(x, w), loss(lambda x, w: lax.conv_transpose(x, w, (2,), "SAME"))(x, w)):
    assert_close(got, want)


# --------------------------------------------------------------------------------------------------------------
# The export helpers and what an artifact needs at load time.


def test_targets_and_disabled_checks():
  assert set(OUR_TARGETS) <= set(jaxseg.export.TARGETS)
  assert jaxseg.export.disabled_checks() == [jax.export.DisabledSafetyCheck.custom_call(t)
                                             for t in jaxseg.export.TARGETS]
  f = jax.jit(lambda x, w: jaxseg.conv_transpose(x, w, (2,), "SAME"))
  specs = _specs(["b, 12, 16", (4, 16, 16)])
  # Without the allowances jax refuses to serialize our custom calls.
  with pytest.raises(ValueError, match="custom calls whose targets have no compatibility guarantees"):
    jax.export.export(f)(*specs)
  jax.export.export(f, disabled_checks=jaxseg.export.disabled_checks())(*specs)
  # jaxseg.export.export adds its allowances to the caller's.
  exported = jaxseg.export.export(f, disabled_checks=[jax.export.DisabledSafetyCheck.platform()])(*specs)
  assert set(map(str, exported.disabled_safety_checks)) >= {"platform", *(f"custom_call:{t}" for t in OUR_TARGETS)}


def _unknown_version_artifact():
  """What a jaxseg release with another calling-convention version would export: the forward under the target
  name `..._v0`, which this jaxseg does not register."""
  target = "jaxseg_conv_transpose_forward_v0"

  def f(x, w):
    out = jax.ShapeDtypeStruct((1, x.shape[0], 2 * x.shape[1], w.shape[-1]), x.dtype)
    attrs = dict(strides=np.array([2], np.int64), dilation=np.array([1], np.int64),
                 padding_lo=np.array([2], np.int64), padding_hi=np.array([1], np.int64), transpose_kernel=False)
    return jax.ffi.ffi_call(target, out)(x[None], w[None], **attrs)[0]

  checks = [jax.export.DisabledSafetyCheck.custom_call(target)]
  return target, jax.export.export(jax.jit(f), disabled_checks=checks)(*_specs(["b, 12, 16", (4, 16, 16)]))


@pytest.mark.cpu_only
def test_unknown_target_version_fails_clearly():
  target, exported = _unknown_version_artifact()
  blob = exported.serialize()
  assert target not in jaxseg.export.TARGETS
  # jaxseg.export.deserialize refuses it at load time, naming the target and what this jaxseg registers.
  with pytest.raises(ValueError, match=f"{target}.*does not register.*_v2"):
    jaxseg.export.deserialize(blob)
  # jax.export.deserialize loads it; its first call fails in XLA's compilation.
  loaded = jax.export.deserialize(blob)
  x, w = np.ones((2, 12, 16), np.float32), np.ones((4, 16, 16), np.float32)
  with pytest.raises(jax.errors.JaxRuntimeError, match=f"No FFI handler registered for {target}"):
    loaded.call(x, w)


@pytest.mark.cpu_only
def test_artifact_needs_jaxseg_imported_where_it_runs(tmp_path, rng):
  """A serving process that has not imported jaxseg fails at the first call; after `import jaxseg` it runs."""
  f = jax.jit(_with_grads(lambda x, w: jaxseg.conv_transpose(x, w, (2,), "SAME")))
  (tmp_path / "fn.bin").write_bytes(jaxseg.export.export(f)(*_specs(["b, 12, 16", (4, 16, 16)])).serialize())
  x, w = rng.standard_normal((3, 12, 16), np.float32), rng.standard_normal((4, 16, 16), np.float32)
  np.savez(tmp_path / "args.npz", x=x, w=w)
  code = textwrap.dedent(f"""
      import sys, jax, numpy as np
      exported = jax.export.deserialize(open({str(tmp_path / 'fn.bin')!r}, 'rb').read())
      args = np.load({str(tmp_path / 'args.npz')!r})
      try:
        exported.call(args["x"], args["w"])
        sys.exit("ran without jaxseg")
      except jax.errors.JaxRuntimeError as e:
        print("WITHOUT:", str(e).splitlines()[0])
      assert "jaxseg" not in sys.modules
      import jaxseg
      np.savez({str(tmp_path / 'out.npz')!r}, *exported.call(args["x"], args["w"]))
      print("WITH: ok")
  """)
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=HERE,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  assert re.search(r"WITHOUT: .*No FFI handler registered for jaxseg_conv_transpose_\w+_v2", out.stdout)
  got = np.load(tmp_path / "out.npz")
  for i, want in enumerate(f(x, w)):
    assert_close(got[f"arr_{i}"], want)


@pytest.mark.cpu_only
def test_export_for_cpu_and_cuda_on_a_cpu_machine(rng):
  """Lowering for CUDA needs no GPU: the artifact holds a CUDA branch (our CUDA custom calls where the CUDA
  module was built and jaxseg.use_gpu_kernels is on, XLA's convolution otherwise) and runs here on the CPU."""
  f = jax.jit(lambda x, w: jaxseg.conv_transpose(x, w, (2,), "SAME"))
  exported = jaxseg.export.export(f, platforms=("cpu", "cuda"))(*_specs(["b, 12, 16", (4, 16, 16)]))
  assert exported.platforms == ("cpu", "cuda")
  assert ("stablehlo.convolution" in exported.mlir_module()) == (_ext.cuda is None or not jaxseg.gpu_kernels_enabled())
  x, w = rng.standard_normal((3, 12, 16), np.float32), rng.standard_normal((4, 16, 16), np.float32)
  assert_close(_round_trip(exported).call(x, w), lax.conv_transpose(x, w, (2,), "SAME"))


@pytest.mark.cpu_only
def test_xla_convolution_paths_take_symbolic_shapes(rng):
  """Where jaxseg has no kernels it lowers to XLA's convolution (a platform without them: TPU; integer operands:
  lax.conv_transpose itself), with the same symbolic shapes."""
  specs = _specs(["b, h, 16", (4, 16, 16)])
  grads = jax.jit(_with_grads(lambda x, w: jaxseg.conv_transpose(x, w, (2,), "SAME")))
  exported = jaxseg.export.export(grads, platforms=("cpu", "tpu"))(*specs)
  assert "stablehlo.convolution" in exported.mlir_module()
  assert [str(a) for a in exported.out_avals] == ["float32[b,2*h,16]", "float32[b,h,16]", "float32[4,16,16]"]
  x, w = rng.standard_normal((2, 5, 16), np.float32), rng.standard_normal((4, 16, 16), np.float32)
  for got, want in zip(_round_trip(exported).call(x, w), grads(x, w)):
    assert_close(got, want)
  ints = jax.jit(lambda x, w: jaxseg.conv_transpose(x.astype(jnp.int32), w.astype(jnp.int32), (2,), "SAME"))
  exported = jaxseg.export.export(ints)(*specs)
  assert str(exported.out_avals[0]) == "int32[b,2*h,16]" and not jaxseg.export.jaxseg_targets(exported)


@pytest.mark.cpu_only
def test_sharded_export_is_refused_and_shard_map_exports():
  devices = jax.devices("cpu")
  if len(devices) < 4:
    pytest.skip(f"{len(devices)} CPU devices (jax's backend started before conftest.py set the count)")
  mesh = jax.make_mesh((4,), ("d",), devices=devices[:4])
  xs, ws = NamedSharding(mesh, P("d")), NamedSharding(mesh, P())
  conv = lambda x, w: jaxseg.conv_transpose(x, w, (2,), "SAME")
  specs = (jax.ShapeDtypeStruct((8, 12, 16), jnp.float32, sharding=xs),
           jax.ShapeDtypeStruct((4, 16, 16), jnp.float32, sharding=ws))
  with pytest.raises(NotImplementedError, match="sharded over several devices"):
    jaxseg.export.export(jax.jit(conv, in_shardings=(xs, ws)))(*specs)
  f = jax.jit(jax.shard_map(conv, mesh=mesh, in_specs=(P("d"), P()), out_specs=P("d")))
  loaded = jaxseg.export.deserialize(jaxseg.export.export(f)(*specs).serialize())
  x, w = np.ones((8, 12, 16), np.float32), np.ones((4, 16, 16), np.float32)
  y = loaded.call(jax.device_put(x, xs), jax.device_put(w, ws))
  np.testing.assert_allclose(y, jax.lax.conv_transpose(x, w, (2,), "SAME"), rtol=1e-5)


# --------------------------------------------------------------------------------------------------------------
# Symbolic shapes jaxseg cannot take, with the error that says so.


def test_undecidable_sizes_name_the_constraint_to_declare():
  conv = lambda x, w: jaxseg.conv_transpose(x, w, (2,), [(-3, -3)])
  # Output size 2*h - 10 is >= 1 only for h >= 6.
  with pytest.raises(ValueError, match=re.escape("constraints=('2*h - 10 >= 1',)")):
    jaxseg.export.export(jax.jit(conv))(*_specs(["5, h, 16", (4, 16, 16)]))
  jaxseg.export.export(jax.jit(conv))(*_specs(["5, h, 16", (4, 16, 16)], constraints=("h >= 6",)))
  # A sliced input may be empty.
  sliced = lambda x, w: jaxseg.conv_transpose(x[:, 1:], w, (2,), "SAME")
  with pytest.raises(ValueError, match=re.escape("spatial dimension 0 of lhs has the symbolic size h - 1")):
    jaxseg.export.export(jax.jit(sliced))(*_specs(["5, h, 16", (4, 16, 16)]))
  # The kernel's spatial size must be concrete.
  with pytest.raises(ValueError, match="rhs must have concrete spatial sizes"):
    jaxseg.export.export(jax.jit(conv))(*_specs(["5, 12, 16", "k, 16, 16"]))


# --------------------------------------------------------------------------------------------------------------
# The Python shape rule against the extension's geometry (common/phase_geometry.h), the kernels' one source.


@settings(max_examples=300, deadline=None)
@given(in_size=st.integers(0, 40), kernel=st.integers(0, 9), stride=st.integers(1, 8), dilation=st.integers(1, 4),
       lo=st.integers(-12, 12), hi=st.integers(-12, 12))
def test_output_size_matches_the_extension(in_size, kernel, stride, dilation, lo, hi):
  want = _ext.cpu.output_size(in_size, kernel, stride, dilation, lo, hi)
  assert output_size(in_size, kernel, stride, dilation, lo, hi) == want
  if in_size >= 1:
    # The symbolic rule, evaluated at h = in_size, gives the same size.
    h, = jax.export.symbolic_shape("h")
    symbolic = output_size(h, kernel, stride, dilation, lo, hi)
    (value,) = jax.export.symbolic_shape(re.sub(r"\bh\b", str(in_size), str(symbolic)))
    assert value == want, symbolic
