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
  // Limits of the CUDA kernels' tap tables (cuda/kernels.cu); larger layers lower to XLA's convolution on GPU.
  m.attr("max_spatial_dims") = 3;
  m.attr("max_kernel_size") = 32;
  m.attr("max_stride") = 32;
}
