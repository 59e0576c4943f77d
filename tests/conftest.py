import contextlib
import zlib

import jax
import numpy as np
import pytest


def pytest_configure(config):
  config.addinivalue_line("markers", "cpu_only: runs on the CPU only (its own subprocesses, CPU-specific builds)")


@pytest.fixture(autouse=True, params=["cpu", "gpu"])
def platform(request):
  """Every test runs on each platform present; GPU variants are skipped without a GPU. On the GPU, XLA's own
  convolutions (the references) run in full float32 rather than TF32."""
  if request.param == "gpu" and request.node.get_closest_marker("cpu_only"):
    pytest.skip("CPU-only test")
  try:
    device = jax.devices(request.param)[0]
  except RuntimeError:
    pytest.skip(f"no {request.param} device")
  kernels = contextlib.nullcontext()
  if request.param == "gpu":  # the tests check jaxseg's CUDA kernels there, which are opt-in (docs/gpu.md)
    from gpu_switch_state import restored
    kernels = restored(True)
  with jax.default_device(device), jax.default_matmul_precision("highest"), kernels:
    yield request.param


@contextlib.contextmanager
def x64():
  """float64 enabled for the block (jax.enable_x64 in jax >= 0.10)."""
  with jax.enable_x64(True):
    yield


@pytest.fixture
def rng(request):
  # A fresh seed per test (from its name), so inputs differ across tests but runs are reproducible.
  return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
