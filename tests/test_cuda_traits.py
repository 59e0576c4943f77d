"""CUDA graphs, checked without a GPU (issue 23 item 5): every handler declares XLA FFI's command-buffer trait (read
through the FFI metadata query, as XLA reads it), and the weight gradient's split-K partials are an XLA-allocated
second result of its CUDA call, sized by the extension as the handler plans them, so no handler allocates at run
time."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

import jaxseg
from jaxseg import _ext
from jaxseg._passes import PASSES
from gpu_plan import execute

pytestmark = [pytest.mark.cpu_only,
              pytest.mark.skipif(_ext.cuda is None, reason="jaxseg was built without its CUDA module")]


def test_every_cuda_handler_is_command_buffer_compatible():
  traits = {name: _ext.cuda.handler_traits(capsule) for name, capsule in _ext.cuda.registrations().items()}
  assert set(traits) == {p.target for p in PASSES}
  bit = _ext.cuda.TRAIT_COMMAND_BUFFER_COMPATIBLE
  assert bit == 1  # XLA_FFI_HANDLER_TRAITS_COMMAND_BUFFER_COMPATIBLE
  assert all(t & bit for t in traits.values()), traits


def test_cpu_handlers_answer_the_metadata_query():
  # XLA's CPU runtime has no command buffers; the CPU handlers declare no trait (what they declare is read, so a
  # change shows here).
  traits = {name: _ext.cuda.handler_traits(capsule) for name, capsule in _ext.cpu.registrations().items()}
  assert set(traits) == {p.target for p in PASSES}
  assert all(t == 0 for t in traits.values()), traits


def test_handler_traits_rejects_a_null_capsule():
  with pytest.raises(TypeError):
    _ext.cuda.handler_traits(None)


# (x spatial, kernel, strides, padding, batch, ci, co, dtype): tensor-core and CUDA-core weight gradients.
_CASES = [((9, 11), (4, 4), (2, 2), [(1, 2), (3, 0)], 3, 16, 24, "float32"),
          ((40, 36), (2, 2), (2, 2), [(0, 0), (0, 0)], 4, 16, 32, "bfloat16"),   # many pixels per tap: splits
          ((6, 5), (3, 4), (2, 3), [(1, 1), (2, 2)], 2, 5, 7, "float32"),        # CUDA cores
          ((7,), (3,), (2,), [(1, 1)], 2, 6, 4, "float64")]


def _shapes(case):
  """Canonical (x, dy, w) shapes with a group axis; padding of the stride-dilated input, as lax's."""
  in_spatial, kernel, strides, padding, batch, ci, co, _ = case
  out = [(i - 1) * s + 1 + lo + hi - (k - 1) for i, k, s, (lo, hi) in zip(in_spatial, kernel, strides, padding)]
  return (1, batch, *in_spatial, ci), (1, batch, *out, co), (1, *kernel, ci, co)


@pytest.mark.parametrize("multiprocessors", [1, 16, 132])
@pytest.mark.parametrize("case", _CASES, ids=lambda c: f"{c[-1]}-{c[5]}x{c[6]}")
def test_partial_bytes_are_the_executors_plan(rng, case, multiprocessors):
  # The lowering's size and the executor's (the handler's) plan come from one computation: the executor plans
  # within exactly that buffer and uses all of it.
  in_spatial, kernel, strides, padding, batch, ci, co, dtype = case
  x_shape, dy_shape, w_shape = _shapes(case)
  pads = padding
  n = len(kernel)
  nbytes = _ext.cuda.weight_grad_partial_bytes(list(x_shape), list(dy_shape), list(w_shape), list(strides),
                                               [1] * n, [p[0] for p in pads], [p[1] for p in pads], False, dtype,
                                               multiprocessors)
  np_dtype = jnp.dtype(dtype)
  x = rng.integers(-2, 3, x_shape).astype(np_dtype)
  dy = rng.integers(-2, 3, dy_shape).astype(np_dtype)
  _, report = execute("weight_grad", x, dy, w_shape, strides=strides, padding=pads, multiprocessors=multiprocessors)
  assert report["partial_capacity"] == nbytes
  assert report["scratch_bytes"] == nbytes, report


def test_a_buffer_lowered_for_fewer_multiprocessors_splits_less_and_stays_exact(rng):
  # A device with more multiprocessors than the lowering assumed plans within the smaller buffer.
  x = rng.integers(-2, 3, (1, 4, 40, 36, 16)).astype(np.float32)
  dy = rng.integers(-2, 3, (1, 4, 80, 72, 32)).astype(np.float32)
  geometry = dict(strides=(2, 2), padding=[(1, 1), (1, 1)])
  small = _ext.cuda.weight_grad_partial_bytes([1, 4, 40, 36, 16], [1, 4, 80, 72, 32], [1, 2, 2, 16, 32], [2, 2],
                                              [1, 1], [1, 1], [1, 1], False, "float32", 4)
  want, full = execute("weight_grad", x, dy, (1, 2, 2, 16, 32), precision=1, multiprocessors=132, **geometry)
  got, capped = execute("weight_grad", x, dy, (1, 2, 2, 16, 32), precision=1, multiprocessors=132,
                        partial_bytes=small, **geometry)
  assert 1 < capped["splits"] < full["splits"], (capped, full)
  assert capped["scratch_bytes"] <= small
  np.testing.assert_array_equal(got, want)  # integer-valued operands: every summation order is exact
  with pytest.raises(ValueError, match="smaller than one split"):
    execute("weight_grad", x, dy, (1, 2, 2, 16, 32), partial_bytes=small // 4, **geometry)


def _cuda_text(fn, *args):
  checks = [export.DisabledSafetyCheck.custom_call(p.target) for p in PASSES]
  return export.export(jax.jit(fn), platforms=["cuda"], disabled_checks=checks)(*args).mlir_module()


@pytest.fixture
def gpu_kernels(monkeypatch):
  """The CUDA kernels asked for (they are opt-in until a device run validates them)."""
  monkeypatch.setenv("JAXSEG_GPU_KERNELS", "1")
  switch = getattr(jaxseg, "use_gpu_kernels", None)
  if switch is not None:
    switch(True)
  yield
  if switch is not None:
    switch(None) if _accepts_none(switch) else switch(False)


def _accepts_none(switch):
  try:
    switch(None)
    return True
  except (TypeError, ValueError):
    return False


def _ints(text):
  return [int(v) for v in re.findall(r"-?\d+", text)]


def _dense(match):
  """An int64 attribute printed as dense<[a, b]> or, when its values are equal, dense<a> (splat)."""
  values, n = _ints(match.group(1)), int(match.group(2))
  return values if len(values) == n else values * n


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_weight_grad_call_carries_its_partials_as_a_second_result(gpu_kernels, dtype):
  x = jnp.ones((2, 7, 9, 16), dtype)
  w = jnp.ones((4, 4, 16, 24), dtype)
  f = lambda x, w: jnp.sum(jnp.square(jaxseg.conv_transpose(x, w, (2, 2), "SAME").astype(jnp.float32)))
  text = _cuda_text(jax.grad(f, 1), x, w)
  weight_grad = next(p.target for p in PASSES if p.name == "weight_grad")
  call = re.search(rf"custom_call @{weight_grad}\(.*?backend_config = \{{(.*?)\}}.*?: \((.*?)\) -> (.*)", text)
  assert call, text
  attrs, operands, results = call.groups()
  shapes = [_ints(s) for s in re.findall(r"tensor<([\dx]+)x\w+>", operands)]
  result_shapes = re.findall(r"tensor<([\dx]+)x(\w+)>", results)
  assert len(result_shapes) == 2, results
  attr = lambda name: _dense(re.search(rf"{name} = dense<([^>]*)> : tensor<(\d+)xi64>", attrs))
  nbytes = _ext.cuda.weight_grad_partial_bytes(shapes[0], shapes[1], _ints(result_shapes[0][0]), attr("strides"),
                                               attr("dilation"), attr("padding_lo"), attr("padding_hi"), False,
                                               jnp.dtype(dtype).name, 132)
  assert nbytes > 0
  assert result_shapes[1] == (str(nbytes), "ui8"), results
  # The forward and input_grad calls keep one result.
  for p in PASSES:
    if p.name != "weight_grad":
      assert not re.search(rf"custom_call @{p.target}\(.*?-> \(", text)
