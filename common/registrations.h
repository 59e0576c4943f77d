// The custom-call targets of one platform's handlers, for jax.ffi.register_ffi_target: a dict from each pass's
// target name (common/passes.h) to a capsule holding its handler. Used by the CPU and CUDA extension modules.
#ifndef JAXSEG_COMMON_REGISTRATIONS_H_
#define JAXSEG_COMMON_REGISTRATIONS_H_

#include <nanobind/nanobind.h>

#include "common/passes.h"

namespace jaxseg {

// `handlers` in the order of kPasses: forward, input_grad, weight_grad.
template <typename Handler>
nanobind::dict Registrations(Handler* const (&handlers)[3]) {
  nanobind::dict d;
  for (int i = 0; i < 3; ++i) d[kPasses[i].target] = nanobind::capsule(reinterpret_cast<void*>(handlers[i]));
  return d;
}

}  // namespace jaxseg

#endif  // JAXSEG_COMMON_REGISTRATIONS_H_
