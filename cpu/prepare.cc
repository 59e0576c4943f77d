// The planning layer of the CPU module (cpu/kernel_set.h), compiled once with the compiler's baseline flags: for a
// decoded call, the pass's plan (cpu/forward.h, cpu/input_grad.h, cpu/weight_grad.h) instantiated for the call's
// dtype pair (common/dtype_dispatch.h) and bound to the chosen build's micro-kernels, built once, with one
// workspace slot per worker (cpu/workspace.h), and wrapped as the PreparedCall whose items the handler runs.

// cpu/numeric.h (the storage types and conversions) opens the namespace that JAXSEG_ISA names: for the planning
// code that is jaxseg::cpu::planning, which no instruction set's flags touch.
#define JAXSEG_ISA planning

#include <algorithm>
#include <cstdint>
#include <memory>
#include <utility>

#include "common/conv_shape.h"
#include "common/dtype_dispatch.h"
#include "common/passes.h"
#include "cpu/buffer_cache.h"
#include "cpu/forward.h"
#include "cpu/input_grad.h"
#include "cpu/kernel_set.h"
#include "cpu/numeric.h"
#include "cpu/weight_grad.h"
#include "cpu/workspace.h"

namespace jaxseg::cpu {
namespace planning {
namespace {

// A plan, the function that runs its items (bound at compile time, so that an item costs one virtual call) and
// the workspace: plan.workspace_bytes per worker.
template <typename Plan, void (*kRun)(const Plan&, int64_t, WorkspaceSlot&)>
class Planned final : public PreparedCall {
 public:
  Plan plan;
  CachedBuffer workspace;
  int64_t num_items() const override { return plan.num_items; }
  void Run(int64_t item, int64_t worker) const override {
    WorkspaceSlot slot(static_cast<char*>(workspace.get()) + worker * plan.workspace_bytes);
    kRun(plan, item, slot);
  }
};

template <typename Plan, bool (*kPrepare)(Plan&, int64_t), void (*kRun)(const Plan&, int64_t, WorkspaceSlot&)>
std::unique_ptr<PreparedCall> PlanCall(const KernelSet& kernels, ConvCall& call, int64_t workers) {
  auto planned = std::make_unique<Planned<Plan, kRun>>();
  planned->plan.kernels = &kernels;
  planned->plan.typed = &kernels.typed[DTypePairIndex(call.operand_type, call.result_type)];
  planned->plan.call = std::move(call);
  if (!kPrepare(planned->plan, workers)) return nullptr;
  planned->plan.workspace_bytes = std::max(WorkspaceBytes(planned->plan.workspace_bytes), kWorkspaceAlign);
  planned->workspace = AcquireBuffer(workers * planned->plan.workspace_bytes);
  if (!planned->workspace) return nullptr;
  return planned;
}

}  // namespace
}  // namespace planning

std::unique_ptr<PreparedCall> Prepare(const KernelSet& kernels, ConvCall call, int64_t workers) {
  using namespace planning;
  std::unique_ptr<PreparedCall> planned;
  // DecodeCall admits only the pairs of the dtype table, and the dispatch covers each of them.
  DispatchDTypes<CpuTypes>(call.operand_type, call.result_type, [&](auto types) {
    using T = typename decltype(types)::Operand;
    using U = typename decltype(types)::Result;
    using Acc = typename decltype(types)::Accumulate;
    switch (call.pass) {
      case Pass::kForward:
        planned = PlanCall<ForwardPlan, PrepareForward<T, U, Acc>, RunForward<T, U, Acc>>(kernels, call, workers);
        break;
      case Pass::kInputGrad:
        planned = PlanCall<InputGradPlan, PrepareInputGrad<T, U, Acc>, RunInputGrad<T, U, Acc>>(kernels, call, workers);
        break;
      case Pass::kWeightGrad:
        planned =
            PlanCall<WeightGradPlan, PrepareWeightGrad<T, U, Acc>, RunWeightGrad<T, U, Acc>>(kernels, call, workers);
        break;
    }
  });
  return planned;
}

}  // namespace jaxseg::cpu
