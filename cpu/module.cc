// The `jaxseg._jaxseg_cpu` extension: the CPU custom-call targets as capsules for jax.ffi.register_ffi_target,
// and the phase geometry (common/phase_geometry.h) for the Python side, so its padding and shape arithmetic is
// the very code the kernels use.
#include <cstdint>
#include <string>
#include <tuple>
#include <utility>

#include <nanobind/nanobind.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include "common/phase_geometry.h"
#include "cpu/buffer_cache.h"
#include "cpu/handlers.h"

namespace nb = nanobind;

namespace {

template <typename Fn>
nb::capsule Capsule(Fn* fn) {
  return nb::capsule(reinterpret_cast<void*>(fn));
}

std::pair<int64_t, int64_t> StringPaddingOrThrow(const std::string& mode, int64_t k, int64_t s) {
  int64_t lo, hi;
  if (!jaxseg::StringPadding(mode, k, s, &lo, &hi)) throw nb::value_error(("unknown padding " + mode).c_str());
  return {lo, hi};
}

// (out_size, [(residue, count, [(k, offset, q_begin, q_end), ...]), ...]) for one axis.
nb::tuple AxisPhases(int64_t in, int64_t k, int64_t s, int64_t d, int64_t lo, int64_t hi) {
  if (in < 0 || k < 0 || s < 1 || d < 1) throw nb::value_error("invalid axis geometry");
  const jaxseg::AxisGeometry g = jaxseg::MakeAxisGeometry(in, k, s, d, lo, hi);
  nb::list phases;
  for (const jaxseg::Phase& p : g.phases) {
    nb::list taps;
    for (const jaxseg::Tap& t : p.taps) taps.append(nb::make_tuple(t.k, t.offset, t.q_begin, t.q_end));
    phases.append(nb::make_tuple(p.residue, p.count, taps));
  }
  return nb::make_tuple(g.out_size, phases);
}

}  // namespace

NB_MODULE(_jaxseg_cpu, m) {
  m.doc() = "jaxseg CPU custom calls and phase geometry";
  m.def("registrations", []() {
    nb::dict d;
    d["jaxseg_conv_transpose_fwd"] = Capsule(JaxsegCpuForward);
    d["jaxseg_conv_transpose_input_grad"] = Capsule(JaxsegCpuInputGrad);
    d["jaxseg_conv_transpose_weight_grad"] = Capsule(JaxsegCpuWeightGrad);
    return d;
  });
  m.def("clear_buffer_cache", &jaxseg::cpu::ClearBufferCache, "Frees the packed-weight buffers kept between calls.");
  m.def("buffer_cache_bytes", &jaxseg::cpu::BufferCacheBytes);
  m.def("selected_isa", []() { return std::string(jaxseg::cpu::SelectedIsa()); });
  m.def("effective_kernel_size", &jaxseg::EffectiveKernelSize, nb::arg("kernel"), nb::arg("dilation"));
  m.def("output_size", &jaxseg::OutputSize, nb::arg("in_size"), nb::arg("kernel"), nb::arg("stride"),
        nb::arg("dilation"), nb::arg("pad_lo"), nb::arg("pad_hi"));
  m.def("string_padding", &StringPaddingOrThrow, nb::arg("mode"), nb::arg("effective_kernel"), nb::arg("stride"));
  m.def("consistent_padding", &jaxseg::ConsistentPadding, nb::arg("effective_kernel"), nb::arg("pad_lo"),
        nb::arg("pad_hi"));
  m.def("torch_padding", &jaxseg::TorchPadding, nb::arg("kernel"), nb::arg("padding"), nb::arg("output_padding"),
        nb::arg("dilation"));
  m.def("axis_phases", &AxisPhases, nb::arg("in_size"), nb::arg("kernel"), nb::arg("stride"), nb::arg("dilation"),
        nb::arg("pad_lo"), nb::arg("pad_hi"));
}
