"""The run's platform, chosen once per run as jax's own test suite does: `--platform=cpu|gpu`, else the first entry of
JAX_PLATFORMS (jax's variable; 'cuda' and 'rocm' mean gpu), else jax's default backend. The whole run then uses that
platform's first device as the default device and full-float32 matmul precision (so XLA's own convolutions, the
references, are not TF32 on a GPU). Tests marked `cpu_only` skip on a GPU run.

The CPU backend has CPU_DEVICES virtual devices for the whole run (jax's `jax_num_cpu_devices`, set here before any
backend starts), so the multi-device tests run in-process; every other test sees one default device."""

import contextlib
import os
import zlib

import jax
import numpy as np
import pytest

CPU_DEVICES = 8
_GPU_NAMES = {"gpu", "cuda", "rocm"}


def pytest_addoption(parser):
  parser.addoption("--platform", choices=["cpu", "gpu"], default=None,
                   help="the platform this run tests (default: the first entry of JAX_PLATFORMS, else jax's default "
                        "backend); cpu_only tests skip on a gpu run")


def _run_platform(config):
  chosen = config.getoption("--platform")
  if chosen is None and os.environ.get("JAX_PLATFORMS"):
    first = os.environ["JAX_PLATFORMS"].split(",")[0].strip().lower()
    chosen = "gpu" if first in _GPU_NAMES else first
  if chosen is None:
    chosen = "gpu" if jax.default_backend() in _GPU_NAMES else jax.default_backend()
  return chosen


def pytest_configure(config):
  config.addinivalue_line("markers", "cpu_only: runs on the CPU only (skipped on a GPU run)")
  # Before anything asks jax for a backend: the device count is read when the CPU backend starts. (Where a plugin
  # started one already, jax refuses; the multi-device tests then skip, saying so.)
  with contextlib.suppress(RuntimeError):
    jax.config.update("jax_num_cpu_devices", CPU_DEVICES)
  config.jaxseg_platform = _run_platform(config)
  try:
    device = jax.devices(config.jaxseg_platform)[0]
  except RuntimeError as e:
    raise pytest.UsageError(f"no {config.jaxseg_platform} device for this run: {e}") from e
  jax.config.update("jax_default_device", device)
  jax.config.update("jax_default_matmul_precision", "highest")
  if config.jaxseg_platform == "gpu":  # a GPU run checks jaxseg's CUDA kernels, which are opt-in (docs/gpu.md)
    import jaxseg
    jaxseg.use_gpu_kernels(True)


def pytest_report_header(config):
  return f"jaxseg test platform: {config.jaxseg_platform} ({jax.config.jax_default_device})"


def pytest_collection_modifyitems(config, items):
  if config.jaxseg_platform != "cpu":
    skip = pytest.mark.skip(reason=f"CPU-only test (this run: {config.jaxseg_platform})")
    for item in items:
      if item.get_closest_marker("cpu_only"):
        item.add_marker(skip)


@pytest.fixture(scope="session")
def platform(pytestconfig):
  """The run's platform: 'cpu' or 'gpu'."""
  return pytestconfig.jaxseg_platform


@contextlib.contextmanager
def x64():
  """float64 enabled for the block (jax.enable_x64 in jax >= 0.10)."""
  with jax.enable_x64(True):
    yield


@pytest.fixture
def rng(request):
  # A fresh seed per test (from its name), so inputs differ across tests but runs are reproducible.
  return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
