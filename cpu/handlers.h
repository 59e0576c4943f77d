// The CPU custom-call targets (XLA FFI handlers) of the three passes.
#ifndef JAXSEG_CPU_HANDLERS_H_
#define JAXSEG_CPU_HANDLERS_H_

#include <string>
#include <vector>

#include "xla/ffi/api/ffi.h"

XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxsegCpuForward);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxsegCpuInputGrad);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxsegCpuWeightGrad);

namespace jaxseg::cpu {
// Name of the kernel build in use ("avx512_bf16", "avx512", "avx2" or "generic").
const char* SelectedIsa();
// Names of the kernel builds in this module (what JAXSEG_CPU_ISA may pin), portable first.
std::vector<std::string> KernelBuilds();
}  // namespace jaxseg::cpu

#endif  // JAXSEG_CPU_HANDLERS_H_
