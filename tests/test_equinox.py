"""jaxseg.equinox.ConvTranspose against equinox.nn.ConvTranspose: parameters, outputs and gradients for every
padding form and mode equinox accepts; and `import jaxseg` without equinox."""

import io
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hlo import ALL_TARGETS, FORWARD_TARGETS, compiled_ops
from conftest import x64
from tolerances import assert_close

eqx = pytest.importorskip("equinox")
import jaxseg.equinox  # noqa: E402

# (num_spatial_dims, in, out, kernel_size, keyword arguments): every padding form (int, per-axis ints,
# (low, high) pairs, 'VALID', 'SAME', 'SAME_LOWER'), output_padding, dilation, groups and both padding modes.
CASES = [
    (1, 4, 6, 5, dict(stride=3, padding=2, output_padding=1, dilation=2, groups=2)),
    (1, 3, 2, 4, dict(stride=2, padding="SAME", output_padding=1)),
    (2, 4, 6, 3, dict(stride=2, padding=(1, 0), output_padding=(1, 0), groups=2, use_bias=False)),
    (2, 3, 4, (4, 3), dict(stride=(2, 3), padding=((2, 1), (0, 3)), dilation=(1, 2))),
    (2, 3, 4, (3, 4), dict(stride=2, padding="VALID", output_padding=1)),
    (2, 6, 6, 4, dict(stride=2, padding="SAME_LOWER", groups=6)),
    (2, 3, 2, 1, dict(stride=3, padding="SAME", output_padding=2)),  # the forward padding goes negative
    (2, 4, 4, 3, dict(stride=2, padding="SAME", padding_mode="CIRCULAR", groups=2)),
    (1, 2, 3, 6, dict(stride=2, padding="SAME_LOWER", padding_mode="circular", dilation=2)),
    (3, 2, 4, (2, 3, 2), dict(stride=(2, 1, 2), padding=((0, 1), (1, 1), (1, 0)), output_padding=(1, 0, 0))),
    (3, 2, 2, 3, dict(stride=2, padding="SAME", padding_mode="CIRCULAR")),
]


def _pair(key, n, c_in, c_out, kernel_size, kw):
  return (jaxseg.equinox.ConvTranspose(n, c_in, c_out, kernel_size, **kw, key=key),
          eqx.nn.ConvTranspose(n, c_in, c_out, kernel_size, **kw, key=key))


@pytest.mark.parametrize("n,c_in,c_out,kernel_size,kw", CASES)
def test_matches_equinox(rng, n, c_in, c_out, kernel_size, kw):
  with x64():
    ours, theirs = _pair(jax.random.key(3), n, c_in, c_out, kernel_size, kw)
    assert isinstance(ours, eqx.nn.ConvTranspose)
    # The same fields and, for the same key, bitwise the same parameters.
    for field in ("num_spatial_dims", "in_channels", "out_channels", "kernel_size", "stride", "padding",
                  "output_padding", "dilation", "groups", "use_bias", "padding_mode"):
      assert getattr(ours, field) == getattr(theirs, field), field
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
      assert a.dtype == b.dtype == jnp.float64
      np.testing.assert_array_equal(a, b)
    x = jnp.asarray(rng.standard_normal((2, c_in) + (5, 4, 3)[:n]))

    y_shape = jax.eval_shape(jax.vmap(theirs), x).shape
    ct = jnp.asarray(rng.standard_normal(y_shape))

    @jax.jit  # one program per layer: the forward and the gradients of <y, ct> (the layer's leaves are arrays)
    def outputs_and_grads(layer, x):
      y, vjp = jax.vjp(lambda layer, x: jax.vmap(layer)(x), layer, x)
      g_layer, g_x = vjp(ct)
      return y, g_x, g_layer.weight, g_layer.bias

    for name, a, b in zip(("forward", "input_grad", "weight_grad", "bias_grad"), outputs_and_grads(ours, x),
                          outputs_and_grads(theirs, x)):
      if b is None:
        assert a is None
        continue
      assert a.shape == b.shape and a.dtype == b.dtype, name
      assert_close(a, b, np.float64, err_msg=name)


def test_shorthands_and_errors():
  key = jax.random.key(0)
  for n, cls in enumerate((jaxseg.equinox.ConvTranspose1d, jaxseg.equinox.ConvTranspose2d,
                           jaxseg.equinox.ConvTranspose3d), start=1):
    theirs_cls = getattr(eqx.nn, cls.__name__)
    # equinox's positional order (output_padding before padding) and defaults.
    ours, theirs = cls(4, 2, 3, 2, 1, 1, key=key), theirs_cls(4, 2, 3, 2, 1, 1, key=key)
    assert isinstance(ours, theirs_cls) and ours.num_spatial_dims == n
    assert (ours.stride, ours.padding, ours.output_padding) == (theirs.stride, theirs.padding, theirs.output_padding)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
      np.testing.assert_array_equal(a, b)
    # A layer saved from equinox's class loads into ours.
    saved = io.BytesIO()
    eqx.tree_serialise_leaves(saved, theirs)
    saved.seek(0)
    loaded = eqx.tree_deserialise_leaves(saved, cls(4, 2, 3, 2, 1, 1, key=jax.random.key(1)))
    assert type(loaded) is cls
    jax.tree.map(np.testing.assert_array_equal, loaded, ours)
    with pytest.raises(ValueError, match="rank"):
      ours(jnp.ones((1, 4) + (5,) * n))
  # equinox's constructor checks, unchanged (the shapes above, whose initialisation is compiled already).
  for mode in ("REFLECT", "REPLICATE"):
    for cls in (jaxseg.equinox.ConvTranspose2d, eqx.nn.ConvTranspose2d):
      with pytest.raises(NotImplementedError):
        cls(4, 2, 3, padding=1, padding_mode=mode, key=key)
  with pytest.raises(NotImplementedError):
    jaxseg.equinox.ConvTranspose1d(4, 2, 3, padding=1, padding_mode="CIRCULAR", key=key)
  with pytest.raises(ValueError, match="output_padding"):
    jaxseg.equinox.ConvTranspose1d(4, 2, 3, stride=2, output_padding=2, key=key)
  with pytest.raises(ValueError, match="channels"):
    jaxseg.equinox.ConvTranspose1d(4, 2, 3, key=key)(jnp.ones((3, 5)))


def test_hlo_holds_only_our_custom_calls():
  layer = jaxseg.equinox.ConvTranspose2d(8, 4, 4, stride=2, padding=1, groups=2, key=jax.random.key(0))
  x = jnp.ones((3, 8, 7, 7))
  forward = lambda layer, x: jax.vmap(layer)(x)
  grad = jax.grad(lambda layer, x: jnp.sum(forward(layer, x) ** 2), (0, 1))  # the layer's leaves are arrays
  for fn, targets in ((forward, FORWARD_TARGETS), (grad, ALL_TARGETS)):
    assert compiled_ops(fn, layer, x) == (targets, False)


@pytest.mark.cpu_only
def test_jaxseg_imports_without_equinox():
  """equinox is an optional dependency: `import jaxseg` and its flax modules work without it, and asking for
  jaxseg.equinox names the extra to install."""
  code = textwrap.dedent("""
      import sys

      class HideEquinox:
        def find_spec(self, name, path=None, target=None):
          if name == "equinox" or name.startswith("equinox."):
            raise ModuleNotFoundError(f"No module named {name!r}")

      sys.meta_path.insert(0, HideEquinox())
      import jax.numpy as jnp
      import jaxseg
      assert "equinox" not in sys.modules
      assert jaxseg.conv_transpose(jnp.ones((1, 3, 2)), jnp.ones((2, 2, 4)), (2,), "SAME").shape == (1, 6, 4)
      jaxseg.linen.ConvTranspose, jaxseg.nnx.ConvTranspose
      try:
        import jaxseg.equinox
      except ImportError as e:
        assert "pip install equinox" in str(e), e
      else:
        raise AssertionError("jaxseg.equinox imported without equinox")
      print("OK")
  """)
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       cwd=os.path.dirname(os.path.abspath(__file__)), env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 0 and "OK" in out.stdout, out.stdout + out.stderr
