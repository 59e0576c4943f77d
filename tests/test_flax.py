"""jaxseg.linen / jaxseg.nnx ConvTranspose against flax's own classes."""

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxseg
from tolerances import assert_close

CONFIGS = [
    dict(kernel_size=(4, 4), strides=(2, 2), padding="SAME"),
    dict(kernel_size=(3, 3), strides=2, padding="VALID", transpose_kernel=True),
    dict(kernel_size=(3, 3), strides=(2, 1), padding=1, use_bias=False),
    dict(kernel_size=(4, 3), strides=(2, 2), padding=[(1, 2), 0], kernel_dilation=(1, 2)),
    dict(kernel_size=(6, 6), strides=(2, 2), padding="CIRCULAR", transpose_kernel=True),
    dict(kernel_size=(5, 3), strides=(3, 2), padding="CIRCULAR"),
    dict(kernel_size=3, strides=None, padding="SAME"),  # 1-D
    dict(kernel_size=(2, 2, 2), strides=(2, 2, 2), padding="VALID"),
    dict(kernel_size=(3, 3), strides=(2, 2), padding="SAME", dtype=jnp.bfloat16),
    dict(kernel_size=(3, 3), strides=(2, 2), padding="SAME", param_dtype=jnp.bfloat16,
         preferred_element_type=jnp.float32),
]


def _input(rng, cfg, batch_shape=(2,)):
  n = 1 if isinstance(cfg["kernel_size"], int) else len(cfg["kernel_size"])
  return jnp.asarray(rng.standard_normal(batch_shape + (7, 6, 5)[:n] + (3,)), jnp.float32)


def _dtype(cfg):
  """The dtype whose tolerance applies: bfloat16 where the layer computes or keeps its parameters in it."""
  return jnp.bfloat16 if jnp.bfloat16 in (cfg.get("dtype"), cfg.get("param_dtype")) else np.float32


@pytest.mark.parametrize("cfg", CONFIGS)
def test_linen_matches_flax(rng, cfg):
  x = _input(rng, cfg)
  ours, theirs = jaxseg.linen.ConvTranspose(features=4, **cfg), fnn.ConvTranspose(features=4, **cfg)
  key = jax.random.key(7)
  p_ours, p_theirs = ours.init(key, x), theirs.init(key, x)
  # Same parameter names, shapes and values for the same key.
  jax.tree.map(np.testing.assert_array_equal, p_ours, p_theirs)
  # A checkpoint of flax's model runs in ours with the same result.
  y_ours, y_theirs = ours.apply(p_theirs, x), theirs.apply(p_theirs, x)
  assert y_ours.shape == y_theirs.shape and y_ours.dtype == y_theirs.dtype
  assert_close(y_ours, y_theirs, _dtype(cfg))
  # Gradients with respect to parameters and input.
  loss = lambda m: (lambda p, x: jnp.sum(jnp.sin(m.apply(p, x).astype(jnp.float32))))
  g_ours = jax.jit(jax.grad(loss(ours), (0, 1)))(p_theirs, x)
  g_theirs = jax.grad(loss(theirs), (0, 1))(p_theirs, x)
  for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_theirs)):
    assert_close(a, b, _dtype(cfg))


@pytest.mark.parametrize("cfg", CONFIGS)
def test_nnx_matches_flax(rng, cfg):
  x = _input(rng, cfg)
  kw = dict(cfg)
  ks, strides = kw.pop("kernel_size"), kw.pop("strides")
  ours = jaxseg.nnx.ConvTranspose(3, 4, ks, strides, rngs=nnx.Rngs(3), **kw)
  theirs = nnx.ConvTranspose(3, 4, ks, strides, rngs=nnx.Rngs(3), **kw)
  s_ours, s_theirs = nnx.state(ours, nnx.Param), nnx.state(theirs, nnx.Param)
  jax.tree.map(np.testing.assert_array_equal, s_ours, s_theirs)
  y_ours, y_theirs = ours(x), theirs(x)
  assert y_ours.shape == y_theirs.shape and y_ours.dtype == y_theirs.dtype
  assert_close(y_ours, y_theirs, _dtype(cfg))
  grad = lambda m: nnx.grad(lambda m, x: jnp.sum(jnp.sin(m(x).astype(jnp.float32))))(m, x)
  for a, b in zip(jax.tree.leaves(grad(ours)), jax.tree.leaves(grad(theirs))):
    assert_close(a, b, _dtype(cfg))


@pytest.mark.parametrize("batch_shape", [(), (2,), (2, 3)])
def test_any_number_of_batch_axes(rng, batch_shape):
  cfg = dict(kernel_size=(3, 3), strides=(2, 2))
  x = _input(rng, cfg, batch_shape)
  ours, theirs = jaxseg.linen.ConvTranspose(4, **cfg), fnn.ConvTranspose(4, **cfg)
  p = theirs.init(jax.random.key(0), x)
  assert_close(ours.apply(p, x), theirs.apply(p, x))


def test_mask(rng):
  mask = jnp.asarray(rng.integers(0, 2, (3, 3, 3, 4)), jnp.float32)
  x = _input(rng, dict(kernel_size=(3, 3)))
  ours = jaxseg.linen.ConvTranspose(4, (3, 3), (2, 2), mask=mask)
  theirs = fnn.ConvTranspose(4, (3, 3), (2, 2), mask=mask)
  p = theirs.init(jax.random.key(0), x)
  assert_close(ours.apply(p, x), theirs.apply(p, x))
  with pytest.raises(ValueError, match="mask"):
    jaxseg.linen.ConvTranspose(4, (3, 3), mask=mask[..., :2]).init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="mask"):
    jaxseg.nnx.ConvTranspose(3, 4, (3, 3), mask=mask[..., :2], rngs=nnx.Rngs(0))(x)


def test_torch_style_matches_torch(rng):
  torch = pytest.importorskip("torch")
  layer = torch.nn.ConvTranspose2d(3, 5, 3, stride=2, padding=1, output_padding=1).double()
  x = rng.standard_normal((2, 3, 6, 7))
  want = layer(torch.from_numpy(x)).detach().numpy()
  kernel = np.transpose(layer.weight.detach().numpy(), (2, 3, 1, 0)).astype(np.float32)
  bias = layer.bias.detach().numpy().astype(np.float32)
  x_last = jnp.asarray(np.moveaxis(x, 1, -1), jnp.float32)
  m = jaxseg.linen.ConvTranspose.torch_style(5, (3, 3), stride=2, padding=1, output_padding=1)
  got = m.apply({"params": {"kernel": kernel, "bias": bias}}, x_last)
  assert_close(np.moveaxis(np.asarray(got), -1, 1), want)
  mn = jaxseg.nnx.ConvTranspose.torch_style(3, 5, (3, 3), stride=2, padding=1, output_padding=1, rngs=nnx.Rngs(0))
  mn.kernel[...] = kernel
  mn.bias[...] = bias
  assert_close(np.moveaxis(np.asarray(mn(x_last)), -1, 1), want)


def test_torch_style_shapes():
  m = jaxseg.nnx.ConvTranspose.torch_style(128, 64, 4, stride=2, padding=1, rngs=nnx.Rngs(0))
  assert m.kernel.shape == (4, 64, 128)
  assert m(jnp.ones((2, 7, 128))).shape == (2, 14, 64)
