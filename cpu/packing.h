// Weight packing of one kernel build, done once per call before any product: the kernel, in whichever layout it
// is stored (common/conv_shape.h), converted to the accumulation type and laid out as contiguous panels of one
// register tile of columns, which the products read row after row. Columns past the last are zero.
//
// Compiled once per instruction set, inside that build's namespace (see cpu/simd.h).
#ifndef JAXSEG_CPU_PACKING_H_
#define JAXSEG_CPU_PACKING_H_

#include <algorithm>
#include <cstdint>

#include "common/conv_shape.h"
#include "cpu/buffer_cache.h"
#include "cpu/numeric.h"
#include "cpu/simd.h"

namespace jaxseg::cpu::JAXSEG_ISA {
namespace {

struct PackedWeights {
  CachedBuffer buffer;  // taken from, and handed back to, the buffer cache
  int64_t ld = 0;       // columns per depth row, padded to whole tiles

  template <typename Acc>
  const Acc* data() const {
    return static_cast<const Acc*>(buffer.get());
  }
};

// Panels (tap, column tile, depth, kCols) of every group's taps. Without `transpose` the depth is the input
// channels and the columns the output channels (the forward's W[k]); with it the reverse (W[k]^T: the input
// gradient, and the forward's dot-product form). A panel is read row after row without the cache-set conflicts
// that a power-of-two row stride would cause. False when memory runs out.
template <typename T, typename Acc>
bool PackPanels(const ConvShape& shape, const T* w, bool transpose, PackedWeights* out) {
  const int64_t kcols = Vec<Acc>::kCols;
  const int64_t ksp = shape.KernelSpatial();
  const int64_t taps = shape.groups * ksp;
  const int64_t depth = transpose ? shape.out_ch : shape.in_ch;
  const int64_t cols = transpose ? shape.in_ch : shape.out_ch;
  out->ld = RoundUp(std::max<int64_t>(cols, 1), kcols);
  const int64_t tiles = out->ld / kcols;
  out->buffer = AcquireBuffer(taps * depth * out->ld * static_cast<int64_t>(sizeof(Acc)));
  if (!out->buffer) return false;
  Acc* dst = static_cast<Acc*>(out->buffer.get());
  // Element (depth r, column c) of a tap is stored at r * r_step + c * c_step (see common/conv_shape.h).
  const auto stored = [&](int64_t r, int64_t c) {
    return transpose ? shape.StoredChannels(c, r) : shape.StoredChannels(r, c);
  };
  const int64_t r_step = stored(1, 0) - stored(0, 0), c_step = stored(0, 1) - stored(0, 0);
  // When the depth is the contiguous axis of the stored kernel, the panel is filled 16 depth rows at a time, so
  // each stored line is used whole before the next is read: a column-by-column walk at a power-of-two stride
  // (1024 channels) hits one cache set over and over.
  constexpr int64_t kSpan = 16;
  for (int64_t t = 0; t < taps; ++t) {
    // Canonical tap t of group t / ksp, wherever the kernel's layout stores it.
    const T* wt = w + ((t / ksp) * ksp + shape.StoredTap(t % ksp)) * shape.in_ch * shape.out_ch;
    for (int64_t tile = 0; tile < tiles; ++tile) {
      Acc* panel = dst + (t * tiles + tile) * depth * kcols;
      const int64_t c0 = tile * kcols;
      const int64_t valid = std::min(kcols, cols - c0);
      if (c_step == 1) {
        for (int64_t r = 0; r < depth; ++r) {
          const T* from = wt + r * r_step + c0;
          for (int64_t c = 0; c < valid; ++c) panel[r * kcols + c] = ToAcc<Acc>(from[c]);
          for (int64_t c = valid; c < kcols; ++c) panel[r * kcols + c] = Acc(0);
        }
        continue;
      }
      for (int64_t r0 = 0; r0 < depth; r0 += kSpan) {
        const int64_t rn = std::min(kSpan, depth - r0);
        for (int64_t c = 0; c < kcols; ++c) {
          const T* from = wt + r0 * r_step + (c0 + c) * c_step;
          for (int64_t r = 0; r < rn; ++r)
            panel[(r0 + r) * kcols + c] = c < valid ? ToAcc<Acc>(from[r * r_step]) : Acc(0);
        }
      }
    }
  }
  return true;
}

// The forward's per-image form (ImageForwardItem in cpu/forward.h): panels (group, column tile, in_ch,
// col_vecs vectors) whose columns are (tap, output channel) pairs, column k * out_ch + co holding W[k][:, co].
// False when memory runs out.
template <typename T, typename Acc>
bool PackTapColumns(const ConvShape& shape, const T* w, int col_vecs, PackedWeights* out) {
  const int64_t kcols = col_vecs * Vec<Acc>::kWidth;
  const int64_t ksp = shape.KernelSpatial();
  const int64_t cols = ksp * shape.out_ch;
  out->ld = RoundUp(cols, kcols);
  const int64_t tiles = out->ld / kcols;
  out->buffer = AcquireBuffer(shape.groups * shape.in_ch * out->ld * static_cast<int64_t>(sizeof(Acc)));
  if (!out->buffer) return false;
  Acc* dst = static_cast<Acc*>(out->buffer.get());
  for (int64_t g = 0; g < shape.groups; ++g)
    for (int64_t tile = 0; tile < tiles; ++tile) {
      Acc* panel = dst + (g * tiles + tile) * shape.in_ch * kcols;
      for (int64_t c = 0; c < kcols; ++c) {
        const int64_t col = tile * kcols + c;
        const int64_t k = col / shape.out_ch, co = col % shape.out_ch;
        const T* wk = w + (g * ksp + shape.StoredTap(k)) * shape.in_ch * shape.out_ch;
        for (int64_t ci = 0; ci < shape.in_ch; ++ci)
          panel[ci * kcols + c] = col < cols ? ToAcc<Acc>(wk[shape.StoredChannels(ci, co)]) : Acc(0);
      }
    }
  return true;
}

}  // namespace
}  // namespace jaxseg::cpu::JAXSEG_ISA

#endif  // JAXSEG_CPU_PACKING_H_
