// Weight packing, done once per call before any product: the kernel, in whichever layout it
// is stored (common/conv_shape.h), laid out as contiguous panels of one register tile of columns, which the
// products read row after row. Columns past the last are zero. Panels hold the accumulation type, or, where the
// build multiplies bfloat16 pairs (cpu/bf16_dot.h), the bf16 values themselves: pair panels interleave depth rows
// 2p and 2p+1 in one 32-bit lane per column, the layout the dot-product instruction reads; an odd depth gets a
// zero row to complete its last pair. The layout is the chosen build's (its tile width and whether it has pairs,
// cpu/kernel_set.h), the packing itself planning code, compiled once with baseline flags (cpu/prepare.cc).
#ifndef JAXSEG_CPU_PACKING_H_
#define JAXSEG_CPU_PACKING_H_

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "common/conv_shape.h"
#include "cpu/buffer_cache.h"
#include "cpu/kernel_set.h"
#include "cpu/numeric.h"

namespace jaxseg::cpu::planning {
namespace {

// Elements per 64-byte vector of the accumulation type.
template <typename Acc>
constexpr int64_t kWidth = 64 / static_cast<int64_t>(sizeof(Acc));

constexpr int64_t RoundUp(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

// Whether the build multiplies operands of type T as bf16 pairs (cpu/bf16_dot.h): its panels then hold the bf16
// values in pairs, else the accumulation type.
template <typename T>
bool Pairs(const KernelSet& kernels) {
  return kernels.bf16_dot && std::is_same_v<T, bf16_t>;
}

// Depth rows of a panel: with pairs, whole pairs.
inline int64_t PanelDepth(int64_t depth, bool pairs) { return pairs ? RoundUp(depth, 2) : depth; }

// Where element (depth r, column c) of a panel of kcols columns lies: row-major, or pair-interleaved.
inline int64_t PanelOffset(int64_t r, int64_t c, int64_t kcols, bool pairs) {
  return pairs ? ((r >> 1) * kcols + c) * 2 + (r & 1) : r * kcols + c;
}

template <typename P, typename T>
inline P ToPanel(T v) {
  if constexpr (std::is_same_v<P, T>) {
    return v;
  } else {
    return ToAcc<P>(v);
  }
}

struct PackedWeights {
  CachedBuffer buffer;      // taken from, and handed back to, the buffer cache
  int64_t ld = 0;           // columns per depth row, padded to whole tiles
  int64_t elem_bytes = 0;   // bytes per panel element

  // Panel element `offset`.
  const void* at(int64_t offset) const { return static_cast<const char*>(buffer.get()) + offset * elem_bytes; }
};

// Panels (tap, column tile, depth, kcols) of every group's taps, row-major or pair-interleaved (`pairs`).
// Without `transpose` the depth is the input channels and the columns the output channels (the forward's W[k]);
// with it the reverse (W[k]^T: the input gradient, and the forward's dot-product form). A panel is read row after
// row without the cache-set conflicts that a power-of-two row stride would cause. False when memory runs out.
template <typename T, typename P>
bool PackPanels(const ConvShape& shape, const T* w, bool transpose, int64_t kcols, bool pairs, PackedWeights* out) {
  const int64_t ksp = shape.KernelSpatial();
  const int64_t taps = shape.groups * ksp;
  const int64_t depth = transpose ? shape.out_ch : shape.in_ch;
  const int64_t rows = pairs ? RoundUp(depth, 2) : depth;
  const int64_t cols = transpose ? shape.in_ch : shape.out_ch;
  out->ld = RoundUp(std::max<int64_t>(cols, 1), kcols);
  const int64_t tiles = out->ld / kcols;
  out->elem_bytes = sizeof(P);
  out->buffer = AcquireBuffer(taps * rows * out->ld * out->elem_bytes);
  if (!out->buffer) return false;
  P* dst = static_cast<P*>(out->buffer.get());
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
      P* panel = dst + (t * tiles + tile) * rows * kcols;
      const int64_t c0 = tile * kcols;
      const int64_t valid = std::min(kcols, cols - c0);
      // Element (r, c) of the panel: the kernel's, or zero past the last column or depth row.
      const auto put = [&](int64_t r, int64_t c, const T* from) {
        const bool inside = r < depth && c < valid;
        panel[PanelOffset(r, c, kcols, pairs)] = inside ? ToPanel<P>(*from) : P{};
      };
      if (c_step == 1) {
        for (int64_t r = 0; r < rows; ++r) {
          const T* from = wt + std::min(r, depth - 1) * r_step + c0;
          for (int64_t c = 0; c < kcols; ++c) put(r, c, from + c);
        }
        continue;
      }
      for (int64_t r0 = 0; r0 < rows; r0 += kSpan) {
        const int64_t rn = std::min(kSpan, rows - r0);
        for (int64_t c = 0; c < kcols; ++c) {
          const T* from = wt + r0 * r_step + (c0 + c) * c_step;
          for (int64_t r = 0; r < rn; ++r) put(r0 + r, c, from + r * r_step);
        }
      }
    }
  }
  return true;
}

// The forward's per-image form (ImageForwardItem in cpu/forward.h): panels (group, column tile, in_ch,
// col_vecs vectors of the accumulation type) whose columns are (tap, output channel) pairs, column k * out_ch +
// co holding W[k][:, co]; the depth (in_ch) paired where the build multiplies pairs (P = T then, else the
// accumulation type). False when memory runs out.
template <typename T, typename P>
bool PackTapColumns(const ConvShape& shape, const T* w, int64_t kcols, bool pairs, PackedWeights* out) {
  const int64_t ksp = shape.KernelSpatial();
  const int64_t cols = ksp * shape.out_ch;
  const int64_t rows = PanelDepth(shape.in_ch, pairs);
  out->ld = RoundUp(cols, kcols);
  const int64_t tiles = out->ld / kcols;
  out->elem_bytes = sizeof(P);
  out->buffer = AcquireBuffer(shape.groups * rows * out->ld * out->elem_bytes);
  if (!out->buffer) return false;
  P* dst = static_cast<P*>(out->buffer.get());
  for (int64_t g = 0; g < shape.groups; ++g)
    for (int64_t tile = 0; tile < tiles; ++tile) {
      P* panel = dst + (g * tiles + tile) * rows * kcols;
      for (int64_t c = 0; c < kcols; ++c) {
        const int64_t col = tile * kcols + c;
        const int64_t k = col / shape.out_ch, co = col % shape.out_ch;
        const T* wk = w + (g * ksp + shape.StoredTap(k)) * shape.in_ch * shape.out_ch;
        for (int64_t ci = 0; ci < rows; ++ci) {
          const bool inside = col < cols && ci < shape.in_ch;
          panel[PanelOffset(ci, c, kcols, pairs)] = inside ? ToPanel<P>(wk[shape.StoredChannels(ci, co)]) : P{};
        }
      }
    }
  return true;
}

}  // namespace
}  // namespace jaxseg::cpu::planning

#endif  // JAXSEG_CPU_PACKING_H_
