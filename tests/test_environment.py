"""jaxseg.environment_info / print_environment_info: what they report on this machine, and for simulated GPUs."""

import io
import os
import platform
import re
import subprocess
import sys
import types

import jax
import jaxlib
import pytest

import jaxseg
from jaxseg import _environment, _ext, _gpu
from gpu_switch_state import restored as switch_restored

pytestmark = pytest.mark.cpu_only

CPU_FEATURES = ["avx2", "fma", "avx512f", "avx512vl", "avx512bw", "avx512dq", "avx512bf16"]


def _has_gpu():
  try:
    return bool(jax.devices("gpu"))
  except RuntimeError:
    return False


@pytest.fixture
def default_switch():
  with switch_restored():
    yield


def test_versions_and_platform():
  info = jaxseg.environment_info()
  assert info["jaxseg"] == jaxseg.__version__
  assert info["jax"] == jax.__version__ and info["jaxlib"] == jaxlib.__version__
  assert info["python"] == platform.python_version() and info["platform"] == platform.platform()


def test_cpu_build_and_why():
  cpu = jaxseg.environment_info()["cpu"]
  assert cpu["kernel_build"] == _ext.cpu.selected_isa()
  assert cpu["kernel_builds"] == list(_ext.cpu.kernel_builds()) and cpu["kernel_build"] in cpu["kernel_builds"]
  if os.environ.get("JAXSEG_CPU_ISA"):
    assert cpu["pinned"] == os.environ["JAXSEG_CPU_ISA"] and "JAXSEG_CPU_ISA" in cpu["why"]
  else:
    assert cpu["pinned"] is None and cpu["why"] == "the widest build this CPU runs (JAXSEG_CPU_ISA unset)"
  if platform.machine() in ("x86_64", "AMD64"):
    assert list(cpu["features"]) == CPU_FEATURES and all(isinstance(v, bool) for v in cpu["features"].values())
    # The features agree with the build chosen (cpu/handlers.cc ChooseKernels) where nothing pins it.
    if cpu["pinned"] is None:
      f = cpu["features"]
      has512 = all(f[k] for k in ("avx512f", "avx512vl", "avx512bw", "avx512dq", "fma"))
      want = ("avx512_bf16" if has512 and f["avx512bf16"] else "avx512" if has512
              else "avx2" if f["avx2"] and f["fma"] else "generic")
      assert cpu["kernel_build"] == want, cpu
      flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
      if flags:
        assert f["avx2"] == bool(re.search(r"\bavx2\b", flags))
        assert f["avx512bf16"] == bool(re.search(r"\bavx512_bf16\b", flags))
  else:
    assert cpu["features"] == {}


def test_cuda_module():
  module = jaxseg.environment_info()["cuda_module"]
  assert module["loaded"] == (_ext.cuda is not None) and module["built"] == _ext.cuda_built
  if _ext.cuda is None:
    assert module["architectures"] is None and module["path"] is None
    return
  assert module["error"] is None and module["path"] == _ext.cuda.__file__
  archs = module["architectures"].split(",")
  assert archs and all(re.fullmatch(r"\d+[af]?(-real|-virtual)?", a) for a in archs), archs


def test_no_gpu_is_reported_not_raised():
  if _has_gpu():
    pytest.skip("this machine has a GPU")
  info = jaxseg.environment_info()
  assert info["gpus"] == [] and info["gpus_error"]
  printed = _printed()
  assert "GPUs:        none (" in printed
  if info["gpus_error"].startswith("Unknown backend"):  # the CPU-only case, in plain words
    plain = "this jax has no GPU backend: a CPU-only install, or JAX_PLATFORMS leaves it out"
    assert f"GPUs:        none ({plain})" in printed
  else:
    assert f"GPUs:        none ({info['gpus_error']})" in printed


def _printed():
  out = io.StringIO()
  jaxseg.print_environment_info(file=out)
  return out.getvalue()


def test_printed_text(default_switch):
  info = jaxseg.environment_info()
  lines = _printed().splitlines()
  assert lines[:5] == [f"jaxseg:      {jaxseg.__version__}", f"jax:         {jax.__version__}",
                       f"jaxlib:      {jaxlib.__version__}", f"python:      {platform.python_version()}",
                       f"platform:    {platform.platform()}"]
  cpu = info["cpu"]
  assert lines[5] == f"CPU kernels: {cpu['kernel_build']}, {cpu['why']}"
  assert lines[6] == f"  compiled in: {', '.join(cpu['kernel_builds'])}"
  text = "\n".join(lines)
  if cpu["features"]:
    assert re.search(r"^  CPU \(\w+\) has: .*; lacks: ", text, re.M)
    for name, present in cpu["features"].items():
      part = "has" if present else "lacks"
      assert re.search(rf"{part}: [^;]*\b{name}\b", text), (name, text)
  if _ext.cuda is not None:
    assert f"CUDA module: loaded, architectures {_ext.cuda.architectures()} ({_ext.cuda.__file__})" in lines
  assert "GPU kernels: off (set by default; the default is off until validated on hardware)" in lines


def test_printed_switch_follows_use_gpu_kernels(default_switch):
  jaxseg.use_gpu_kernels(True)
  assert "GPU kernels: on (set by use_gpu_kernels(True);" in _printed()
  assert jaxseg.environment_info()["gpu_kernels"] == {"enabled": True, "set_by": "use_gpu_kernels(True)",
                                                     "default": False,
                                                     "environment": _gpu._at_import}


def test_print_goes_to_stdout_by_default(capsys):
  jaxseg.print_environment_info()
  assert capsys.readouterr().out == _printed()


def _device(capability=None, kind="NVIDIA H100 80GB HBM3", id=0):
  attrs = dict(id=id, platform="gpu", device_kind=kind)
  if capability is not None:
    attrs["compute_capability"] = capability
  return types.SimpleNamespace(**attrs)


def _gpus(monkeypatch, *devices):
  monkeypatch.setattr(_environment, "_gpu_devices", lambda: (list(devices), None))
  return jaxseg.environment_info()["gpus"]


@pytest.mark.skipif(_ext.cuda is None, reason="jaxseg was built without its CUDA module")
def test_each_gpu_says_whether_our_kernels_run_on_it(monkeypatch, default_switch):
  devices = _device("9.0"), _device("7.5", "Tesla T4", 1), _device(None, "AMD Instinct MI300X", 2)
  gpus = _gpus(monkeypatch, *devices)
  assert [g["compute_capability"] for g in gpus] == ["9.0", "7.5", None]
  # Not opted in: XLA's convolution on every GPU, the switch given as the reason.
  assert not any(g["jaxseg_kernels"] for g in gpus)
  assert all("opt-in" in g["why_not"] and "JAXSEG_GPU_KERNELS=1" in g["fix"] for g in gpus)
  jaxseg.use_gpu_kernels(True)
  h100, t4, amd = _gpus(monkeypatch, *devices)
  assert h100["jaxseg_kernels"] and h100["why_not"] is None and h100["fix"] is None
  assert not t4["jaxseg_kernels"] and "compute capability 7.5" in t4["why_not"] and "8.0" in t4["why_not"]
  assert not amd["jaxseg_kernels"] and "not a CUDA device" in amd["why_not"]
  text = _printed()
  assert "GPU 0:       NVIDIA H100 80GB HBM3, compute capability 9.0: jaxseg's CUDA kernels" in text
  assert re.search(r"GPU 1: +Tesla T4, compute capability 7\.5: XLA's convolution \(GPU 1 \(Tesla T4\) has "
                   r"compute capability 7\.5; .*need 8\.0 or newer", text), text


def test_gpu_without_the_module(monkeypatch, default_switch):
  jaxseg.use_gpu_kernels(True)
  monkeypatch.setattr(_ext, "cuda", None)
  monkeypatch.setattr(_ext, "cuda_built", False)
  (gpu,) = _gpus(monkeypatch, _device("9.0"))
  assert not gpu["jaxseg_kernels"] and "built without its CUDA module" in gpu["why_not"]
  assert "docs/building.md" in gpu["fix"]
  assert "CUDA module: not built (no CUDA compiler was found when jaxseg was installed)" in _printed()


def test_in_a_fresh_process_pinned_and_cpu_only():
  """A fresh interpreter with jax restricted to the CPU and the CPU build pinned: the report says so."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAXSEG_CPU_ISA="generic")
  env.pop("JAXSEG_GPU_KERNELS", None)
  out = subprocess.run([sys.executable, "-c", "import jaxseg; jaxseg.print_environment_info()"], env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "CPU kernels: generic, pinned by JAXSEG_CPU_ISA=generic" in out.stdout, out.stdout
  assert re.search(r"^GPUs:        none \(.+\)$", out.stdout, re.M), out.stdout
  assert "GPU kernels: off (set by default;" in out.stdout
