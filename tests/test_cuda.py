"""The CUDA build, and GPU-only checks (skipped without a GPU). The conformance, gradient, vmap and error tests
of the other files run on the GPU too when there is one (see the `platform` fixture in conftest.py)."""

import os
import re
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest

import jaxseg
from jaxseg import _ext
from jaxseg._passes import PASSES


def _has_gpu():
  try:
    return bool(jax.devices("gpu"))
  except RuntimeError:
    return False


def _nvcc_for_this_python():
  """nvcc where the build looks for it (cmake/find_nvcc.cmake): CUDACXX, PATH, or pip's nvidia-cuda-nvcc wheel in
  this interpreter's site-packages; None where there is none."""
  import site
  import sysconfig
  dirs = site.getsitepackages() + [site.getusersitepackages()] + [sysconfig.get_paths()["purelib"]]
  pip_nvcc = [p for d in dirs if os.path.exists(p := os.path.join(d, "nvidia", "cu13", "bin", "nvcc"))]
  return os.environ.get("CUDACXX") or shutil.which("nvcc") or (pip_nvcc[0] if pip_nvcc else None)


@pytest.mark.cpu_only
@pytest.mark.skipif(_nvcc_for_this_python() is None, reason="no CUDA compiler here")
def test_cuda_module_built_when_nvcc_is_present():
  # Built with the CUDA runtime linked statically, so it imports without a GPU or driver.
  assert _ext.cuda is not None, "nvcc is on PATH but jaxseg was built without its CUDA module"
  assert set(_ext.cuda.registrations()) == set(_ext.cpu.registrations())
  assert "cuda" in _ext.KERNEL_PLATFORMS


gpu = pytest.mark.skipif(not _has_gpu() or _ext.cuda is None, reason="needs a GPU and the CUDA module")


def _targets(fn, *args):
  hlo = jax.jit(fn).lower(*args).compile().as_text()
  return set(re.findall(r'custom_call_target="(jaxseg[^"]+)"', hlo))


@gpu
def test_gpu_hlo_uses_our_kernels_within_limits(platform):
  if platform != "gpu":
    pytest.skip("GPU variant only")
  x = jnp.ones((4, 7, 7, 16))
  w = jnp.ones((4, 4, 16, 8))
  f = lambda x, w: jnp.sum(jaxseg.conv_transpose(x, w, (2, 2), "SAME") ** 2)
  assert _targets(jax.grad(f, (0, 1)), x, w) == {p.target for p in PASSES}
  # Beyond the plans' tables (kernel 33) the GPU lowering is XLA's convolution.
  big = jnp.ones((33, 16, 8))
  g = lambda x, w: jaxseg.conv_transpose(x, w, (2,), "SAME")
  assert _targets(g, jnp.ones((2, 9, 16)), big) == set()


@gpu
@pytest.mark.skipif(shutil.which("compute-sanitizer") is None, reason="no compute-sanitizer")
def test_memcheck_small_case(platform):
  if platform != "gpu":
    pytest.skip("GPU variant only")
  # Every path of every pass: tensor cores (bfloat16, TF32, 3xTF32), the CUDA-core paths (unaligned channels,
  # one output channel), both kernel orientations.
  code = textwrap.dedent("""
      import jax, jax.numpy as jnp, numpy as np, jaxseg
      rng = np.random.default_rng(0)
      cases = [((2, 5, 7, 16), (4, 4, 16, 24), jnp.bfloat16, None, False),
               ((2, 5, 7, 16), (4, 4, 24, 16), jnp.float32, None, True),
               ((2, 5, 7, 16), (4, 4, 16, 24), jnp.float32, "highest", False),
               ((2, 5, 7, 3), (3, 4, 3, 5), jnp.float32, None, False),
               ((2, 6, 5, 64), (4, 4, 1, 64), jnp.bfloat16, None, True)]
      for xs, ws, dtype, precision, flipped in cases:
        x = jnp.asarray(rng.standard_normal(xs), dtype)
        w = jnp.asarray(rng.standard_normal(ws), dtype)
        f = lambda x, w: jnp.sum(jaxseg.conv_transpose(x, w, (2, 3), [(1, 2), (-1, 1)], transpose_kernel=flipped,
                                                       precision=precision).astype(jnp.float32) ** 2)
        jax.block_until_ready(jax.jit(jax.grad(f, (0, 1)))(x, w))
      print("done")
  """)
  out = subprocess.run(["compute-sanitizer", "--tool", "memcheck", "--error-exitcode", "3", sys.executable, "-c",
                        code], capture_output=True, text=True, timeout=600, cwd=os.path.dirname(__file__))
  assert out.returncode == 0 and "done" in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]
  assert "ERROR SUMMARY: 0 errors" in out.stdout + out.stderr
