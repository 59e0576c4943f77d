"""One CPU model's part of the qemu leg (.ci/qemu): run under `qemu-x86_64 -cpu MODEL`, it checks that jaxseg chose
the kernel build EXPECTED_ISA for that CPU and that every pass (forward, input_grad, weight_grad) lowers to our
kernels and computes the float64 reference's values (tests/reference.py, tests/tolerances.py), in float32 and
bfloat16, on small odd 1-D, 2-D and 3-D cases.

  python .ci/qemu_conformance.py EXPECTED_ISA
"""

import os
import sys
import time

start = time.monotonic()
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.pop("JAXSEG_CPU_ISA", None)  # the build must be the one chosen for this CPU, not a pinned one
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jaxseg  # noqa: E402
from jaxseg import _ext, _passes  # noqa: E402
from reference import conv_transpose_ref, input_grad_ref, weight_grad_ref  # noqa: E402
from tolerances import assert_close  # noqa: E402

# (x shape N,H...,Ci; kernel spatial; Co; strides; explicit pads): odd sizes; Ci and Co not multiples of a vector
# (8 float32 lanes on AVX2), so both the vector loops and their tails run.
CASES = [
    ((2, 7, 9), (4,), 11, (2,), [(1, 2)]),
    ((1, 5, 4, 9), (3, 2), 11, (2, 3), [(2, 1), (0, 2)]),
    ((1, 3, 4, 3, 5), (2, 3, 2), 9, (2, 1, 2), [(1, 1), (1, 1), (1, 0)]),
]


def check(x, w, dy_shape, strides, pads, rng):
  """Forward, input_grad and weight_grad of one case against the reference from the same rounded operands."""
  n = x.ndim - 2

  def passes(x, w, dy):
    y, vjp = jax.vjp(lambda x, w: jaxseg.conv_transpose(x, w, strides, pads), x, w)
    return (y, *vjp(dy))

  dy = rng.standard_normal(dy_shape).astype(x.dtype)
  fn = jax.jit(passes)
  hlo = fn.lower(x, w, dy).as_text()
  for p in _passes.PASSES:  # each pass on our kernels, not on a fallback
    assert p.target in hlo, f"{p.name}: custom call {p.target} missing from the lowering"
  y, dx, dw = fn(x, w, dy)
  x64, w64, dy64 = (np.asarray(a, np.float64) for a in (x, w, dy))
  assert_close(y, conv_transpose_ref(x64, w64, strides, pads), err_msg="forward")
  assert_close(dx, input_grad_ref(dy64, w64, strides, pads, x.shape[1:-1]), err_msg="input_grad")
  assert_close(dw, weight_grad_ref(x64, dy64, strides, pads, w.shape[:n]), err_msg="weight_grad")


def main(expected_isa):
  isa = _ext.cpu.selected_isa()
  print(f"qemu: jaxseg imported in {time.monotonic() - start:.0f} s; kernel build {isa!r} "
        f"(builds: {', '.join(_ext.cpu.kernel_builds())})", flush=True)
  assert isa == expected_isa, f"this CPU should get the {expected_isa!r} build, got {isa!r}"
  rng = np.random.default_rng(0)
  for dtype in (np.float32, jnp.bfloat16):
    for x_shape, kernel, cout, strides, pads in CASES:
      t = time.monotonic()
      x = rng.standard_normal(x_shape).astype(dtype)
      w = rng.standard_normal((*kernel, x_shape[-1], cout)).astype(dtype)
      out = [(h - 1) * s + 1 + lo + hi - k + 1 for h, s, (lo, hi), k in zip(x_shape[1:-1], strides, pads, kernel)]
      check(x, w, (x_shape[0], *out, cout), strides, pads, rng)
      print(f"qemu: {isa}: {len(kernel)}-D {np.dtype(dtype).name}: forward, input_grad, weight_grad match "
            f"({time.monotonic() - t:.0f} s)", flush=True)
  print(f"qemu: {isa}: all passed in {time.monotonic() - start:.0f} s", flush=True)


if __name__ == "__main__":
  main(sys.argv[1])
