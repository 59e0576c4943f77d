"""The GPU switch (JAXSEG_GPU_KERNELS, jaxseg.use_gpu_kernels) and the decision made when a computation is lowered
for CUDA, checked without a GPU: jax.export lowers for 'cuda' on any machine, and a simulated GPU of a given
compute capability stands in through the seam `_gpu.lowering_gpus`."""

import os
import subprocess
import sys
import types
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

import jaxseg
from jaxseg import _ext, _gpu
from jaxseg._passes import PASSES
from gpu_switch_state import restored as switch_restored

pytestmark = pytest.mark.cpu_only

TARGETS = {p.target for p in PASSES}
needs_cuda_module = pytest.mark.skipif(_ext.cuda is None, reason="jaxseg was built without its CUDA module")


@pytest.fixture(autouse=True)
def switch():
  """Each test starts from the default (off, not chosen), with no warning given yet, and leaves things as found."""
  with switch_restored():
    yield


def _import_in_subprocess(value, code="print(jaxseg.gpu_kernels_enabled(), jaxseg.environment_info()"
                          "['gpu_kernels']['set_by'])"):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("JAXSEG_GPU_KERNELS", None)
  if value is not None:
    env["JAXSEG_GPU_KERNELS"] = value
  return subprocess.run([sys.executable, "-c", f"import jaxseg; {code}"], env=env, capture_output=True, text=True,
                        timeout=300)


@pytest.mark.parametrize("value,want", [(None, f"{_gpu.DEFAULT_ENABLED} default"),
                                        ("", f"{_gpu.DEFAULT_ENABLED} default"),
                                        ("1", "True JAXSEG_GPU_KERNELS=1"), ("0", "False JAXSEG_GPU_KERNELS=0")])
def test_variable_sets_the_switch_at_import(value, want):
  out = _import_in_subprocess(value)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip() == want


@pytest.mark.parametrize("value", ["2", "true", " 1"])
def test_other_values_are_an_error_naming_the_variable(value):
  out = _import_in_subprocess(value, "pass")
  assert out.returncode != 0
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("ValueError: JAXSEG_GPU_KERNELS=") and repr(value) in last, last
  assert "set it to 1" in last and "0 (always XLA's convolution" in last, last


def test_the_default_is_off_until_validated():
  # Flipping it needs a recorded device run (benchmarks/GPU.md, benchmarks/results/gpu-*.json): this test and
  # docs/gpu.md change with it.
  assert _gpu.DEFAULT_ENABLED is False
  assert jaxseg.gpu_kernels_enabled() is False


def test_use_gpu_kernels_sets_and_reports():
  jaxseg.use_gpu_kernels(True)
  assert jaxseg.gpu_kernels_enabled() is True
  assert jaxseg.environment_info()["gpu_kernels"]["set_by"] == "use_gpu_kernels(True)"
  jaxseg.use_gpu_kernels(np.bool_(False))
  assert jaxseg.gpu_kernels_enabled() is False
  assert jaxseg.environment_info()["gpu_kernels"]["set_by"] == "use_gpu_kernels(False)"


@pytest.mark.parametrize("bad", [1, "yes", None])
def test_use_gpu_kernels_takes_a_bool(bad):
  with pytest.raises(TypeError, match="enabled must be True or False"):
    jaxseg.use_gpu_kernels(bad)


# --------------------------------------------------------------------------------------------------------------
# The lowering for CUDA.


def _f(x, w):
  return jaxseg.conv_transpose(x, w, (2,), "SAME")


def _fresh():
  """A jitted function jax has not lowered before: its lowering cache keys on the function (and on the switch, but
  not on what a test patches into the seam), so each test lowers its own."""
  return jax.jit(lambda x, w: _f(x, w))


def _args():
  return jnp.ones((2, 7, 16), jnp.float32), jnp.ones((3, 16, 8), jnp.float32)


def _cuda_text(fn, platform="cuda"):
  checks = [export.DisabledSafetyCheck.custom_call(t) for t in TARGETS]
  return export.export(fn, platforms=[platform], disabled_checks=checks)(*_args()).mlir_module()


def _lowers_to_ours(text):
  has_ours = any(f"custom_call @{t}(" in text for t in TARGETS)
  has_xla = "stablehlo.convolution" in text
  assert has_ours != has_xla, text  # one or the other
  return has_ours


def _fallback_warnings(record):
  return [w for w in record if issubclass(w.category, jaxseg.GpuFallbackWarning)]


def _export_recording(fn, platform="cuda"):
  with warnings.catch_warnings(record=True) as record:
    warnings.simplefilter("always")
    text = _cuda_text(fn, platform)
  return text, _fallback_warnings(record)


@needs_cuda_module
def test_default_lowers_to_xla_and_warns_once():
  text, warned = _export_recording(_fresh())
  assert not _lowers_to_ours(text)
  assert len(warned) == 1, [str(w.message) for w in warned]
  message = str(warned[0].message)
  assert "XLA's convolution" in message and "validated" in message
  assert "JAXSEG_GPU_KERNELS=1" in message and "jaxseg.use_gpu_kernels(True)" in message
  assert "JAXSEG_GPU_KERNELS=0" in message
  assert warned[0].filename == __file__  # points at the call that compiled, not into jax
  # Once per process: another function, and the gradient's three passes, warn no more.
  text, warned = _export_recording(jax.jit(jax.grad(lambda x, w: jnp.sum(_f(x, w)))))
  assert not _lowers_to_ours(text) and warned == []


def test_warning_is_a_runtime_warning_users_can_filter():
  assert issubclass(jaxseg.GpuFallbackWarning, RuntimeWarning)


@needs_cuda_module
def test_opted_in_lowers_to_our_calls_silently():
  jaxseg.use_gpu_kernels(True)
  text, warned = _export_recording(_fresh())
  assert _lowers_to_ours(text) and warned == []


def test_explicitly_off_lowers_to_xla_silently():
  jaxseg.use_gpu_kernels(False)
  text, warned = _export_recording(_fresh())
  assert not _lowers_to_ours(text) and warned == []


@needs_cuda_module
def test_a_function_compiled_before_the_switch_changes_follows_it():
  """The switch is part of jax's cache keys: the same jitted function lowered again sees the new value."""
  fn = _fresh()
  jaxseg.use_gpu_kernels(False)
  assert not _lowers_to_ours(_cuda_text(fn))
  jaxseg.use_gpu_kernels(True)
  assert _lowers_to_ours(_cuda_text(fn))
  jaxseg.use_gpu_kernels(False)
  assert not _lowers_to_ours(_cuda_text(fn))


def test_switching_recompiles_a_jitted_function(rng):
  """jit's dispatch cache (the C++ fast path) keys on the switch too: a call after a change compiles again, and
  calls under a value seen before reuse that compilation."""
  fn = _fresh()
  x, w = rng.standard_normal((2, 7, 16)).astype(np.float32), rng.standard_normal((3, 16, 8)).astype(np.float32)
  want = np.asarray(fn(x, w))
  jaxseg.use_gpu_kernels(True)
  np.testing.assert_array_equal(fn(x, w), want)  # the CPU computation is the same either way
  assert fn._cache_size() == 2
  jaxseg.use_gpu_kernels(False)
  fn(x, w)
  assert fn._cache_size() == 2


def _gpu_device(capability, kind):
  return types.SimpleNamespace(id=0, platform="gpu", device_kind=kind, compute_capability=capability)


@needs_cuda_module
def test_gpu_below_compute_capability_8_lowers_to_xla_and_warns_once(monkeypatch):
  jaxseg.use_gpu_kernels(True)
  monkeypatch.setattr(_gpu, "lowering_gpus", lambda ctx: [_gpu_device("7.5", "Tesla T4")])
  text, warned = _export_recording(_fresh())
  assert not _lowers_to_ours(text)
  assert len(warned) == 1
  message = str(warned[0].message)
  assert "GPU 0 (Tesla T4) has compute capability 7.5" in message and "need 8.0 or newer" in message
  text, warned = _export_recording(jax.jit(lambda x, w: 2 * _f(x, w)))
  assert not _lowers_to_ours(text) and warned == []


@needs_cuda_module
@pytest.mark.parametrize("capability", ["8.0", "9.0", "12.0"])
def test_gpu_of_compute_capability_8_or_newer_runs_our_calls(monkeypatch, capability):
  jaxseg.use_gpu_kernels(True)
  monkeypatch.setattr(_gpu, "lowering_gpus", lambda ctx: [_gpu_device(capability, "some GPU")])
  text, warned = _export_recording(_fresh())
  assert _lowers_to_ours(text) and warned == []


@needs_cuda_module
def test_lowering_gpus_are_the_cuda_devices_of_the_lowering():
  # Exported from this machine the lowering names CPU devices: no GPU to check (the artifact may run anywhere).
  seen = []
  original = _gpu.lowering_gpus

  def spy(ctx):
    seen.append(original(ctx))
    return seen[-1]

  jaxseg.use_gpu_kernels(True)
  with pytest.MonkeyPatch.context() as m:
    m.setattr(_gpu, "lowering_gpus", spy)
    _cuda_text(_fresh())
  assert seen and all(gpus == [] for gpus in seen), seen


@pytest.mark.parametrize("built,error,want", [
    (False, None, "built without its CUDA module"),
    (True, "undefined symbol: XLA_FFI_Example", "did not load: undefined symbol: XLA_FFI_Example"),
])
def test_missing_module_lowers_to_xla_and_warns_once(monkeypatch, built, error, want):
  jaxseg.use_gpu_kernels(True)
  monkeypatch.setattr(_ext, "cuda", None)
  monkeypatch.setattr(_ext, "cuda_built", built)
  monkeypatch.setattr(_ext, "cuda_error", error)
  text, warned = _export_recording(_fresh())
  assert not _lowers_to_ours(text)
  assert len(warned) == 1
  message = str(warned[0].message)
  assert want in message and "docs/building.md" in message
  text, warned = _export_recording(jax.jit(lambda x, w: 2 * _f(x, w)))
  assert warned == []


@pytest.mark.parametrize("platform", ["rocm", "tpu"])
def test_other_accelerators_always_lower_to_xla_silently(platform):
  jaxseg.use_gpu_kernels(True)
  text, warned = _export_recording(_fresh(), platform)
  assert not _lowers_to_ours(text) and warned == []
