"""The CUDA kernels' plans run on the CPU (the test-only module jaxseg._jaxseg_plan_executor: gpu_plan_execute,
cuda/plan_executor.cc) on NumPy arrays: the operands and result of one pass in the canonical layout with a leading
group axis, as the CUDA handler receives them.

The module is built by an editable install (the README's test set-up; tests/test_install_layout.py checks it) or with
-Ccmake.define.JAXSEG_TEST_MODULES=ON, and absent from a plain install: there, importing this skips the importing
test module, saying why."""

import ml_dtypes
import numpy as np
import pytest

executor = pytest.importorskip(
    "jaxseg._jaxseg_plan_executor",
    reason="the GPU plan executor is a test-only module that this install of jaxseg was built without (an editable "
           "install builds it; else -Ccmake.define.JAXSEG_TEST_MODULES=ON)")

BITS = {np.dtype(ml_dtypes.bfloat16): "bfloat16", np.dtype(np.float16): "float16",
        np.dtype(np.float32): "float32", np.dtype(np.float64): "float64"}


def execute(pass_name, a, b, result_shape, *, strides, padding, dilation=None, transpose_kernel=False,
            result_dtype=None, precision=0, path=None, multiprocessors=132, partial_bytes=None):
  """Result (as `result_dtype`, default the operands') and the plan's description (path, grid, splits).
  `partial_bytes`: weight_grad's partials buffer (default: as the lowering sizes it for `multiprocessors`)."""
  a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
  assert a.dtype == b.dtype
  result_dtype = np.dtype(result_dtype or a.dtype)
  n = len(strides)
  raw, report = executor.gpu_plan_execute(
      pass_name, a.tobytes(), b.tobytes(), list(a.shape), list(b.shape), list(result_shape), list(strides),
      list(dilation or (1,) * n), [p[0] for p in padding], [p[1] for p in padding], transpose_kernel,
      BITS[a.dtype], BITS[result_dtype], precision, path, multiprocessors, partial_bytes)
  return np.frombuffer(raw, result_dtype).reshape(result_shape), report
