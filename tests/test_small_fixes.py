"""Small things users hit (issue 26): float8 operands go to XLA's convolution; torch_style's errors name `groups`;
help() and IDEs see the layers' real constructor arguments; the package is typed."""

import importlib.resources
import inspect
import re

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxseg
from jaxseg._passes import FORWARD


def _hlo(f, *args):
  text = jax.jit(f).lower(*args).compile().as_text()
  return set(re.findall(r'custom_call_target="(jaxseg[^"]+)"', text)), bool(re.search(r"\bconvolution\(", text))


@pytest.mark.cpu_only
@pytest.mark.parametrize("dtype", ["float8_e4m3fn", "float8_e5m2"])
def test_float8_operands_go_to_xla(dtype, rng):
  """The docs' dtype table: float8 operands are computed by XLA's convolution, forward and gradient, with lax's
  result (the same function of the same float8 values)."""
  dtype = jnp.dtype(dtype)
  x = jnp.asarray(rng.standard_normal((2, 5, 4, 3)), dtype)
  w = jnp.asarray(rng.standard_normal((3, 2, 3, 4)), dtype)
  f = lambda x, w: jaxseg.conv_transpose(x, w, (2, 3), "SAME")
  targets, conv = _hlo(f, x, w)
  assert not targets and conv, (targets, conv)
  ref = jax.lax.conv_transpose(x, w, (2, 3), "SAME")
  y = f(x, w)
  assert y.dtype == ref.dtype == dtype and y.shape == ref.shape
  np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(ref, np.float32))
  loss = lambda x, w: jnp.sum(f(x, w).astype(jnp.float32))
  targets, conv = _hlo(jax.grad(loss, (0, 1)), x, w)
  assert not targets and conv, (targets, conv)
  # The positive control: float32 operands of the same shapes run on jaxseg's forward.
  assert _hlo(f, x.astype(jnp.float32), w.astype(jnp.float32)) == ({FORWARD.target}, False)


@pytest.mark.parametrize("groups,error,message", [
    (0, ValueError, "groups must be >= 1"),
    (-2, ValueError, "groups must be >= 1"),
    (1.5, TypeError, "groups must be an integer"),
    (3, ValueError, r"groups=3 must divide"),
])
def test_torch_style_errors_name_groups(groups, error, message):
  with pytest.raises(error, match=message) as e:
    jaxseg.nnx.ConvTranspose.torch_style(8, 4, (4, 4), 2, 1, groups=groups, rngs=nnx.Rngs(0))
  assert "feature_group_count" not in str(e.value)
  with pytest.raises(error, match=message) as e:
    jaxseg.linen.ConvTranspose.torch_style(4, (4, 4), 2, 1, groups=groups)
  assert "feature_group_count" not in str(e.value)


def test_torch_style_groups_still_work():
  layer = jaxseg.nnx.ConvTranspose.torch_style(8, 4, (4, 4), 2, 1, groups=2, rngs=nnx.Rngs(0))
  assert layer.kernel[...].shape == (4, 4, 2, 8) and layer(jnp.ones((1, 3, 3, 8))).shape == (1, 6, 6, 4)


def _params(sig):
  return [(p.name, p.kind, p.default) for p in sig.parameters.values()]


def test_nnx_signature_is_flax_and_ours():
  ours = inspect.signature(jaxseg.nnx.ConvTranspose)
  flax_init = inspect.signature(nnx.ConvTranspose.__init__)
  flax_params = _params(flax_init)[1:]  # without self
  assert [p for p in _params(ours) if p[0] != "feature_group_count"] == flax_params
  extra = ours.parameters["feature_group_count"]
  assert extra.kind is inspect.Parameter.KEYWORD_ONLY and extra.default == 1
  assert "(*args, **kwargs)" not in str(ours)
  assert "feature_group_count" in inspect.signature(jaxseg.nnx.ConvTranspose.__init__).parameters
  # help() shows it.
  import pydoc
  text = pydoc.render_doc(jaxseg.nnx.ConvTranspose, renderer=pydoc.plaintext)
  assert "kernel_init" in text and "feature_group_count" in text
  # An instance's signature is still its call's.
  layer = jaxseg.nnx.ConvTranspose(4, 2, (3,), rngs=nnx.Rngs(0))
  assert list(inspect.signature(layer).parameters) == ["inputs"]


def test_linen_signature_is_flax_and_ours():
  ours = inspect.signature(jaxseg.linen.ConvTranspose)
  theirs = inspect.signature(fnn.ConvTranspose)
  assert [p for p in _params(ours) if p[0] != "feature_group_count"] == _params(theirs)
  assert ours.parameters["feature_group_count"].default == 1


def test_equinox_signatures_are_equinox():
  eqx = pytest.importorskip("equinox")
  import jaxseg.equinox as jeqx
  for ours, theirs in ((jeqx.ConvTranspose, eqx.nn.ConvTranspose), (jeqx.ConvTranspose2d, eqx.nn.ConvTranspose2d)):
    sig = inspect.signature(ours)
    assert _params(sig) == _params(inspect.signature(theirs.__init__))[1:], sig
    assert "in_channels" in sig.parameters and "key" in sig.parameters


def test_package_is_typed():
  assert importlib.resources.files("jaxseg").joinpath("py.typed").is_file()
