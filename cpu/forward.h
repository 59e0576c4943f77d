// The forward pass: y (G, N, O..., Co) = conv_transpose(x (G, N, H..., Ci), w), each output
// pixel o computed from its phase's sub-kernel only, y[o] = sum over the phase's taps k of x[q + offset_k] . W[k].
// Its plan (ForwardPlan, built once per call by PrepareForward) chooses one of three forms, packs the kernel for it
// and counts the work items; RunForward computes one item: its tables in the worker's workspace, its products with
// the chosen build's micro-kernels (cpu/kernel_set.h). Planning code, compiled once (cpu/prepare.cc).
#ifndef JAXSEG_CPU_FORWARD_H_
#define JAXSEG_CPU_FORWARD_H_

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "common/conv_shape.h"
#include "common/phase_geometry.h"
#include "cpu/buffer_cache.h"
#include "cpu/gather_tables.h"
#include "cpu/kernel_set.h"
#include "cpu/numeric.h"
#include "cpu/packing.h"
#include "cpu/pixel_index.h"
#include "cpu/workspace.h"

namespace jaxseg::cpu::planning {
namespace {

enum class ForwardForm {
  kTiles,   // item = (group, block of outputs, phase): the block product over the phase's taps
  kNarrow,  // the same items in dot-product form, for 1-4 output channels and enough input channels
  kImage,   // item = one image: a product over all taps at once, then a gather (ImageForwardItem)
};

// The narrow (dot-product) form is for layers with at most kNarrowMax output channels (cpu/gather_gemm.h), whose
// panels of bf16 pairs are kBf16PerVector deep.
constexpr int kNarrowMax = 4;
constexpr int64_t kBf16PerVector = 32;

struct ForwardPlan {
  ConvCall call;
  const KernelSet* kernels = nullptr;
  const TypedKernels* typed = nullptr;  // the build's micro-kernels of the call's dtype pair
  bool pairs = false;                   // panels hold bf16 pairs (Pairs)
  ForwardForm form = ForwardForm::kTiles;
  std::vector<PhaseND> phases;  // the phases of all axes together
  int64_t block_rows = 0;       // outputs per block (BlockRows)
  int64_t phase_blocks = 0;     // blocks of block_rows outputs in the largest phase (kTiles, kNarrow)
  int64_t max_taps = 0;         // taps of the phase with the most
  int image_col_vecs = 1;       // vectors per register tile of columns (kImage)
  PackedWeights weights;        // panels of W[k] (kTiles), of W[k]^T (kNarrow), or tap columns (kImage)
  CachedBuffer zeros;           // the zero row the gathers read for padding
  int64_t workspace_bytes = 0;  // per worker
  int64_t num_items = 0;
};

// Item = (group, block, phase): block b of every phase covers about the same outputs q over the batch, so they
// read the same inputs; with the phase innermost, consecutive items (taken by the threads together) find those
// inputs in cache instead of streaming the input from memory once per phase.
template <typename T, typename U, typename Acc>
void ForwardItem(const ForwardPlan& plan, int64_t item, WorkspaceSlot& slot) {
  const ConvCall& call = plan.call;
  const auto& axes = call.axes;
  const int64_t d = static_cast<int64_t>(axes.size());
  const int64_t num_phases = static_cast<int64_t>(plan.phases.size());
  const PhaseND& phase = plan.phases[item % num_phases];
  item /= num_phases;
  const int64_t m0 = (item % plan.phase_blocks) * plan.block_rows;
  const int64_t g = item / plan.phase_blocks;
  const int64_t rows = std::min(plan.block_rows, call.batch * phase.pixels - m0);
  if (rows <= 0) return;  // a phase with fewer outputs than the largest
  const int64_t taps = static_cast<int64_t>(phase.taps.size());

  int64_t in_stride[kMaxSpatialDims], out_stride[kMaxSpatialDims];
  PixelStrides(axes, true, in_stride);
  PixelStrides(axes, false, out_stride);
  const T* x = static_cast<const T*>(call.first);
  U* y = static_cast<U*>(call.result);
  const T* zero = static_cast<const T*>(plan.zeros.get());
  BlockTables tables = BlockTables::Take(slot, rows, taps);
  int64_t* shift = tables.shift;
  // Tap t reads input q + offset_t for the phase's output q: for the outputs where every tap reads inside the
  // input (q in [inner_begin, inner_end) on every axis) that is the pixel's q plus a fixed shift per tap.
  int64_t inner_begin[kMaxSpatialDims], inner_end[kMaxSpatialDims];
  for (int64_t a = 0; a < d; ++a) {
    inner_begin[a] = 0;
    inner_end[a] = phase.count[a];
  }
  std::fill(shift, shift + taps, int64_t{0});
  for (int64_t t = 0; t < taps; ++t) {
    const TapND& tap = phase.taps[t];
    tables.tap_k[t] = tap.k;
    for (int64_t a = 0; a < d; ++a) {
      inner_begin[a] = std::max(inner_begin[a], tap.q_begin[a]);
      inner_end[a] = std::min(inner_end[a], tap.q_end[a]);
      shift[t] += tap.offset[a] * in_stride[a] * call.in_ch;
    }
  }
  const int64_t in_pixels = call.InSpatial(), out_pixels = call.OutSpatial();
  int64_t n, q[kMaxSpatialDims];  // the output's image and coordinates within the phase
  PixelCoords(d, phase.count, m0, &n, q);
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t gn = g * call.batch + n;
    int64_t o_flat = 0, j_flat = 0;
    bool interior = true;
    for (int64_t a = 0; a < d; ++a) {
      o_flat += (q[a] * axes[a].stride + phase.residue[a]) * out_stride[a];
      j_flat += q[a] * in_stride[a];
      interior &= q[a] >= inner_begin[a] && q[a] < inner_end[a];
    }
    tables.dst[i] = y + (gn * out_pixels + o_flat) * call.out_ch;
    const T* here = x + (gn * in_pixels + j_flat) * call.in_ch;
    const void** row_src = tables.src + i * taps;
    if (interior) {
      for (int64_t t = 0; t < taps; ++t) row_src[t] = here + shift[t];
    } else {
      for (int64_t t = 0; t < taps; ++t) {
        const TapND& tap = phase.taps[t];
        bool inside = true;
        for (int64_t a = 0; a < d; ++a) inside &= q[a] >= tap.q_begin[a] && q[a] < tap.q_end[a];
        row_src[t] = inside ? here + shift[t] : zero;
      }
    }
    NextPixel(d, phase.count, &n, q);
  }
  const int64_t ld = plan.weights.ld;
  GatherBlockArgs args;
  args.rows = rows;
  args.taps = taps;
  args.src = tables.src;
  args.tap_k = tables.tap_k;
  args.dst = tables.dst;
  args.depth = call.in_ch;
  args.ncols = call.out_ch;
  args.ld = ld;
  args.zero = zero;
  if (plan.form == ForwardForm::kNarrow) {
    args.w = plan.weights.at(g * call.KernelSpatial() * call.out_ch * ld);
    plan.typed->narrow_block(args);
    return;
  }
  args.w = plan.weights.at(g * call.KernelSpatial() * PanelDepth(call.in_ch, plan.pairs) * ld);
  args.col_vecs = plan.kernels->col_vecs;
  GroupRowsByTaps(tables, call.in_ch * call.out_ch, args);
  plan.typed->gather_block(args);
}

// The workspace of a ForwardItem: its block's tables.
template <typename Slot>
void TakeForwardItem(const ForwardPlan& plan, Slot& slot) {
  BlockTables::Take(slot, plan.block_rows, plan.max_taps);
}

// The per-image form, for few output channels: z[j] = x[j] . [W[k][:, co] for every tap k and channel co], a
// plain product whose ksp * Co columns fill the vectors (the tap-by-tap form has Co <= 4 columns, and its
// dot-product variant reads every input row once per tap and phase); then each output gathers the z entries of
// the taps that reach it. z of an image is kept in the worker's workspace (kMaxImageProducts bounds it). Used where the
// batch gives every thread at least 4 images.
constexpr int64_t kMaxImageProducts = int64_t{4} << 20;  // bytes
constexpr int64_t kMaxImageColumns = 128;

inline bool UseImageForward(const ConvShape& shape, int64_t acc_bytes, int64_t workers) {
  const int64_t cols = shape.KernelSpatial() * shape.out_ch;
  return !shape.axes.empty() && shape.out_ch <= kNarrowMax && cols <= kMaxImageColumns &&
         shape.InSpatial() * cols * acc_bytes <= kMaxImageProducts && shape.groups * shape.batch >= 4 * workers;
}

// The workspace of an ImageForwardItem: z, its tables and the sums of one line.
template <typename T, typename Acc, typename Slot>
void TakeImageItem(const ForwardPlan& plan, Slot& slot, Acc** z, const T*** src, Acc*** dst, Acc** line_sum) {
  const ConvCall& call = plan.call;
  const int64_t in_pixels = call.InSpatial(), ldz = call.KernelSpatial() * call.out_ch;
  int64_t line = 1;
  for (const PhaseND& phase : plan.phases) line = std::max(line, phase.count[call.axes.size() - 1]);
  *z = slot.template Take<Acc>(in_pixels * ldz);
  *src = slot.template Take<const T*>(in_pixels);
  *dst = slot.template Take<Acc*>(in_pixels);
  *line_sum = slot.template Take<Acc>(line * call.out_ch);
}

template <typename T, typename U, typename Acc>
void ImageForwardItem(const ForwardPlan& plan, int64_t item, WorkspaceSlot& slot) {
  const ConvCall& call = plan.call;
  const auto& axes = call.axes;
  const int64_t d = static_cast<int64_t>(axes.size());
  const int64_t g = item / call.batch;
  const int64_t in_pixels = call.InSpatial(), out_pixels = call.OutSpatial();
  const int64_t ldz = call.KernelSpatial() * call.out_ch;
  const T* x = static_cast<const T*>(call.first) + item * in_pixels * call.in_ch;
  U* y = static_cast<U*>(call.result) + item * out_pixels * call.out_ch;

  Acc* z;
  const T** src;
  Acc** dst;
  Acc* line_sum;
  TakeImageItem<T, Acc>(plan, slot, &z, &src, &dst, &line_sum);
  for (int64_t j = 0; j < in_pixels; ++j) {
    src[j] = x + j * call.in_ch;
    dst[j] = z + j * ldz;
  }
  const int64_t tap0 = 0;
  GatherBlockArgs args;
  args.taps = 1;
  args.tap_k = &tap0;
  args.w = plan.weights.at(g * PanelDepth(call.in_ch, plan.pairs) * plan.weights.ld);
  args.depth = call.in_ch;
  args.ncols = ldz;
  args.ld = plan.weights.ld;
  args.zero = plan.zeros.get();
  args.col_vecs = plan.image_col_vecs;
  for (int64_t m0 = 0; m0 < in_pixels; m0 += plan.block_rows) {
    args.rows = std::min(plan.block_rows, in_pixels - m0);
    args.src = reinterpret_cast<const void* const*>(src + m0);
    args.dst = reinterpret_cast<void* const*>(dst + m0);
    plan.typed->gather_block_acc(args);
  }

  // Gather, one line of a phase's outputs (along the last axis) at a time: each tap that reaches the line adds
  // a run of z entries, so the inner loop has no per-pixel checks.
  int64_t in_stride[kMaxSpatialDims], out_stride[kMaxSpatialDims];
  PixelStrides(axes, true, in_stride);
  PixelStrides(axes, false, out_stride);
  const int64_t last = d - 1, co_n = call.out_ch;
  for (const PhaseND& phase : plan.phases) {  // phases with taps; PrepareForward zeroed the others' outputs
    if (phase.pixels == 0) continue;
    const int64_t line = phase.count[last];
    int64_t q[kMaxSpatialDims] = {};  // leading coordinates of the line
    for (int64_t l = 0; l < phase.pixels / line; ++l) {
      std::fill(line_sum, line_sum + line * co_n, Acc(0));
      int64_t j_lead = 0, o_lead = phase.residue[last] * out_stride[last];
      for (int64_t a = 0; a < last; ++a) {
        j_lead += q[a] * in_stride[a];
        o_lead += (q[a] * axes[a].stride + phase.residue[a]) * out_stride[a];
      }
      for (const TapND& tap : phase.taps) {
        bool inside = true;
        int64_t j = j_lead + tap.offset[last];
        for (int64_t a = 0; a < last; ++a) {
          inside &= q[a] >= tap.q_begin[a] && q[a] < tap.q_end[a];
          j += tap.offset[a] * in_stride[a];
        }
        if (!inside) continue;
        const Acc* zt = z + j * ldz + tap.k * co_n;
        for (int64_t p = tap.q_begin[last]; p < tap.q_end[last]; ++p)
          for (int64_t co = 0; co < co_n; ++co) line_sum[p * co_n + co] += zt[p * ldz + co];
      }
      const int64_t o_step = axes[last].stride * out_stride[last] * co_n;
      U* out = y + o_lead * co_n;
      for (int64_t p = 0; p < line; ++p, out += o_step)
        for (int64_t co = 0; co < co_n; ++co) out[co] = FromAcc<U>(line_sum[p * co_n + co]);
      for (int64_t a = last - 1; a >= 0 && ++q[a] == phase.count[a]; --a) q[a] = 0;
    }
  }
}

// Packs the kernel into panels of kcols columns (cpu/packing.h): of bf16 pairs where plan.pairs (interleaved when
// `interleave`), else of the accumulation type.
template <typename T, typename Acc>
bool PackForPlan(const ConvShape& shape, const T* w, bool transpose, int64_t kcols, bool pairs, bool interleave,
                 PackedWeights* out) {
  if constexpr (std::is_same_v<T, bf16_t>) {
    if (pairs) return PackPanels<T, T>(shape, w, transpose, kcols, interleave, out);
  }
  return PackPanels<T, Acc>(shape, w, transpose, kcols, /*pairs=*/false, out);
}

// Fills the plan of plan.call (plan.kernels and plan.typed set) for at most `workers` concurrent workers; false
// when memory runs out.
template <typename T, typename U, typename Acc>
bool PrepareForward(ForwardPlan& plan, int64_t workers) {
  const ConvCall& call = plan.call;
  const KernelSet& kernels = *plan.kernels;
  plan.pairs = Pairs<T>(kernels);
  plan.block_rows = BlockRows(kernels);
  plan.zeros = MakeZeroRow<T>(call);
  if (!plan.zeros) return false;
  const T* w = static_cast<const T*>(call.second);
  plan.phases = MakePhasesND(call.axes);
  // Outputs of phases without taps (a kernel smaller than the stride) are zero: written once here, so that no
  // work item, table or packed panel is spent on them.
  if (!std::all_of(call.axes.begin(), call.axes.end(), [](const AxisGeometry& a) { return a.EveryOutputHasTaps(); }))
    std::memset(call.result, 0,
                static_cast<size_t>(call.groups * call.batch * call.OutSpatial() * call.out_ch) * sizeof(U));
  plan.phase_blocks = 0;
  plan.max_taps = 0;
  for (const PhaseND& p : plan.phases) {
    plan.phase_blocks = std::max(plan.phase_blocks, (call.batch * p.pixels + plan.block_rows - 1) / plan.block_rows);
    plan.max_taps = std::max(plan.max_taps, static_cast<int64_t>(p.taps.size()));
  }
  WorkspaceSize size;
  if (UseImageForward(call, sizeof(Acc), workers)) {
    plan.form = ForwardForm::kImage;
    plan.num_items = call.groups * call.batch;
    // The tile width (1 .. wide_col_vecs vectors) that pads the ksp * Co columns least; the wider on a tie.
    const int64_t cols = call.KernelSpatial() * call.out_ch;
    plan.image_col_vecs = 1;
    for (int cv = 2; cv <= kernels.wide_col_vecs; ++cv)
      if (RoundUp(cols, cv * kWidth<Acc>) <= RoundUp(cols, plan.image_col_vecs * kWidth<Acc>)) plan.image_col_vecs = cv;
    Acc *z, **dst, *line_sum;
    const T** src;
    TakeImageItem<T, Acc>(plan, size, &z, &src, &dst, &line_sum);
    plan.workspace_bytes = size.bytes();
    bool packed = false;
    if constexpr (std::is_same_v<T, bf16_t>) {
      if (plan.pairs) packed = PackTapColumns<T, T>(call, w, plan.image_col_vecs * kWidth<Acc>, true, &plan.weights);
    }
    if (!plan.pairs) packed = PackTapColumns<T, Acc>(call, w, plan.image_col_vecs * kWidth<Acc>, false, &plan.weights);
    return packed;
  }
  plan.num_items = call.groups * plan.phase_blocks * static_cast<int64_t>(plan.phases.size());
  TakeForwardItem(plan, size);
  plan.workspace_bytes = size.bytes();
  // Few output channels and enough input channels to fill the vectors: the dot-product form, whose panels are
  // (tap, depth tile, C rows, one tile of depth): a register tile of the accumulation type, or one vector of bf16
  // values (cpu/gather_gemm.h's NarrowCols).
  const bool narrow = call.out_ch >= 1 && call.out_ch <= kNarrowMax && call.in_ch >= kWidth<Acc>;
  plan.form = narrow ? ForwardForm::kNarrow : ForwardForm::kTiles;
  const int64_t tile_cols = kernels.col_vecs * kWidth<Acc>;
  if (narrow)
    return PackForPlan<T, Acc>(call, w, /*transpose=*/true, plan.pairs ? kBf16PerVector : tile_cols, plan.pairs,
                               /*interleave=*/false, &plan.weights);
  return PackForPlan<T, Acc>(call, w, /*transpose=*/false, tile_cols, plan.pairs, /*interleave=*/true, &plan.weights);
}

template <typename T, typename U, typename Acc>
void RunForward(const ForwardPlan& plan, int64_t item, WorkspaceSlot& slot) {
  if (plan.form == ForwardForm::kImage)
    ImageForwardItem<T, U, Acc>(plan, item, slot);
  else
    ForwardItem<T, U, Acc>(plan, item, slot);
}

}  // namespace
}  // namespace jaxseg::cpu::planning

#endif  // JAXSEG_CPU_FORWARD_H_
