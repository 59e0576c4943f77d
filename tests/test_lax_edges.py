"""lax.conv_transpose's contract at its edges: for each configuration jaxseg gives what lax gives (the same shape,
dtype and values) or raises where lax raises. Values are compared against lax in float64 where they are float."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxseg
from conftest import x64
from hlo import ALL_TARGETS, FORWARD_TARGETS, compiled_ops
from tolerances import assert_close


def _same_as_lax(lhs, rhs, *args, **kwargs):
  """Runs both; returns jaxseg's result after checking it against lax's, or checks that both raise."""
  try:
    want = lax.conv_transpose(lhs, rhs, *args, **kwargs)
  except (TypeError, ValueError, RuntimeError) as e:
    # lax raises RuntimeError for an unknown padding string from deep inside; ours is a ValueError naming it.
    expected = ValueError if isinstance(e, RuntimeError) else type(e)
    with pytest.raises(expected):
      jaxseg.conv_transpose(lhs, rhs, *args, **kwargs)
    return None
  got = jaxseg.conv_transpose(lhs, rhs, *args, **kwargs)
  assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, got.dtype, want.shape, want.dtype)
  if jnp.issubdtype(got.dtype, jnp.floating) and got.size:
    with x64():
      want64 = lax.conv_transpose(np.asarray(lhs, np.float64), np.asarray(rhs, np.float64), *args,
                                  **{**kwargs, "preferred_element_type": None})
    assert_close(got, want64)
  else:
    np.testing.assert_array_equal(got, want)
  return got


@pytest.mark.parametrize("operands,preferred", [
    (np.int8, np.float32), (np.int8, np.int32), (np.int8, jnp.bfloat16), (np.uint8, np.float32),
    (np.int8, np.uint32), (np.int32, jnp.bfloat16), (np.int32, np.float64),
    (np.float32, jnp.bfloat16), (np.float32, np.float16), (np.float32, np.int32), (np.float32, np.complex64),
    (jnp.bfloat16, np.float16), (np.float16, jnp.bfloat16), (jnp.bfloat16, np.float32), (np.float16, np.float32),
    (np.complex64, np.complex64),
], ids=str)
def test_preferred_element_type(rng, operands, preferred):
  lhs = (rng.standard_normal((2, 5, 3)) * 4).astype(operands)
  rhs = (rng.standard_normal((3, 3, 4)) * 4).astype(operands)
  with x64():
    _same_as_lax(lhs, rhs, (2,), "SAME", preferred_element_type=preferred)


@pytest.mark.parametrize("in_spatial,kernel,strides,padding", [
    ((3,), (2,), (1,), [(-1, -1)]),  # the padded input is as long as the kernel minus one: an empty output
    ((3,), (2,), (1,), [(-2, -1)]),  # shorter still, but not cropped below nothing
    ((3,), (2,), (1,), [(-3, -2)]),  # crops more than the input: lax raises
    ((2, 4), (3, 2), (2, 1), [(-2, -1), (0, 0)]),
    ((1,), (5,), (3,), [(0, 0)]),
])
def test_empty_outputs(rng, in_spatial, kernel, strides, padding):
  lhs = rng.standard_normal((1, *in_spatial, 2)).astype(np.float32)
  rhs = rng.standard_normal((*kernel, 2, 3)).astype(np.float32)
  got = _same_as_lax(lhs, rhs, strides, padding)
  if got is not None:
    grads = jax.grad(lambda x, w: jnp.sum(jaxseg.conv_transpose(x, w, strides, padding)), (0, 1))(lhs, rhs)
    assert not any(np.any(np.asarray(g)) for g in grads)


@pytest.mark.parametrize("padding", ["SAME", "VALID", "same", "valid", "Same", "SAME_LOWER", "same_lower",
                                     "bogus"])
@pytest.mark.parametrize("strides", [(1, 1), (2, 2), (1, 2)])
@pytest.mark.parametrize("consistent", [False, True])
def test_padding_strings(rng, padding, strides, consistent):
  """Only 'SAME' and 'VALID' are the transposed convolution's strings; lax hands any other string to the
  stride-1 convolution of the dilated input as its own padding type (and refuses it at other strides)."""
  lhs = rng.standard_normal((2, 5, 4, 3)).astype(np.float32)
  rhs = rng.standard_normal((3, 2, 3, 2)).astype(np.float32)
  _same_as_lax(lhs, rhs, strides, padding, use_consistent_padding=consistent)


@pytest.mark.parametrize("precision", [
    None, "highest", lax.Precision.DEFAULT, (lax.Precision.HIGHEST, lax.Precision.DEFAULT),
    lax.DotAlgorithmPreset.DEFAULT, lax.DotAlgorithmPreset.F32_F32_F32, lax.DotAlgorithmPreset.BF16_BF16_F32,
    lax.DotAlgorithmPreset.TF32_TF32_F32, "bf16_bf16_f32", "fast",
], ids=str)
def test_precision(rng, precision):
  lhs = rng.standard_normal((2, 5, 3)).astype(np.float32) + 1e-3
  rhs = rng.standard_normal((3, 3, 4)).astype(np.float32)
  _same_as_lax(lhs, rhs, (2,), "SAME", precision=precision)


def test_dot_algorithm_reaches_the_kernels(rng):
  lhs = rng.standard_normal((2, 5, 3)).astype(np.float32)
  rhs = rng.standard_normal((3, 3, 4)).astype(np.float32)
  f = lambda x, w: jaxseg.conv_transpose(x, w, (2,), "SAME", precision=lax.DotAlgorithmPreset.F32_F32_F32)
  targets, has_conv = compiled_ops(jax.grad(lambda x, w: jnp.sum(f(x, w)), (0, 1)), lhs, rhs)
  # The gradient of a sum never needs the forward's values: its custom call is dead code.
  assert targets == ALL_TARGETS - FORWARD_TARGETS and not has_conv


@pytest.mark.parametrize("kwargs,named", [
    (dict(kernel_size=(3, 3), stride=(2, 2), padding=1, output_padding=2, dilation=2), "output_padding"),
    (dict(kernel_size=(3, 3), stride=(2, 2), padding=1, output_padding=(1, 2)), "output_padding"),
    (dict(kernel_size=4, stride=0), "stride"),
    (dict(kernel_size=4, stride=2, padding=-1), "padding"),
    (dict(kernel_size=4, stride=2, output_padding=-1), "output_padding"),
    (dict(kernel_size=4, stride=2, dilation=0), "dilation"),
    (dict(kernel_size=0, stride=2), "kernel_size"),
])
def test_torch_style_checks_pytorch_rules(kwargs, named):
  """torch_style and torch_padding refuse what PyTorch's ConvTranspose refuses, naming the argument."""
  from flax import nnx
  kwargs = {"padding": 0, "output_padding": 0, "dilation": 1, **kwargs}
  with pytest.raises(ValueError, match=named):
    jaxseg.nnx.ConvTranspose.torch_style(3, 4, rngs=nnx.Rngs(0), **kwargs)
  with pytest.raises(ValueError, match=named):
    jaxseg.linen.ConvTranspose.torch_style(4, **kwargs)
  torch = pytest.importorskip("torch")
  n = 2 if isinstance(kwargs["kernel_size"], tuple) else 1
  cls = (torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d)[n - 1]
  with pytest.raises((ValueError, RuntimeError)):  # PyTorch checks some in the constructor, some when called
    cls(3, 4, **kwargs)(torch.zeros((1, 3) + (5,) * n))


def test_torch_style_accepts_the_largest_output_padding():
  from flax import nnx
  m = jaxseg.nnx.ConvTranspose.torch_style(3, 4, (3, 3), (2, 2), padding=1, output_padding=(1, 2), dilation=(1, 3),
                                           rngs=nnx.Rngs(0))
  # PyTorch: (H - 1) * s - 2 * p + d * (k - 1) + output_padding + 1 per axis.
  assert m(jnp.ones((1, 5, 5, 3))).shape == (1, 4 * 2 - 2 + 1 * 2 + 1 + 1, 4 * 2 - 2 + 3 * 2 + 2 + 1, 4)


def _typed(v, dtype, weak):
  """v as a `dtype` array, weakly typed (as a Python scalar broadcast to a shape is) when `weak`."""
  from jax._src.lax import lax as lax_internal  # jax's own tests make weak arrays this way
  return lax_internal._convert_element_type(jnp.asarray(v), np.dtype(dtype), weak_type=weak)


@pytest.mark.parametrize("weak", [(True, True), (True, False), (False, True), (False, False)], ids=str)
@pytest.mark.parametrize("dtype,preferred", [(np.float32, None), (np.float32, np.float32),
                                             (jnp.bfloat16, np.float32), (np.float32, np.float64)], ids=str)
@pytest.mark.parametrize("transpose_kernel", [False, True])
def test_weak_type_as_lax(rng, weak, dtype, preferred, transpose_kernel):
  """The result is weakly typed exactly where lax's is (both operands weak, whatever preferred_element_type),
  forward and both gradients, so `y + bfloat16_array` stays bfloat16 as it does after lax."""
  def passes(impl):
    conv = lambda x, w: impl(x, w, (2, 3), "SAME", transpose_kernel=transpose_kernel,
                             preferred_element_type=preferred)
    def run(x, w):
      y, vjp = jax.vjp(conv, x, w)
      return (y, *vjp(y))  # the result's own type as the cotangent
    return run

  with x64():
    x = _typed(rng.standard_normal((2, 5, 4, 3)), dtype, weak[0])
    w = _typed(rng.standard_normal((3, 2, 3, 3)), dtype, weak[1])
    ours = passes(jaxseg.conv_transpose)(x, w)
    theirs = jax.eval_shape(passes(lax.conv_transpose), x, w)
    # Known gap: a result wider than the operands (float32 operands, float64 result) makes lax's transposes cast
    # their operands (strong gradients), while ours cast the operands before the pass, and that cast's transpose
    # gives each gradient its operand's weak type. The forward agrees there too.
    checked = 1 if (dtype, preferred) == (np.float32, np.float64) else 3
    for name, a, b in list(zip(("forward", "input_grad", "weight_grad"), ours, theirs))[:checked]:
      assert (a.shape, a.dtype, a.weak_type) == (b.shape, b.dtype, b.weak_type), name
    assert ours[0].weak_type == all(weak)
    sixteen = jnp.ones(ours[0].shape, jnp.bfloat16)
    assert (ours[0] + sixteen).dtype == (jnp.bfloat16 if all(weak) else ours[0].dtype)
