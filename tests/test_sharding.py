"""Partitioning of the custom calls on 8 virtual CPU devices, in-process: conftest.py gives the CPU backend
CPU_DEVICES devices for the whole run (jax's jax_num_cpu_devices), and every other test sees one default device.
Each check runs under both mesh axis types (Explicit and Auto)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

import jaxseg
from hlo import collectives as _count_collectives, compiled_hlo
from tolerances import assert_close as close

pytestmark = [pytest.mark.cpu_only, pytest.mark.parametrize("kind", ["Explicit", "Auto"])]

def mesh(shape, names, kind):
  devices = jax.devices("cpu")
  if len(devices) < int(np.prod(shape)):
    pytest.skip(f"{len(devices)} CPU devices (jax's backend started before conftest.py set the count)")
  return jax.make_mesh(shape, names, axis_types=(getattr(AxisType, kind),) * len(shape),
                       devices=devices[:int(np.prod(shape))])


def collectives(fn, *args):
  return _count_collectives(compiled_hlo(fn, *args))


def case(rng, n_spatial):
  x = rng.standard_normal((16, *(7, 6, 5)[:n_spatial], 32)).astype(np.float32)
  w = rng.standard_normal(((4, 3, 2)[:n_spatial] + (32, 24))).astype(np.float32)
  strides = (2, 3, 2)[:n_spatial]
  f = lambda x, w: jaxseg.conv_transpose(x, w, strides, "SAME")
  return x, w, f


def test_batch_sharded_forward(rng, kind):
  for n in (1, 2, 3):
    x, w, f = case(rng, n)
    m = mesh((8,), ("data",), kind)
    xs, ws = jax.device_put(x, NamedSharding(m, P("data"))), jax.device_put(w, NamedSharding(m, P()))
    y = jax.jit(f)(xs, ws)
    close(y, f(x, w))
    assert y.sharding.spec[0] == "data" and all(s is None for s in y.sharding.spec[1:]), y.sharding
    c = collectives(f, xs, ws)
    assert c["all-gather"] == 0 and c["all-reduce"] == 0, c


def test_batch_sharded_grad(rng, kind):
  x, w, f = case(rng, 2)
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


def test_feature_sharded_kernel(rng, kind):
  x, w, f = case(rng, 2)
  m = mesh((8,), ("model",), kind)
  xs, ws = jax.device_put(x, NamedSharding(m, P())), jax.device_put(w, NamedSharding(m, P(None, None, None, "model")))
  y = jax.jit(f)(xs, ws)
  close(y, f(x, w))
  assert y.sharding.spec[-1] == "model", y.sharding
  assert collectives(f, xs, ws)["all-gather"] == 0


def test_two_axis_mesh(rng, kind):
  x, w, f = case(rng, 2)
  m = mesh((4, 2), ("data", "model"), kind)
  xs = jax.device_put(x, NamedSharding(m, P("data")))
  ws = jax.device_put(w, NamedSharding(m, P(None, None, None, "model")))
  y = jax.jit(f)(xs, ws)
  close(y, f(x, w))
  assert y.sharding.spec[0] == "data" and y.sharding.spec[-1] == "model", y.sharding
  assert collectives(f, xs, ws)["all-gather"] == 0


def test_pytorch_oriented_kernel(rng, kind):
  """transpose_kernel=True: the kernel (K.., Co, Ci) is read in place, so its Co axis is the one kept sharded."""
  x, _, _ = case(rng, 2)
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


def test_grouped_channel_sharded(rng, kind):
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


def test_shard_map(rng, kind):
  x, w, f = case(rng, 2)
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


def test_vmap_under_sharding(rng, kind):
  x, w, f = case(rng, 1)
  xb = np.stack([x, 2 * x])  # (2, 16, 7, 32)
  m = mesh((8,), ("data",), kind)
  xs = jax.device_put(xb, NamedSharding(m, P(None, "data")))
  vf = jax.vmap(f, (0, None))
  y = jax.jit(vf)(xs, jax.device_put(w, NamedSharding(m, P())))
  close(y, vf(xb, w))
