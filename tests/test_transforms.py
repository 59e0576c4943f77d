"""Gradients (all orders, both modes), vmap in all three forms, and the compiled HLO."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.test_util import check_grads

import jaxseg
from conftest import x64
from hlo import ALL_TARGETS, FORWARD_TARGETS, compiled_hlo, custom_call_targets, has_convolution, layout_ops
from tolerances import assert_close

CASES = [
    # lhs shape, rhs shape, strides, padding, kwargs
    ((2, 5, 3), (4, 3, 2), (2,), "SAME", {}),
    ((2, 4, 5, 3), (3, 2, 3, 4), (2, 3), [(1, 2), (-1, 1)], {}),
    ((1, 3, 4, 2), (4, 3, 3, 2), (2, 2), "VALID", {"transpose_kernel": True, "rhs_dilation": (2, 1)}),
    ((2, 2, 3, 2, 2), (2, 2, 2, 2, 3), (2, 1, 2), "SAME", {}),
    ((2, 3, 5, 4), (2, 3, 3, 4), (2, 2), "SAME", {"dimension_numbers": ("NCHW", "OIHW", "NCHW")}),
]


def _inputs(rng, lhs_shape, rhs_shape, dtype):
  return (jnp.asarray(rng.standard_normal(lhs_shape), dtype), jnp.asarray(rng.standard_normal(rhs_shape), dtype))


@pytest.mark.parametrize("lhs_shape,rhs_shape,strides,padding,kw", CASES)
def test_check_grads_float64(rng, lhs_shape, rhs_shape, strides, padding, kw):
  with x64():
    x, w = _inputs(rng, lhs_shape, rhs_shape, jnp.float64)
    f = lambda x, w: jaxseg.conv_transpose(x, w, strides, padding, **kw)
    check_grads(f, (x, w), order=2, modes=("fwd", "rev"), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("lhs_shape,rhs_shape,strides,padding,kw", CASES)
def test_vjp_matches_lax(rng, lhs_shape, rhs_shape, strides, padding, kw):
  """Gradients against lax's: the same shapes and dtypes, and values within float32 rounding of lax's in
  float64."""
  x, w = _inputs(rng, lhs_shape, rhs_shape, jnp.float32)
  ours, vjp_ours = jax.vjp(lambda x, w: jaxseg.conv_transpose(x, w, strides, padding, **kw), x, w)
  theirs, vjp_lax = jax.vjp(lambda x, w: lax.conv_transpose(x, w, strides, padding, **kw), x, w)
  ct = jnp.asarray(rng.standard_normal(ours.shape), jnp.float32)
  with x64():
    f64 = lambda v: np.asarray(v, np.float64)
    vjp64 = jax.vjp(lambda x, w: lax.conv_transpose(x, w, strides, padding, **kw), f64(x), f64(w))[1]
    want = [np.asarray(v) for v in vjp64(f64(ct))]
  for a, b, c in zip(jax.jit(vjp_ours)(ct), vjp_lax(ct), want):
    assert a.shape == b.shape and a.dtype == b.dtype
    assert_close(a, c)


def test_vjp_matches_float64_reference(rng):
  """Input and weight gradients against float64 lax (itself checked against NumPy in test_conformance)."""
  x, w = _inputs(rng, (2, 7, 6, 5), (4, 3, 5, 6), jnp.float32)
  kw = dict(strides=(2, 3), padding=[(2, 1), (0, 2)])
  ct = rng.standard_normal(jaxseg.conv_transpose(x, w, **kw).shape).astype(np.float32)
  grads = jax.vjp(lambda x, w: jaxseg.conv_transpose(x, w, **kw), x, w)[1](jnp.asarray(ct))
  with x64():
    x64_, w64 = np.asarray(x, np.float64), np.asarray(w, np.float64)
    want = jax.vjp(lambda x, w: lax.conv_transpose(x, w, **kw), x64_, w64)[1](np.asarray(ct, np.float64))
    want = [np.asarray(v) for v in want]
  for a, b in zip(grads, want):
    assert_close(a, b)


def test_hessian_and_jacfwd(rng):
  x, w = _inputs(rng, (1, 3, 2), (3, 2, 2), jnp.float32)
  f = lambda impl, x: (lambda w: jnp.sum(jnp.tanh(impl(x, w, (2,), "SAME"))))
  g = lambda impl, w: (lambda x: impl(x, w, (2,), "SAME"))
  with x64():
    x64_, w64 = np.asarray(x, np.float64), np.asarray(w, np.float64)
    want = [np.asarray(jax.hessian(f(lax.conv_transpose, x64_))(w64)),
            np.asarray(jax.jacfwd(g(lax.conv_transpose, w64))(x64_))]
  assert_close(jax.hessian(f(jaxseg.conv_transpose, x))(w), want[0])
  assert_close(jax.jacfwd(g(jaxseg.conv_transpose, w))(x), want[1])


def test_half_precision_gradients(rng):
  x, w = _inputs(rng, (2, 5, 6, 4), (3, 3, 4, 5), jnp.bfloat16)
  for pref in (None, jnp.float32):
    f = lambda impl: (lambda x, w: jnp.sum(impl(x, w, (2, 2), "SAME", preferred_element_type=pref)
                                           .astype(jnp.float32) ** 2))
    ours = jax.grad(f(jaxseg.conv_transpose), (0, 1))(x, w)
    theirs = jax.grad(f(lax.conv_transpose), (0, 1))(x, w)
    for a, b in zip(ours, theirs):
      assert a.dtype == b.dtype == jnp.bfloat16
      assert_close(a, b)


@pytest.mark.parametrize("transpose_kernel", [False, True])
@pytest.mark.parametrize("in_axes", [(0, None), (None, 0), (0, 0), (2, None), (None, 3), (1, 2)])
def test_vmap(rng, in_axes, transpose_kernel):
  b = 3
  x_shape, w_shape = [2, 5, 6, 3], [4, 3, 5, 3] if transpose_kernel else [4, 3, 3, 5]
  if in_axes[0] is not None:
    x_shape.insert(in_axes[0], b)
  if in_axes[1] is not None:
    w_shape.insert(in_axes[1], b)
  x, w = _inputs(rng, x_shape, w_shape, jnp.float32)
  kw = dict(strides=(2, 3), padding=[(1, 2), (0, 1)], transpose_kernel=transpose_kernel)
  ours = jax.vmap(lambda x, w: jaxseg.conv_transpose(x, w, **kw), in_axes)(x, w)
  theirs = jax.vmap(lambda x, w: lax.conv_transpose(x, w, **kw), in_axes)(x, w)
  assert_close(ours, theirs)
  loss = lambda impl: (lambda x, w: jnp.sum(jnp.sin(impl(x, w, **kw))))
  for a, c in zip(jax.vmap(jax.grad(loss(jaxseg.conv_transpose), (0, 1)), in_axes)(x, w),
                  jax.vmap(jax.grad(loss(lax.conv_transpose), (0, 1)), in_axes)(x, w)):
    assert_close(a, c)


def test_nested_vmap_of_grad(rng):
  x, w = _inputs(rng, (2, 3, 2, 5, 3), (2, 3, 3, 4), jnp.float32)
  loss = lambda impl: (lambda x, w: jnp.sum(impl(x, w, (2,), "VALID") ** 2))
  f = lambda impl: jax.vmap(jax.vmap(jax.grad(loss(impl), 1), (0, None)), (0, 0))
  assert_close(f(jaxseg.conv_transpose)(x, w), f(lax.conv_transpose)(x, w))


def test_hlo_uses_our_custom_calls(rng):
  """No silent fallback: a plain 2-D call and its training step compile to our custom calls, no XLA conv. The
  patterns are checked on lax's own call first (a positive control: they must find its convolution)."""
  x, w = _inputs(rng, (8, 7, 7, 16), (4, 4, 16, 8), jnp.float32)
  control = compiled_hlo(lambda x, w: lax.conv_transpose(x, w, (2, 2), "SAME"), x, w)
  assert has_convolution(control) and not custom_call_targets(control)
  fwd = lambda x, w: jaxseg.conv_transpose(x, w, (2, 2), "SAME")
  hlo = compiled_hlo(fwd, x, w)
  assert custom_call_targets(hlo) == FORWARD_TARGETS and not has_convolution(hlo)
  hlo = compiled_hlo(jax.grad(lambda x, w: jnp.sum(fwd(x, w) ** 2), (0, 1)), x, w)
  assert custom_call_targets(hlo) == ALL_TARGETS and not has_convolution(hlo)


def test_pytorch_oriented_kernel_is_not_copied(rng):
  """transpose_kernel=True: the kernels read the kernel as the user holds it (no flip or transpose in XLA), and the
  weight gradient comes back in that layout without a copy either. Positive control: a channels-first call does
  show its layout transposes to the same pattern."""
  x, w = _inputs(rng, (8, 7, 7, 16), (4, 4, 8, 16), jnp.float32)
  nchw = lambda x, w: jaxseg.conv_transpose(x, w, (2, 2), "SAME", dimension_numbers=("NCHW", "HWIO", "NCHW"),
                                            transpose_kernel=True)
  assert layout_ops(compiled_hlo(nchw, jnp.moveaxis(x, -1, 1), w))
  fwd = lambda x, w: jaxseg.conv_transpose(x, w, (2, 2), "SAME", transpose_kernel=True)
  for fn in (fwd, jax.grad(lambda x, w: jnp.sum(fwd(x, w) ** 2), (0, 1))):
    hlo = compiled_hlo(fn, x, w)
    assert custom_call_targets(hlo) and not layout_ops(hlo), hlo
