// The prepare step of one kernel build, and the build's KernelSet (cpu/kernel_set.h): for a decoded call, the
// pass's plan (cpu/forward.h, cpu/input_grad.h, cpu/weight_grad.h) instantiated for the call's dtype pair
// (common/dtype_dispatch.h), built once and wrapped as the PreparedCall whose items the handler runs.
//
// Compiled once per instruction set, inside that build's namespace (see cpu/simd.h); JAXSEG_ISA_NAME names it.
#ifndef JAXSEG_CPU_PREPARE_H_
#define JAXSEG_CPU_PREPARE_H_

#include <cstdint>
#include <memory>
#include <utility>

#include "common/conv_shape.h"
#include "common/dtype_dispatch.h"
#include "common/passes.h"
#include "cpu/forward.h"
#include "cpu/input_grad.h"
#include "cpu/kernel_set.h"
#include "cpu/numeric.h"
#include "cpu/weight_grad.h"

#ifndef JAXSEG_ISA_NAME
#error "cpu/prepare.h belongs to a kernel build: include it from cpu/kernels_<isa>.cc"
#endif

namespace jaxseg::cpu::JAXSEG_ISA {
namespace {

// A plan and the function that runs its items, bound at compile time so that an item costs one virtual call.
template <typename Plan, void (*kRun)(const Plan&, int64_t, int64_t)>
class Planned final : public PreparedCall {
 public:
  Plan plan;
  int64_t num_items() const override { return plan.num_items; }
  void Run(int64_t item, int64_t worker) const override { kRun(plan, item, worker); }
};

template <typename Plan, bool (*kPrepare)(Plan&, int64_t), void (*kRun)(const Plan&, int64_t, int64_t)>
std::unique_ptr<PreparedCall> PlanCall(ConvCall& call, int64_t workers) {
  auto planned = std::make_unique<Planned<Plan, kRun>>();
  planned->plan.call = std::move(call);
  if (!kPrepare(planned->plan, workers)) return nullptr;
  return planned;
}

std::unique_ptr<PreparedCall> Prepare(ConvCall call, int64_t workers) {
  std::unique_ptr<PreparedCall> planned;
  // DecodeCall admits only the pairs of the dtype table, and the dispatch covers each of them.
  DispatchDTypes<CpuTypes>(call.operand_type, call.result_type, [&](auto types) {
    using T = typename decltype(types)::Operand;
    using U = typename decltype(types)::Result;
    using Acc = typename decltype(types)::Accumulate;
    switch (call.pass) {
      case Pass::kForward:
        planned = PlanCall<ForwardPlan, PrepareForward<T, U, Acc>, RunForward<T, U, Acc>>(call, workers);
        break;
      case Pass::kInputGrad:
        planned = PlanCall<InputGradPlan, PrepareInputGrad<T, U, Acc>, RunInputGrad<T, U, Acc>>(call, workers);
        break;
      case Pass::kWeightGrad:
        planned = PlanCall<WeightGradPlan, PrepareWeightGrad<T, U, Acc>, RunWeightGrad<T, U, Acc>>(call, workers);
        break;
    }
  });
  return planned;
}

}  // namespace

const KernelSet& Kernels() {
  static const KernelSet kSet{JAXSEG_ISA_NAME, &Prepare};
  return kSet;
}

}  // namespace jaxseg::cpu::JAXSEG_ISA

#endif  // JAXSEG_CPU_PREPARE_H_
