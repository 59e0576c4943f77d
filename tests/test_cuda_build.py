"""Compile gates of the CUDA kernels, checked without a GPU: the module holds machine code for exactly the
architectures cuda/CMakeLists.txt names (sm_80, sm_90, sm_100, sm_120) and the PTX of the newest; ptxas reports
no spills, no stack frames and no warnings; the machine code of the tensor-core kernels holds
the tensor-core and asynchronous-copy instructions and no local-memory traffic.

The disassembler comes from the PyPI wheels nvidia-cuda-cuobjdump and nvidia-cuda-nvdisasm (the test extra); the
ptxas report from recompiling cuda/kernels.cu with the nvcc on PATH. Each test is skipped, saying why, where its
tool or the CUDA module is missing."""

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import jax
import pytest

from jaxseg import _ext

pytestmark = pytest.mark.cpu_only

ROOT = Path(__file__).resolve().parents[1]


def _default_architectures():
  """cuda/CMakeLists.txt's CMAKE_CUDA_ARCHITECTURES (its one home): ([sm_XX with machine code], [compute_XX PTX])."""
  text = (ROOT / "cuda" / "CMakeLists.txt").read_text()
  archs = re.search(r'set\(CMAKE_CUDA_ARCHITECTURES "([^"]+)"\)', text).group(1).split(";")
  return ([f"sm_{a.split('-')[0]}" for a in archs if a.endswith("-real")],
          [f"compute_{a.split('-')[0]}" for a in archs if a.endswith("-virtual")])


ARCHS, PTX = _default_architectures()
# The kernels and the instructions their machine code must hold on every architecture.
TENSOR_CORE_KERNELS = {
    ("TiledGatherKernel", "Bf16Math"): "HMMA.16816.F32.BF16",
    ("TiledWeightGradKernel", "Bf16Math"): "HMMA.16816.F32.BF16",
    ("TiledGatherKernel", "F16Math"): "HMMA.16816.F32",
    ("TiledWeightGradKernel", "F16Math"): "HMMA.16816.F32",
    ("TiledGatherKernel", "Tf32Math"): "HMMA.1688.F32.TF32",
    ("TiledWeightGradKernel", "Tf32Math"): "HMMA.1688.F32.TF32",
    ("TiledGatherKernel", "Tf32x3Math"): "HMMA.1688.F32.TF32",
    ("TiledWeightGradKernel", "Tf32x3Math"): "HMMA.1688.F32.TF32",
}


def _load_sass_mix():
  """benchmarks/sass_mix.py (a script, not a package): the SASS tools' lookup and the main loops' mix."""
  spec = importlib.util.spec_from_file_location("sass_mix", ROOT / "benchmarks" / "sass_mix.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


sass_mix = _load_sass_mix()
_tool = sass_mix.tool


def _module_path():
  if _ext.cuda is None:
    pytest.skip("jaxseg was built without its CUDA module (no nvcc at build time)")
  return _ext.cuda.__file__


def _cuobjdump(*args):
  cuobjdump, nvdisasm = _tool("cuobjdump"), _tool("nvdisasm")
  if cuobjdump is None or nvdisasm is None:
    pytest.skip("cuobjdump/nvdisasm not found: pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm")
  env = dict(os.environ, PATH=os.path.dirname(nvdisasm) + os.pathsep + os.environ.get("PATH", ""))
  out = subprocess.run([cuobjdump, *args, _module_path()], capture_output=True, text=True, env=env, timeout=600)
  assert out.returncode == 0, out.stderr
  return out.stdout


def _by_arch_and_function(text):
  """{(arch, mangled function): its lines} of a cuobjdump listing."""
  blocks, arch, function = {}, None, None
  for line in text.splitlines():
    if m := re.match(r"\s*arch = (sm_\d+a?)", line):
      arch, function = m.group(1), None
    elif m := re.match(r"\s*(?:Function :|Function) ?(\S+?):?$", line.strip()):
      function = m.group(1)
      blocks[(arch, function)] = []
    elif function is not None:
      blocks[(arch, function)].append(line)
  return blocks


def test_default_architectures():
  """Machine code for the GPUs jax's CUDA 13 wheels serve (A100, H100/H200, B200, RTX 50xx), PTX for later ones."""
  assert ARCHS == ["sm_80", "sm_90", "sm_100", "sm_120"] and PTX == ["compute_120"]


def test_module_holds_every_architecture_and_ptx():
  """The installed module holds machine code for exactly ARCHS and PTX for exactly PTX (a build that narrowed
  CMAKE_CUDA_ARCHITECTURES fails here, as it should in CI)."""
  elf = set(re.findall(r"\.(sm_\d+)\.cubin", _cuobjdump("--list-elf")))
  assert elf == set(ARCHS), elf
  ptx = set(re.findall(r"\.sm_(\d+)\.ptx", _cuobjdump("--list-ptx")))
  assert {f"compute_{a}" for a in ptx} == set(PTX), ptx
  if hasattr(_ext.cuda, "architectures"):  # the list the module reports (jaxseg.print_environment_info)
    assert _ext.cuda.architectures() == ",".join([f"{a[3:]}-real" for a in ARCHS] + [f"{a[8:]}-virtual" for a in PTX])


def test_no_stack_or_local_memory():
  """Spilled registers and run-time-indexed arrays live in local memory: every kernel must use none."""
  usage = _by_arch_and_function(_cuobjdump("--dump-resource-usage"))
  assert {arch for arch, _ in usage} == set(ARCHS)
  for (arch, function), lines in usage.items():
    text = " ".join(lines)
    regs = int(re.search(r"REG:(\d+)", text).group(1))
    assert "STACK:0 " in text and "LOCAL:0 " in text, (arch, function, text)
    assert regs <= 255, (arch, function, regs)


def test_tensor_core_kernels_use_mma_and_async_copies():
  sass = _by_arch_and_function(_cuobjdump("--dump-sass"))
  for arch in ARCHS:
    functions = [f for a, f in sass if a == arch]
    for (kernel, math), mma in TENSOR_CORE_KERNELS.items():
      matching = [f for f in functions if kernel in f and math in f]
      assert matching, (arch, kernel, math)
      for f in matching:
        code = "\n".join(sass[(arch, f)])
        assert re.search(rf"\b{re.escape(mma)}\b", code), (arch, f, mma)
        assert "LDGSTS" in code, (arch, f)  # cp.async
        if "Bf16" in math or "F16" in math:
          assert "LDSM" in code, (arch, f)  # ldmatrix
    for f in functions:
      code = "\n".join(sass[(arch, f)])
      assert not re.search(r"\b(LDL|STL)\b", code), (arch, f)


def test_main_loop_mix_is_measured_for_every_tiled_kernel():
  """benchmarks/sass_mix.py finds, for every tiled kernel on sm_80 and sm_90, the innermost loop holding its HMMA
  (issue 24's measure; benchmarks/NOTES.md records the figures): as many HMMA as the tile needs per k-step, fewer
  than all the loop's instructions."""
  _cuobjdump("--list-elf")  # skips, saying why, without the tools or the module
  rows = sass_mix.measure(_module_path(), ["sm_80", "sm_90"])
  tiled = {(kernel, math) for kernel, math in TENSOR_CORE_KERNELS}
  for arch in ("sm_80", "sm_90"):
    found = {r["kernel"] for r in rows if r["arch"] == arch}
    for kernel, math in tiled:
      assert any(name.startswith(f"{kernel}<{math}, 128") for name in found), (arch, kernel, math)
      assert any(name.startswith(f"{kernel}<{math}, 64") for name in found), (arch, kernel, math)
  for r in rows:
    assert r["hmma"] % 16 == 0 and 0 < r["hmma"] < r["instructions"], r


@pytest.fixture(scope="module")
def ptxas_report(tmp_path_factory):
  nvcc = shutil.which("nvcc")
  if nvcc is None:
    pytest.skip("no nvcc on PATH")
  include = jax.ffi.include_dir()
  out_dir = tmp_path_factory.mktemp("ptxas")
  cmd = [nvcc, "-std=c++17", "-O3", "-DNDEBUG", "--expt-relaxed-constexpr", f"-I{ROOT}", "-isystem", include,
         "-Xptxas", "-v,-warn-spills,-warn-lmem-usage", "-c", "-o", str(out_dir / "kernels.o"),
         str(ROOT / "cuda" / "kernels.cu")]
  for arch in ARCHS:
    cmd += ["-gencode", f"arch=compute_{arch[3:]},code={arch}"]
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
  assert out.returncode == 0, out.stderr[-5000:]
  return out.stdout + out.stderr


def test_ptxas_reports_no_spills_stack_or_warnings(ptxas_report):
  assert "warning" not in ptxas_report.lower(), [l for l in ptxas_report.splitlines() if "warning" in l.lower()]
  frames = re.findall(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", ptxas_report)
  kernels = re.findall(r"Compiling entry function '(\S+)' for '(sm_\d+)'", ptxas_report)
  assert len(frames) == len(kernels) and {arch for _, arch in kernels} == set(ARCHS)
  for (kernel, arch), frame in zip(kernels, frames):
    assert frame == ("0", "0", "0"), (kernel, arch, frame)
  for kernel, math in TENSOR_CORE_KERNELS:
    assert any(kernel in k and math in k for k, _ in kernels), (kernel, math)
