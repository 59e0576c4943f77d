// The signature every jaxseg custom call binds: two operands, one result and the geometry attributes, after the
// platform's context (XLA's CPU thread pool, or the CUDA stream). Python passes the geometry as 1-D int64 arrays
// and `kernel_flipped` (the kernel's layout, see common/conv_shape.h) as an int64 0 or 1.
#ifndef JAXSEG_COMMON_FFI_BINDING_H_
#define JAXSEG_COMMON_FFI_BINDING_H_

#include <cstdint>

#include "xla/ffi/api/ffi.h"

namespace jaxseg {

template <typename Context>
auto BindConvTranspose() {
  namespace ffi = xla::ffi;
  return ffi::Ffi::Bind()
      .Ctx<Context>()
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>()
      .template Attr<ffi::Span<const int64_t>>("strides")
      .template Attr<ffi::Span<const int64_t>>("dilation")
      .template Attr<ffi::Span<const int64_t>>("padding_lo")
      .template Attr<ffi::Span<const int64_t>>("padding_hi")
      .template Attr<int64_t>("kernel_flipped");
}

}  // namespace jaxseg

#endif  // JAXSEG_COMMON_FFI_BINDING_H_
