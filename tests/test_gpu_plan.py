"""The CUDA kernels' index logic, checked without a GPU: every pass runs through the CPU executor of the plan the
CUDA handler would make (cuda/plan_executor.cc: the same tile decomposition, copies, fragment loads and stores as
cuda/kernels.cu, with mma.sync, ldmatrix, cp.async and the TF32 rounding emulated), and is compared with the
float64 reference. The executor itself fails a call whose copies or loads leave their tensor or tile, whose
shared-memory tiles are not fully written before they are read, or whose result elements are not each written
exactly once.

Operands are rounded to their dtype first and the reference computed from the rounded values, so the comparison
measures the kernels' arithmetic alone (tests/tolerances.py; TF32 has its own tolerance)."""

import json
from importlib import resources

import ml_dtypes
import numpy as np
import pytest

from gpu_plan import executor, execute
from reference import GEOMETRY_GRID, conv_transpose_ref, input_grad_ref, transpose_padding, weight_grad_ref
from tolerances import TF32_TOLERANCE, assert_close

pytestmark = pytest.mark.cpu_only

BF16, F16, F32, F64 = np.dtype(ml_dtypes.bfloat16), np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)

# (operand dtype, result dtype, precision attribute): the kernels' arithmetic variants.
VARIANTS = {
    "bf16": (BF16, BF16, 0),
    "f16-f32": (F16, F32, 0),
    "tf32": (F32, F32, 0),
    "3xtf32": (F32, F32, 1),
    "f64": (F64, F64, 0),
}


def _pads(padding, kernel, strides, dilation):
  if isinstance(padding, str):
    return [transpose_padding(d * (k - 1) + 1, s, padding) for k, s, d in zip(kernel, strides, dilation)]
  return [tuple(p) for p in padding]


def _stored(w, transpose_kernel):
  """A canonical kernel (G, K..., Ci, Co) as stored: flipped and (Co, Ci) with transpose_kernel."""
  if not transpose_kernel:
    return w
  return np.flip(np.swapaxes(w, -1, -2), axis=tuple(range(1, w.ndim - 2)))


def check_pass(rng, pass_name, in_spatial, kernel, strides, padding, *, dilation=None, ci=16, co=24, batch=2,
               groups=1, transpose_kernel=False, variant="bf16", path=None, multiprocessors=132, expect_path=None):
  operand, result, precision = VARIANTS[variant]
  n = len(in_spatial)
  dilation = tuple(dilation or (1,) * n)
  pads = _pads(padding, kernel, strides, dilation)
  rounded = lambda a: np.asarray(a, np.float64).astype(operand)
  x = rounded(rng.standard_normal((groups, batch, *in_spatial, ci)))
  w = rounded(rng.standard_normal((groups, *kernel, ci, co)))
  y_shape = conv_transpose_ref(x[0].astype(F64), w[0].astype(F64), strides, pads, dilation).shape
  geometry = dict(strides=strides, padding=pads, dilation=dilation, transpose_kernel=transpose_kernel,
                  result_dtype=result, precision=precision, path=path, multiprocessors=multiprocessors)
  f64 = lambda a: a.astype(F64)
  if pass_name == "forward":
    got, report = execute("forward", x, _stored(w, transpose_kernel), (groups, *y_shape), **geometry)
    want = np.stack([conv_transpose_ref(f64(x[g]), f64(w[g]), strides, pads, dilation) for g in range(groups)])
  elif pass_name == "input_grad":
    dy = rounded(rng.standard_normal((groups, *y_shape)))
    got, report = execute("input_grad", dy, _stored(w, transpose_kernel), x.shape, **geometry)
    want = np.stack([input_grad_ref(f64(dy[g]), f64(w[g]), strides, pads, in_spatial, dilation)
                     for g in range(groups)])
  else:
    dy = rounded(rng.standard_normal((groups, *y_shape)))
    stored_shape = _stored(w, transpose_kernel).shape
    got, report = execute("weight_grad", x, dy, stored_shape, **geometry)
    want = _stored(np.stack([weight_grad_ref(f64(x[g]), f64(dy[g]), strides, pads, kernel, dilation)
                             for g in range(groups)]), transpose_kernel)
  tolerance = TF32_TOLERANCE if report["math"] == "tf32" else None
  if tolerance is None:
    assert_close(got, want, result, err_msg=str(report))
  else:
    # TF32 rounds the operands, so the error is relative to the size of the summed terms: the rms of the
    # outputs that have terms (structural zeros, the outputs of phases without taps, would shrink it).
    nonzero = want[want != 0]
    scale = float(np.sqrt(np.mean(nonzero ** 2))) if nonzero.size else 0.0
    np.testing.assert_allclose(got.astype(F64), want, rtol=tolerance, atol=tolerance * scale, err_msg=str(report))
  if expect_path is not None:
    assert report["path"] == expect_path, report
  return report


GRID = GEOMETRY_GRID

PASSES = ("forward", "input_grad", "weight_grad")


@pytest.mark.parametrize("in_spatial,kernel,strides,padding", GRID)
@pytest.mark.parametrize("transpose_kernel", [False, True], ids=["canonical", "flipped"])
@pytest.mark.parametrize("pass_name", PASSES)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_grid(rng, in_spatial, kernel, strides, padding, transpose_kernel, pass_name, variant):
  # Channels in whole 16-byte vectors, so every variant but float64 runs on the tensor-core path; every other
  # geometry with more than 64 result channels on a one-multiprocessor device, so that both tile widths (64 and
  # 128 columns) see every pass, orientation and variant.
  wide = GRID.index((in_spatial, kernel, strides, padding)) % 2 == 1
  ci, co = (72, 80) if wide else (16, 24)
  report = check_pass(rng, pass_name, in_spatial, kernel, strides, padding, transpose_kernel=transpose_kernel,
                      variant=variant, ci=ci, co=co, multiprocessors=1 if wide else 132,
                      expect_path="direct_outer" if variant == "f64" else "tiled")
  if variant != "f64":
    assert report["tile_n"] == (128 if wide else 64), report


@pytest.mark.parametrize("pass_name", PASSES)
@pytest.mark.parametrize("variant", ["bf16", "tf32", "f64"])
@pytest.mark.parametrize("in_spatial,kernel,strides,padding", [
    ((5, 6), (3, 3), (8, 8), "VALID"),     # 55 of 64 phases without taps
    ((7,), (3,), (1024,), [(0, 5)]),       # a stride far beyond the kernel: no table grows with it
    ((4, 5), (2, 3), (5, 1), [(1, 3), (2, 0)]),
])
def test_phases_without_taps(rng, pass_name, variant, in_spatial, kernel, strides, padding):
  """Only the phases some tap reaches are planned; the forward zeroes the result first for the others."""
  report = check_pass(rng, pass_name, in_spatial, kernel, strides, padding, variant=variant)
  if pass_name == "forward":
    assert report["zero_fill"] and report["problems"] <= max(kernel) ** len(kernel), report


@pytest.mark.parametrize("in_spatial,kernel,strides,padding,dilation", [
    ((7,), (3,), (2,), "SAME", (2,)),
    ((6, 5), (3, 2), (2, 3), "VALID", (2, 3)),
    ((5, 4), (2, 3), (3, 2), [(1, 2), (0, 3)], (4, 2)),
    ((3, 3, 3), (2, 2, 2), (2, 2, 2), "SAME", (3, 1, 2)),
])
@pytest.mark.parametrize("pass_name", PASSES)
@pytest.mark.parametrize("variant", ["bf16", "tf32", "f64"])
def test_rhs_dilation(rng, in_spatial, kernel, strides, padding, dilation, pass_name, variant):
  check_pass(rng, pass_name, in_spatial, kernel, strides, padding, dilation=dilation, transpose_kernel=True,
             variant=variant)


# Several tiles along every GEMM axis: rows past 128 (M tiles, the last partial), result channels past 128 (N
# tiles, the last partial), contracted channels not a whole number of k-blocks, two groups.
@pytest.mark.parametrize("pass_name", PASSES)
@pytest.mark.parametrize("variant", ["bf16", "f16-f32", "tf32", "3xtf32"])
@pytest.mark.parametrize("transpose_kernel", [False, True], ids=["canonical", "flipped"])
@pytest.mark.parametrize("multiprocessors", [1, 132])
def test_multiple_tiles(rng, pass_name, variant, transpose_kernel, multiprocessors):
  report = check_pass(rng, pass_name, (9, 11), (3, 3), (2, 2), [(1, 2), (2, 1)], ci=40, co=136, groups=2,
                      transpose_kernel=transpose_kernel, variant=variant, expect_path="tiled",
                      multiprocessors=multiprocessors)
  # input_grad's result channels are the 40 input channels; a device the wide tiles would leave idle gets
  # narrow ones (forward); the weight gradient fills it with splits instead.
  narrow = pass_name == "input_grad" or (pass_name == "forward" and multiprocessors == 132)
  assert report["tile_n"] == (64 if narrow else 128), report


@pytest.mark.parametrize("variant", ["bf16", "tf32", "f64"])
@pytest.mark.parametrize("multiprocessors", [4, 132])
def test_weight_grad_splits(rng, variant, multiprocessors):
  # Enough pixels per tap that the launch splits them; the partials are summed in split order.
  report = check_pass(rng, "weight_grad", (20, 22), (2, 3), (2, 2), "SAME", ci=8, co=16,
                      variant=variant, multiprocessors=multiprocessors)
  assert report["splits"] > 1, report


@pytest.mark.parametrize("pass_name", PASSES)
@pytest.mark.parametrize("ci,co", [(64, 1), (128, 3), (3, 64), (1, 8)])
@pytest.mark.parametrize("variant", ["bf16", "f16-f32", "tf32", "f64"])
def test_few_channels(rng, pass_name, ci, co, variant):
  """A generator's last layer (1-3 output channels) and its mirror image: the CUDA-core paths."""
  report = check_pass(rng, pass_name, (6, 5), (4, 4), (2, 2), [(2, 2), (1, 2)], ci=ci, co=co, variant=variant,
                      transpose_kernel=True)
  if pass_name == "forward" and co < 32 <= ci:
    assert report["path"] == "direct_dot"


@pytest.mark.parametrize("pass_name", PASSES)
@pytest.mark.parametrize("variant", ["bf16", "tf32"])
def test_unaligned_channels(rng, pass_name, variant):
  """Channel counts that are not whole 16-byte vectors take the CUDA-core path."""
  report = check_pass(rng, pass_name, (5, 6), (3, 4), (2, 3), "SAME", ci=37, co=70, variant=variant)
  assert report["path"] != "tiled"


@pytest.mark.parametrize("path", ["tiled", "direct_dot", "direct_outer"])
@pytest.mark.parametrize("pass_name", ["forward", "input_grad"])
@pytest.mark.parametrize("transpose_kernel", [False, True], ids=["canonical", "flipped"])
def test_every_path_of_one_call(rng, path, pass_name, transpose_kernel):
  check_pass(rng, pass_name, (4, 5, 3), (3, 2, 3), (2, 2, 1), [(1, 2), (0, 1), (2, 1)], ci=40, co=48,
             variant="bf16", path=path, transpose_kernel=transpose_kernel)


def test_fast_divmod():
  rng = np.random.default_rng(0)
  for divisor in list(range(1, 300)) + [2 ** k + d for k in range(9, 31) for d in (-1, 0, 1)] + [2 ** 31 - 1]:
    values = np.concatenate([np.arange(0, 70), rng.integers(0, 2 ** 31, 200), [2 ** 31 - 1, divisor - 1,
                                                                                   divisor, divisor + 1]])
    values = [int(v) for v in values if 0 <= v < 2 ** 31]
    got = executor.gpu_fast_divmod(divisor, values)
    assert got == [divmod(v, divisor) for v in values], divisor


def _suite():
  return json.loads(resources.files("jaxseg.bench").joinpath("layers.json").read_text())["layers"]


@pytest.mark.parametrize("layer", _suite(), ids=lambda l: l["name"])
@pytest.mark.parametrize("transpose_kernel", [False, True], ids=["canonical", "flipped"])
def test_suite_layers_run_on_the_cuda_kernels(layer, transpose_kernel):
  """Every benchmark layer passes the CUDA handler's limits in each pass, and the 16-bit and float32 ones run on
  the tensor cores unless a channel count is not a whole 16-byte vector."""
  n = len(layer["kernel"])
  k, s = layer["kernel"], layer["stride"]
  pads = [(kk - 1 - p, kk - 1 - p + op) for kk, p, op in zip(k, layer["padding"], layer["output_padding"])]
  out = [(h - 1) * ss + 1 + lo + hi - kk + 1 for h, ss, (lo, hi), kk in zip(layer["in"], s, pads, k)]
  # Canonical shapes as the handler receives them: groups lead, channels are per group.
  g = layer.get("groups", 1)
  ci, co = layer["c_in"] // g, layer["c_out"] // g
  x = [g, layer["N"], *layer["in"], ci]
  y = [g, layer["N"], *out, co]
  w = [g, *k, co, ci] if transpose_kernel else [g, *k, ci, co]
  shapes = {"forward": (x, w, y), "input_grad": (y, w, x), "weight_grad": (x, y, w)}
  attrs = (list(s), [1] * n, [p[0] for p in pads], [p[1] for p in pads], transpose_kernel)
  aligned = ci % 8 == 0 and co % 8 == 0
  for pass_name, (a, b, r) in shapes.items():
    assert executor.gpu_can_implement(pass_name, a, b, r, *attrs) == ""
    for dtype in ("bfloat16", "float32"):
      report = executor.gpu_plan_describe(pass_name, a, b, r, *attrs, dtype)
      assert (report["path"] == "tiled") == aligned, (pass_name, dtype, report)
      assert report["blocks"] < 2 ** 31


def test_limits_are_refused():
  attrs = lambda n: ([2] * n, [1] * n, [1] * n, [1] * n, False)
  four_d = executor.gpu_can_implement("forward", [1, 1, 3, 3, 3, 3, 4], [1, 2, 2, 2, 2, 4, 4],
                                      [1, 1, 6, 6, 6, 6, 4], *attrs(4))
  assert "spatial axes" in four_d
  big_kernel = executor.gpu_can_implement("forward", [1, 1, 9, 4], [1, 33, 4, 4], [1, 1, 17, 4],
                                          [2], [1], [16], [16], False)
  assert "kernel size" in big_kernel


@pytest.mark.parametrize("pass_name", PASSES)
def test_3xtf32_split_near_float32_max(rng, pass_name):
  # Rounding x to TF32 overflows to infinity within half a TF32 unit of float32's maximum; the split then gave
  # inf - inf = NaN. With small weights (or gradients) every exact result here is finite: so must the kernels' be.
  big = np.float32(np.finfo(np.float32).max)
  near_max = lambda shape: (rng.choice([-1.0, 1.0], shape) * big * (1 - rng.integers(0, 4096, shape) * 2.0 ** -24)
                            ).astype(F32)
  small = lambda shape: (rng.uniform(0.5, 1.0, shape) * rng.choice([-1.0, 1.0], shape) * 2.0 ** -12).astype(F32)
  strides, pads, spatial, kernel, ci, co = (2, 2), [(1, 2), (0, 1)], (5, 6), (3, 3), 8, 12
  x, w = near_max((1, 1, *spatial, ci)), small((1, *kernel, ci, co))
  y_shape = conv_transpose_ref(x[0].astype(F64), w[0].astype(F64), strides, pads, None).shape
  geometry = dict(strides=strides, padding=pads, precision=1)
  if pass_name == "forward":
    got, report = execute("forward", x, w, (1, *y_shape), **geometry)
    want = conv_transpose_ref(x[0].astype(F64), w[0].astype(F64), strides, pads, None)
  elif pass_name == "input_grad":
    dy = near_max((1, *y_shape))
    got, report = execute("input_grad", dy, w, x.shape, **geometry)
    want = input_grad_ref(dy[0].astype(F64), w[0].astype(F64), strides, pads, spatial, None)
  else:
    x, dy = near_max(x.shape), small((1, *y_shape))
    got, report = execute("weight_grad", x, dy, w.shape, **geometry)
    want = weight_grad_ref(x[0].astype(F64), dy[0].astype(F64), strides, pads, kernel, None)
  assert report["math"] == "3xtf32", report
  assert np.all(np.abs(want) < np.finfo(np.float32).max), "the exact results must be finite float32 values"
  assert np.all(np.isfinite(got)), report
  np.testing.assert_allclose(got[0].astype(F64), want, rtol=1e-5, atol=1e-5 * float(np.sqrt(np.mean(want ** 2))))
