// The interface between the CPU handlers and the kernel builds. The kernels are compiled once per instruction
// set (cpu/kernels_<isa>.cc, each with its own flags), and the handler picks one build at run time; a build's
// prepare plans one call (the pass's plan: tables, packed weights, work items, scratch) and hands back a
// PreparedCall whose items the handler spreads over XLA's thread pool.
//
// Everything a build defines lives in its own namespace (jaxseg::cpu::<isa>, internal linkage), so no function
// compiled with one instruction set's flags stands in for another's at link time. Inline code the builds share
// from other headers (the phase geometry, the standard library) is still emitted by each of them as weak symbols
// (the AVX-512 copy of MakePhasesND uses zmm registers), and the linker keeps the first copy it meets: the
// portable build must stay first among the kernel sources in CMakeLists.txt.
#ifndef JAXSEG_CPU_KERNEL_SET_H_
#define JAXSEG_CPU_KERNEL_SET_H_

#include <cstdint>
#include <memory>

#include "common/conv_shape.h"

namespace jaxseg::cpu {

// One call, planned: Run(item, worker) computes work item `item` in [0, num_items()). Items are independent and
// may run on several threads at once, each thread with its own worker index in [0, workers) (see prepare).
class PreparedCall {
 public:
  virtual ~PreparedCall() = default;
  virtual int64_t num_items() const = 0;
  virtual void Run(int64_t item, int64_t worker) const = 0;
};

// One build of the kernels. prepare plans `call` (its pass, dtypes and buffers, decoded by DecodeCall) for at
// most `workers` concurrent workers; null when memory runs out.
struct KernelSet {
  const char* isa;
  std::unique_ptr<PreparedCall> (*prepare)(ConvCall call, int64_t workers);
};

namespace generic {
const KernelSet& Kernels();
}
namespace avx2 {
const KernelSet& Kernels();
}
namespace avx512 {
const KernelSet& Kernels();
}
namespace avx512_bf16 {
const KernelSet& Kernels();
}

}  // namespace jaxseg::cpu

#endif  // JAXSEG_CPU_KERNEL_SET_H_
