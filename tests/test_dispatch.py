"""The dispatch audit: every configuration the README says runs on our kernels does so, forward and gradient.

Each case is lowered and compiled; the forward must hold our forward custom call and the gradient all three, and
neither any XLA `convolution`. The README's fallback rows (integer, complex) are checked the other way round,
which is also the positive control of the patterns."""

import contextlib

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

import jaxseg
from conftest import x64
from hlo import ALL_TARGETS, FORWARD_TARGETS, compiled_hlo, custom_call_targets, has_convolution


def _audit(hlo):
  return custom_call_targets(hlo, "jaxseg"), has_convolution(hlo)


def _loss(f):
  return lambda *args: jnp.sum(jnp.square(f(*args).astype(jnp.float32)))


def _check_on_kernels(f, *args):
  targets, conv = _audit(compiled_hlo(f, *args))
  assert targets == FORWARD_TARGETS and not conv, (targets, conv)
  targets, conv = _audit(compiled_hlo(jax.grad(_loss(f), tuple(range(len(args)))), *args))
  assert targets == ALL_TARGETS and not conv, (targets, conv)


def _operands(rng, x_shape, w_shape, dtype):
  return jnp.asarray(rng.standard_normal(x_shape), dtype), jnp.asarray(rng.standard_normal(w_shape), dtype)


# The README's dtype table: (operand dtype, preferred_element_type, needs x64).
DTYPE_ROWS = [
    (jnp.float32, None, False),
    (jnp.float64, None, True),
    (jnp.bfloat16, None, False),
    (jnp.float16, None, False),
    (jnp.bfloat16, jnp.float32, False),
    (jnp.float16, jnp.float32, False),
    (jnp.float32, jnp.float64, True),
    (jnp.bfloat16, jnp.float64, True),
]


@pytest.mark.parametrize("dtype,preferred,needs_x64", DTYPE_ROWS, ids=lambda v: getattr(v, "__name__", str(v)))
@pytest.mark.parametrize("transpose_kernel", [False, True])
def test_dtype_table(rng, dtype, preferred, needs_x64, transpose_kernel):
  with x64() if needs_x64 else contextlib.nullcontext():
    x, w = _operands(rng, (4, 7, 7, 16), (4, 4, 8, 16) if transpose_kernel else (4, 4, 16, 8), dtype)
    f = lambda x, w: jaxseg.conv_transpose(x, w, (2, 2), "SAME", transpose_kernel=transpose_kernel,
                                           preferred_element_type=preferred)
    assert f(x, w).dtype == (preferred or dtype)
    _check_on_kernels(f, x, w)


@pytest.mark.parametrize("x_shape,w_shape,strides,padding,kwargs", [
    ((2, 9, 8), (4, 8, 6), (2,), "SAME", {}),  # 1-D
    ((2, 5, 6, 4), (3, 3, 4, 6), (2, 3), "VALID", {}),  # 2-D
    ((2, 3, 4, 5, 4), (2, 3, 2, 4, 6), (2, 2, 2), [(1, 1), (0, 2), (2, 0)], {}),  # 3-D, explicit pads
    ((2, 5, 6, 4), (3, 3, 4, 6), (2, 2), [(-1, 2), (3, -2)], {}),  # cropping pads
    ((2, 5, 6, 4), (3, 2, 4, 6), (2, 2), "SAME", {"rhs_dilation": (2, 3)}),
    ((2, 5, 6, 4), (3, 3, 6, 4), (2, 2), [(1, 1), (1, 1)], {"use_consistent_padding": True,
                                                          "transpose_kernel": True}),
    ((2, 5, 6, 4), (3, 3, 4, 6), (1, 1), "same", {}),  # a lowercase string at unit stride
    ((2, 4, 5, 6), (6, 4, 3, 3), (2, 2), "SAME", {"dimension_numbers": ("NCHW", "OIHW", "NCHW")}),
    ((2, 4, 5, 6), (4, 6, 3, 3), (2, 2), "SAME", {"dimension_numbers": ("NCHW", "OIHW", "NCHW"),
                                                   "transpose_kernel": True}),
    ((2, 4, 5, 6, 3), (6, 4, 3, 3, 2), (2, 1, 2), "SAME", {"dimension_numbers": ("NCHWD", "OIHWD", "NCHWD")}),
    ((2, 6), (6, 3), (), [], {}),  # no spatial axis: a matmul
    ((2, 9, 8), (4, 8, 6), (2,), "SAME", {"precision": lax.DotAlgorithmPreset.F32_F32_F32}),
    ((2, 9, 8), (4, 8, 6), (2,), "SAME", {"precision": "highest"}),
    ((2, 3, 8), (2, 8, 6), (8,), "SAME", {}),  # kernel smaller than the stride: phases without taps
])
def test_semantics(rng, x_shape, w_shape, strides, padding, kwargs):
  x, w = _operands(rng, x_shape, w_shape, jnp.float32)
  _check_on_kernels(lambda x, w: jaxseg.conv_transpose(x, w, strides, padding, **kwargs), x, w)


@pytest.mark.parametrize("in_axes", [(0, None), (None, 0), (0, 0), (2, 1)])
@pytest.mark.parametrize("transpose_kernel", [False, True])
def test_vmap(rng, in_axes, transpose_kernel):
  x_shape, w_shape = [2, 5, 6, 3], [3, 4, 5, 3] if transpose_kernel else [3, 4, 3, 5]
  if in_axes[0] is not None:
    x_shape.insert(in_axes[0], 3)
  if in_axes[1] is not None:
    w_shape.insert(in_axes[1], 3)
  x, w = _operands(rng, x_shape, w_shape, jnp.float32)
  f = jax.vmap(lambda x, w: jaxseg.conv_transpose(x, w, (2, 2), "SAME", transpose_kernel=transpose_kernel),
               in_axes)
  _check_on_kernels(f, x, w)


MODULE_DTYPES = [
    dict(),
    dict(dtype=jnp.bfloat16),
    dict(param_dtype=jnp.bfloat16),
    dict(dtype=jnp.bfloat16, param_dtype=jnp.bfloat16),
    dict(dtype=jnp.float16, param_dtype=jnp.float32),
    dict(param_dtype=jnp.bfloat16, preferred_element_type=jnp.float32),
]


@pytest.mark.parametrize("cfg", MODULE_DTYPES, ids=str)
@pytest.mark.parametrize("transpose_kernel", [False, True])
def test_linen_module(rng, cfg, transpose_kernel):
  m = jaxseg.linen.ConvTranspose(8, (4, 4), (2, 2), transpose_kernel=transpose_kernel, **cfg)
  x = jnp.asarray(rng.standard_normal((2, 7, 7, 5)), jnp.float32)
  params = m.init(jax.random.key(0), x)
  _check_on_kernels(lambda p, x: m.apply(p, x), params, x)


@pytest.mark.parametrize("cfg", MODULE_DTYPES, ids=str)
@pytest.mark.parametrize("transpose_kernel", [False, True])
def test_nnx_module(rng, cfg, transpose_kernel):
  m = jaxseg.nnx.ConvTranspose(5, 8, (4, 4), (2, 2), transpose_kernel=transpose_kernel, rngs=nnx.Rngs(0), **cfg)
  graphdef, state = nnx.split(m)
  x = jnp.asarray(rng.standard_normal((2, 7, 7, 5)), jnp.float32)
  _check_on_kernels(lambda s, x: nnx.merge(graphdef, s)(x), state, x)


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.complex64])
def test_fallback_rows_go_to_lax(rng, dtype):
  """The README's fallback rows, and the positive control of the audit's patterns."""
  x = (rng.standard_normal((2, 5, 3)) * 4).astype(dtype)
  w = (rng.standard_normal((3, 3, 4)) * 4).astype(dtype)
  targets, conv = _audit(compiled_hlo(lambda x, w: jaxseg.conv_transpose(x, w, (2,), "SAME"), x, w))
  assert not targets and conv


def test_flax_reference_modules_use_convolution(rng):
  """The patterns find XLA's convolution in flax's own module (the audit's other positive control)."""
  m = fnn.ConvTranspose(8, (4, 4), (2, 2))
  x = jnp.ones((2, 7, 7, 5))
  params = m.init(jax.random.key(0), x)
  targets, conv = _audit(compiled_hlo(jax.grad(lambda p: jnp.sum(m.apply(p, x) ** 2)), params))
  assert not targets and conv
