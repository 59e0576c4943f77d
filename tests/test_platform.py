"""The run's platform (tests/conftest.py): one platform per run, chosen by --platform or JAX_PLATFORMS; its first
device is the default for everything a test computes, at full float32 matmul precision; the CPU backend has
CPU_DEVICES devices for the multi-device tests."""

import jax
import jax.numpy as jnp

from conftest import CPU_DEVICES


def test_default_device_is_the_run_platforms(platform):
  device = jax.devices(platform)[0]
  x = jnp.arange(3.0)
  assert x.devices() == {device}
  assert jax.jit(lambda a: a + 1)(x).devices() == {device}
  assert jax.config.jax_default_matmul_precision == "highest"


def test_cpu_backend_has_the_devices_for_multi_device_tests():
  assert len(jax.devices("cpu")) == CPU_DEVICES
