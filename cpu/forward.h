// The forward pass of one kernel build: y (G, N, O..., Co) = conv_transpose(x (G, N, H..., Ci), w), each output
// pixel o computed from its phase's sub-kernel only, y[o] = sum over the phase's taps k of x[q + offset_k] . W[k].
// Its plan (ForwardPlan, built once per call by PrepareForward) chooses one of three forms, packs the kernel for it
// and counts the work items; RunForward computes one item.
//
// Compiled once per instruction set, inside that build's namespace (see cpu/simd.h).
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
#include "cpu/gather_gemm.h"
#include "cpu/numeric.h"
#include "cpu/packing.h"
#include "cpu/pixel_index.h"
#include "cpu/simd.h"

namespace jaxseg::cpu::JAXSEG_ISA {
namespace {

enum class ForwardForm {
  kTiles,   // item = (group, block of outputs, phase): the block product over the phase's taps
  kNarrow,  // the same items in dot-product form, for 1-4 output channels and enough input channels
  kImage,   // item = one image: a product over all taps at once, then a gather (ImageForwardItem)
};

struct ForwardPlan {
  ConvCall call;
  ForwardForm form = ForwardForm::kTiles;
  std::vector<PhaseND> phases;  // the phases of all axes together
  int64_t phase_blocks = 0;     // blocks of kBlockRows outputs in the largest phase (kTiles, kNarrow)
  int image_col_vecs = 1;       // vectors per register tile of columns (kImage)
  PackedWeights weights;        // panels of W[k] (kTiles), of W[k]^T (kNarrow), or tap columns (kImage)
  CachedBuffer zeros;           // the zero row the gathers read for padding
  int64_t num_items = 0;
};

// Item = (group, block, phase): block b of every phase covers about the same outputs q over the batch, so they
// read the same inputs; with the phase innermost, consecutive items (taken by the threads together) find those
// inputs in cache instead of streaming the input from memory once per phase.
template <typename T, typename U, typename Acc>
void ForwardItem(const ForwardPlan& plan, int64_t item) {
  const ConvCall& call = plan.call;
  const auto& axes = call.axes;
  const int64_t d = static_cast<int64_t>(axes.size());
  const int64_t num_phases = static_cast<int64_t>(plan.phases.size());
  const PhaseND& phase = plan.phases[item % num_phases];
  item /= num_phases;
  const int64_t m0 = (item % plan.phase_blocks) * kBlockRows;
  const int64_t g = item / plan.phase_blocks;
  const int64_t rows = std::min(kBlockRows, call.batch * phase.pixels - m0);
  if (rows <= 0) return;  // a phase with fewer outputs than the largest
  const int64_t taps = static_cast<int64_t>(phase.taps.size());

  int64_t in_stride[kMaxSpatialDims], out_stride[kMaxSpatialDims];
  PixelStrides(axes, true, in_stride);
  PixelStrides(axes, false, out_stride);
  const T* x = static_cast<const T*>(call.first);
  U* y = static_cast<U*>(call.result);
  const T* zero = static_cast<const T*>(plan.zeros.get());
  auto& tables = BlockTables<T, U>::ForThread(rows, taps);
  auto& src = tables.src;
  auto& dst = tables.dst;
  // Tap t reads input q + offset_t for the phase's output q: for the outputs where every tap reads inside the
  // input (q in [inner_begin, inner_end) on every axis) that is the pixel's q plus a fixed shift per tap.
  int64_t inner_begin[kMaxSpatialDims], inner_end[kMaxSpatialDims];
  for (int64_t a = 0; a < d; ++a) {
    inner_begin[a] = 0;
    inner_end[a] = phase.count[a];
  }
  thread_local std::vector<int64_t> shift;
  shift.assign(taps, 0);
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
    dst[i] = y + (gn * out_pixels + o_flat) * call.out_ch;
    const T* here = x + (gn * in_pixels + j_flat) * call.in_ch;
    const T** row_src = src.data() + i * taps;
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
  using P = PanelElement<T, Acc>;
  if (plan.form == ForwardForm::kNarrow) {
    const P* wt = plan.weights.data<P>() + g * call.KernelSpatial() * call.out_ch * ld;
    const auto narrow = [&](auto c) {
      NarrowBlock<T, U, Acc, decltype(c)::value>(rows, taps, src.data(), tables.tap_k.data(), dst.data(), wt,
                                                 call.in_ch, ld, zero);
    };
    switch (call.out_ch) {
      case 1: narrow(std::integral_constant<int, 1>{}); break;
      case 2: narrow(std::integral_constant<int, 2>{}); break;
      case 3: narrow(std::integral_constant<int, 3>{}); break;
      default: narrow(std::integral_constant<int, 4>{}); break;
    }
    return;
  }
  const P* w = plan.weights.data<P>() + g * call.KernelSpatial() * PanelDepth<T>(call.in_ch) * ld;
  GatherGemmBlock<T, U, Acc>(rows, taps, src.data(), tables.tap_k.data(), dst.data(), w, call.in_ch, call.out_ch,
                             ld, zero);
}

// The per-image form, for few output channels: z[j] = x[j] . [W[k][:, co] for every tap k and channel co], a
// plain product whose ksp * Co columns fill the vectors (the tap-by-tap form has Co <= 4 columns, and its
// dot-product variant reads every input row once per tap and phase); then each output gathers the z entries of
// the taps that reach it. z of an image is kept per thread (kMaxImageProducts bounds it). Used where the batch
// gives every thread at least 4 images.
constexpr int64_t kMaxImageProducts = int64_t{4} << 20;  // bytes
constexpr int64_t kMaxImageColumns = 128;

inline bool UseImageForward(const ConvShape& shape, int64_t acc_bytes, int64_t workers) {
  const int64_t cols = shape.KernelSpatial() * shape.out_ch;
  return !shape.axes.empty() && shape.out_ch <= kNarrowMax && cols <= kMaxImageColumns &&
         shape.InSpatial() * cols * acc_bytes <= kMaxImageProducts && shape.groups * shape.batch >= 4 * workers;
}

template <typename T, typename U, typename Acc>
void ImageForwardItem(const ForwardPlan& plan, int64_t item) {
  const ConvCall& call = plan.call;
  const auto& axes = call.axes;
  const int64_t d = static_cast<int64_t>(axes.size());
  const int64_t g = item / call.batch;
  const int64_t in_pixels = call.InSpatial(), out_pixels = call.OutSpatial();
  const int64_t ldz = call.KernelSpatial() * call.out_ch;
  const T* x = static_cast<const T*>(call.first) + item * in_pixels * call.in_ch;
  U* y = static_cast<U*>(call.result) + item * out_pixels * call.out_ch;

  thread_local std::vector<Acc> z;
  thread_local std::vector<const T*> src;
  thread_local std::vector<Acc*> dst;
  z.resize(in_pixels * ldz);
  src.resize(in_pixels);
  dst.resize(in_pixels);
  for (int64_t j = 0; j < in_pixels; ++j) {
    src[j] = x + j * call.in_ch;
    dst[j] = z.data() + j * ldz;
  }
  const auto* w = plan.weights.data<PanelElement<T, Acc>>() + g * PanelDepth<T>(call.in_ch) * plan.weights.ld;
  const int64_t tap0 = 0;
  const T* zero = static_cast<const T*>(plan.zeros.get());
  for (int64_t m0 = 0; m0 < in_pixels; m0 += kBlockRows) {
    const int64_t rows = std::min(kBlockRows, in_pixels - m0);
    const auto product = [&](auto cv) {
      GatherGemmBlock<T, Acc, Acc, decltype(cv)::value>(rows, 1, src.data() + m0, &tap0, dst.data() + m0, w,
                                                        call.in_ch, ldz, plan.weights.ld, zero);
    };
    if constexpr (kWideColVecs >= 3) {
      if (plan.image_col_vecs == 3) { product(std::integral_constant<int, 3>{}); continue; }
    }
    if constexpr (kWideColVecs >= 2) {
      if (plan.image_col_vecs == 2) { product(std::integral_constant<int, 2>{}); continue; }
    }
    product(std::integral_constant<int, 1>{});
  }

  // Gather, one line of a phase's outputs (along the last axis) at a time: each tap that reaches the line adds
  // a run of z entries, so the inner loop has no per-pixel checks.
  int64_t in_stride[kMaxSpatialDims], out_stride[kMaxSpatialDims];
  PixelStrides(axes, true, in_stride);
  PixelStrides(axes, false, out_stride);
  const int64_t last = d - 1, co_n = call.out_ch;
  thread_local std::vector<Acc> line_sum;
  for (const PhaseND& phase : plan.phases) {  // phases with taps; PrepareForward zeroed the others' outputs
    if (phase.pixels == 0) continue;
    const int64_t line = phase.count[last];
    line_sum.resize(line * co_n);
    int64_t q[kMaxSpatialDims] = {};  // leading coordinates of the line
    for (int64_t l = 0; l < phase.pixels / line; ++l) {
      std::fill(line_sum.begin(), line_sum.end(), Acc(0));
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
        const Acc* zt = z.data() + j * ldz + tap.k * co_n;
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

// Fills the plan of plan.call for at most `workers` concurrent workers; false when memory runs out.
template <typename T, typename U, typename Acc>
bool PrepareForward(ForwardPlan& plan, int64_t workers) {
  const ConvCall& call = plan.call;
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
  for (const PhaseND& p : plan.phases)
    plan.phase_blocks = std::max(plan.phase_blocks, (call.batch * p.pixels + kBlockRows - 1) / kBlockRows);
  if (UseImageForward(call, sizeof(Acc), workers)) {
    plan.form = ForwardForm::kImage;
    plan.num_items = call.groups * call.batch;
    // The tile width (1 .. kWideColVecs vectors) that pads the ksp * Co columns least; the wider on a tie.
    const int64_t cols = call.KernelSpatial() * call.out_ch;
    plan.image_col_vecs = 1;
    for (int cv = 2; cv <= kWideColVecs; ++cv)
      if (RoundUp(cols, cv * Vec<Acc>::kWidth) <= RoundUp(cols, plan.image_col_vecs * Vec<Acc>::kWidth))
        plan.image_col_vecs = cv;
    return PackTapColumns<T, Acc>(call, w, plan.image_col_vecs, &plan.weights);
  }
  plan.num_items = call.groups * plan.phase_blocks * static_cast<int64_t>(plan.phases.size());
  // Few output channels and enough input channels to fill the vectors: the dot-product form.
  const bool narrow = call.out_ch >= 1 && call.out_ch <= kNarrowMax && call.in_ch >= Vec<Acc>::kWidth;
  plan.form = narrow ? ForwardForm::kNarrow : ForwardForm::kTiles;
  using P = PanelElement<T, Acc>;
  if (narrow)
    return PackPanels<T, P>(call, w, /*transpose=*/true, NarrowCols<T, Acc>(), /*pairs=*/false, &plan.weights);
  return PackPanels<T, P>(call, w, /*transpose=*/false, Vec<Acc>::kCols, /*pairs=*/kPairs<T>, &plan.weights);
}

template <typename T, typename U, typename Acc>
void RunForward(const ForwardPlan& plan, int64_t item, int64_t /*worker*/) {
  if (plan.form == ForwardForm::kImage)
    ImageForwardItem<T, U, Acc>(plan, item);
  else
    ForwardItem<T, U, Acc>(plan, item);
}

}  // namespace
}  // namespace jaxseg::cpu::JAXSEG_ISA

#endif  // JAXSEG_CPU_FORWARD_H_
