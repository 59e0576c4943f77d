// The `jaxseg._jaxseg_cuda` extension: the CUDA custom-call targets as capsules for jax.ffi.register_ffi_target.
// The CUDA runtime is linked statically, so this imports on machines without a GPU or driver.
#include <nanobind/nanobind.h>

#include "common/registrations.h"
#include "cuda/handlers.h"

namespace nb = nanobind;

NB_MODULE(_jaxseg_cuda, m) {
  m.doc() = "jaxseg CUDA custom calls";
  m.def("registrations", []() {
    static XLA_FFI_Handler* const handlers[] = {JaxsegCudaForward, JaxsegCudaInputGrad, JaxsegCudaWeightGrad};
    return jaxseg::Registrations(handlers);
  });
  // Limits of the CUDA kernels' tap tables; larger layers lower to XLA's convolution on GPU.
  m.attr("max_spatial_dims") = jaxseg::cuda::kMaxSpatialDims;
  m.attr("max_kernel_size") = jaxseg::cuda::kMaxKernelSize;
  m.attr("max_stride") = jaxseg::cuda::kMaxStride;
}
