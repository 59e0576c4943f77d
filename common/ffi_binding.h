// The signature every jaxseg custom call binds, and the decoding of its buffers that the CPU and CUDA handlers
// share: two operands, one result and the attributes, after the platform's contexts (XLA's CPU thread pool, or
// the CUDA stream and scratch allocator). Python passes the geometry as 1-D int64 arrays, `transpose_kernel` as a
// bool and `precision` (common/dtypes.h) as an int64.
#ifndef JAXSEG_COMMON_FFI_BINDING_H_
#define JAXSEG_COMMON_FFI_BINDING_H_

#include <cstdint>
#include <string>
#include <utility>

#include "common/conv_shape.h"
#include "common/dtypes.h"
#include "common/passes.h"
#include "xla/ffi/api/ffi.h"

namespace jaxseg {

struct CallAttrs {
  xla::ffi::Span<const int64_t> strides, dilation, padding_lo, padding_hi;
  bool transpose_kernel;
  int64_t precision;  // Precision (common/dtypes.h); the CPU kernels compute exactly whatever it says
};

}  // namespace jaxseg

XLA_FFI_REGISTER_STRUCT_ATTR_DECODING(::jaxseg::CallAttrs,
                                      ::xla::ffi::StructMember<::xla::ffi::Span<const int64_t>>("strides"),
                                      ::xla::ffi::StructMember<::xla::ffi::Span<const int64_t>>("dilation"),
                                      ::xla::ffi::StructMember<::xla::ffi::Span<const int64_t>>("padding_lo"),
                                      ::xla::ffi::StructMember<::xla::ffi::Span<const int64_t>>("padding_hi"),
                                      ::xla::ffi::StructMember<bool>("transpose_kernel"),
                                      ::xla::ffi::StructMember<int64_t>("precision"));

namespace jaxseg {

// The operands, result and attributes of every call, after the contexts already in `binding`.
template <typename Binding>
auto BindCallOperands(Binding&& binding) {
  namespace ffi = xla::ffi;
  return std::move(binding)
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>()
      .template Attrs<CallAttrs>();
}

template <typename Context>
auto BindConvTranspose() {
  return BindCallOperands(xla::ffi::Ffi::Bind().Ctx<Context>());
}

inline bool ToDType(xla::ffi::DataType t, DType* out) {
  switch (t) {
    case xla::ffi::DataType::F32: *out = DType::kF32; return true;
    case xla::ffi::DataType::F64: *out = DType::kF64; return true;
    case xla::ffi::DataType::BF16: *out = DType::kBF16; return true;
    case xla::ffi::DataType::F16: *out = DType::kF16; return true;
    default: return false;
  }
}

inline Dims ToDims(xla::ffi::Span<const int64_t> s) { return Dims{s.begin(), s.size()}; }

// Reads the attributes and the three buffers of one pass, checking shapes against the phase geometry and
// dtypes against the table in common/dtypes.h.
inline xla::ffi::Error DecodeCall(Pass pass, xla::ffi::AnyBuffer first, xla::ffi::AnyBuffer second,
                                  xla::ffi::AnyBuffer result, const CallAttrs& attrs, ConvCall* call) {
  namespace ffi = xla::ffi;
  const std::string err = ReadConvShape(
      pass, ToDims(first.dimensions()), ToDims(second.dimensions()), ToDims(result.dimensions()), ToDims(attrs.strides),
      ToDims(attrs.dilation), ToDims(attrs.padding_lo), ToDims(attrs.padding_hi), attrs.transpose_kernel, call);
  if (!err.empty()) return ffi::Error::InvalidArgument(std::string("jaxseg ") + Info(pass).name + ": " + err);
  if (!ToDType(first.element_type(), &call->operand_type) || first.element_type() != second.element_type())
    return ffi::Error::InvalidArgument("jaxseg: operands must share one of float32, float64, bfloat16, float16");
  if (!ToDType(result.element_type(), &call->result_type) || !WritesResult(call->operand_type, call->result_type))
    return ffi::Error::InvalidArgument(std::string("jaxseg: no result of this type for ") +
                                       DTypeName(call->operand_type) + " operands");
  call->first = first.untyped_data();
  call->second = second.untyped_data();
  call->result = result.untyped_data();
  return ffi::Error::Success();
}

}  // namespace jaxseg

#endif  // JAXSEG_COMMON_FFI_BINDING_H_
