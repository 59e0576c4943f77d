"""jaxseg.conv_transpose against a float64 NumPy reference and against jax.lax.conv_transpose."""

import contextlib
import os
import platform
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

import jaxseg
from conftest import x64
from reference import (DEFAULT_DIMENSION_NUMBERS, GEOMETRY_GRID, SPARSE_GRID, conv_transpose_ref,
                       explicit_padding, from_canonical, to_canonical)
from tolerances import assert_close

DTYPES = [np.float32, jnp.bfloat16, np.float16, np.float64]


def run_case(rng, in_spatial, kernel, strides, padding, *, batch=2, cin=3, cout=4, dilation=None,
             transpose_kernel=False, consistent=False, dimension_numbers=None, dtype=np.float32, groups=1):
  """jaxseg against lax's shape and dtype and, element-wise, against the float64 NumPy reference computed from
  the same (rounded) operands; float64 cases run with x64 enabled. With groups (G dividing cin and cout), the
  kernel holds cin/G inputs (or, with transpose_kernel, cout/G outputs) per group, as lax's grouped
  convolution; lax.conv_transpose itself has no groups, so its shape and dtype are checked at G = 1 only."""
  with x64() if dtype == np.float64 else contextlib.nullcontext():
    n = len(in_spatial)
    dn = dimension_numbers or DEFAULT_DIMENSION_NUMBERS[n]
    lhs_spec, rhs_spec, out_spec = dn
    sizes = {"N": batch, "C": cin}
    spatial = [s for s in rhs_spec if s not in "IO"]  # jax numbers spatial axes in the kernel spec's order
    lhs_shape = [sizes[c] if c in sizes else in_spatial[spatial.index(c)] for c in lhs_spec]
    io = {"I": cout // groups, "O": cin} if transpose_kernel else {"I": cin // groups, "O": cout}
    rhs_shape = [io[c] if c in io else kernel[spatial.index(c)] for c in rhs_spec]
    lhs = rng.standard_normal(lhs_shape).astype(dtype)
    rhs = rng.standard_normal(rhs_shape).astype(dtype)
    kw = dict(rhs_dilation=dilation, dimension_numbers=dimension_numbers, transpose_kernel=transpose_kernel,
              use_consistent_padding=consistent)
    got = jaxseg.conv_transpose(lhs, rhs, strides, padding, **kw, feature_group_count=groups)
    if groups == 1:
      want_lax = jax.eval_shape(lambda a, b: lax.conv_transpose(a, b, strides, padding, **kw), lhs, rhs)
      assert got.shape == want_lax.shape and got.dtype == want_lax.dtype
    assert got.dtype == lhs.dtype
    x, w = to_canonical(np.asarray(lhs, np.float64), np.asarray(rhs, np.float64), dn, transpose_kernel, groups)
    pads = explicit_padding(padding, kernel, strides, dilation, consistent)
    want = from_canonical(conv_transpose_ref(x, w, strides, pads, dilation, groups), out_spec, rhs_spec)
    assert_close(got, want)
    return got


GRID = GEOMETRY_GRID + SPARSE_GRID


@pytest.mark.parametrize("in_spatial,kernel,strides,padding", GRID)
@pytest.mark.parametrize("transpose_kernel", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("groups", [1, 2], ids=lambda g: f"G{g}")
def test_grid(rng, in_spatial, kernel, strides, padding, transpose_kernel, dtype, groups):
  # Grouped: 2 input and 3 output channels per group (transpose_kernel reads the kernel's axes the other way).
  channels = dict(cin=4, cout=6) if groups > 1 else {}
  run_case(rng, in_spatial, kernel, strides, padding, transpose_kernel=transpose_kernel, dtype=dtype,
           groups=groups, **channels)


@pytest.mark.parametrize("in_spatial,kernel,strides,padding", [
    ((7,), (4,), (2,), [(1, 1)]),
    ((5, 6), (4, 3), (2, 2), [(1, 1), (0, 2)]),
    ((3, 3, 2), (2, 3, 3), (2, 2, 1), [(0, 0), (1, 1), (1, 0)]),
])
def test_consistent_padding(rng, in_spatial, kernel, strides, padding):
  run_case(rng, in_spatial, kernel, strides, padding, consistent=True, transpose_kernel=True)


@pytest.mark.parametrize("in_spatial,kernel,strides,padding,dilation", [
    ((7,), (3,), (2,), "SAME", (2,)),
    ((6, 5), (3, 2), (2, 3), "VALID", (2, 3)),
    ((5, 4), (2, 3), (3, 2), [(1, 2), (0, 3)], (4, 2)),
    ((3, 3, 3), (2, 2, 2), (2, 2, 2), "SAME", (3, 1, 2)),
])
def test_rhs_dilation(rng, in_spatial, kernel, strides, padding, dilation):
  run_case(rng, in_spatial, kernel, strides, padding, dilation=dilation)


@pytest.mark.parametrize("dn", [
    ("NCH", "OIH", "NCH"),
    ("NCHW", "OIHW", "NCHW"),
    ("NHWC", "OIHW", "NCHW"),
    ("CHWN", "IOWH", "WHNC"),
    ("NCHWD", "OIHWD", "NDHWC"),
])
@pytest.mark.parametrize("transpose_kernel", [False, True])
def test_dimension_numbers(rng, dn, transpose_kernel):
  n = len(dn[0]) - 2
  in_spatial, kernel = ((5, 4, 3)[:n], (3, 4, 2)[:n])
  run_case(rng, in_spatial, kernel, (2, 3, 2)[:n], "SAME", dimension_numbers=dn, transpose_kernel=transpose_kernel)


def test_wide_channels_and_tiles(rng):
  # Channel counts that are not multiples of any register tile, with many pixels per row.
  run_case(rng, (9, 37), (3, 4), (2, 2), "SAME", batch=3, cin=37, cout=70)
  run_case(rng, (41,), (16,), (8,), [(11, 11)], batch=2, cin=19, cout=33)
  # Few output channels: the forward's dot-product form, with a depth that is not a whole number of vectors.
  run_case(rng, (7, 6), (4, 3), (2, 3), [(2, 1), (-1, 2)], batch=3, cin=37, cout=1)
  run_case(rng, (5, 5, 3), (2, 3, 2), (2, 2, 1), "SAME", batch=2, cin=64, cout=3)


@pytest.mark.parametrize("lhs_shape,rhs_shape,strides,padding", [
    ((3, 9, 37, 37), (3, 4, 37, 70), (2, 2), "SAME"),
    ((2, 41, 19), (16, 19, 33), (8,), [(11, 11)]),
    ((2, 11, 13, 70), (4, 4, 70, 37), (2, 2), [(2, 2), (1, 3)]),
    ((3, 7, 6, 37), (4, 3, 37, 2), (2, 3), [(2, 1), (-1, 2)]),
    # Enough channels that blocks order their rows by the taps they read (border rows apart).
    ((2, 4, 5, 3, 64), (3, 4, 2, 64, 72), (2, 2, 2), "SAME"),
    ((2, 9, 80), (5, 80, 64), (3,), [(1, 2)]),
    # Strides far larger than the kernel (phases without taps).
    ((2, 5, 6, 8), (3, 2, 8, 5), (8, 7), "SAME"),
    ((2, 4, 6), (3, 6, 4), (200,), [(1, 1)]),
])
@pytest.mark.parametrize("dtype", [np.float32, jnp.bfloat16], ids=lambda d: np.dtype(d).name)
def test_wide_channels_gradients(rng, lhs_shape, rhs_shape, strides, padding, dtype):
  """Forward and gradients where the column tiles are partial: the weight gradient reads a partial tile as whole
  vectors wherever that stays inside the array (the extra lanes are never stored), element by element at its
  end. In bfloat16, odd depths complete their last pair with zeros (builds with the bf16 dot product)."""
  x = jnp.asarray(rng.standard_normal(lhs_shape), dtype)
  w = jnp.asarray(rng.standard_normal(rhs_shape), dtype)
  kw = dict(strides=strides, padding=padding)
  ct = jnp.asarray(rng.standard_normal(jaxseg.conv_transpose(x, w, **kw).shape), dtype)
  out, vjp = jax.vjp(lambda x, w: jaxseg.conv_transpose(x, w, **kw), x, w)
  got = [out, *vjp(ct)]
  with x64():
    out64, vjp64 = jax.vjp(lambda x, w: lax.conv_transpose(x, w, **kw), np.asarray(x, np.float64),
                           np.asarray(w, np.float64))
    want = [out64, *vjp64(np.asarray(ct, np.float64))]
  for a, b in zip(got, want):
    assert_close(a, b)


@pytest.mark.parametrize("lhs_shape,rhs_shape,strides", [
    ((7, 25, 23, 32), (3, 3, 32, 24), (1, 1)),  # one block of dW: split over ranges of (uneven) lines
    ((5, 4001, 64), (6, 64, 3), (1,)),  # 1-D: a line is an image, so at most `batch` parts
    ((2, 6, 6, 256), (3, 3, 256, 24), (2, 2)),  # enough blocks of dW for every thread: no split
])
@pytest.mark.parametrize("dtype", [np.float32, jnp.bfloat16], ids=lambda d: np.dtype(d).name)
def test_weight_gradient_parts(rng, lhs_shape, rhs_shape, strides, dtype):
  """The weight gradient splits its blocks over ranges of pixels when there are fewer than threads (stride 1: one
  phase, one block); the part that ends last sums the parts in a fixed order, so repeated runs agree bit for
  bit."""
  x = jnp.asarray(rng.standard_normal(lhs_shape), dtype)
  w = jnp.asarray(rng.standard_normal(rhs_shape), dtype)
  kw = dict(strides=strides, padding="SAME")
  ct = jnp.asarray(rng.standard_normal(jaxseg.conv_transpose(x, w, **kw).shape), dtype)
  dw = jax.jit(lambda x, w, ct: jax.vjp(lambda w: jaxseg.conv_transpose(x, w, **kw), w)[1](ct)[0])
  got = np.asarray(dw(x, w, ct))
  with x64():
    _, vjp64 = jax.vjp(lambda w: lax.conv_transpose(np.asarray(x, np.float64), w, **kw),
                       np.asarray(w, np.float64))
    want = np.asarray(vjp64(np.asarray(ct, np.float64))[0])
  assert_close(got, want)
  for _ in range(10):
    np.testing.assert_array_equal(np.asarray(dw(x, w, ct)), got)


@pytest.mark.parametrize("lhs_shape,rhs_shape,strides,padding", [
    ((64, 7, 6, 37), (4, 4, 37, 3), (2, 2), "SAME"),
    ((64, 5, 7, 20), (3, 4, 20, 1), (2, 3), [(2, 1), (-1, 2)]),
    ((64, 9, 40), (16, 40, 2), (8,), [(11, 11)]),
    ((64, 3, 4, 3, 16), (2, 3, 2, 16, 4), (2, 1, 2), "VALID"),
])
def test_few_output_channels_many_images(rng, lhs_shape, rhs_shape, strides, padding):
  """Few output channels and a batch of many images: the forward computes every tap's products per input
  pixel, image by image, and gathers them per output."""
  x = rng.standard_normal(lhs_shape).astype(np.float32)
  w = rng.standard_normal(rhs_shape).astype(np.float32)
  kw = dict(strides=strides, padding=padding)
  got = jaxseg.conv_transpose(x, w, **kw)
  for flipped in (False, True):
    w_t = np.swapaxes(w[tuple(slice(None, None, -1) for _ in strides)], -1, -2) if flipped else w
    got_t = jaxseg.conv_transpose(x, w_t, **kw, transpose_kernel=flipped)
    assert_close(got_t, got)
  with x64():
    want = lax.conv_transpose(np.asarray(x, np.float64), np.asarray(w, np.float64), **kw)
  assert_close(got, want)
  x16, w16 = jnp.asarray(x, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16)
  got16 = jaxseg.conv_transpose(x16, w16, **kw)
  with x64():
    want16 = lax.conv_transpose(np.asarray(x16, np.float64), np.asarray(w16, np.float64), **kw)
  assert got16.dtype == jnp.bfloat16
  assert_close(got16, want16)


def test_large_results(rng):
  """Results of several MiB (the CPU handler asks for huge pages on them before writing): forward and input
  gradient against float64, twice, so the second run writes into memory the first may have left mapped."""
  x = jnp.asarray(rng.standard_normal((3, 40, 33, 24)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((4, 4, 24, 96)), jnp.float32)
  kw = dict(strides=(2, 2), padding="SAME")
  ct = jnp.asarray(rng.standard_normal((3, 80, 66, 96)), jnp.float32)  # 5.8 MiB, as the result
  f = jax.jit(lambda x, w, ct: (lambda out, vjp: (out, vjp(ct)[0]))(
      *jax.vjp(lambda x: jaxseg.conv_transpose(x, w, **kw), x)))
  with x64():
    out64, vjp64 = jax.vjp(lambda x: lax.conv_transpose(x, np.asarray(w, np.float64), **kw),
                           np.asarray(x, np.float64))
    want = [np.asarray(out64), np.asarray(vjp64(np.asarray(ct, np.float64))[0])]
  for _ in range(2):
    got = f(x, w, ct)
    assert got[0].nbytes >= 5 << 20
    for a, b in zip(got, want):
      assert_close(a, b)


def test_no_spatial_dims(rng):
  lhs = rng.standard_normal((3, 7)).astype(np.float32)
  rhs = rng.standard_normal((7, 5)).astype(np.float32)
  got = jaxseg.conv_transpose(lhs, rhs, (), [])
  assert_close(got, lhs.astype(np.float64) @ rhs)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, np.float16], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("preferred", [None, np.float32])
def test_half_precision(rng, dtype, preferred):
  """16-bit operands accumulate in float32: a float32 result (preferred_element_type) is as exact as a float32
  computation on the rounded operands; a 16-bit result is that, rounded once."""
  lhs = jnp.asarray(rng.standard_normal((2, 7, 6, 5)), dtype)
  rhs = jnp.asarray(rng.standard_normal((4, 3, 5, 6)), dtype)
  got = jaxseg.conv_transpose(lhs, rhs, (2, 2), "SAME", preferred_element_type=preferred)
  want_lax = lax.conv_transpose(lhs, rhs, (2, 2), "SAME", preferred_element_type=preferred)
  assert got.dtype == want_lax.dtype == (preferred or dtype)
  pads = explicit_padding("SAME", (4, 3), (2, 2))
  want = conv_transpose_ref(np.asarray(lhs, np.float64), np.asarray(rhs, np.float64), (2, 2), pads)
  assert_close(got, want)


def test_preferred_float64_from_float32(rng):
  with x64():
    lhs = rng.standard_normal((2, 5, 3)).astype(np.float32)
    rhs = rng.standard_normal((3, 3, 4)).astype(np.float32)
    got = jaxseg.conv_transpose(lhs, rhs, (2,), "VALID", preferred_element_type=jnp.float64)
    assert got.dtype == np.float64
    want = conv_transpose_ref(lhs, rhs, (2,), explicit_padding("VALID", (3,), (2,)))
    assert_close(got, want)


@pytest.mark.parametrize("dtype", [np.int32, np.complex64])
def test_fallback_dtypes_match_lax(rng, dtype):
  lhs = (rng.standard_normal((2, 5, 3)) * 4).astype(dtype)
  rhs = (rng.standard_normal((3, 3, 4)) * 4).astype(dtype)
  np.testing.assert_array_equal(jaxseg.conv_transpose(lhs, rhs, (2,), "SAME"),
                                lax.conv_transpose(lhs, rhs, (2,), "SAME"))


def test_zero_size_batch_and_channels(rng):
  lhs = np.zeros((0, 5, 5, 3), np.float32)
  rhs = rng.standard_normal((3, 3, 3, 4)).astype(np.float32)
  assert jaxseg.conv_transpose(lhs, rhs, (2, 2), "SAME").shape == (0, 10, 10, 4)
  # No input channels: the output is all zeros, and must be written as such.
  lhs = np.ones((2, 5, 5, 0), np.float32)
  rhs = np.ones((3, 3, 0, 4), np.float32)
  out = jaxseg.conv_transpose(lhs, rhs, (2, 2), "SAME")
  assert out.shape == (2, 10, 10, 4) and not np.any(np.asarray(out))


def test_jit_matches_eager(rng):
  lhs = rng.standard_normal((2, 5, 6, 3)).astype(np.float32)
  rhs = rng.standard_normal((3, 4, 3, 5)).astype(np.float32)
  f = lambda a, b: jaxseg.conv_transpose(a, b, (2, 3), [(1, 2), (0, 1)])
  np.testing.assert_array_equal(jax.jit(f)(lhs, rhs), f(lhs, rhs))


@pytest.mark.parametrize("pass_name", ["forward", "input_grad", "weight_grad"])
def test_repeated_runs_over_poisoned_memory(rng, pass_name):
  """Every output element is written on every run. Each run hands the pass a result buffer just filled with
  NaN: a donated argument that XLA aliases to the result, so the pass's output memory is that buffer (the
  buffer addresses confirm it, so the test cannot pass vacuously), not whatever the allocator happens to reuse.
  The results never contain NaN and are bit-identical across runs."""
  lhs = jnp.asarray(rng.standard_normal((3, 9, 7, 5)), jnp.float32)
  rhs = jnp.asarray(rng.standard_normal((3, 4, 5, 6)), jnp.float32)
  conv = lambda a, b: jaxseg.conv_transpose(a, b, strides=(2, 3), padding=[(2, 0), (1, -1)])
  ct = jnp.asarray(rng.standard_normal(jax.eval_shape(conv, lhs, rhs).shape), jnp.float32)
  f = {"forward": lambda a, b, c: conv(a, b),
       "input_grad": lambda a, b, c: jax.vjp(lambda a: conv(a, b), a)[1](c)[0],
       "weight_grad": lambda a, b, c: jax.vjp(lambda b: conv(a, b), b)[1](c)[0]}[pass_name]
  result = jax.eval_shape(f, lhs, rhs, ct)
  run = jax.jit(lambda poisoned, a, b, c: f(a, b, c), donate_argnums=0, keep_unused=True)
  first = None
  for _ in range(5):
    poisoned = jnp.full(result.shape, jnp.nan, result.dtype).block_until_ready()
    address = poisoned.unsafe_buffer_pointer()
    got = run(poisoned, lhs, rhs, ct)
    assert got.unsafe_buffer_pointer() == address, "the result was not written into the poisoned buffer"
    got = np.asarray(got)
    assert not np.isnan(got).any()
    if first is None:
      first = got
    np.testing.assert_array_equal(got, first)


def test_odd_output_sizes_have_no_extra_elements(rng):
  # k3/s2/p1 gives 2H-1 outputs: the phases have different extents.
  pads = jaxseg.torch_padding(3, 1)
  lhs = rng.standard_normal((1, 15, 15, 4)).astype(np.float32)
  rhs = rng.standard_normal((3, 3, 2, 4)).astype(np.float32)  # PyTorch weight (4, 2, 3, 3) permuted
  out = jaxseg.conv_transpose(lhs, rhs, (2, 2), pads * 2, transpose_kernel=True)
  assert out.shape == (1, 29, 29, 2)
  with x64():
    want = lax.conv_transpose(np.asarray(lhs, np.float64), np.asarray(rhs, np.float64), (2, 2), pads * 2,
                              transpose_kernel=True)
  assert_close(out, want)


@pytest.mark.cpu_only
@pytest.mark.parametrize("transpose_kernel", [False, True])
def test_packed_weight_cache(rng, transpose_kernel):
  """Packed weights of 1 MiB and more go through a buffer cache between calls: a call that takes a buffer last
  filled for other weights of the same shape still gets its own result (forward and both gradients, against
  float64), and the cache can be emptied. Power-of-two channels take the blocked packing of a strided kernel."""
  from jaxseg import _ext
  kw = dict(strides=(2, 2), padding="SAME", transpose_kernel=transpose_kernel)
  x = rng.standard_normal((2, 5, 6, 128)).astype(np.float32)
  shape = (4, 4, 256, 128) if transpose_kernel else (4, 4, 128, 256)  # 2 MiB packed
  for _ in range(2):
    w = rng.standard_normal(shape).astype(np.float32)
    ct = rng.standard_normal(jaxseg.conv_transpose(x, w, **kw).shape).astype(np.float32)
    out, vjp = jax.vjp(lambda x, w: jaxseg.conv_transpose(x, w, **kw), x, w)
    got = [out, *vjp(jnp.asarray(ct))]
    with x64():
      x64_, w64 = np.asarray(x, np.float64), np.asarray(w, np.float64)
      out64, vjp64 = jax.vjp(lambda x, w: lax.conv_transpose(x, w, **kw), x64_, w64)
      want = [np.asarray(v) for v in (out64, *vjp64(np.asarray(ct, np.float64)))]
    for a, b in zip(got, want):
      assert_close(a, b)
  assert _ext.cpu.buffer_cache_bytes() >= 2 << 20
  jaxseg.clear_cpu_buffer_cache()
  assert _ext.cpu.buffer_cache_bytes() == 0


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_randomized(data):
  n = data.draw(st.integers(1, 3), label="spatial dims")
  in_spatial = tuple(data.draw(st.lists(st.integers(1, 6), min_size=n, max_size=n), label="in"))
  kernel = tuple(data.draw(st.lists(st.integers(1, 5), min_size=n, max_size=n), label="kernel"))
  strides = tuple(data.draw(st.lists(st.integers(1, 4), min_size=n, max_size=n), label="strides"))
  dilation = tuple(data.draw(st.lists(st.integers(1, 2), min_size=n, max_size=n), label="dilation"))
  mode = data.draw(st.sampled_from(["SAME", "VALID", "explicit"]), label="padding")
  if mode == "explicit":
    padding = []
    for h, k, s, d in zip(in_spatial, kernel, strides, dilation):
      eff = d * (k - 1) + 1
      lo = data.draw(st.integers(-2, eff + 1))
      # Keep the output non-empty: (h-1)*s + 1 + lo + hi - eff + 1 >= 1.
      hi = data.draw(st.integers(max(-2, eff - 1 - (h - 1) * s - lo), eff + 1))
      padding.append((lo, hi))
  else:
    padding = mode
  seed = data.draw(st.integers(0, 2**31), label="seed")
  groups = data.draw(st.sampled_from([1, 1, 2, 3]), label="groups")
  cin, cout = (data.draw(st.integers(1, 5 if groups == 1 else 2)) * groups for _ in range(2))
  run_case(np.random.default_rng(seed), in_spatial, kernel, strides, padding, dilation=dilation,
           batch=data.draw(st.integers(1, 3)), cin=cin, cout=cout, groups=groups,
           transpose_kernel=data.draw(st.booleans()), dtype=data.draw(st.sampled_from(DTYPES), label="dtype"))


def _cpu_flags():
  try:
    with open("/proc/cpuinfo") as f:
      return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
  except OSError:
    return set()


@pytest.mark.cpu_only
@pytest.mark.skipif("JAXSEG_CPU_ISA" in os.environ, reason="a build is pinned")
def test_bf16_build_where_the_cpu_has_it():
  """The default build is the one with the bf16 dot product (vdpbf16ps) exactly where the CPU has AVX512-BF16."""
  from jaxseg import _ext
  flags = _cpu_flags()
  if not flags:
    pytest.skip("no /proc/cpuinfo flags")
  has = {"avx512f", "avx512vl", "avx512bw", "avx512dq", "fma", "avx512_bf16"} <= flags
  assert (_ext.cpu.selected_isa() == "avx512_bf16") == has


@pytest.mark.cpu_only
@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_other_instruction_sets(isa):
  """The portable, AVX2 and AVX-512 builds of the kernels (the widest the CPU runs is the default; AVX-512
  without the bf16 dot product is the bfloat16 fallback of CPUs without AVX512-BF16)."""
  code = textwrap.dedent("""
      import jax, numpy as np, jax.numpy as jnp
      from jax import lax
      import jaxseg
      from jaxseg import _ext
      from tolerances import assert_close
      rng = np.random.default_rng(1)
      for dt in (np.float32, jnp.bfloat16):
        # The last case has few output channels and many images: the forward's per-image form.
        for shape, k, s, p, cout in [((2, 7, 9, 37), (3, 4), (2, 3), [(1, 2), (0, 1)], 21),
                                     ((2, 19, 33), (16,), (8,), "SAME", 21),
                                     ((64, 5, 6, 20), (4, 4), (2, 2), "SAME", 3)]:
          x = jnp.asarray(rng.standard_normal(shape), dt)
          w = jnp.asarray(rng.standard_normal((*k, shape[-1], cout)), dt)
          y, vjp = jax.vjp(lambda x, w: jaxseg.conv_transpose(x, w, s, p), x, w)
          ct = jnp.asarray(rng.standard_normal(y.shape), dt)
          with jax.enable_x64(True):
            f64 = lambda a: np.asarray(a, np.float64)
            want_y, vjp64 = jax.vjp(lambda x, w: lax.conv_transpose(x, w, s, p), f64(x), f64(w))
            want = [want_y, *vjp64(f64(ct))]
          for got, ref in zip([y, *vjp(ct)], want):
            assert_close(got, ref, err_msg=str((dt, shape)))
      print(_ext.cpu.selected_isa())
  """)
  env = dict(os.environ, JAXSEG_CPU_ISA=isa, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                       cwd=os.path.dirname(os.path.abspath(__file__)))
  assert out.returncode == 0, out.stderr[-3000:]
  from jaxseg import _ext
  # A build the CPU cannot run falls back to the widest one it can.
  order = ["generic", "avx2", "avx512", "avx512_bf16"]
  default = _ext.cpu.selected_isa()
  expected = isa if order.index(isa) <= order.index(default) else default
  assert out.stdout.strip().splitlines()[-1] == expected


@pytest.mark.cpu_only
def test_pinned_build_is_checked():
  """JAXSEG_CPU_ISA must name a build of this module: a typo is an error at import, not a silent default."""
  from jaxseg import _ext
  builds = _ext.cpu.kernel_builds()
  assert builds[0] == "generic" and _ext.cpu.selected_isa() in builds
  if platform.machine() in ("x86_64", "AMD64"):
    assert builds == ["generic", "avx2", "avx512", "avx512_bf16"]
  env = dict(os.environ, JAXSEG_CPU_ISA="avx9000", JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", "import jaxseg"], env=env, capture_output=True, text=True,
                       timeout=300, cwd=os.path.dirname(os.path.abspath(__file__)))
  assert out.returncode != 0
  assert "ValueError: JAXSEG_CPU_ISA='avx9000' names no kernel build" in out.stderr, out.stderr[-2000:]
