import contextlib
import zlib
import os

import jax
import numpy as np
import pytest

# Tests that need several devices set this themselves in a subprocess; here, one CPU device.
os.environ.setdefault("JAX_PLATFORMS", "cpu")


@contextlib.contextmanager
def x64():
  """float64 enabled for the block (jax.enable_x64 in jax >= 0.10)."""
  with jax.enable_x64(True):
    yield


@pytest.fixture
def rng(request):
  # A fresh seed per test (from its name), so inputs differ across tests but runs are reproducible.
  return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
