// The `jaxseg._jaxseg_cuda` extension: the CUDA custom-call targets as capsules for jax.ffi.register_ffi_target,
// and the check the Python lowering makes before it emits them. The CUDA runtime is linked statically, so this
// imports on machines without a GPU or driver.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/dtypes.h"
#include "common/passes.h"
#include "common/registrations.h"
#include "cuda/conv_plan.h"
#include "cuda/handlers.h"
#include "xla/ffi/api/c_api.h"

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

// ---- CUDA graphs (issue 23 item 5): the partials' size, and the handlers' traits ----

// The bytes of weight_grad's split-K partials (cuda/conv_plan.h WeightGradPartialBytes), for the lowering to
// allocate as the call's second result. Shapes canonical, as the handler receives them.
int64_t WeightGradPartialBytes(std::vector<int64_t> first, std::vector<int64_t> second, std::vector<int64_t> result,
                               std::vector<int64_t> strides, std::vector<int64_t> dilation, std::vector<int64_t> pad_lo,
                               std::vector<int64_t> pad_hi, bool transpose_kernel, const std::string& dtype,
                               int32_t multiprocessors) {
  jaxseg::ConvShape shape;
  const std::string err =
      jaxseg::ReadConvShape(jaxseg::Pass::kWeightGrad, AsDims(first), AsDims(second), AsDims(result), AsDims(strides),
                            AsDims(dilation), AsDims(pad_lo), AsDims(pad_hi), transpose_kernel, &shape);
  if (!err.empty()) throw nb::value_error(("weight_grad: " + err).c_str());
  if (const std::string why = jaxseg::gpu::CanImplement(shape); !why.empty()) throw nb::value_error(why.c_str());
  if (multiprocessors < 1) throw nb::value_error("multiprocessors must be positive");
  for (jaxseg::DType t : {jaxseg::DType::kF32, jaxseg::DType::kF64, jaxseg::DType::kBF16, jaxseg::DType::kF16})
    if (dtype == jaxseg::DTypeName(t)) {
      jaxseg::gpu::DeviceInfo device;
      device.multiprocessors = multiprocessors;
      return jaxseg::gpu::WeightGradPartialBytes(shape, t, device);
    }
  throw nb::value_error(("unknown dtype " + dtype).c_str());
}

// The traits an XLA FFI handler declares (XLA_FFI_Handler_TraitsBits), read as XLA reads them: the handler called
// with a call frame that carries only the metadata extension. Any handler capsule (CPU or CUDA) works; no device.
uint32_t HandlerTraits(nb::capsule handler) {
  XLA_FFI_Metadata metadata{};
  metadata.struct_size = XLA_FFI_Metadata_STRUCT_SIZE;
  XLA_FFI_Metadata_Extension extension{};
  extension.extension_base.struct_size = XLA_FFI_Metadata_Extension_STRUCT_SIZE;
  extension.extension_base.type = XLA_FFI_Extension_Metadata;
  extension.metadata = &metadata;
  XLA_FFI_CallFrame frame{};
  frame.struct_size = XLA_FFI_CallFrame_STRUCT_SIZE;
  frame.extension_start = &extension.extension_base;
  // No XLA_FFI_Api: a handler needs it only to report an error (struct sizes from other headers), reported below.
  frame.api = nullptr;
  auto* fn = reinterpret_cast<XLA_FFI_Handler*>(handler.data());
  if (fn == nullptr) throw nb::value_error("not a handler capsule");
  if (fn(&frame) != nullptr) throw std::runtime_error("the handler refused the metadata query");
  return metadata.traits;
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
  // CUDA graphs (issue 23 item 5).
  m.def("weight_grad_partial_bytes", &WeightGradPartialBytes, nb::arg("first_shape"), nb::arg("second_shape"),
        nb::arg("result_shape"), nb::arg("strides"), nb::arg("dilation"), nb::arg("pad_lo"), nb::arg("pad_hi"),
        nb::arg("transpose_kernel"), nb::arg("dtype"), nb::arg("multiprocessors"),
        "Bytes of the weight gradient's split-K partials, the CUDA call's second result, for a device with this "
        "many multiprocessors (the handler splits within whatever buffer it gets).");
  m.def("handler_traits", &HandlerTraits, nb::arg("handler"),
        "The XLA FFI traits (bit 0: command-buffer compatible) a handler capsule declares, by its metadata query.");
  m.attr("TRAIT_COMMAND_BUFFER_COMPATIBLE") = static_cast<uint32_t>(XLA_FFI_HANDLER_TRAITS_COMMAND_BUFFER_COMPATIBLE);
  m.attr("max_kernel_size") = jaxseg::gpu::kMaxAxisTaps;
  m.def(
      "architectures", []() { return std::string(JAXSEG_CUDA_ARCHITECTURES); },
      "The CUDA architectures compiled in, as CMAKE_CUDA_ARCHITECTURES named them (e.g. '80-real,90-virtual').");
}
