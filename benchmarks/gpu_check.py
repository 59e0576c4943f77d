"""The correctness checks of benchmarks/gpu.sh, most important first, each a section of one JSON report:

  exact      every pass, dtype variant, kernel path, tile width and both kernel orientations on small
             integer-valued operands, where every summation order is exact: the device's result must equal, bit
             for bit, what the CPU executor of the kernels' plans (tests/gpu_plan.py, cuda/plan_executor.cc)
             computes. This is the check that the PTX semantics the executor emulates (ldmatrix, mma.sync,
             cp.async's zero fill, the TF32 rounding) are the hardware's. Each call is also run with a NaN canary
             at element 0 of its operands, where the zero-filled copies point (cp.async with source size 0 is
             given the buffer's start): the NaNs must land where the executor puts them, and only there.
  overflow   3xTF32 (float32 at HIGHEST) with operands within a TF32 unit of float32's maximum and small partners:
             every result finite and within float32 accuracy (the split must not overflow to inf - inf).
  accuracy   every pass x dtype variant x orientation on ten layers that cover every path, random operands,
             against float64 CPU references, with a per-element error bound derived from the arithmetic (below);
             the weight gradient run twice (its split-K sums must agree bit for bit); the custom calls the
             compiled program holds.

The accuracy bound, per result element i with K_i summed products and A_i = sum |a||b| over them (the same pass on
|a|, |b| in float64):  |got - want| <= u_out |want| + (g_prod + 4 sqrt(K_i) u_acc) A_i + tiny, where g_prod is
the error of one product (0 for 16-bit and float64 operands, whose products the hardware forms exactly; 2^-10 for
TF32, each operand rounded to 11 bits; 3 * 2^-22 for 3xTF32, which drops small*small and rounds small), u_acc the
accumulator's unit (2^-23 for float32, allowing for truncating tensor-core adds; 2^-52 for float64) with
sqrt(K_i) the growth of summation error for random data (Higham & Mary, 2019; the worst case grows as K_i) and a
factor 4 for the tail over many elements, and u_out twice the unit roundoff of the result's type (its final
rounding, with a margin). A 3xTF32 input gradient with K
in the thousands may miss a flat 1e-5; this bound follows K and the magnitudes instead.

  python benchmarks/gpu_check.py --json OUT.json                 # on a GPU, with JAXSEG_GPU_KERNELS=1
  python benchmarks/gpu_check.py --json OUT.json --dry-run       # here: the CPU kernels in the device's place
"""

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from jax import lax

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from reference import conv_transpose_ref, input_grad_ref, weight_grad_ref  # noqa: E402

import jaxseg  # noqa: E402
from jaxseg import _primitives  # noqa: E402
from jaxseg._passes import PASSES, Geometry  # noqa: E402

try:  # the CPU executor of the CUDA plans (a test-only part of the CPU module)
  import gpu_plan  # noqa: E402
  gpu_plan.execute  # noqa: B018
except (ImportError, AttributeError):
  gpu_plan = None

BF16, F16, F32, F64 = np.dtype(ml_dtypes.bfloat16), np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)
PASS = {p.name: p for p in PASSES}

# (name, operand dtype, result dtype, precision, executor precision attribute)
VARIANTS = [
    ("bfloat16", BF16, BF16, None, 0),
    ("float16-to-float32", F16, F32, None, 0),
    ("float32", F32, F32, lax.Precision.DEFAULT, 0),        # TF32 (XLA's GPU default)
    ("float32-highest", F32, F32, lax.Precision.HIGHEST, 1),  # 3xTF32
    ("float64", F64, F64, None, 0),
]

# ------------------------------------------------------------------------------------------------------------
# exact: integer-valued operands, device against the executor bit for bit.

# (name, in_spatial, kernel, strides, padding, dilation, batch, ci, co): together they take every path (tensor
# cores; CUDA cores' outer and dot forms), both tile widths (64 and, on a device of up to ~150 multiprocessors,
# 128 columns), 1-3 spatial axes, uneven phases, crops, dilation, and split-K.
EXACT_CASES = [
    ("2d-tiled", (5, 7), (4, 4), (2, 2), [(2, 2), (1, 3)], None, 2, 16, 24),
    ("2d-wide", (24, 24), (2, 2), (2, 2), [(1, 1), (1, 1)], None, 4, 16, 136),   # 128-column tiles
    ("1d-s8", (13,), (16,), (8,), [(11, 11)], None, 2, 16, 8),
    ("3d", (3, 4, 5), (3, 2, 3), (2, 2, 2), [(1, 1), (0, 2), (2, 0)], None, 1, 16, 8),
    ("dilated-crop", (6, 5), (3, 2), (2, 3), [(-1, 2), (3, 0)], (2, 3), 1, 8, 16),
    ("splitk", (24, 22), (2, 2), (2, 2), [(1, 1), (1, 1)], None, 2, 8, 16),
    ("few-out", (6, 6), (4, 4), (2, 2), [(2, 2), (2, 2)], None, 2, 64, 3),     # dot form (forward)
    ("unaligned", (6, 5), (3, 4), (2, 3), [(1, 1), (2, 2)], None, 2, 5, 7),    # outer form
]


def _out_spatial(in_spatial, kernel, strides, padding, dilation):
  return tuple((i - 1) * s + 1 + lo + hi - d * (k - 1)
               for i, k, s, (lo, hi), d in zip(in_spatial, kernel, strides, padding, dilation))


def _stored(w, transpose_kernel):
  """A canonical kernel (G, K..., Ci, Co) as stored: flipped and (Co, Ci) with transpose_kernel."""
  if not transpose_kernel:
    return w
  return np.flip(np.swapaxes(w, -1, -2), axis=tuple(range(1, w.ndim - 2)))


def _operands(pass_name, case, transpose_kernel, draw):
  """The canonical operands (leading group axis) and result shape of one pass, drawn by draw(shape)."""
  _, in_spatial, kernel, strides, padding, dilation, batch, ci, co = case
  dilation = dilation or (1,) * len(in_spatial)
  out = _out_spatial(in_spatial, kernel, strides, padding, dilation)
  x_shape, y_shape = (1, batch, *in_spatial, ci), (1, batch, *out, co)
  w_shape = _stored(np.empty((1, *kernel, ci, co), np.int8), transpose_kernel).shape
  if pass_name == "forward":
    return draw(x_shape), draw(w_shape), y_shape
  if pass_name == "input_grad":
    return draw(y_shape), draw(w_shape), x_shape
  return draw(x_shape), draw(y_shape), w_shape


def _geometry(case, transpose_kernel):
  _, in_spatial, kernel, strides, padding, dilation, *_ = case
  return Geometry(strides=tuple(strides), dilation=tuple(dilation or (1,) * len(in_spatial)),
                  padding=tuple(tuple(p) for p in padding), in_spatial=tuple(in_spatial),
                  kernel_spatial=tuple(kernel), transpose_kernel=transpose_kernel)


_compiled = {}


def _device_pass(pass_name, a, b, geometry, out_dtype, precision, device):
  """One pass on the device through jaxseg's primitive (the custom call the handler receives as is)."""
  key = (pass_name, a.shape, b.shape, a.dtype, geometry, out_dtype, precision, device)
  if key not in _compiled:
    fn = lambda a, b: _primitives.apply(PASS[pass_name], a, b, geometry=geometry, out_dtype=out_dtype,
                                        precision=precision)
    args = [jax.device_put(v, device) for v in (a, b)]
    _compiled[key] = jax.jit(fn).lower(*args).compile()
  return np.asarray(_compiled[key](*[jax.device_put(v, device) for v in (a, b)]))


def _bits(x):
  x = np.ascontiguousarray(x)
  return x.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[x.dtype.itemsize])


def _same(got, want):
  """(equal bit for bit outside NaNs, NaN masks equal, number of differing elements)."""
  gn, wn = np.isnan(got.astype(F64)), np.isnan(want.astype(F64))
  diff = (_bits(got) != _bits(want)) & ~(gn & wn)
  return bool(not diff.any()), bool(np.array_equal(gn, wn)), int(diff.sum())


def exact_checks(device, multiprocessors, rows, deadline, on_cpu):
  rng = np.random.default_rng(1)
  for variant in VARIANTS:
    vname, operand, result, precision, attribute = variant
    with jax.enable_x64(True) if operand == F64 else contextlib.nullcontext():
      for case in EXACT_CASES:
        for transpose_kernel in (False, True):
          for pass_name in ("forward", "input_grad", "weight_grad"):
            row = {"section": "exact", "case": case[0], "variant": vname, "pass": pass_name,
                   "transpose_kernel": transpose_kernel}
            if time.time() > deadline:
              rows.append({**row, "skipped": "budget"})
              continue
            try:
              draw = lambda shape: rng.integers(-3, 4, shape).astype(operand)
              a, b, result_shape = _operands(pass_name, case, transpose_kernel, draw)
              geometry = _geometry(case, transpose_kernel)
              run = lambda a, b: _device_pass(pass_name, a, b, geometry, result, precision, device)
              ref = lambda a, b: gpu_plan.execute(
                  pass_name, a, b, result_shape, strides=case[3], padding=case[4], dilation=case[5],
                  transpose_kernel=transpose_kernel, result_dtype=result, precision=attribute,
                  multiprocessors=multiprocessors)
              want, plan = ref(a, b)
              got = run(a, b)
              bits, _, ndiff = _same(got, want)
              row.update(path=plan["path"], math=plan["math"], tile_n=plan["tile_n"], bit_exact=bits,
                         differing=ndiff)
              # The canary: NaN at element 0 of each operand in turn, where the zero-filled copies point.
              canaries = {}
              for which in ("first", "second"):
                if on_cpu and pass_name != "weight_grad" and which == "second" and plan["path"] == "tiled":
                  # A NaN weight meets the tensor cores' zero-filled padding rows (0 * NaN, GPU.md); the CPU
                  # kernels sum linked terms only, so only the device is compared with the executor here.
                  canaries[which] = "not compared on the CPU kernels"
                  continue
                ca, cb = a.copy(), b.copy()
                (ca if which == "first" else cb).reshape(-1)[0] = np.nan
                cwant, _ = ref(ca, cb)
                cbits, cmask, _ = _same(run(ca, cb), cwant)
                canaries[which] = {"bit_exact": cbits, "nan_mask_equal": cmask,
                                   "nan_count": int(np.isnan(cwant.astype(F64)).sum())}
              row["canary"] = canaries
              row["ok"] = bits and all(isinstance(c, str) or (c["bit_exact"] and c["nan_mask_equal"])
                                       for c in canaries.values())
            except Exception:  # a failure is a result: record it and go on
              row.update(ok=False, error=traceback.format_exc()[-3000:])
            rows.append(row)
            _print(row)


# ------------------------------------------------------------------------------------------------------------
# overflow: 3xTF32 near float32's maximum.


def overflow_checks(device, rows):
  rng = np.random.default_rng(2)
  fmax = float(np.finfo(np.float32).max)
  near_max = lambda shape: (rng.choice([-1.0, 1.0], shape) * fmax * (1 - rng.integers(0, 4096, shape) * 2.0 ** -24)
                            ).astype(F32)
  small = lambda shape: (rng.uniform(0.5, 1.0, shape) * rng.choice([-1.0, 1.0], shape) * 2.0 ** -12).astype(F32)
  case = ("overflow", (5, 6), (3, 3), (2, 2), [(1, 2), (0, 1)], None, 1, 8, 12)
  geometry = _geometry(case, False)
  for pass_name in ("forward", "input_grad", "weight_grad"):
    row = {"section": "overflow", "case": case[0], "variant": "float32-highest", "pass": pass_name}
    try:
      # The first operand (x, dy, x) near the maximum, the second (w, w, dy) small: every exact result finite.
      a, b, _ = _operands(pass_name, case, False, near_max)
      b = small(b.shape)
      got = _device_pass(pass_name, a, b, geometry, F32, lax.Precision.HIGHEST, device).astype(F64)
      want = _reference(pass_name, a.astype(F64), b.astype(F64), case)
      scale = float(np.sqrt(np.mean(want ** 2)))
      err = float(np.max(np.abs(got - want) / (1e-5 * (np.abs(want) + scale)))) if np.all(np.isfinite(got)) else None
      row.update(finite=bool(np.all(np.isfinite(got))), worst_over_1e_5=err, ok=err is not None and err <= 1.0)
    except Exception:
      row.update(ok=False, error=traceback.format_exc()[-3000:])
    rows.append(row)
    _print(row)


def _reference(pass_name, a, b, case):
  """float64 reference of one pass on canonical operands (group axis of size 1, canonical kernel)."""
  _, in_spatial, kernel, strides, padding, dilation, *_ = case
  if pass_name == "forward":
    return conv_transpose_ref(a[0], b[0], strides, padding, dilation)[None]
  if pass_name == "input_grad":
    return input_grad_ref(a[0], b[0], strides, padding, in_spatial, dilation)[None]
  return weight_grad_ref(a[0], b[0], strides, padding, kernel, dilation)[None]


# ------------------------------------------------------------------------------------------------------------
# accuracy: random operands against float64 references, with the derived bound.

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
    ("deep-k", (6, 6), (3, 3), (1, 1), [(1, 1), (1, 1)], None, 2, 16, 512),         # input_grad K = 4608
]

# (name, operand dtype, preferred_element_type, precision, x64)
ACCURACY_VARIANTS = [
    ("bfloat16", jnp.bfloat16, None, None, False),
    ("float32", jnp.float32, None, None, False),          # TF32 (XLA's GPU default)
    ("float32-highest", jnp.float32, None, "highest", False),
    ("float16", jnp.float16, None, None, False),
    ("bfloat16-to-float32", jnp.bfloat16, jnp.float32, None, False),
    ("float64", jnp.float64, None, None, True),
]

# Twice the result type's unit roundoff: its final rounding (measured up to 0.99 of one unit for bfloat16 results
# from exact sums) with a margin.
U_OUT = {BF16: 2.0 ** -7, F16: 2.0 ** -10, F32: 2.0 ** -23, F64: 2.0 ** -52}


def error_bound(want, magnitude, terms, operand, result, precision):
  """The per-element bound of the module docstring: want, magnitude (A_i) and terms (K_i) are float64 arrays."""
  operand, result = np.dtype(operand), np.dtype(result)
  if operand == F32:
    g_prod = 3 * 2.0 ** -22 if precision == "highest" else 2.0 ** -10
  else:
    g_prod = 0.0
  u_acc = 2.0 ** -52 if operand == F64 else 2.0 ** -23
  return U_OUT[result] * np.abs(want) + (g_prod + 4 * np.sqrt(terms) * u_acc) * magnitude + 1e-300


def _canonical(w, transpose_kernel):
  """The user's kernel as the reference takes it (K..., Ci, Co)."""
  if not transpose_kernel:
    return w
  return np.flip(np.swapaxes(w, -1, -2), axis=tuple(range(w.ndim - 2)))


def _three_passes(x, w, dy, strides, pads, in_spatial, kernel, dilation, transpose_kernel):
  wc = _canonical(w, transpose_kernel)
  y = conv_transpose_ref(x, wc, strides, pads, dilation)
  dx = input_grad_ref(dy, wc, strides, pads, in_spatial, dilation)
  dw = _canonical(weight_grad_ref(x, dy, strides, pads, kernel, dilation), transpose_kernel)
  return y, dx, dw


def run_case(case, variant, transpose_kernel, device, rng):
  name, in_spatial, kernel, strides, pads, dilation, batch, ci, co = case
  vname, dtype, preferred, precision, _ = variant
  x = np.asarray(jnp.asarray(rng.standard_normal((batch, *in_spatial, ci)), dtype), np.float64)
  w_shape = (*kernel, co, ci) if transpose_kernel else (*kernel, ci, co)
  w = np.asarray(jnp.asarray(rng.standard_normal(w_shape), dtype), np.float64)
  y_shape = conv_transpose_ref(x, _canonical(w, transpose_kernel), strides, pads, dilation).shape
  dy = np.asarray(jnp.asarray(rng.standard_normal(y_shape), preferred or dtype), np.float64)
  geo = (strides, pads, in_spatial, kernel, dilation, transpose_kernel)
  refs = _three_passes(x, w, dy, *geo)
  magnitudes = _three_passes(np.abs(x), np.abs(w), np.abs(dy), *geo)
  terms = _three_passes(np.ones_like(x), np.ones_like(w), np.ones_like(dy), *geo)

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
  outs = compiled(*args)
  dw_again = compiled(*args)[2]
  result_dtypes = (np.dtype(preferred or dtype), np.dtype(dtype), np.dtype(dtype))
  worst = {}
  for pname, got, want, mag, k, rdt in zip(("forward", "input_grad", "weight_grad"), outs, refs, magnitudes, terms,
                                           result_dtypes):
    got = np.asarray(got, np.float64)
    if got.shape != want.shape or not np.all(np.isfinite(got)):
      worst[pname] = float("inf")
      continue
    bound = error_bound(want, mag, k, dtype, rdt, precision)
    worst[pname] = float(np.max(np.abs(got - want) / bound, initial=0.0))
  deterministic = bool(np.array_equal(np.asarray(outs[2]), np.asarray(dw_again)))
  on_kernels = len(targets) == 3 or device.platform == "cpu"
  return {"section": "accuracy", "case": name, "variant": vname, "transpose_kernel": transpose_kernel,
          "worst_over_bound": worst, "deterministic_weight_grad": deterministic, "custom_calls": targets,
          "ok": all(v <= 1.0 for v in worst.values()) and deterministic and on_kernels}


def accuracy_checks(device, rows, deadline, cases):
  rng = np.random.default_rng(0)
  for variant in ACCURACY_VARIANTS:
    with jax.enable_x64(True) if variant[4] else contextlib.nullcontext():
      for case in cases:
        for transpose_kernel in (False, True):
          row = {"section": "accuracy", "case": case[0], "variant": variant[0], "transpose_kernel": transpose_kernel}
          if time.time() > deadline:
            rows.append({**row, "skipped": "budget"})
            continue
          try:
            row = run_case(case, variant, transpose_kernel, device, rng)
          except Exception:  # a failure is a result: record it and go on
            row.update(ok=False, error=traceback.format_exc()[-3000:])
          rows.append(row)
          _print(row)


# ------------------------------------------------------------------------------------------------------------
# sanitizer and profile: workloads for compute-sanitizer and ncu (gpu.sh runs this script under them).

# (x shape, kernel shape as stored, dtype, precision, transpose_kernel, strides, padding): every kernel path in all
# three passes, small: tensor cores (bfloat16, TF32 flipped, 3xTF32), CUDA cores (unaligned channels, one output
# channel), split-K.
SANITIZER_CASES = [
    ((2, 5, 7, 16), (4, 4, 16, 24), jnp.bfloat16, None, False, (2, 3), [(1, 2), (-1, 1)]),
    ((2, 5, 7, 16), (4, 4, 24, 16), jnp.float32, None, True, (2, 3), [(1, 2), (-1, 1)]),
    ((2, 5, 7, 16), (4, 4, 16, 24), jnp.float32, "highest", False, (2, 3), [(1, 2), (-1, 1)]),
    ((2, 5, 7, 3), (3, 4, 3, 5), jnp.float32, None, False, (2, 3), [(1, 2), (-1, 1)]),
    ((2, 6, 5, 64), (4, 4, 1, 64), jnp.bfloat16, None, True, (2, 3), [(1, 2), (-1, 1)]),
    ((2, 24, 22, 8), (2, 2, 8, 16), jnp.float16, None, False, (2, 2), [(1, 1), (1, 1)]),
]

# Large layers for the counters (a DCGAN generator's middle layers, a 3-D decoder's), bfloat16 and 3xTF32.
PROFILE_CASES = [
    ((64, 16, 16, 256), (4, 4, 256, 128), jnp.bfloat16, None, False, (2, 2), [(2, 2), (2, 2)]),
    ((32, 32, 32, 128), (4, 4, 128, 64), jnp.bfloat16, None, False, (2, 2), [(2, 2), (2, 2)]),
    ((4, 8, 16, 16, 128), (3, 3, 3, 128, 64), jnp.bfloat16, None, False, (2, 2, 2), [(1, 2)] * 3),
    ((32, 32, 32, 128), (4, 4, 128, 64), jnp.float32, "highest", False, (2, 2), [(2, 2), (2, 2)]),
]


def workload(cases, device, rows, section):
  """Every case's gradient (the three passes) once, compiled first: a program for the sanitizer or ncu."""
  rng = np.random.default_rng(3)
  for xs, ws, dtype, precision, flipped, strides, pads in cases:
    row = {"section": section, "case": f"{xs}x{ws}", "variant": jnp.dtype(dtype).name, "pass": "all"}
    try:
      x = jax.device_put(jnp.asarray(rng.standard_normal(xs), dtype), device)
      w = jax.device_put(jnp.asarray(rng.standard_normal(ws), dtype), device)
      f = lambda x, w: jnp.sum(jaxseg.conv_transpose(x, w, strides, pads, transpose_kernel=flipped,
                                                     precision=precision).astype(jnp.float32) ** 2)
      g = jax.jit(jax.grad(f, (0, 1)))
      out = jax.block_until_ready(g(x, w))
      row.update(finite=bool(all(np.all(np.isfinite(np.asarray(o, np.float32))) for o in out)))
      row["ok"] = row["finite"]
    except Exception:
      row.update(ok=False, error=traceback.format_exc()[-3000:])
    rows.append(row)
    _print(row)


# ------------------------------------------------------------------------------------------------------------


def _print(row):
  status = "ok  " if row.get("ok") else "FAIL"
  detail = {k: row[k] for k in ("path", "tile_n", "differing", "finite", "worst_over_bound", "worst_over_1e_5")
            if k in row}
  print(status, row["section"], row["variant"], row["case"], row.get("pass", ""),
        "flipped" if row.get("transpose_kernel") else "", detail, row.get("error", "")[-300:], flush=True)


def environment(device):
  import jaxlib
  env = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "device": device.device_kind,
         "platform": device.platform, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
         "jaxseg": jaxseg.__version__, "multiprocessors": getattr(device, "core_count", None),
         "JAXSEG_GPU_KERNELS": os.environ.get("JAXSEG_GPU_KERNELS"), "executor": gpu_plan is not None}
  try:
    env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                   capture_output=True, text=True, timeout=20).stdout.strip() or None
  except (OSError, subprocess.SubprocessError):
    env["driver"] = None
  env["commit"] = os.environ.get("JAXSEG_COMMIT")
  return env


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--json", required=True)
  p.add_argument("--budget", type=float, default=240.0, help="seconds in all; checks not begun by then are skipped")
  p.add_argument("--device", default="gpu", help="the JAX platform")
  p.add_argument("--sections", default="exact,overflow,accuracy",
                 help="comma-separated: exact, overflow, accuracy; sanitizer and profile are workloads for gpu.sh")
  p.add_argument("--multiprocessors", type=int, default=None,
                 help="the executor's device (default: the device's core_count, else 132)")
  p.add_argument("--dry-run", action="store_true",
                 help="on this machine's CPU: the CPU kernels in the device's place, a few accuracy cases")
  args = p.parse_args(argv)
  device = jax.devices("cpu" if args.dry_run else args.device)[0]
  on_cpu = device.platform == "cpu"
  multiprocessors = args.multiprocessors or getattr(device, "core_count", None) or 132
  if on_cpu:
    multiprocessors = args.multiprocessors or 132
  start = time.time()

  class Rows(list):
    """Saved after every check, so that a step cut short by its time limit keeps what it did."""

    def append(self, row):
      super().append(row)
      save()

  rows = Rows()
  report = {"environment": environment(device), "executor_multiprocessors": multiprocessors, "rows": rows}
  sections = args.sections.split(",")

  def save():
    report["seconds"] = time.time() - start
    report["failed"] = sum(1 for r in rows if r.get("ok") is False)
    report["skipped"] = sum(1 for r in rows if "skipped" in r)
    with open(args.json, "w") as f:
      json.dump(report, f, indent=1, default=str)

  # Most important first, each with a share of what is left.
  if "exact" in sections:
    if gpu_plan is None:
      rows.append({"section": "exact", "ok": False, "error": "the plan executor is not in this build"})
    else:
      share = 0.5 if "accuracy" in sections else 0.85
      exact_checks(device, multiprocessors, rows, start + share * args.budget, on_cpu)
    save()
  if "overflow" in sections:
    overflow_checks(device, rows)
    save()
  if "sanitizer" in sections:
    workload(SANITIZER_CASES, device, rows, "sanitizer")
  if "profile" in sections:
    workload(PROFILE_CASES[:1] if args.dry_run else PROFILE_CASES, device, rows, "profile")
  if "accuracy" in sections:
    cases = [c for c in CASES if c[0] in ("2d-tiles", "unaligned", "deep-k")] if args.dry_run else CASES
    accuracy_checks(device, rows, start + args.budget, cases)
  save()
  print(f"{len(rows)} checks, {report['failed']} failed, {report['skipped']} skipped, {report['seconds']:.0f} s")
  return 1 if report["failed"] else 0


if __name__ == "__main__":
  sys.exit(main())
