"""What an install of jaxseg holds: the test-only extension jaxseg._jaxseg_plan_executor (the CUDA kernels' plans
run on the CPU, CMake option JAXSEG_TEST_MODULES) is built for an editable install, the README's test set-up, so
that tests/test_gpu_plan.py runs there, and a plain install (`pip install jaxseg`, `pip install .`) leaves it out
unless asked."""

import importlib.metadata
import importlib.util
import json
import os

from jaxseg import _ext

MODULE = "jaxseg._jaxseg_plan_executor"


def _editable() -> bool:
  """Whether pip installed this jaxseg in editable mode (PEP 610's direct_url.json says so)."""
  text = importlib.metadata.distribution("jaxseg").read_text("direct_url.json")
  return bool(text) and json.loads(text).get("dir_info", {}).get("editable", False)


def _asked() -> bool:
  """Whether the build was asked for the test modules through the environment: SKBUILD_CMAKE_DEFINE is
  scikit-build-core's form of -Ccmake.define, which a CI leg sets for its build and its tests alike."""
  return "JAXSEG_TEST_MODULES=ON" in os.environ.get("SKBUILD_CMAKE_DEFINE", "").split(";")


def test_plan_executor_is_a_test_only_module():
  built = importlib.util.find_spec(MODULE) is not None
  if _editable():
    assert built, (f"an editable install builds {MODULE} (pyproject.toml's override for the editable state): the GPU "
                   "plan tests would skip")
  elif _asked():
    assert built, f"SKBUILD_CMAKE_DEFINE asks for JAXSEG_TEST_MODULES=ON, yet {MODULE} was not built"
  else:
    assert not built, (f"a plain install must not ship {MODULE} (CMake's JAXSEG_TEST_MODULES defaults to OFF); if "
                       "you built it with -Ccmake.define.JAXSEG_TEST_MODULES=ON, ask through the environment instead "
                       "(SKBUILD_CMAKE_DEFINE=JAXSEG_TEST_MODULES=ON), which this test reads")
  # The executor's functions live in their own module only, never in the CPU module every user imports.
  assert not any(name.startswith("gpu_") for name in dir(_ext.cpu))
