// The input gradient: dx (G, N, H..., Ci) from dy (G, N, O..., Co) and w, a strided
// convolution: dx[j] = sum over every tap k that links input j to an output o of dy[o] . W[k]^T. Its plan
// (InputGradPlan, built once per call by PrepareInputGrad) holds the per-axis link tables and the transposed
// kernel panels; RunInputGrad computes one item, a block of input pixels: its tables in the worker's workspace, its
// product with the chosen build's indirect-GEMM micro-kernel (cpu/kernel_set.h). Planning code, compiled once
// (cpu/prepare.cc).
#ifndef JAXSEG_CPU_INPUT_GRAD_H_
#define JAXSEG_CPU_INPUT_GRAD_H_

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/conv_shape.h"
#include "common/phase_geometry.h"
#include "cpu/buffer_cache.h"
#include "cpu/gather_tables.h"
#include "cpu/kernel_set.h"
#include "cpu/packing.h"
#include "cpu/pixel_index.h"
#include "cpu/workspace.h"

namespace jaxseg::cpu::planning {
namespace {

struct InputGradPlan {
  ConvCall call;
  const KernelSet* kernels = nullptr;
  const TypedKernels* typed = nullptr;  // the build's micro-kernels of the call's dtype pair
  bool pairs = false;                   // panels hold bf16 pairs (Pairs)
  int64_t block_rows = 0;               // input pixels per block (BlockRows)
  int64_t workspace_bytes = 0;          // per worker
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
void RunInputGrad(const InputGradPlan& plan, int64_t item, WorkspaceSlot& slot) {
  const ConvCall& call = plan.call;
  const auto& axes = call.axes;
  const int64_t d = static_cast<int64_t>(axes.size());
  const int64_t total = call.batch * call.InSpatial();
  const int64_t per_group = (total + plan.block_rows - 1) / plan.block_rows;
  const int64_t g = item / per_group;
  const int64_t m0 = (item % per_group) * plan.block_rows;
  const int64_t rows = std::min(plan.block_rows, total - m0);
  const int64_t taps = call.KernelSpatial();

  int64_t in_stride[kMaxSpatialDims];
  PixelStrides(axes, true, in_stride);
  const T* y_grad = static_cast<const T*>(call.first);
  U* x_grad = static_cast<U*>(call.result);
  const T* zero = static_cast<const T*>(plan.zeros.get());
  BlockTables tables = BlockTables::Take(slot, rows, taps);
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
    U* dst = x_grad + (gn * call.InSpatial()) * call.in_ch;
    const T* image = y_grad + gn * call.OutSpatial() * call.out_ch;
    const void** row_src = tables.src + i * taps;
    const int64_t* link[kMaxSpatialDims];  // this pixel's row of each axis's table
    int64_t base = 0;
    bool interior = true;
    for (int64_t a = 0; a < d; ++a) {
      link[a] = plan.links.data() + plan.links_begin[a] + j[a] * axes[a].kernel_size;
      interior &= j[a] >= plan.interior_begin[a] && j[a] < plan.interior_end[a];
      base += link[a][0];
      dst += j[a] * in_stride[a] * call.in_ch;
    }
    tables.dst[i] = dst;
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
  GatherBlockArgs args;
  args.rows = rows;
  args.taps = taps;
  args.src = tables.src;
  args.tap_k = tables.tap_k;
  args.dst = tables.dst;
  args.w = plan.weights.at(g * taps * PanelDepth(call.out_ch, plan.pairs) * plan.weights.ld);
  args.depth = call.out_ch;
  args.ncols = call.in_ch;
  args.ld = plan.weights.ld;
  args.zero = zero;
  args.col_vecs = plan.kernels->col_vecs;
  GroupRowsByTaps(tables, call.out_ch * call.in_ch, args);
  plan.typed->gather_block(args);
}

// Fills the plan of plan.call (plan.kernels and plan.typed set); false when memory runs out.
template <typename T, typename U, typename Acc>
bool PrepareInputGrad(InputGradPlan& plan, int64_t /*workers*/) {
  const ConvCall& call = plan.call;
  plan.pairs = Pairs<T>(*plan.kernels);
  plan.block_rows = BlockRows(*plan.kernels);
  WorkspaceSize size;
  BlockTables::Take(size, plan.block_rows, call.KernelSpatial());
  plan.workspace_bytes = size.bytes();
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
  plan.num_items = call.groups * ((call.batch * call.InSpatial() + plan.block_rows - 1) / plan.block_rows);
  const T* w = static_cast<const T*>(call.second);
  const int64_t tile_cols = plan.kernels->col_vecs * kWidth<Acc>;
  if constexpr (std::is_same_v<T, bf16_t>) {
    if (plan.pairs) return PackPanels<T, T>(call, w, /*transpose=*/true, tile_cols, /*pairs=*/true, &plan.weights);
  }
  return PackPanels<T, Acc>(call, w, /*transpose=*/true, tile_cols, /*pairs=*/false, &plan.weights);
}

}  // namespace
}  // namespace jaxseg::cpu::planning

#endif  // JAXSEG_CPU_INPUT_GRAD_H_
