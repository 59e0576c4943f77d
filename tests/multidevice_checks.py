"""Checks on 8 virtual CPU devices, run by test_sharding.py in a subprocess (the device count has to be set
before jax starts): `python multidevice_checks.py NAME`."""

import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"

import re  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P  # noqa: E402

import jaxseg  # noqa: E402
from tolerances import assert_close as close  # noqa: E402

rng = np.random.default_rng(0)


def mesh(shape, names, kind):
  return jax.make_mesh(shape, names, axis_types=(getattr(AxisType, kind),) * len(shape))


def collectives(fn, *args):
  hlo = jax.jit(fn).lower(*args).compile().as_text()
  return {op: len(re.findall(rf"\b{op}(?:-start)?\(", hlo)) for op in ("all-gather", "all-reduce", "all-to-all")}


def case(n_spatial):
  x = rng.standard_normal((16, *(7, 6, 5)[:n_spatial], 32)).astype(np.float32)
  w = rng.standard_normal(((4, 3, 2)[:n_spatial] + (32, 24))).astype(np.float32)
  strides = (2, 3, 2)[:n_spatial]
  f = lambda x, w: jaxseg.conv_transpose(x, w, strides, "SAME")
  return x, w, f


def check_batch_sharded_forward(kind):
  for n in (1, 2, 3):
    x, w, f = case(n)
    m = mesh((8,), ("data",), kind)
    xs, ws = jax.device_put(x, NamedSharding(m, P("data"))), jax.device_put(w, NamedSharding(m, P()))
    y = jax.jit(f)(xs, ws)
    close(y, f(x, w))
    assert y.sharding.spec[0] == "data" and all(s is None for s in y.sharding.spec[1:]), y.sharding
    c = collectives(f, xs, ws)
    assert c["all-gather"] == 0 and c["all-reduce"] == 0, c


def check_batch_sharded_grad(kind):
  x, w, f = case(2)
  loss = lambda x, w: jnp.sum(jnp.sin(f(x, w)))
  m = mesh((8,), ("data",), kind)
  xs, ws = jax.device_put(x, NamedSharding(m, P("data"))), jax.device_put(w, NamedSharding(m, P()))
  g = jax.jit(jax.grad(loss, (0, 1)))(xs, ws)
  for a, b in zip(g, jax.grad(loss, (0, 1))(x, w)):
    close(a, b)
  assert g[0].sharding.spec[0] == "data"
  c = collectives(jax.grad(loss, (0, 1)), xs, ws)
  # The weight gradient's one all-reduce; no activation is gathered.
  assert c["all-gather"] == 0 and c["all-reduce"] == 1, c


def check_feature_sharded_kernel(kind):
  x, w, f = case(2)
  m = mesh((8,), ("model",), kind)
  xs, ws = jax.device_put(x, NamedSharding(m, P())), jax.device_put(w, NamedSharding(m, P(None, None, None, "model")))
  y = jax.jit(f)(xs, ws)
  close(y, f(x, w))
  assert y.sharding.spec[-1] == "model", y.sharding
  assert collectives(f, xs, ws)["all-gather"] == 0


def check_two_axis_mesh(kind):
  x, w, f = case(2)
  m = mesh((4, 2), ("data", "model"), kind)
  xs = jax.device_put(x, NamedSharding(m, P("data")))
  ws = jax.device_put(w, NamedSharding(m, P(None, None, None, "model")))
  y = jax.jit(f)(xs, ws)
  close(y, f(x, w))
  assert y.sharding.spec[0] == "data" and y.sharding.spec[-1] == "model", y.sharding
  assert collectives(f, xs, ws)["all-gather"] == 0


def check_pytorch_oriented_kernel(kind):
  """transpose_kernel=True: the kernel (K.., Co, Ci) is read in place, so its Co axis is the one kept sharded."""
  x, _, _ = case(2)
  w = rng.standard_normal((4, 3, 24, 32)).astype(np.float32)
  f = lambda x, w: jaxseg.conv_transpose(x, w, (2, 3), "SAME", transpose_kernel=True)
  loss = lambda x, w: jnp.sum(jnp.sin(f(x, w)))
  m = mesh((4, 2), ("data", "model"), kind)
  xs = jax.device_put(x, NamedSharding(m, P("data")))
  ws = jax.device_put(w, NamedSharding(m, P(None, None, "model")))
  y = jax.jit(f)(xs, ws)
  close(y, f(x, w))
  assert y.sharding.spec[0] == "data" and y.sharding.spec[-1] == "model", y.sharding
  assert collectives(f, xs, ws)["all-gather"] == 0
  g = jax.jit(jax.grad(loss, (0, 1)))(xs, ws)
  for a, b in zip(g, jax.grad(loss, (0, 1))(x, w)):
    close(a, b)


def check_grouped_channel_sharded(kind):
  """Groups split the features into the group axis, which every pass keeps: with the input's features and the
  kernel's grouped axis sharded alike, forward and both gradients run shard-local, in both orientations."""
  x = rng.standard_normal((4, 7, 6, 32)).astype(np.float32)
  m = mesh((8,), ("model",), kind)
  channels = NamedSharding(m, P(None, None, None, "model"))
  for transpose_kernel, w_shape in ((False, (4, 3, 4, 48)), (True, (4, 3, 6, 32))):  # G = 8
    w = rng.standard_normal(w_shape).astype(np.float32)
    f = lambda x, w: jaxseg.conv_transpose(x, w, (2, 3), "SAME", transpose_kernel=transpose_kernel,
                                           feature_group_count=8)
    loss = lambda x, w: jnp.sum(jnp.sin(f(x, w)))
    xs, ws = jax.device_put(x, channels), jax.device_put(w, channels)
    y = jax.jit(f)(xs, ws)
    close(y, f(x, w))
    assert y.sharding.spec[-1] == "model" and all(s is None for s in y.sharding.spec[:-1]), y.sharding
    g = jax.jit(jax.grad(loss, (0, 1)))(xs, ws)
    for a, b in zip(g, jax.grad(loss, (0, 1))(x, w)):
      close(a, b)
      assert a.sharding.spec[-1] == "model", a.sharding
    for fn in (f, jax.grad(loss, (0, 1))):
      c = collectives(fn, xs, ws)
      assert not any(c.values()), (transpose_kernel, c)


def check_shard_map(kind):
  x, w, f = case(2)
  loss = lambda x, w: jnp.sum(jnp.sin(f(x, w)))
  m = mesh((8,), ("data",), kind)
  xs, ws = jax.device_put(x, NamedSharding(m, P("data"))), jax.device_put(w, NamedSharding(m, P()))
  sm = jax.jit(jax.shard_map(f, mesh=m, in_specs=(P("data"), P()), out_specs=P("data")))
  close(sm(xs, ws), f(x, w))
  smg = jax.jit(jax.shard_map(jax.grad(loss, (0, 1)), mesh=m, in_specs=(P("data"), P()),
                              out_specs=(P("data"), P())))
  gx, gw = smg(xs, ws)
  want = jax.grad(loss, (0, 1))(x, w)
  close(gx, want[0])
  close(gw, want[1])  # the invariant kernel's cotangent is summed over the shards


def check_vmap_under_sharding(kind):
  x, w, f = case(1)
  xb = np.stack([x, 2 * x])  # (2, 16, 7, 32)
  m = mesh((8,), ("data",), kind)
  xs = jax.device_put(xb, NamedSharding(m, P(None, "data")))
  vf = jax.vmap(f, (0, None))
  y = jax.jit(vf)(xs, jax.device_put(w, NamedSharding(m, P())))
  close(y, vf(xb, w))


CHECKS = {name[len("check_"):]: fn for name, fn in globals().items() if name.startswith("check_")}

if __name__ == "__main__":
  name, kind = sys.argv[1], sys.argv[2]
  CHECKS[name](kind)
  print("OK", name, kind)
