"""The GPU conformance subset of benchmarks/gpu.sh: every pass, dtype and kernel path of the CUDA kernels on the
GPU against float64 references computed on the CPU (tests/reference.py, tests/tolerances.py), both kernel
orientations; the weight gradient run twice (its split-K sums must agree bit for bit); the custom calls the
compiled GPU program holds. Writes one JSON report and exits 1 if any check failed.

  python benchmarks/gpu_check.py --json OUT.json
"""

import argparse
import contextlib
import json
import os
import re
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from reference import conv_transpose_ref, input_grad_ref, weight_grad_ref  # noqa: E402
from tolerances import TF32_TOLERANCE, tolerance  # noqa: E402

import jaxseg  # noqa: E402

# (name, in_spatial, kernel, strides, pads, dilation, batch, ci, co): the paths and geometries the kernels have.
CASES = [
    ("2d-tiles", (9, 11), (4, 4), (2, 2), [(2, 2), (1, 3)], None, 3, 40, 136),      # tensor cores, several tiles
    ("2d-odd-k3", (15, 15), (3, 3), (2, 2), [(1, 2), (1, 2)], None, 4, 64, 64),     # odd output, uneven phases
    ("1d-s8", (37,), (16,), (8,), [(11, 11)], None, 2, 64, 32),                     # large stride and kernel
    ("3d-s2", (5, 6, 7), (3, 2, 3), (2, 2, 2), [(1, 1), (0, 2), (2, 0)], None, 2, 32, 16),
    ("dilated", (8, 7), (3, 2), (2, 3), [(1, 2), (0, 3)], (2, 3), 2, 16, 24),
    ("crop", (7, 7), (3, 3), (2, 2), [(-1, 2), (3, -2)], None, 2, 16, 16),
    ("splitk", (48, 44), (2, 2), (2, 2), [(1, 1), (1, 1)], None, 4, 16, 32),        # many pixels per tap
    ("few-out", (16, 16), (4, 4), (2, 2), [(2, 2), (2, 2)], None, 4, 128, 3),       # a generator's last layer
    ("one-out", (9, 8), (4, 4), (2, 2), [(2, 2), (2, 2)], None, 2, 64, 1),
    ("unaligned", (6, 5), (3, 4), (2, 3), [(1, 1), (2, 2)], None, 2, 37, 70),       # CUDA cores
]

# (name, operand dtype, preferred_element_type, precision, x64)
VARIANTS = [
    ("bfloat16", jnp.bfloat16, None, None, False),
    ("float32", jnp.float32, None, None, False),          # TF32 (XLA's GPU default)
    ("float32-highest", jnp.float32, None, "highest", False),
    ("float16", jnp.float16, None, None, False),
    ("bfloat16-to-float32", jnp.bfloat16, jnp.float32, None, False),
    ("float64", jnp.float64, None, None, True),
]


def _canonical(w, transpose_kernel):
  """The user's kernel as the reference takes it (K..., Ci, Co)."""
  if not transpose_kernel:
    return w
  return np.flip(np.swapaxes(w, -1, -2), axis=tuple(range(w.ndim - 2)))


def _worst(got, want, tol):
  """The largest |got - want| / (tol * (|want| + rms(want))): at most 1 passes (tests/tolerances.py's rule)."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  if got.shape != want.shape:
    return float("inf")
  if not np.all(np.isfinite(got)):
    return float("inf")
  scale = float(np.sqrt(np.mean(want ** 2))) if want.size else 0.0
  return float(np.max(np.abs(got - want) / (tol * (np.abs(want) + scale) + 1e-300), initial=0.0))


def run_case(case, variant, transpose_kernel, device, rng):
  name, in_spatial, kernel, strides, pads, dilation, batch, ci, co = case
  vname, dtype, preferred, precision, _ = variant
  n = len(in_spatial)
  x = np.asarray(jnp.asarray(rng.standard_normal((batch, *in_spatial, ci)), dtype), np.float64)
  w_shape = (*kernel, co, ci) if transpose_kernel else (*kernel, ci, co)
  w = np.asarray(jnp.asarray(rng.standard_normal(w_shape), dtype), np.float64)
  wc = _canonical(w, transpose_kernel)
  y_ref = conv_transpose_ref(x, wc, strides, pads, dilation)
  dy = np.asarray(jnp.asarray(rng.standard_normal(y_ref.shape), preferred or dtype), np.float64)
  dx_ref = input_grad_ref(dy, wc, strides, pads, in_spatial, dilation)
  dw_ref = _canonical(weight_grad_ref(x, dy, strides, pads, kernel, dilation), transpose_kernel)

  def f(x, w):
    return jaxseg.conv_transpose(x, w, strides, pads, rhs_dilation=dilation, transpose_kernel=transpose_kernel,
                                 precision=precision, preferred_element_type=preferred)

  def passes(x, w, dy):
    y, vjp = jax.vjp(f, x, w)
    return (y, *vjp(dy))

  put = lambda a, t: jax.device_put(jnp.asarray(a, t), device)
  args = (put(x, dtype), put(w, dtype), put(dy, preferred or dtype))
  compiled = jax.jit(passes).lower(*args).compile()
  targets = sorted(set(re.findall(r'custom_call_target="(jaxseg[^"]+)"', compiled.as_text())))
  y, dx, dw = compiled(*args)
  dw_again = compiled(*args)[2]
  out_dtype = np.dtype(preferred or dtype)
  tf32 = np.dtype(dtype) == np.float32 and precision is None
  tol_y = TF32_TOLERANCE if tf32 else tolerance(out_dtype)
  tol_g = TF32_TOLERANCE if tf32 else tolerance(np.dtype(dtype))
  worst = {"forward": _worst(y, y_ref, tol_y), "input_grad": _worst(dx, dx_ref, tol_g),
           "weight_grad": _worst(dw, dw_ref, tol_g)}
  deterministic = bool(np.array_equal(np.asarray(dw), np.asarray(dw_again)))
  on_kernels = len(targets) == 3
  return {"case": name, "variant": vname, "transpose_kernel": transpose_kernel, "worst_over_tolerance": worst,
          "deterministic_weight_grad": deterministic, "custom_calls": targets,
          "ok": all(v <= 1.0 for v in worst.values()) and deterministic and on_kernels}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--json", required=True)
  p.add_argument("--budget", type=float, default=240.0, help="seconds; cases not begun by then are skipped")
  p.add_argument("--device", default="gpu", help="the JAX platform (cpu checks this script itself)")
  args = p.parse_args(argv)
  device = jax.devices(args.device)[0]
  rng = np.random.default_rng(0)
  start = time.time()
  rows = []
  report = {"device": device.device_kind, "jax": jax.__version__, "rows": rows}
  for variant in VARIANTS:
    with jax.enable_x64(True) if variant[4] else contextlib.nullcontext():
      for case in CASES:
        for transpose_kernel in (False, True):
          if time.time() - start > args.budget:
            rows.append({"case": case[0], "variant": variant[0], "skipped": "budget"})
            continue
          try:
            row = run_case(case, variant, transpose_kernel, device, rng)
          except Exception:  # a failure is a result: record it and go on
            row = {"case": case[0], "variant": variant[0], "transpose_kernel": transpose_kernel, "ok": False,
                   "error": traceback.format_exc()[-3000:]}
          rows.append(row)
          print(("ok  " if row["ok"] else "FAIL"), variant[0], case[0], "flipped" if transpose_kernel else "",
                {k: round(v, 3) for k, v in row.get("worst_over_tolerance", {}).items()}, flush=True)
          with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
  report["seconds"] = time.time() - start
  report["failed"] = sum(1 for r in rows if r.get("ok") is False)
  report["skipped"] = sum(1 for r in rows if "skipped" in r)
  with open(args.json, "w") as f:
    json.dump(report, f, indent=1)
  print(f"{len(rows)} checks, {report['failed']} failed, {report['skipped']} skipped, {report['seconds']:.0f} s")
  return 1 if report["failed"] else 0


if __name__ == "__main__":
  sys.exit(main())
