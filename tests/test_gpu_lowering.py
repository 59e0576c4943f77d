"""The CUDA lowering, checked without a GPU: jax.export lowers for the 'cuda' platform on any machine, so these
tests read what a GPU would be handed: our three custom calls with the precision attribute, the kernel read in
either orientation where it lies, and XLA's convolution beyond the CUDA kernels' limits. The GPU kernels are
switched on here (they are opt-in; tests/test_gpu_switch.py checks the switch)."""

import re

import jax
import jax.numpy as jnp
import pytest
from jax import export, lax

import jaxseg
from jaxseg import _ext
from jaxseg._passes import PASSES
from gpu_switch_state import restored as switch_restored

pytestmark = [pytest.mark.cpu_only,
              pytest.mark.skipif(_ext.cuda is None, reason="jaxseg was built without its CUDA module")]

TARGETS = {p.target for p in PASSES}


@pytest.fixture(autouse=True, scope="module")
def gpu_kernels_on():
  with switch_restored(True):
    yield


def _cuda_module(fn, *args):
  checks = [export.DisabledSafetyCheck.custom_call(t) for t in TARGETS]
  return export.export(jax.jit(fn), platforms=["cuda"], disabled_checks=checks)(*args).mlir_module()


def _calls(text):
  """{target: [its attribute text]} of the module's jaxseg custom calls."""
  calls = {}
  for m in re.finditer(r"custom_call @(jaxseg\w+)\(.*?mhlo\.backend_config = \{(.*?)\}", text):
    calls.setdefault(m.group(1), []).append(m.group(2))
  return calls


def _grad(f):
  return jax.grad(lambda x, w: jnp.sum(jnp.square(f(x, w).astype(jnp.float32))), (0, 1))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("transpose_kernel", [False, True])
def test_gradient_lowers_to_the_three_calls_without_copies(dtype, transpose_kernel):
  x = jnp.ones((2, 7, 7, 16), dtype)
  w = jnp.ones((4, 4, 24, 16) if transpose_kernel else (4, 4, 16, 24), dtype)
  f = lambda x, w: jaxseg.conv_transpose(x, w, (2, 2), "SAME", transpose_kernel=transpose_kernel)
  text = _cuda_module(_grad(f), x, w)
  calls = _calls(text)
  assert set(calls) == TARGETS, calls
  assert all(f"transpose_kernel = {str(transpose_kernel).lower()}" in a for v in calls.values() for a in v)
  # The kernel is read where it lies: no reversal, and no transposition that moves data (moving the size-1
  # group axis into place, as the canonical layout has it, is a reshape).
  assert not re.search(r"stablehlo\.reverse\b", text), text
  assert all(_moves_no_data(m) for m in re.finditer(r"stablehlo\.transpose .*?dims = \[([\d, ]+)\] : "
                                                      r"\(tensor<([\dx]+)x\w+>\)", text)), text
  assert "convolution" not in text


def _moves_no_data(match):
  """Whether a transpose keeps the order of the axes longer than 1."""
  perm = [int(d) for d in match.group(1).split(",")]
  shape = [int(d) for d in match.group(2).split("x")]
  moved = [a for a in perm if shape[a] > 1]
  return moved == sorted(moved)


@pytest.mark.parametrize("precision,context,want", [
    (None, None, 0),
    (lax.Precision.DEFAULT, None, 0),
    ("high", None, 0),
    ("highest", None, 1),
    ((lax.Precision.DEFAULT, lax.Precision.HIGHEST), None, 1),
    (lax.DotAlgorithmPreset.TF32_TF32_F32, None, 0),
    (lax.DotAlgorithmPreset.TF32_TF32_F32_X3, None, 1),
    (lax.DotAlgorithmPreset.F32_F32_F32, None, 1),
    (None, "highest", 1),
    (None, "float32", 1),
    (None, "tensorfloat32", 0),
    (lax.Precision.DEFAULT, "highest", 0),  # an explicit precision wins over the context, as in lax
])
def test_precision_attribute(precision, context, want):
  x, w = jnp.ones((2, 5, 16), jnp.float32), jnp.ones((3, 16, 8), jnp.float32)
  f = lambda x, w: jaxseg.conv_transpose(x, w, (2,), "SAME", precision=precision)
  with jax.default_matmul_precision(context):  # None: unset (conftest sets 'highest' for every test)
    text = _cuda_module(_grad(f), x, w)
  attrs = [a for v in _calls(text).values() for a in v]
  assert len(attrs) == 3 and all(f"precision = {want} : i64" in a for a in attrs), attrs


def test_kernel_beyond_the_tables_lowers_to_xla():
  x, w = jnp.ones((2, 9, 16), jnp.float32), jnp.ones((33, 16, 8), jnp.float32)
  text = _cuda_module(_grad(lambda x, w: jaxseg.conv_transpose(x, w, (2,), "SAME")), x, w)
  assert not _calls(text) and "convolution" in text


def test_any_stride_lowers_to_our_calls():
  # Only the phases some tap reaches are planned, so a stride far larger than the kernel needs no table.
  x, w = jnp.ones((2, 9, 16), jnp.float32), jnp.ones((3, 16, 8), jnp.float32)
  text = _cuda_module(_grad(lambda x, w: jaxseg.conv_transpose(x, w, (1024,), "VALID")), x, w)
  assert set(_calls(text)) == TARGETS and "convolution" not in text


def test_four_spatial_axes_lower_to_xla():
  x, w = jnp.ones((1, 3, 3, 3, 3, 4), jnp.float32), jnp.ones((2, 2, 2, 2, 4, 4), jnp.float32)
  dn = ("NHWDTC", "HWDTIO", "NHWDTC")
  f = lambda x, w: jaxseg.conv_transpose(x, w, (2, 2, 2, 2), "SAME", dimension_numbers=dn)
  text = _cuda_module(f, x, w)
  assert not _calls(text) and "convolution" in text


def test_cpu_lowering_is_unchanged_by_the_cuda_limits():
  # The CPU kernels have no tables: the same layer beyond the CUDA limits stays on our CPU calls.
  x, w = jnp.ones((2, 9, 16), jnp.float32), jnp.ones((33, 16, 8), jnp.float32)
  hlo = jax.jit(lambda x, w: jaxseg.conv_transpose(x, w, (2,), "SAME")).lower(x, w).as_text()
  assert "jaxseg_conv_transpose_forward" in hlo
