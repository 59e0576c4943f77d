// The `jaxseg._jaxseg_cpu` extension: the CPU custom-call targets as capsules for jax.ffi.register_ffi_target;
// the descriptions the Python side derives its rules from (the passes, common/passes.h; the dtype table,
// common/dtypes.h; the limits); and the phase geometry (common/phase_geometry.h), so the Python side's padding
// and shape arithmetic is the very code the kernels use.
#include <cstdint>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <nanobind/nanobind.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include "common/dtypes.h"
#include "common/passes.h"
#include "common/phase_geometry.h"
#include "common/registrations.h"
#include "cpu/buffer_cache.h"
#include "cpu/handlers.h"

namespace nb = nanobind;

namespace {

std::pair<int64_t, int64_t> StringPaddingOrThrow(const std::string& mode, int64_t k, int64_t s) {
  int64_t lo, hi;
  if (!jaxseg::StringPadding(mode, k, s, &lo, &hi)) throw nb::value_error(("unknown padding " + mode).c_str());
  return {lo, hi};
}

// The CPU features the choice of kernel build reads (cpu/handlers.cc ChooseKernels), for print_environment_info.
std::vector<std::pair<std::string, bool>> CpuFeatures() {
  std::vector<std::pair<std::string, bool>> features;
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  // __builtin_cpu_supports needs a string literal, hence one line per feature.
  features.emplace_back("avx2", __builtin_cpu_supports("avx2"));
  features.emplace_back("fma", __builtin_cpu_supports("fma"));
  features.emplace_back("avx512f", __builtin_cpu_supports("avx512f"));
  features.emplace_back("avx512vl", __builtin_cpu_supports("avx512vl"));
  features.emplace_back("avx512bw", __builtin_cpu_supports("avx512bw"));
  features.emplace_back("avx512dq", __builtin_cpu_supports("avx512dq"));
  features.emplace_back("avx512bf16", __builtin_cpu_supports("avx512bf16"));
#endif
  return features;
}

}  // namespace

NB_MODULE(_jaxseg_cpu, m) {
  m.doc() = "jaxseg CPU custom calls and phase geometry";
  m.def("registrations", []() {
    static XLA_FFI_Handler* const handlers[] = {JaxsegCpuForward, JaxsegCpuInputGrad, JaxsegCpuWeightGrad};
    return jaxseg::Registrations(handlers);
  });
  // [(name, target, (first, second, result) roles)] in the order of common/passes.h.
  m.def("passes", []() {
    nb::list out;
    for (const jaxseg::PassInfo& p : jaxseg::kPasses)
      out.append(nb::make_tuple(
          p.name, p.target,
          nb::make_tuple(jaxseg::RoleName(p.first), jaxseg::RoleName(p.second), jaxseg::RoleName(p.result))));
    return out;
  });
  // [(operand dtype, accumulation dtype, (result dtypes...))], NumPy names.
  m.def("dtype_table", []() {
    nb::list out;
    for (const jaxseg::DTypeRule& r : jaxseg::kDTypeRules) {
      nb::list results;
      for (int i = 0; i < r.num_results; ++i) results.append(jaxseg::DTypeName(r.results[i]));
      out.append(nb::make_tuple(jaxseg::DTypeName(r.operand), jaxseg::DTypeName(r.accumulate), nb::tuple(results)));
    }
    return out;
  });
  m.attr("max_spatial_dims") = jaxseg::kMaxSpatialDims;
  m.def("clear_buffer_cache", &jaxseg::cpu::ClearBufferCache, "Frees the packed-weight buffers kept between calls.");
  m.def("buffer_cache_bytes", &jaxseg::cpu::BufferCacheBytes);
  m.def("selected_isa", []() { return std::string(jaxseg::cpu::SelectedIsa()); });
  m.def("kernel_builds", &jaxseg::cpu::KernelBuilds);
  m.def("cpu_features", &CpuFeatures, "[(feature, present)] of the CPU features the kernel build is chosen by.");
  m.def("effective_kernel_size", &jaxseg::EffectiveKernelSize, nb::arg("kernel"), nb::arg("dilation"));
  m.def("output_size", &jaxseg::OutputSize, nb::arg("in_size"), nb::arg("kernel"), nb::arg("stride"),
        nb::arg("dilation"), nb::arg("pad_lo"), nb::arg("pad_hi"));
  m.def("string_padding", &StringPaddingOrThrow, nb::arg("mode"), nb::arg("effective_kernel"), nb::arg("stride"));
  m.def("consistent_padding", &jaxseg::ConsistentPadding, nb::arg("effective_kernel"), nb::arg("pad_lo"),
        nb::arg("pad_hi"));
  m.def("torch_padding", &jaxseg::TorchPadding, nb::arg("kernel"), nb::arg("padding"), nb::arg("output_padding"),
        nb::arg("dilation"));
}
