"""One table of tolerances per dtype and the element-wise comparison every test uses (jax's public_test_util
model: tolerances keyed by dtype, no per-test fudges)."""

import jax.numpy as jnp
import numpy as np

# Per dtype of the result being checked (the dtype it was rounded to): the relative error allowed per element.
# Our kernels accumulate 16-bit operands in float32, so a 16-bit result is off by its own rounding (2^-8 for
# bfloat16, 2^-11 for float16) plus float32 accumulation error; float32 and float64 by accumulation error alone.
TOLERANCE = {
    np.dtype(np.float64): 1e-12,
    np.dtype(np.float32): 1e-5,
    np.dtype(jnp.bfloat16): 2e-2,
    np.dtype(np.float16): 4e-3,
}


def tolerance(dtype) -> float:
  return TOLERANCE[np.dtype(dtype)]


def assert_close(got, want, dtype=None, *, err_msg=""):
  """Element-wise |got - want| <= tol * (|want| + rms(want)), tol from the table for `dtype` (default: got's).

  The rms term is the absolute floor: a sum of many products can cancel to near zero, where only an error
  relative to the size of the terms is meaningful. `want` is usually a float64 reference."""
  got = np.asarray(got)
  tol = tolerance(dtype if dtype is not None else got.dtype)
  got, want = got.astype(np.float64), np.asarray(want, np.float64)
  assert got.shape == want.shape, f"shape {got.shape} != {want.shape} {err_msg}"
  scale = float(np.sqrt(np.mean(want ** 2))) if want.size else 0.0
  np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale, err_msg=err_msg)


# float32 operands on the tensor cores at precision DEFAULT (XLA's GPU default, TF32): each operand is rounded to
# 11 significant bits (relative error <= 2^-11), each product so by <= 2^-10; a sum of products with random signs
# keeps the error near 2^-11 of the terms' rms, so 2^-8 leaves a margin of about 8. Keyed apart from the dtype
# table because the result is float32.
TF32_TOLERANCE = 2.0 ** -8
