// The CPU's storage types of the table's dtypes (common/dtypes.h), for the dtype dispatch
// (common/dtype_dispatch.h). The 16-bit floats and their conversions to and from the accumulation type are in
// common/half.h (the CPU executor of the CUDA plans uses them too): the kernels read each stored element once per
// tap into float (half types accumulate in float32, as XLA does) and round to nearest-even when they store.
// Compiled once per instruction set, inside that build's namespace (see cpu/kernel_set.h).
#ifndef JAXSEG_CPU_NUMERIC_H_
#define JAXSEG_CPU_NUMERIC_H_

#include "common/half.h"

#ifndef JAXSEG_ISA
#error "cpu/numeric.h belongs to a kernel build: include it from cpu/kernels_<isa>.cc"
#endif

namespace jaxseg::cpu::JAXSEG_ISA {
using namespace jaxseg::half;  // bf16_t, f16_t, ToAcc, FromAcc... for the kernels
namespace {

// The C++ type of each DType on the CPU.
struct CpuTypes {
  using F32 = float;
  using F64 = double;
  using BF16 = bf16_t;
  using F16 = f16_t;
};

}  // namespace
}  // namespace jaxseg::cpu::JAXSEG_ISA

#endif  // JAXSEG_CPU_NUMERIC_H_
