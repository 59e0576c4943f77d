// The CUDA custom-call targets (XLA FFI handlers) of the three passes. Their limits are the plans'
// (cuda/conv_plan.h: kMaxDims, kMaxAxisTaps, CanImplement).
#ifndef JAXSEG_CUDA_HANDLERS_H_
#define JAXSEG_CUDA_HANDLERS_H_

#include "xla/ffi/api/ffi.h"

XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxsegCudaForward);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxsegCudaInputGrad);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxsegCudaWeightGrad);

#endif  // JAXSEG_CUDA_HANDLERS_H_
