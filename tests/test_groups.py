"""Grouped transposed convolution (`feature_group_count`): against PyTorch's `ConvTranspose(groups=G)` in its
orientation and against `lax.conv_general_dilated(..., feature_group_count=G)` in lax's, forward and both
gradients, under vmap, in every dtype, and compiled to our custom calls alone."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

import jaxseg
from conftest import x64
from hlo import ALL_TARGETS, FORWARD_TARGETS, compiled_ops
from reference import DEFAULT_DIMENSION_NUMBERS, explicit_padding
from tolerances import assert_close


def lax_grouped(lhs, rhs, strides, pads, *, rhs_dilation=None, dimension_numbers=None, feature_group_count,
                **kw):
  """What conv_transpose with groups and transpose_kernel=False means: lax's grouped convolution with lhs
  dilation."""
  n = lhs.ndim - 2
  dimension_numbers = dimension_numbers or DEFAULT_DIMENSION_NUMBERS[n]
  return lax.conv_general_dilated(lhs, rhs, (1,) * n, pads, lhs_dilation=strides, rhs_dilation=rhs_dilation,
                                  dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
                                  **kw)


def _vjp_all(f, *args):
  """f(*args) and its gradients with respect to every argument for a random cotangent."""
  y, vjp = jax.vjp(f, *args)
  ct = jnp.asarray(np.random.default_rng(1).standard_normal(y.shape), y.dtype)
  return (y, *vjp(ct)), ct


# --------------------------------------------------------------------------------------------------------------
# PyTorch's orientation (transpose_kernel=True), float64, forward and both gradients.

TORCH_CASES = [
    # n, c_in, c_out, groups, kernel, stride, padding, output_padding, dilation
    (1, 6, 4, 2, 5, 3, 2, 1, 2),
    (2, 6, 9, 3, (3, 4), (2, 3), (1, 2), (1, 0), (2, 1)),
    (2, 8, 8, 8, 4, 2, 1, 0, 1),  # depthwise, as in CenterNet's upsampling
    (3, 4, 6, 2, (3, 2, 2), (2, 2, 1), (1, 0, 0), (1, 0, 0), (1, 1, 2)),
]


@pytest.mark.parametrize("layout", ["channels_last", "torch"])
@pytest.mark.parametrize("n,c_in,c_out,groups,kernel,stride,padding,output_padding,dilation", TORCH_CASES)
def test_matches_torch_float64(rng, layout, n, c_in, c_out, groups, kernel, stride, padding, output_padding,
                               dilation):
  torch = pytest.importorskip("torch")
  cls = [torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d][n - 1]
  layer = cls(c_in, c_out, kernel, stride, padding, output_padding, groups=groups, bias=False,
              dilation=dilation).double()
  weight = layer.weight.detach().numpy()  # (C_in, C_out / G, k...)
  x = rng.standard_normal((2, c_in) + (5, 4, 3)[:n])
  xt = torch.from_numpy(x).requires_grad_(True)
  yt = layer(xt)
  ct = rng.standard_normal(tuple(yt.shape))
  yt.backward(torch.from_numpy(ct))
  want = (yt.detach().numpy(), xt.grad.numpy(), layer.weight.grad.numpy())

  ks = layer.kernel_size
  kw = dict(strides=layer.stride, padding=jaxseg.torch_padding(ks, padding, output_padding, dilation),
            rhs_dilation=layer.dilation, transpose_kernel=True, feature_group_count=groups)
  spatial = tuple(range(2, 2 + n))
  if layout == "torch":
    # NCHW / OIHW: PyTorch's weight is read as it is (its 'O' axis holds the C_in that groups split).
    spec = "HWD"[:n]
    kw["dimension_numbers"] = (f"NC{spec}", f"OI{spec}", f"NC{spec}")
    to_ours = from_ours = lambda v: v
    w_to_ours = w_from_ours = lambda w: w
  else:
    to_ours, from_ours = (lambda v: np.moveaxis(v, 1, -1)), (lambda v: np.moveaxis(v, -1, 1))
    w_to_ours = lambda w: np.transpose(w, spatial + (1, 0))  # (k..., C_out / G, C_in)
    w_from_ours = lambda w: np.transpose(w, (n + 1, n) + tuple(range(n)))
  with x64():
    f = jax.jit(lambda x, w: jaxseg.conv_transpose(x, w, **kw))
    y, vjp = jax.vjp(f, to_ours(x), w_to_ours(weight))
    gx, gw = vjp(jnp.asarray(to_ours(ct)))
    got = (from_ours(y), from_ours(gx), w_from_ours(gw))
    for name, a, b in zip(("forward", "input_grad", "weight_grad"), got, want):
      assert_close(a, b, np.float64, err_msg=name)


# --------------------------------------------------------------------------------------------------------------
# lax's orientation (transpose_kernel=False): the grouped lax.conv_general_dilated, float64.

LAX_CASES = [
    # lhs shape, rhs shape, strides, padding, groups, kwargs
    ((2, 7, 6), (4, 3, 8), (3,), [(2, 1)], 2, {"rhs_dilation": (2,)}),
    ((2, 5, 4, 6), (3, 4, 2, 6), (2, 2), "SAME", 3, {}),
    ((1, 4, 5, 4), (3, 3, 1, 4), (2, 3), "VALID", 4, {"rhs_dilation": (1, 2)}),
    ((2, 4, 3, 6), (2, 3, 3, 4), (2, 1), [(1, 2), (-1, 1)], 2, {}),
    ((2, 6, 5, 4), (8, 3, 3, 2), (2, 2), [(1, 1), (2, 0)], 2,
     {"dimension_numbers": ("NCHW", "OIHW", "NCHW")}),
    ((2, 3, 4, 2, 4), (2, 2, 3, 2, 6), (2, 2, 1), [(1, 1), (0, 1), (2, 2)], 2, {}),
]


def _explicit(padding, rhs, strides, kw):
  """'SAME'/'VALID' as the explicit pads conv_transpose reads them (jax.lax.conv_transpose's meaning)."""
  dn = lax.conv_dimension_numbers((1,) * rhs.ndim, rhs.shape, kw.get("dimension_numbers") or
                                  DEFAULT_DIMENSION_NUMBERS[rhs.ndim - 2])
  return explicit_padding(padding, [rhs.shape[a] for a in dn.rhs_spec[2:]], strides, kw.get("rhs_dilation"))


@pytest.mark.parametrize("lhs_shape,rhs_shape,strides,padding,groups,kw", LAX_CASES)
def test_matches_conv_general_dilated_float64(rng, lhs_shape, rhs_shape, strides, padding, groups, kw):
  with x64():
    x, w = (jnp.asarray(rng.standard_normal(s)) for s in (lhs_shape, rhs_shape))
    ours, ct = _vjp_all(jax.jit(lambda x, w: jaxseg.conv_transpose(x, w, strides, padding,
                                                                    feature_group_count=groups, **kw)), x, w)
    pads = _explicit(padding, w, strides, kw)
    y, vjp = jax.vjp(lambda x, w: lax_grouped(x, w, strides, pads, feature_group_count=groups, **kw), x, w)
    for name, a, b in zip(("forward", "input_grad", "weight_grad"), ours, (y, *vjp(ct))):
      assert a.shape == b.shape and a.dtype == b.dtype, name
      assert_close(a, b, np.float64, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, jnp.bfloat16, np.float16])
def test_every_dtype(rng, dtype):
  x = rng.standard_normal((2, 5, 4, 6)).astype(np.float32)
  w = rng.standard_normal((4, 3, 2, 9)).astype(np.float32)
  f = lambda x, w: jaxseg.conv_transpose(x, w, (2, 2), "SAME", feature_group_count=3)
  got, ct = _vjp_all(f, jnp.asarray(x, dtype), jnp.asarray(w, dtype))
  with x64():
    y, vjp = jax.vjp(lambda x, w: lax_grouped(x, w, (2, 2), _explicit("SAME", w, (2, 2), {}),
                                              feature_group_count=3), x.astype(np.float64), w.astype(np.float64))
    want = (y, *vjp(np.asarray(ct, np.float64)))
  for name, a, b in zip(("forward", "input_grad", "weight_grad"), got, want):
    assert a.dtype == dtype, name
    assert_close(a, b, dtype, err_msg=name)


def test_integer_operands_fall_back_to_lax(rng):
  """Integer operands go to XLA's grouped convolution, in both orientations (the kernel regrouped for
  transpose_kernel)."""
  x = rng.integers(-3, 4, (2, 5, 4, 6)).astype(np.int32)
  for transpose_kernel, w_shape in ((False, (3, 2, 3, 4)), (True, (3, 2, 2, 6))):
    w = rng.integers(-3, 4, w_shape).astype(np.int32)
    kw = dict(transpose_kernel=transpose_kernel, feature_group_count=2)
    got = jaxseg.conv_transpose(x, w, (2, 2), [(1, 2), (0, 1)], **kw)
    want = jaxseg.conv_transpose(x.astype(np.float32), w.astype(np.float32), (2, 2), [(1, 2), (0, 1)], **kw)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, np.asarray(want).round().astype(np.int32))


# --------------------------------------------------------------------------------------------------------------
# vmap, and the compiled program.


@pytest.mark.parametrize("transpose_kernel", [False, True])
@pytest.mark.parametrize("in_axes", [(0, None), (None, 0), (0, 0), (2, 1)])
def test_vmap(rng, in_axes, transpose_kernel):
  """vmap folds into the group axis (both operands mapped) or next to it; grouping and vmap compose."""
  b, groups = 3, 2
  x_shape = [2, 5, 4, 6]
  w_shape = [3, 2, 4, 6] if transpose_kernel else [3, 2, 3, 8]  # C_out / G, C_in, or C_in / G, C_out
  if in_axes[0] is not None:
    x_shape.insert(in_axes[0], b)
  if in_axes[1] is not None:
    w_shape.insert(in_axes[1], b)
  x, w = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in (x_shape, w_shape))
  kw = dict(strides=(2, 3), padding=[(1, 2), (0, 1)], transpose_kernel=transpose_kernel,
            feature_group_count=groups)
  loss = lambda x, w: jnp.sum(jnp.sin(jaxseg.conv_transpose(x, w, **kw)))
  got = jax.jit(jax.vmap(lambda x, w: (jaxseg.conv_transpose(x, w, **kw), *jax.grad(loss, (0, 1))(x, w)),
                         in_axes))(x, w)
  # Reference: the same function applied to each example in turn.
  for i in range(b):
    xi = x if in_axes[0] is None else jnp.take(x, i, in_axes[0])
    wi = w if in_axes[1] is None else jnp.take(w, i, in_axes[1])
    want = (jaxseg.conv_transpose(xi, wi, **kw), *jax.grad(loss, (0, 1))(xi, wi))
    for a, c in zip(got, want):
      assert_close(a[i], c)


@pytest.mark.parametrize("transpose_kernel", [False, True])
def test_hlo_holds_only_our_custom_calls(rng, transpose_kernel):
  x = jnp.asarray(rng.standard_normal((4, 7, 7, 16)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((4, 4, 2, 16)), jnp.float32)  # C_out / G or C_in / G = 2, G = 8
  fwd = lambda x, w: jaxseg.conv_transpose(x, w, (2, 2), "SAME", transpose_kernel=transpose_kernel,
                                           feature_group_count=8)
  targets, has_conv = compiled_ops(fwd, x, w)
  assert targets == FORWARD_TARGETS and not has_conv
  targets, has_conv = compiled_ops(jax.grad(lambda x, w: jnp.sum(fwd(x, w) ** 2), (0, 1)), x, w)
  assert targets == ALL_TARGETS and not has_conv


# --------------------------------------------------------------------------------------------------------------
# The flax modules.


def test_linen_and_nnx_grouped(rng):
  x = jnp.asarray(rng.standard_normal((2, 5, 4, 6)), jnp.float32)
  cfg = dict(kernel_size=(3, 3), strides=(2, 2), padding="SAME")
  linen = jaxseg.linen.ConvTranspose(9, feature_group_count=3, **cfg)
  params = linen.init(jax.random.key(0), x)
  kernel, bias = params["params"]["kernel"], params["params"]["bias"]
  assert kernel.shape == (3, 3, 2, 9)
  want = lax_grouped(x, kernel, (2, 2), _explicit("SAME", kernel, (2, 2), {}), feature_group_count=3) + bias
  assert_close(jax.jit(linen.apply)(params, x), want)

  ks, strides = cfg.pop("kernel_size"), cfg.pop("strides")
  layer = jaxseg.nnx.ConvTranspose(6, 9, ks, strides, feature_group_count=3, rngs=nnx.Rngs(0), **cfg)
  assert layer.kernel.shape == layer.kernel_shape == (3, 3, 2, 9)
  layer.kernel[...], layer.bias[...] = kernel, bias
  assert_close(nnx.jit(lambda layer, x: layer(x))(layer, x), want)
  # PyTorch's orientation: (k..., out / G, in).
  assert jaxseg.nnx.ConvTranspose(6, 9, ks, strides, feature_group_count=3, transpose_kernel=True,
                                  rngs=nnx.Rngs(0)).kernel.shape == (3, 3, 3, 6)
  for bad, exc in ((4, ValueError), (0, ValueError), (1.0, TypeError)):
    with pytest.raises(exc, match="feature_group_count"):
      jaxseg.nnx.ConvTranspose(6, 9, ks, strides, feature_group_count=bad, rngs=nnx.Rngs(0))
    with pytest.raises(exc, match="feature_group_count"):
      jaxseg.linen.ConvTranspose(9, ks, strides, feature_group_count=bad).init(jax.random.key(0), x)


def test_torch_style_groups_match_torch(rng):
  torch = pytest.importorskip("torch")
  layer = torch.nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1, groups=2).double()
  x = rng.standard_normal((2, 6, 5, 4))
  want = layer(torch.from_numpy(x)).detach().numpy()
  kernel = np.transpose(layer.weight.detach().numpy(), (2, 3, 1, 0)).astype(np.float32)  # (3, 3, 2, 6)
  bias = layer.bias.detach().numpy().astype(np.float32)
  x_last = jnp.asarray(np.moveaxis(x, 1, -1), jnp.float32)
  m = jaxseg.linen.ConvTranspose.torch_style(4, (3, 3), stride=2, padding=1, output_padding=1, groups=2)
  assert jax.eval_shape(m.init, jax.random.key(0), x_last)["params"]["kernel"].shape == kernel.shape
  got = m.apply({"params": {"kernel": kernel, "bias": bias}}, x_last)
  assert_close(np.moveaxis(np.asarray(got), -1, 1), want, np.float32)
  mn = jaxseg.nnx.ConvTranspose.torch_style(6, 4, (3, 3), stride=2, padding=1, output_padding=1, groups=2,
                                            rngs=nnx.Rngs(0))
  assert mn.kernel.shape == kernel.shape
  mn.kernel[...], mn.bias[...] = kernel, bias
  assert_close(np.moveaxis(np.asarray(mn(x_last)), -1, 1), want, np.float32)
