// The input gradient of one kernel build: dx (G, N, H..., Ci) from dy (G, N, O..., Co) and w, a strided
// convolution: dx[j] = sum over every tap k that links input j to an output o of dy[o] . W[k]^T. Its plan
// (InputGradPlan, built once per call by PrepareInputGrad) holds the per-axis link tables and the transposed
// kernel panels; RunInputGrad computes one item, a block of input pixels, with the indirect-GEMM core.
//
// Compiled once per instruction set, inside that build's namespace (see cpu/simd.h).
#ifndef JAXSEG_CPU_INPUT_GRAD_H_
#define JAXSEG_CPU_INPUT_GRAD_H_

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/conv_shape.h"
#include "common/phase_geometry.h"
#include "cpu/buffer_cache.h"
#include "cpu/gather_gemm.h"
#include "cpu/packing.h"
#include "cpu/pixel_index.h"

namespace jaxseg::cpu::JAXSEG_ISA {
namespace {

struct InputGradPlan {
  ConvCall call;
  std::vector<int64_t> links;           // per axis, (input, tap) -> output pixel offset, or negative: padding
  std::vector<int64_t> links_begin;     // where each axis's table starts in `links`
  std::vector<int64_t> interior_begin;  // per axis, the inputs that every tap links with an output
  std::vector<int64_t> interior_end;
  std::vector<int64_t> tap_shift;       // per tap, its output's offset from tap 0's there (in elements)
  PackedWeights weights;                // panels of W[k]^T
  CachedBuffer zeros;                   // the zero row the gathers read for padding
  int64_t num_items = 0;
};

// Item = (group, block of input pixels over the batch).
template <typename T, typename U, typename Acc>
void RunInputGrad(const InputGradPlan& plan, int64_t item, int64_t /*worker*/) {
  const ConvCall& call = plan.call;
  const auto& axes = call.axes;
  const int64_t d = static_cast<int64_t>(axes.size());
  const int64_t total = call.batch * call.InSpatial();
  const int64_t per_group = (total + kBlockRows - 1) / kBlockRows;
  const int64_t g = item / per_group;
  const int64_t m0 = (item % per_group) * kBlockRows;
  const int64_t rows = std::min(kBlockRows, total - m0);
  const int64_t taps = call.KernelSpatial();

  int64_t in_stride[kMaxSpatialDims];
  PixelStrides(axes, true, in_stride);
  const T* y_grad = static_cast<const T*>(call.first);
  U* x_grad = static_cast<U*>(call.result);
  const T* zero = static_cast<const T*>(plan.zeros.get());
  auto& tables = BlockTables<T, U>::ForThread(rows, taps);
  // The output a tap reaches is a sum of per-axis table entries (plan.links), negative where the tap meets
  // padding. The pixel's coordinates advance like an odometer: no division per pixel and none per (pixel, tap),
  // which matters when the depth (the output channels) is small.
  const int64_t k_last = axes[d - 1].kernel_size;
  for (int64_t t = 0; t < taps; ++t) tables.tap_k[t] = t;
  int64_t in_size[kMaxSpatialDims], n, j[kMaxSpatialDims];
  for (int64_t a = 0; a < d; ++a) in_size[a] = axes[a].in_size;
  PixelCoords(d, in_size, m0, &n, j);
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t gn = g * call.batch + n;
    U*& dst = tables.dst[i];
    dst = x_grad + (gn * call.InSpatial()) * call.in_ch;
    const T* image = y_grad + gn * call.OutSpatial() * call.out_ch;
    const T** row_src = tables.src.data() + i * taps;
    const int64_t* link[kMaxSpatialDims];  // this pixel's row of each axis's table
    int64_t base = 0;
    bool interior = true;
    for (int64_t a = 0; a < d; ++a) {
      link[a] = plan.links.data() + plan.links_begin[a] + j[a] * axes[a].kernel_size;
      interior &= j[a] >= plan.interior_begin[a] && j[a] < plan.interior_end[a];
      base += link[a][0];
      dst += j[a] * in_stride[a] * call.in_ch;
    }
    if (interior) {
      // Every tap reaches an output: tap t's is the pixel's first plus a fixed shift.
      const T* first = image + base * call.out_ch;
      for (int64_t t = 0; t < taps; ++t) row_src[t] = first + plan.tap_shift[t];
    } else {
      // Taps in row-major kernel order: the leading axes' part changes once per kernel row.
      int64_t k[kMaxSpatialDims] = {};
      for (int64_t t = 0; t < taps; t += k_last) {
        int64_t lead = 0;
        for (int64_t a = 0; a + 1 < d; ++a) lead += link[a][k[a]];
        for (int64_t kl = 0; kl < k_last; ++kl) {
          const int64_t o = lead + link[d - 1][kl];
          row_src[t + kl] = o >= 0 ? image + o * call.out_ch : zero;
        }
        for (int64_t a = d - 2; a >= 0 && ++k[a] == axes[a].kernel_size; --a) k[a] = 0;
      }
    }
    NextPixel(d, in_size, &n, j);
  }
  const auto* wt =
      plan.weights.data<PanelElement<T, Acc>>() + g * taps * PanelDepth<T>(call.out_ch) * plan.weights.ld;
  GatherGemmBlock<T, U, Acc>(rows, taps, tables.src.data(), tables.tap_k.data(), tables.dst.data(), wt,
                             call.out_ch, call.in_ch, plan.weights.ld, zero);
}

// Fills the plan of plan.call; false when memory runs out.
template <typename T, typename U, typename Acc>
bool PrepareInputGrad(InputGradPlan& plan, int64_t /*workers*/) {
  const ConvCall& call = plan.call;
  plan.zeros = MakeZeroRow<T>(call);
  if (!plan.zeros) return false;
  // links[begin[a] + j*K + k]: output pixel offset (in the flat output) that tap k links with input j on axis a,
  // or kOutside; the sentinel keeps any sum over the axes negative.
  constexpr int64_t kOutside = -(int64_t{1} << 58);
  int64_t out_stride[kMaxSpatialDims];
  PixelStrides(call.axes, false, out_stride);
  // Tap k links input j with output j*s + lo - d*k, so where every tap of an axis reaches the output (the
  // interior inputs), tap t's output is the pixel's tap-0 output plus tap_shift[t] (in elements).
  const int64_t d = static_cast<int64_t>(call.axes.size());
  plan.links.clear();
  plan.links_begin.assign(d, 0);
  plan.interior_begin.assign(d, 0);
  plan.interior_end.assign(d, 0);
  plan.tap_shift.assign(call.KernelSpatial(), 0);
  for (int64_t a = 0; a < d; ++a) {
    const AxisGeometry& ax = call.axes[a];
    plan.links_begin[a] = static_cast<int64_t>(plan.links.size());
    plan.interior_begin[a] = ax.in_size;
    for (int64_t j = 0; j < ax.in_size; ++j) {
      bool all = true;
      for (int64_t k = 0; k < ax.kernel_size; ++k) {
        const int64_t o = ax.OutputOf(k, j);
        all &= o >= 0;
        plan.links.push_back(o >= 0 ? o * out_stride[a] : kOutside);
      }
      if (all) {
        plan.interior_begin[a] = std::min(plan.interior_begin[a], j);
        plan.interior_end[a] = j + 1;
      }
    }
  }
  for (int64_t t = 0; t < call.KernelSpatial(); ++t) {
    int64_t rest = t, shift = 0;
    for (int64_t a = d - 1; a >= 0; --a) {
      const int64_t k = rest % call.axes[a].kernel_size;
      rest /= call.axes[a].kernel_size;
      shift -= call.axes[a].dilation * k * out_stride[a];
    }
    plan.tap_shift[t] = shift * call.out_ch;
  }
  plan.num_items = call.groups * ((call.batch * call.InSpatial() + kBlockRows - 1) / kBlockRows);
  return PackPanels<T, PanelElement<T, Acc>>(call, static_cast<const T*>(call.second), /*transpose=*/true,
                                             Vec<Acc>::kCols, /*pairs=*/kPairs<T>, &plan.weights);
}

}  // namespace
}  // namespace jaxseg::cpu::JAXSEG_ISA

#endif  // JAXSEG_CPU_INPUT_GRAD_H_
