"""Partitioning of the custom calls on 8 virtual CPU devices (see multidevice_checks.py)."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.cpu_only

import multidevice_checks

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.parametrize("kind", ["Explicit", "Auto"])
@pytest.mark.parametrize("name", sorted(multidevice_checks.CHECKS))
def test_multidevice(name, kind):
  out = subprocess.run([sys.executable, os.path.join(HERE, "multidevice_checks.py"), name, kind], cwd=HERE,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
  assert f"OK {name} {kind}" in out.stdout
