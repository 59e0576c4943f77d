// The CUDA-core kernels, as the work of one thread (or lane): the paths for float64, for channel counts the tensor
// cores cannot take (not whole 16-byte vectors) and for layers with very few result channels, where a warp reads
// one row of the gathered activation with consecutive lanes (coalesced) and the layer is bound by memory traffic.
// Written once as __host__ __device__ templates: the device kernels (cuda/kernels.cu) call them per thread, the
// CPU executor (cuda/plan_executor.cc) per emulated thread, with the same plan.
//
// `Num` supplies the element conversions: Num::template Load<Acc>(const T*) and Num::Store(void* out, index,
// Acc value, DType result).
#ifndef JAXSEG_CUDA_DIRECT_KERNELS_H_
#define JAXSEG_CUDA_DIRECT_KERNELS_H_

#include <cstdint>

#include "cuda/conv_plan.h"

namespace jaxseg::gpu::direct {

constexpr int kChannels = kDirectChannels;

// ---------------------------------------------------------------------------------------------------------------
// forward and input_grad.

// Outer-product form: CTA tile of kDirectWarps rows x 32*kChannels result channels; warp `warp` computes row
// `warp`, lane `lane` its channels lane*kChannels ... + kChannels - 1, over every tap and contracted channel.
template <typename Num, typename T, typename Acc>
JAXSEG_HD void GatherOuter(const GatherPlan& p, int64_t block, int warp, int lane, const T* a, const T* b, void* out,
                           DType out_type) {
  const GatherTile t = p.TileAt(block);
  if (!t.valid) return;
  const RowCoord row = p.Row(t, warp);
  const int32_t n0 = t.tile_n * p.tile_n + lane * kChannels;
  if (row.image < 0 || n0 >= p.c_n) return;
  Acc acc[kChannels];
  for (int j = 0; j < kChannels; ++j) acc[j] = Acc(0);
  TapCursor c = p.FirstStep();
  for (int32_t tap = 0; tap < t.taps; ++tap, p.NextTap(t, &c)) {
    const int64_t src = p.SourcePixel(t, row, c);
    if (src < 0) continue;
    const T* ar = a + src * p.c_k;
    const T* br = b + p.WeightBase(t, c) + n0 * p.b_stride_n;
    for (int32_t k = 0; k < p.c_k; ++k) {
      const Acc av = Num::template Load<Acc>(ar + k);
      for (int j = 0; j < kChannels; ++j)
        if (n0 + j < p.c_n) acc[j] += av * Num::template Load<Acc>(br + k * p.b_stride_k + j * p.b_stride_n);
    }
  }
  const int64_t dst = p.DestPixel(t, row) * p.c_n + n0;
  for (int j = 0; j < kChannels; ++j)
    if (n0 + j < p.c_n) Num::Store(out, dst + j, acc[j], out_type);
}

// Dot-product form: CTA tile of kDirectWarps rows x kChannels result channels; warp `warp` computes row `warp`,
// lane `lane` the partial sums of contracted channels lane, lane + 32, ... A butterfly over the lanes (distances
// 16, 8, 4, 2, 1: every lane adds lane ^ distance's value) adds them, then lane 0 stores (GatherDotStore).
template <typename Num, typename T, typename Acc>
JAXSEG_HD void GatherDotPartial(const GatherPlan& p, const GatherTile& t, int warp, int lane, const T* a, const T* b,
                                Acc (&acc)[kChannels]) {
  for (int j = 0; j < kChannels; ++j) acc[j] = Acc(0);
  const RowCoord row = p.Row(t, warp);
  if (row.image < 0) return;
  const int32_t n0 = t.tile_n * p.tile_n;
  TapCursor c = p.FirstStep();
  for (int32_t tap = 0; tap < t.taps; ++tap, p.NextTap(t, &c)) {
    const int64_t src = p.SourcePixel(t, row, c);
    if (src < 0) continue;
    const T* ar = a + src * p.c_k;
    const T* br = b + p.WeightBase(t, c) + n0 * p.b_stride_n;
    for (int32_t k = lane; k < p.c_k; k += 32) {
      const Acc av = Num::template Load<Acc>(ar + k);
      for (int j = 0; j < kChannels; ++j)
        if (n0 + j < p.c_n) acc[j] += av * Num::template Load<Acc>(br + k * p.b_stride_k + j * p.b_stride_n);
    }
  }
}

template <typename Num, typename Acc>
JAXSEG_HD void GatherDotStore(const GatherPlan& p, const GatherTile& t, int warp, const Acc (&acc)[kChannels],
                              void* out, DType out_type) {
  const RowCoord row = p.Row(t, warp);
  if (row.image < 0) return;
  const int32_t n0 = t.tile_n * p.tile_n;
  const int64_t dst = p.DestPixel(t, row) * p.c_n + n0;
  for (int j = 0; j < kChannels; ++j)
    if (n0 + j < p.c_n) Num::Store(out, dst + j, acc[j], out_type);
}

// ---------------------------------------------------------------------------------------------------------------
// weight_grad: thread `index` computes kernel entries (tap, ci, co .. co + kChannels - 1) over one split of the
// tap's pixels, into the split's partials (laid out as WeightGradPlan::PartialIndex).

JAXSEG_HD int64_t WeightGradThreads(const WeightGradPlan& p) {
  return p.groups * p.taps * static_cast<int64_t>(p.splits) * p.tiles_m * p.tiles_n;
}

template <typename Num, typename T, typename Acc>
JAXSEG_HD void WeightGrad(const WeightGradPlan& p, int64_t index, const T* x, const T* dy, Acc* partials) {
  constexpr DType kPartial = sizeof(Acc) == 8 ? DType::kF64 : DType::kF32;
  if (index >= WeightGradThreads(p)) return;
  const WeightGradTile t = p.TileAt(index);
  const int32_t ci = t.tile_m;
  const int32_t co = t.tile_n * kChannels;
  Acc acc[kChannels];
  for (int j = 0; j < kChannels; ++j) acc[j] = Acc(0);
  for (int32_t q = t.begin; q < t.end; ++q) {
    const PixelPair px = p.Pixels(t, q);
    const Acc xv = Num::template Load<Acc>(x + px.x * p.c_m + ci);
    const T* dr = dy + px.dy * p.c_n + co;
    for (int j = 0; j < kChannels; ++j)
      if (co + j < p.c_n) acc[j] += xv * Num::template Load<Acc>(dr + j);
  }
  for (int j = 0; j < kChannels; ++j)
    if (co + j < p.c_n) Num::Store(partials, p.PartialIndex(t.split, t.group, t.tap, ci, co + j), acc[j], kPartial);
}

// The second stage of weight_grad, for both paths: thread `index` (canonical order: group, tap, ci, co) adds the
// splits' partials in split order and stores the sum where the kernel gradient keeps that entry.
template <typename Num, typename Acc>
JAXSEG_HD void ReduceSplits(const WeightGradPlan& p, int64_t index, const Acc* partials, void* dw, DType out_type) {
  const int64_t elements = p.partial_elements();
  if (index >= elements) return;
  int64_t rest = index;
  const int32_t co = static_cast<int32_t>(rest % p.c_n);
  rest /= p.c_n;
  const int32_t ci = static_cast<int32_t>(rest % p.c_m);
  rest /= p.c_m;
  const int32_t tap = static_cast<int32_t>(rest % p.taps);
  const int64_t group = rest / p.taps;
  Acc sum = Num::template Load<Acc>(partials + index);
  for (int32_t s = 1; s < p.splits; ++s) sum += Num::template Load<Acc>(partials + s * elements + index);
  Num::Store(dw, p.StoredIndex(group, tap, ci, co), sum, out_type);
}

}  // namespace jaxseg::gpu::direct

#endif  // JAXSEG_CUDA_DIRECT_KERNELS_H_
