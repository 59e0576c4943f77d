// XLA FFI handlers of the three CPU passes: decode and check the buffers against the phase geometry, pick the
// kernel build for this CPU (once), plan the call with its micro-kernels (cpu/kernel_set.h), and spread the plan's
// work items over XLA's intra-op thread pool. A handler never blocks a pool thread on other pool tasks: it returns a
// future that the last finishing worker completes.
#include "cpu/handlers.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "common/ffi_binding.h"
#include "cpu/kernel_set.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace jaxseg::cpu {
namespace {

const KernelSet& ChooseKernels() {
  // JAXSEG_CPU_ISA lets tests and benchmarks pin a build; by default the widest one the CPU runs.
  const char* want = std::getenv("JAXSEG_CPU_ISA");
  const std::string w = want ? want : "";
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  const bool has512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("fma");
  const bool has512_bf16 = has512 && __builtin_cpu_supports("avx512bf16");
  const bool has2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (w == "generic") return generic::kKernels;
  if (w == "avx2" && has2) return avx2::kKernels;
  if ((w.empty() || w == "avx512_bf16") && has512_bf16) return avx512_bf16::kKernels;
  if ((w.empty() || w == "avx512" || w == "avx512_bf16") && has512) return avx512::kKernels;
  if (has2 && w != "generic") return avx2::kKernels;
#endif
  return generic::kKernels;
}

ffi::Future Failed(ffi::Error error) {
  ffi::Promise promise;
  ffi::Future future(promise);
  promise.SetError(std::move(error));
  return future;
}

ffi::Future Done() {
  ffi::Promise promise;
  ffi::Future future(promise);
  promise.SetAvailable();
  return future;
}

// Runs the items of `call` on the pool with at most `workers` workers; the calling thread works too. The
// prepared call (and with it the packed weights) lives until the last worker is done.
ffi::Future ParallelRun(ffi::ThreadPool& pool, std::shared_ptr<const PreparedCall> call, int64_t workers) {
  const int64_t n = call->num_items();
  if (n <= 0) return Done();
  workers = std::max<int64_t>(1, std::min<int64_t>(n, workers));
  ffi::CountDownPromise done(workers);
  ffi::Future future(done);
  auto next = std::make_shared<std::atomic<int64_t>>(0);
  auto work = [call, next, done, n](int64_t worker) mutable {
    for (int64_t i = next->fetch_add(1, std::memory_order_relaxed); i < n;
         i = next->fetch_add(1, std::memory_order_relaxed)) {
      call->Run(i, worker);
    }
    done.CountDown();
  };
  for (int64_t w = 1; w < workers; ++w) {
    pool.Schedule([work, w]() mutable { work(w); });
  }
  work(0);
  return future;
}

// A large result is usually fresh memory from mmap, which the first write faults in page by page, at a cost that
// can rival the product itself. Asking for transparent huge pages on the 2 MiB-aligned part of the result cuts the
// faults 512-fold where the kernel allows them (`madvise` mode); memory that is already mapped keeps its pages.
// Advice only: failures are ignored.
void AdviseHugePages(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  if (bytes < kHuge) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

ffi::Future Execute(Pass pass, ffi::ThreadPool pool, ffi::AnyBuffer first, ffi::AnyBuffer second,
                    ffi::Result<ffi::AnyBuffer> result, const CallAttrs& attrs) {
  ConvCall call;
  if (ffi::Error err = DecodeCall(pass, first, second, *result, attrs, &call); err.failure())
    return Failed(std::move(err));
  if (result->element_count() == 0) return Done();
  AdviseHugePages(result->untyped_data(), result->size_bytes());
  static const KernelSet& kernels = ChooseKernels();
  const int64_t workers = std::max<int64_t>(1, pool.num_threads());
  std::shared_ptr<const PreparedCall> prepared = Prepare(kernels, std::move(call), workers);
  if (!prepared) return Failed(ffi::Error(ffi::ErrorCode::kResourceExhausted, "jaxseg: out of memory"));
  return ParallelRun(pool, std::move(prepared), workers);
}

template <Pass kPass>
ffi::Future Handle(ffi::ThreadPool pool, ffi::AnyBuffer first, ffi::AnyBuffer second,
                   ffi::Result<ffi::AnyBuffer> result, CallAttrs attrs) {
  return Execute(kPass, pool, first, second, result, attrs);
}

auto Binding() { return BindConvTranspose<ffi::ThreadPool>(); }

}  // namespace

const char* SelectedIsa() { return ChooseKernels().isa; }

std::vector<std::string> KernelBuilds() {
  std::vector<std::string> names{generic::kKernels.isa};
#if defined(__x86_64__) || defined(_M_X64)
  for (const KernelSet* k : {&avx2::kKernels, &avx512::kKernels, &avx512_bf16::kKernels}) names.push_back(k->isa);
#endif
  return names;
}

}  // namespace jaxseg::cpu

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxsegCpuForward, jaxseg::cpu::Handle<jaxseg::Pass::kForward>, jaxseg::cpu::Binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxsegCpuInputGrad, jaxseg::cpu::Handle<jaxseg::Pass::kInputGrad>,
                              jaxseg::cpu::Binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxsegCpuWeightGrad, jaxseg::cpu::Handle<jaxseg::Pass::kWeightGrad>,
                              jaxseg::cpu::Binding());
