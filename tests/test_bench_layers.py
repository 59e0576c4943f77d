"""The benchmark suite (jaxseg/bench/layers.json): every layer passes the loader's checks, its jaxseg and XLA
implementations agree on the full-size result's shape, and a shrunken copy of it (same kernel, stride, padding,
groups structure) runs one step of every pass on jaxseg's kernels with XLA's values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.bench import cli
from conftest import x64
from tolerances import assert_close

SUITE = cli.load_layers(None)


def _shrunk(layer):
  """The layer with batch 1, at most 3 channels a group and 4 groups, and an input of at most 9 per axis (at
  least the kernel's span over the stride, so PyTorch-style padding larger than the kernel still leaves outputs)."""
  g = layer["groups"]
  g2 = min(g, 4)
  ci, co = min(layer["c_in"] // g, 3), min(layer["c_out"] // g, 3)
  small = dict(layer, N=1, c_in=g2 * ci, c_out=g2 * co, groups=g2)
  small["in"] = [min(h, max(9, 2 * p // s + 3)) for h, s, p in zip(layer["in"], layer["stride"], layer["padding"])]
  return small


@pytest.mark.cpu_only
@pytest.mark.parametrize("layer", SUITE, ids=[layer["name"] for layer in SUITE])
def test_suite_layer_builds_and_runs(rng, layer):
  fns = cli._jax_fns(layer, True)
  x = jax.ShapeDtypeStruct((layer["N"], *layer["in"], layer["c_in"]), jnp.float32)
  w = jax.ShapeDtypeStruct(cli.kernel_shape(layer, True), jnp.float32)
  full = jax.eval_shape(fns["jaxseg"], x, w)
  assert full == jax.eval_shape(fns["xla"], x, w) and all(d > 0 for d in full.shape)

  small = _shrunk(layer)
  fns = cli._jax_fns(small, True)
  x = jnp.asarray(rng.standard_normal((1, *small["in"], small["c_in"])), jnp.float32)
  w = jnp.asarray(rng.standard_normal(cli.kernel_shape(small, True)), jnp.float32)
  ct = jnp.asarray(rng.standard_normal(jax.eval_shape(fns["xla"], x, w).shape), jnp.float32)
  for which in ("forward", "input_grad", "weight_grad"):
    got = jax.jit(cli._pass_fn(fns["jaxseg"], which))(x, w, ct)
    with x64():
      want = cli._pass_fn(fns["xla"], which)(*(np.asarray(v, np.float64) for v in (x, w, ct)))
    assert_close(got, want, jnp.float32, err_msg=f"{layer['name']} {which}")
