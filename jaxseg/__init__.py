"""jaxseg: fast transposed convolution for JAX by unified kernel segregation.

`jaxseg.conv_transpose` is a drop-in for `jax.lax.conv_transpose` computed by XLA custom calls (CPU, and CUDA
where built); `jaxseg.linen.ConvTranspose` and `jaxseg.nnx.ConvTranspose` are drop-ins for flax's modules,
`jaxseg.equinox.ConvTranspose` for equinox's (imported on first use: equinox is an optional dependency).
On GPUs jaxseg's CUDA kernels are opt-in (`jaxseg.use_gpu_kernels`, `JAXSEG_GPU_KERNELS=1`);
`jaxseg.print_environment_info()` shows what runs where, and why.
"""

from jaxseg import _ext  # noqa: F401  (registers the custom-call targets)
from jaxseg._conv import conv_transpose, torch_padding
from jaxseg._general import conv_general_dilated  # lax's signature; input-dilated calls on our kernels
from jaxseg._environment import environment_info, print_environment_info
from jaxseg._gpu import GpuFallbackWarning, gpu_kernels_enabled, use_gpu_kernels
from jaxseg import linen, nnx  # noqa: E402  (flax modules: jaxseg.linen.ConvTranspose, jaxseg.nnx.ConvTranspose)
from jaxseg import export  # noqa: E402  (jax.export helpers: jaxseg.export.export, jaxseg.export.deserialize)


def clear_cpu_buffer_cache() -> None:
  """Frees the packed-kernel buffers the CPU kernels keep between calls (at most 8 buffers, 256 MiB)."""
  _ext.cpu.clear_buffer_cache()


def __getattr__(name):
  # jaxseg.equinox needs equinox, which jaxseg does not: imported when first asked for, not with jaxseg.
  if name == "equinox":
    import importlib

    return importlib.import_module("jaxseg.equinox")
  raise AttributeError(f"module 'jaxseg' has no attribute {name!r}")


__version__ = "0.1.0"  # the one home of the version: pyproject.toml reads it from here

__all__ = ["conv_transpose", "conv_general_dilated", "torch_padding", "clear_cpu_buffer_cache", "linen", "nnx",
           "export", "use_gpu_kernels", "gpu_kernels_enabled", "GpuFallbackWarning", "environment_info",
           "print_environment_info", "__version__"]
