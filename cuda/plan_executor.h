// The CPU executor of the CUDA kernels' plans: runs a call's launches on the CPU the way the GPU would, walking
// every CTA, thread and lane of the plan through the same functions the device code calls (cuda/conv_plan.h,
// cuda/tiled_cta.h, cuda/direct_kernels.h), with the PTX instructions (cp.async, ldmatrix, mma.sync, the TF32
// rounding, warp shuffles) emulated as the PTX ISA defines them. It checks on the way what a GPU would not report:
// every copy and load inside its tensor and aligned, every shared-memory tile fully written before it is read, and
// every result element written exactly once. Plain C++ (no CUDA needed), built only into the test-only module
// jaxseg._jaxseg_plan_executor (cuda/plan_executor_module.cc, CMake option JAXSEG_TEST_MODULES); the tests run it
// over the conformance grid against a float64 reference.
#ifndef JAXSEG_CUDA_PLAN_EXECUTOR_H_
#define JAXSEG_CUDA_PLAN_EXECUTOR_H_

#include <nanobind/nanobind.h>

namespace jaxseg::gpu {

// Adds to the module: gpu_plan_execute (run a call's plan), gpu_plan_describe (the plan alone),
// gpu_can_implement (the CUDA handlers' limits),
// gpu_fast_divmod (the plans' division, for its own test).
void RegisterPlanExecutor(nanobind::module_& m);

}  // namespace jaxseg::gpu

#endif  // JAXSEG_CUDA_PLAN_EXECUTOR_H_
