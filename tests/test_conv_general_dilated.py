"""`jaxseg.conv_general_dilated` against `jax.lax.conv_general_dilated`: the signature, the values (forward and
both gradients, against lax in float64), vmap, and the compiled HLO (input-dilated calls on our custom calls with
no XLA convolution; the others XLA's convolution with no custom call)."""

import inspect
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxseg
from conftest import x64
from jaxseg._passes import FORWARD, PASSES, WEIGHT_GRAD
from tolerances import assert_close

ALL_TARGETS = {p.target for p in PASSES}
NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2))


def _ops(hlo):
  """(jaxseg custom-call targets, whether an XLA convolution is present) of compiled HLO text. A local helper:
  tests/hlo.py is the shared home once it lands."""
  return set(re.findall(r'custom_call_target="(jaxseg[^"]+)"', hlo)), bool(re.search(r"\bconvolution\(", hlo))


def _compiled_ops(fn, *args):
  return _ops(jax.jit(fn).lower(*args).compile().as_text())


# (lhs shape, rhs shape, keyword arguments); default dimension numbers are lax's NCH.../OIH....
CASES = [
    # 1-D: window stride 1; w = s (one phase); gcd 1 (w' = 3); negative pads with rhs dilation; gcd 2 (s' = 3,
    # w' = 2) with rhs dilation 3; lax's default layout
    ((2, 3, 7), (4, 3, 5), dict(window_strides=(1,), padding=[(2, 3)], lhs_dilation=(2,))),
    ((2, 3, 9), (4, 3, 5), dict(window_strides=(2,), padding=[(1, 2)], lhs_dilation=(2,))),
    ((2, 3, 8), (5, 3, 4), dict(window_strides=(3,), padding=[(3, 1)], lhs_dilation=(2,))),
    ((1, 2, 9), (3, 2, 3), dict(window_strides=(2,), padding=[(-1, 2)], lhs_dilation=(3,), rhs_dilation=(2,))),
    ((2, 3, 11), (2, 3, 7), dict(window_strides=(4,), padding=[(5, 4)], lhs_dilation=(6,), rhs_dilation=(3,))),
    # 1-D depthwise anti-aliased up-sampler (BigVGAN/LTX-2 style: kernel 12, ratio 2, NWC/WIO)
    ((2, 13, 5), (12, 1, 5), dict(window_strides=(1,), padding=[(11, 11)], lhs_dilation=(2,),
                                  feature_group_count=5, dimension_numbers=("NWC", "WIO", "NWC"))),
    # 2-D: groups, lhs dilation 1 on one axis, window strides, a crop
    ((2, 4, 5, 6), (6, 2, 3, 4), dict(window_strides=(1, 2), padding=[(1, 1), (0, -1)], lhs_dilation=(2, 1),
                                      feature_group_count=2, dimension_numbers=("NCHW", "OIHW", "NCHW"))),
    ((2, 5, 4, 3), (3, 4, 3, 4), dict(window_strides=(2, 3), padding=[(2, 0), (3, 1)], lhs_dilation=(3, 2),
                                      rhs_dilation=(1, 2), dimension_numbers=("NHWC", "HWIO", "NHWC"))),
    ((1, 4, 5, 6), (2, 3, 1, 6), dict(window_strides=(1, 1), padding=[(1, 2), (2, 2)], lhs_dilation=(2, 2),
                                      feature_group_count=6, dimension_numbers=NHWC)),
    # 3-D, mixed dilations and strides
    ((1, 2, 3, 4, 5), (3, 2, 2, 3, 2), dict(window_strides=(1, 1, 2), padding=[(1, 1), (0, 2), (1, 0)],
                                           lhs_dilation=(2, 3, 2))),
    # batch_group_count: lax's weight-gradient form (lhs batch = groups x channels, rhs O = groups x outputs)
    ((4, 3, 7), (6, 3, 9), dict(window_strides=(1,), padding=[(3, 2)], lhs_dilation=(2,), batch_group_count=2)),
    ((4, 5, 3, 6), (3, 2, 4, 6), dict(window_strides=(2, 1), padding=[(2, 3), (1, 1)], lhs_dilation=(2, 3),
                                      batch_group_count=3, dimension_numbers=("CHWN", "HWIO", "NHWC"))),
]


def _value_and_grads(f):
  """jit of (a, b, ct) -> (f(a, b), the cotangent ct pulled back to a and to b)."""
  def run(a, b, ct):
    y, vjp = jax.vjp(f, a, b)
    return (y, *vjp(ct.astype(y.dtype)))
  return jax.jit(run)


def _check(rng, lhs_shape, rhs_shape, kw, dtype=jnp.float32, preferred=None):
  """Forward and both gradients against lax's in float64; returns (our function, lhs, rhs)."""
  lhs = rng.standard_normal(lhs_shape)
  rhs = rng.standard_normal(rhs_shape)
  ours = lambda a, b: jaxseg.conv_general_dilated(a, b, **kw, preferred_element_type=preferred)
  theirs = lambda a, b: lax.conv_general_dilated(a, b, **kw, preferred_element_type=preferred)
  a, b = jnp.asarray(lhs, dtype), jnp.asarray(rhs, dtype)
  out = jax.eval_shape(theirs, a, b)
  ct = jnp.asarray(rng.standard_normal(out.shape), out.dtype)
  y, dlhs, drhs = _value_and_grads(ours)(a, b, ct)
  ct = np.asarray(ct, np.float64)  # the reference pulls back the same (rounded) cotangent
  assert (y.shape, y.dtype) == (out.shape, out.dtype)
  with x64():
    ref = lambda a, b: lax.conv_general_dilated(a, b, **kw)
    want, want_dlhs, want_drhs = _value_and_grads(ref)(jnp.asarray(lhs), jnp.asarray(rhs), jnp.asarray(ct))
  assert_close(y, want, y.dtype if preferred is None else dtype, err_msg="forward")
  assert_close(dlhs, want_dlhs, dtype, err_msg="lhs gradient")
  assert_close(drhs, want_drhs, dtype, err_msg="rhs gradient")
  return ours, a, b


def _loss(f):
  return lambda *args: jnp.sum(jnp.square(f(*args).astype(jnp.float32)))


@pytest.mark.parametrize("lhs_shape,rhs_shape,kw", CASES)
def test_matches_lax_on_our_kernels(rng, lhs_shape, rhs_shape, kw):
  ours, lhs, rhs = _check(rng, lhs_shape, rhs_shape, kw)
  forward = WEIGHT_GRAD if kw.get("batch_group_count", 1) > 1 else FORWARD
  assert _compiled_ops(ours, lhs, rhs) == ({forward.target}, False)
  assert _compiled_ops(jax.grad(_loss(ours), (0, 1)), lhs, rhs) == (ALL_TARGETS, False)


@pytest.mark.parametrize("dtype,preferred,precision", [
    (jnp.bfloat16, None, None),
    (jnp.bfloat16, jnp.float32, None),
    (jnp.float16, jnp.float32, "highest"),
    (jnp.float32, None, lax.Precision.HIGHEST),
    (jnp.float32, None, (lax.Precision.DEFAULT, lax.Precision.HIGH)),
])
def test_dtypes_and_precision(rng, dtype, preferred, precision):
  kw = dict(window_strides=(2, 1), padding=[(2, 1), (1, 2)], lhs_dilation=(2, 3), rhs_dilation=(1, 2),
            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=2, precision=precision)
  ours, lhs, rhs = _check(rng, (2, 5, 4, 4), (3, 2, 2, 6), kw, dtype, preferred)
  assert _compiled_ops(ours, lhs, rhs) == ({FORWARD.target}, False)


def test_float64(rng):
  kw = dict(window_strides=(3,), padding=[(2, 4)], lhs_dilation=(3,), rhs_dilation=(2,), feature_group_count=3)
  with x64():
    _check(rng, (2, 6, 7), (6, 2, 4), kw, jnp.float64)


@pytest.mark.parametrize("s,w", [(2, 2), (2, 4), (4, 2), (3, 2), (2, 3), (4, 6), (6, 4), (3, 3)])
def test_window_stride_sweep(rng, s, w):
  """Input dilation s with window stride w, kernel dilations 1-3 with low pads -1 and 1, 1-D, forward and gradients:
  the tap selection of `_reduce`, including axes where no tap meets an input element (zeros). Three (d, lo) pairs
  per (s, w), each dilation and each pad's sign at least once (each check compiles four functions)."""
  for d, lo in ((1, -1), (2, 1), (3, -1)):
    _check(rng, (1, 2, 6), (3, 2, 3), dict(window_strides=(w,), padding=[(lo, 3)], lhs_dilation=(s,),
                                          rhs_dilation=(d,)))


def test_no_tap_meets_an_input_gives_zeros_without_kernels(rng):
  kw = dict(window_strides=(2,), padding=[(1, 0)], lhs_dilation=(2,))  # kernel 1 at odd offsets only
  ours, lhs, rhs = _check(rng, (2, 3, 5), (4, 3, 1), kw)
  assert not np.any(np.asarray(ours(lhs, rhs)))
  assert _compiled_ops(ours, lhs, rhs) == (set(), False)


@pytest.mark.parametrize("in_axes", [(0, None), (None, 0), (0, 0), (2, 1)])
def test_vmap(rng, in_axes):
  kw = dict(window_strides=(2, 1), padding=[(1, 2), (0, 1)], lhs_dilation=(3, 2), feature_group_count=2,
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
  lhs = rng.standard_normal((2, 5, 4, 4))
  rhs = rng.standard_normal((3, 2, 2, 6))
  lhs_b = np.stack([lhs, 2 * lhs - 1, -lhs], axis=in_axes[0]) if in_axes[0] is not None else lhs
  rhs_b = np.stack([rhs, rhs + 1, -rhs], axis=in_axes[1]) if in_axes[1] is not None else rhs
  f = lambda a, b: jaxseg.conv_general_dilated(a, b, **kw)
  got = jax.vmap(f, in_axes)(jnp.asarray(lhs_b, jnp.float32), jnp.asarray(rhs_b, jnp.float32))
  gl, gr = jax.grad(_loss(jax.vmap(f, in_axes)), (0, 1))(jnp.asarray(lhs_b, jnp.float32),
                                                         jnp.asarray(rhs_b, jnp.float32))
  with x64():
    ref = jax.vmap(lambda a, b: lax.conv_general_dilated(a, b, **kw), in_axes)
    want = ref(jnp.asarray(lhs_b), jnp.asarray(rhs_b))
    wl, wr = jax.grad(lambda a, b: jnp.sum(jnp.square(ref(a, b))), (0, 1))(jnp.asarray(lhs_b), jnp.asarray(rhs_b))
  assert_close(got, want, jnp.float32)
  assert_close(gl, wl, jnp.float32)
  assert_close(gr, wr, jnp.float32)
  assert _compiled_ops(jax.vmap(f, in_axes), jnp.asarray(lhs_b, jnp.float32),
                       jnp.asarray(rhs_b, jnp.float32)) == ({FORWARD.target}, False)


def test_is_lax_weight_gradient_form(rng):
  """The batch_group_count call lax itself writes for the weight gradient of a grouped transposed convolution,
  taken from lax's jaxpr and replayed through jaxseg.conv_general_dilated, gives lax's weight gradient."""
  x = jnp.asarray(rng.standard_normal((4, 7, 6)), jnp.float32)  # NWC, 6 channels in 2 groups
  w = jnp.asarray(rng.standard_normal((3, 3, 4)), jnp.float32)  # WIO, 3 inputs a group, 4 outputs (2 a group)
  f = lambda w: lax.conv_general_dilated(x, w, (1,), [(2, 3)], lhs_dilation=(2,), feature_group_count=2,
                                         dimension_numbers=("NWC", "WIO", "NWC"))
  y, vjp = jax.vjp(f, w)
  ct = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
  (eqn,) = [e for e in jax.make_jaxpr(vjp)(ct).eqns if e.primitive.name == "conv_general_dilated"]
  p = eqn.params
  assert p["batch_group_count"] == 2 and max(p["lhs_dilation"]) > 1
  lhs, rhs = x, ct
  got = jaxseg.conv_general_dilated(lhs, rhs, p["window_strides"], p["padding"], p["lhs_dilation"],
                                    p["rhs_dilation"], p["dimension_numbers"], p["feature_group_count"],
                                    p["batch_group_count"], preferred_element_type=p["preferred_element_type"])
  assert_close(got, vjp(ct)[0], jnp.float32)
  g = lambda a, b: jaxseg.conv_general_dilated(a, b, p["window_strides"], p["padding"], p["lhs_dilation"],
                                               p["rhs_dilation"], p["dimension_numbers"], p["feature_group_count"],
                                               p["batch_group_count"])
  assert _compiled_ops(g, lhs, rhs) == ({WEIGHT_GRAD.target}, False)


@pytest.mark.parametrize("dtype,kw", [
    (jnp.float32, dict(window_strides=(2,), padding=[(1, 2)])),  # no input dilation
    (jnp.float32, dict(window_strides=(1,), padding="SAME", lhs_dilation=(1,))),
    (jnp.int32, dict(window_strides=(1,), padding=[(2, 2)], lhs_dilation=(2,))),  # integer operands
    (jnp.float32, dict(window_strides=(1,), padding=[(2, 2)], lhs_dilation=(2,), rhs_dilation=(2,),
                       batch_group_count=2)),  # batch groups with a kernel dilation
])
def test_other_calls_go_to_lax(rng, dtype, kw):
  lhs = jnp.asarray(rng.integers(-3, 4, (4, 4, 9)), dtype)
  rhs = jnp.asarray(rng.integers(-3, 4, (4, 4, 3)), dtype)
  got = jaxseg.conv_general_dilated(lhs, rhs, **kw)
  want = lax.conv_general_dilated(lhs, rhs, **kw)
  assert got.dtype == want.dtype
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))  # small integers: exact in every dtype
  assert _compiled_ops(lambda a, b: jaxseg.conv_general_dilated(a, b, **kw), lhs, rhs) == (set(), True)


def test_lax_errors_pass_through(rng):
  lhs, rhs = jnp.ones((1, 2, 5)), jnp.ones((3, 2, 3))
  for kw in (dict(window_strides=(1,), padding="SAME", lhs_dilation=(2,)),  # lax: no string padding here
             dict(window_strides=(1,), padding=[(1, 1)], lhs_dilation=(2,), feature_group_count=4),
             dict(window_strides=(1, 1), padding=[(1, 1)], lhs_dilation=(2,))):
    with pytest.raises((TypeError, ValueError)) as want:
      lax.conv_general_dilated(lhs, rhs, **kw)
    with pytest.raises(want.type, match=re.escape(str(want.value)[:40])):
      jaxseg.conv_general_dilated(lhs, rhs, **kw)


def test_signature_is_lax():
  """Parameter names, order, kinds and defaults are the installed jax's."""
  ours = inspect.signature(jaxseg.conv_general_dilated).parameters
  theirs = inspect.signature(lax.conv_general_dilated).parameters
  assert [(p.name, p.kind, p.default) for p in ours.values()] == \
      [(p.name, p.kind, p.default) for p in theirs.values()]
