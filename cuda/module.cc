// The `jaxseg._jaxseg_cuda` extension: the CUDA custom-call targets as capsules for jax.ffi.register_ffi_target.
// The CUDA runtime is linked statically, so this imports on machines without a GPU or driver.
#include <nanobind/nanobind.h>

#include "cuda/handlers.h"

namespace nb = nanobind;

NB_MODULE(_jaxseg_cuda, m) {
  m.doc() = "jaxseg CUDA custom calls";
  m.def("registrations", []() {
    nb::dict d;
    d["jaxseg_conv_transpose_fwd"] = nb::capsule(reinterpret_cast<void*>(JaxsegCudaForward));
    d["jaxseg_conv_transpose_input_grad"] = nb::capsule(reinterpret_cast<void*>(JaxsegCudaInputGrad));
    d["jaxseg_conv_transpose_weight_grad"] = nb::capsule(reinterpret_cast<void*>(JaxsegCudaWeightGrad));
    return d;
  });
  // Limits of the CUDA kernels' tap tables (cuda/kernels.cu); larger layers lower to XLA's convolution on GPU.
  m.attr("max_spatial_dims") = 3;
  m.attr("max_kernel_size") = 32;
  m.attr("max_stride") = 32;
}
