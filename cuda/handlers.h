// The CUDA custom-call targets (XLA FFI handlers) of the three passes, and the limits of their tap tables.
#ifndef JAXSEG_CUDA_HANDLERS_H_
#define JAXSEG_CUDA_HANDLERS_H_

#include "xla/ffi/api/ffi.h"

namespace jaxseg::cuda {
// The largest layers the kernels' tap tables hold (cuda/kernels.cu); larger ones lower to XLA's convolution.
inline constexpr int kMaxSpatialDims = 3;
inline constexpr int kMaxKernelSize = 32;  // per axis
inline constexpr int kMaxStride = 32;      // per axis
}  // namespace jaxseg::cuda

XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxsegCudaForward);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxsegCudaInputGrad);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxsegCudaWeightGrad);

#endif  // JAXSEG_CUDA_HANDLERS_H_
