// The indirect-GEMM micro-kernels of one kernel build, shared by the forward and the input gradient: for a block
// of destination pixels, dst[m] = sum over taps t of src(m, t) . W[t], where src(m, t) is the pixel row that tap t
// reads for pixel m and W[t] a packed panel (cpu/packing.h). Where a tap meets padding the row is a zero row, and
// that tap adds nothing to that pixel: not 0 * W[t], which is NaN where W[t] holds an infinity (XLA's convolution
// never multiplies padding). Register tiles whose rows all read the input for a tap take the plain loop. Here:
// the register tile held across all taps, the block product with column tiles outermost, and its dot-product form
// for layers with only a few output channels. bfloat16 operands in builds with the bf16 dot product take its
// micro-kernels (cpu/bf16_dot.h) for each tap, with the same masking. The tables of source rows, and their
// grouping by the taps they read, are the planning side's (cpu/gather_tables.h).
//
// Compiled once per instruction set, inside that build's namespace (see cpu/simd.h).
#ifndef JAXSEG_CPU_GATHER_GEMM_H_
#define JAXSEG_CPU_GATHER_GEMM_H_

#include <cstdint>

#include "cpu/bf16_dot.h"
#include "cpu/numeric.h"
#include "cpu/simd.h"

namespace jaxseg::cpu::JAXSEG_ISA {
namespace {

// Source rows of tap t for the R rows of a tile starting at r0 (the zero row past the block's end), and the
// rows among the first `nrows` that read the input (bit i for row i): zero when the tap can be skipped.
template <int R, typename T>
inline uint32_t TileRows(const T* const* src, int64_t taps, int64_t r0, int nrows, int64_t t, const T* zero,
                         const T* (&rp)[R]) {
  uint32_t present = 0;
  for (int i = 0; i < R; ++i) {
    rp[i] = i < nrows ? src[(r0 + i) * taps + t] : zero;
    present |= uint32_t{rp[i] != zero} << i;
  }
  return present;
}

inline bool AllRows(uint32_t present, int nrows) { return present == (uint32_t{1} << nrows) - 1; }

// One register tile: acc = sum over taps t of (its rows' sources for t) . (t's panel), depth rows each. The
// tile stays in registers across all taps (when the depth is small, a load and store of the tile per tap would
// cost more than the tap's FMAs). A tap that only some rows read is added to those rows alone (a select per
// product: rare once GroupRowsByTaps has sorted the rows).
template <typename T, typename Acc, int CV = kColVecs>
inline void GatherTile(typename Vec<Acc>::type (&acc)[kRows][CV], const T* const* src, int64_t taps, int64_t r0,
                       int nrows, const int64_t* tap_k, const PanelElement<T, Acc>* __restrict w, int64_t tap_stride,
                       int64_t depth, const T* zero) {
  using V = typename Vec<Acc>::type;
  using M = typename Vec<Acc>::mask;
  constexpr int W = Vec<Acc>::kWidth;
  constexpr int64_t kcols = CV * W;
  V r[kRows][CV] = {};
  for (int64_t t = 0; t < taps; ++t) {
    const T* rows[kRows];
    const uint32_t present = TileRows<kRows>(src, taps, r0, nrows, t, zero, rows);
    if (!present) continue;
    const auto* b = w + tap_k[t] * tap_stride;  // the panel: depth rows of kcols, 64-byte aligned
    if constexpr (kPairs<T>) {
      if (AllRows(present, nrows)) {
        PairTap<kRows, CV, false>(r, rows, b, depth, nullptr);
      } else {
        M keep[kRows];
        for (int i = 0; i < kRows; ++i) keep[i] = LaneMask<Acc>((present >> i) & 1);
        PairTap<kRows, CV, true>(r, rows, b, depth, keep);
      }
    } else {
      if (AllRows(present, nrows)) {
        for (int64_t p = 0; p < depth; ++p) {
          V bv[CV];
          const Acc* bp = b + p * kcols;
#pragma GCC unroll 4
          for (int c = 0; c < CV; ++c) bv[c] = *reinterpret_cast<const V*>(bp + c * W);
#pragma GCC unroll 16
          for (int i = 0; i < kRows; ++i) {
            const Acc a = ToAcc<Acc>(rows[i][p]);
#pragma GCC unroll 4
            for (int c = 0; c < CV; ++c) r[i][c] += bv[c] * a;
          }
        }
        continue;
      }
      M keep[kRows];
      for (int i = 0; i < kRows; ++i) keep[i] = LaneMask<Acc>((present >> i) & 1);
      for (int64_t p = 0; p < depth; ++p) {
        V bv[CV];
        const Acc* bp = b + p * kcols;
#pragma GCC unroll 4
        for (int c = 0; c < CV; ++c) bv[c] = *reinterpret_cast<const V*>(bp + c * W);
#pragma GCC unroll 16
        for (int i = 0; i < kRows; ++i) {
          const Acc a = ToAcc<Acc>(rows[i][p]);
#pragma GCC unroll 4
          for (int c = 0; c < CV; ++c) r[i][c] = keep[i] ? r[i][c] + bv[c] * a : r[i][c];
        }
      }
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < kRows; ++i)
#pragma GCC unroll 4
    for (int c = 0; c < CV; ++c) acc[i][c] = r[i][c];
}

// The block product: `rows` destination rows of `ncols` columns, from the packed panels `w` (PackPanels; ld
// columns per depth row). Column tiles are outermost, so a tap's panel (depth x one tile of columns) stays in
// cache while every register tile of the block uses it.
template <typename T, typename U, typename Acc, int CV = kColVecs>
void GatherGemmBlock(int64_t rows, int64_t taps, const T* const* src, const int64_t* tap_k, U* const* dst,
                     const PanelElement<T, Acc>* w, int64_t depth, int64_t ncols, int64_t ld, const T* zero) {
  using V = typename Vec<Acc>::type;
  const int64_t kcols = CV * Vec<Acc>::kWidth;
  // Tap t's panel for column tile c0 starts at w + (t * tiles + c0 / kcols) * depth * kcols (see PackPanels).
  const int64_t panel_depth = PanelDepth<T>(depth);  // whole pairs where the panels hold pairs
  const int64_t tap_stride = ld * panel_depth;
  for (int64_t c0 = 0; c0 < ncols; c0 += kcols) {
    const int cols = static_cast<int>(Min<int64_t>(kcols, ncols - c0));
    const auto* wc = w + c0 * panel_depth;
    for (int64_t r0 = 0; r0 < rows; r0 += kRows) {
      const int nrows = static_cast<int>(Min<int64_t>(kRows, rows - r0));
      V acc[kRows][CV];
      GatherTile<T, Acc, CV>(acc, src, taps, r0, nrows, tap_k, wc, tap_stride, depth, zero);
      U* out[kRows];
      for (int i = 0; i < kRows; ++i) out[i] = dst[r0 + Min(i, nrows - 1)] + c0;
      StoreTile<U, Acc, CV>(acc, out, nrows, cols);
    }
  }
}

// The same block product for a layer with only a few output channels (C <= kNarrowMax): vectors run over the
// depth (input channels) instead of the output channels, so no FMA is spent on padding columns; each
// (pixel, output channel) sum is reduced across the vector at the end. `wt` holds the transposed panels
// (tap, depth tile, C rows, NarrowCols) that PackPanels(transpose, row-major) writes.
constexpr int kNarrowMax = 4;
constexpr int kNarrowRows = 4;

// Depth per tile of the narrow panels: a register tile of the accumulation type, or one vector of bf16 values.
template <typename T, typename Acc>
constexpr int64_t NarrowCols() {
  return kPairs<T> ? kBf16PerVector : Vec<Acc>::kCols;
}

template <typename T, typename U, typename Acc, int C>
void NarrowBlock(int64_t rows, int64_t taps, const T* const* src, const int64_t* tap_k, U* const* dst,
                 const PanelElement<T, Acc>* wt, int64_t depth, int64_t ld, const T* zero) {
  using V = typename Vec<Acc>::type;
  constexpr int W = Vec<Acc>::kWidth;
  constexpr int64_t kcols = NarrowCols<T, Acc>();
  const int64_t tiles = ld / kcols;
  const int64_t full = depth / kcols;  // depth tiles read as whole vectors; the rest element by element
  for (int64_t r0 = 0; r0 < rows; r0 += kNarrowRows) {
    const int nrows = static_cast<int>(Min<int64_t>(kNarrowRows, rows - r0));
    V acc[kNarrowRows][C] = {};
    Acc rest[kNarrowRows][C] = {};
    for (int64_t t = 0; t < taps; ++t) {
      const T* rp[kNarrowRows];
      const uint32_t present = TileRows<kNarrowRows>(src, taps, r0, nrows, t, zero, rp);
      if (!present) continue;
      // Rows that read padding for this tap take none of its products (see the top of this file).
      const bool all = AllRows(present, nrows);
      typename Vec<Acc>::mask keep[kNarrowRows];
      for (int i = 0; i < kNarrowRows; ++i) keep[i] = LaneMask<Acc>((present >> i) & 1);
      const auto* tap_panels = wt + tap_k[t] * tiles * C * kcols;
      if constexpr (kPairs<T>) {
        if (all)
          PairNarrowTap<kNarrowRows, C, false>(acc, rp, tap_panels, depth, keep);
        else
          PairNarrowTap<kNarrowRows, C, true>(acc, rp, tap_panels, depth, keep);
      } else {
        for (int64_t tile = 0; tile < full; ++tile) {
          const Acc* panel = tap_panels + tile * C * kcols;
          for (int v = 0; v < kColVecs; ++v) {
            V xv[kNarrowRows];
            for (int i = 0; i < kNarrowRows; ++i) xv[i] = LoadVector<T, Acc>(rp[i] + tile * kcols + v * W);
#pragma GCC unroll 4
            for (int c = 0; c < C; ++c) {
              const V wv = *reinterpret_cast<const V*>(panel + c * kcols + v * W);
              if (all) {
#pragma GCC unroll 4
                for (int i = 0; i < kNarrowRows; ++i) acc[i][c] += xv[i] * wv;
              } else {
#pragma GCC unroll 4
                for (int i = 0; i < kNarrowRows; ++i) acc[i][c] = keep[i] ? acc[i][c] + xv[i] * wv : acc[i][c];
              }
            }
          }
        }
        const Acc* panel = tap_panels + full * C * kcols;
        for (int64_t p = full * kcols; p < depth; ++p)
          for (int i = 0; i < kNarrowRows; ++i) {
            if (!((present >> i) & 1)) continue;
            const Acc xval = ToAcc<Acc>(rp[i][p]);
            for (int c = 0; c < C; ++c) rest[i][c] += xval * panel[c * kcols + (p - full * kcols)];
          }
      }
    }
    for (int i = 0; i < nrows; ++i)
      for (int c = 0; c < C; ++c) {
        const Acc sum = rest[i][c] + HorizontalSum<Acc>(acc[i][c]);
        dst[r0 + i][c] = FromAcc<U>(sum);
      }
  }
}

}  // namespace
}  // namespace jaxseg::cpu::JAXSEG_ISA

#endif  // JAXSEG_CPU_GATHER_GEMM_H_
