// The `jaxseg._jaxseg_cuda` extension: the CUDA custom-call targets as capsules for jax.ffi.register_ffi_target,
// and the check the Python lowering makes before it emits them. The CUDA runtime is linked statically, so this
// imports on machines without a GPU or driver.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "common/passes.h"
#include "common/registrations.h"
#include "cuda/conv_plan.h"
#include "cuda/handlers.h"

// The architectures the kernels were compiled for, as CMake named them (cuda/CMakeLists.txt defines it).
#ifndef JAXSEG_CUDA_ARCHITECTURES
#define JAXSEG_CUDA_ARCHITECTURES "unknown"
#endif

namespace nb = nanobind;

namespace {

jaxseg::Dims AsDims(const std::vector<int64_t>& v) { return jaxseg::Dims{v.data(), v.size()}; }

std::string CanImplement(const std::string& pass_name, std::vector<int64_t> first, std::vector<int64_t> second,
                         std::vector<int64_t> result, std::vector<int64_t> strides, std::vector<int64_t> dilation,
                         std::vector<int64_t> pad_lo, std::vector<int64_t> pad_hi, bool transpose_kernel) {
  for (const jaxseg::PassInfo& p : jaxseg::kPasses)
    if (pass_name == p.name)
      return jaxseg::gpu::CanImplementCall(p.pass, AsDims(first), AsDims(second), AsDims(result), AsDims(strides),
                                           AsDims(dilation), AsDims(pad_lo), AsDims(pad_hi), transpose_kernel);
  throw nb::value_error(("unknown pass " + pass_name).c_str());
}

}  // namespace

NB_MODULE(_jaxseg_cuda, m) {
  m.doc() = "jaxseg CUDA custom calls";
  m.def("registrations", []() {
    static XLA_FFI_Handler* const handlers[] = {JaxsegCudaForward, JaxsegCudaInputGrad, JaxsegCudaWeightGrad};
    return jaxseg::Registrations(handlers);
  });
  // Larger layers lower to XLA's convolution on GPU (cuda/conv_plan.h).
  m.def("can_implement", &CanImplement, nb::arg("pass_name"), nb::arg("first_shape"), nb::arg("second_shape"),
        nb::arg("result_shape"), nb::arg("strides"), nb::arg("dilation"), nb::arg("pad_lo"), nb::arg("pad_hi"),
        nb::arg("transpose_kernel"),
        "Why the CUDA kernels cannot run this call (canonical shapes, as the handler receives them), or ''.");
  m.attr("max_spatial_dims") = jaxseg::gpu::kMaxDims;
  m.attr("max_kernel_size") = jaxseg::gpu::kMaxAxisTaps;
  m.def("architectures", []() { return std::string(JAXSEG_CUDA_ARCHITECTURES); },
        "The CUDA architectures compiled in, as CMAKE_CUDA_ARCHITECTURES named them (e.g. '80-real,90-virtual').");
}
