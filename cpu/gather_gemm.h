// The indirect-GEMM core of one kernel build, shared by the forward and the input gradient: for a block of
// destination pixels, dst[m] = sum over taps t of src(m, t) . W[t], where src(m, t) is the pixel row that tap t
// reads for pixel m and W[t] a packed panel (cpu/packing.h). Where a tap meets padding the row is a zero row, and
// that tap adds nothing to that pixel: not 0 * W[t], which is NaN where W[t] holds an infinity (XLA's convolution
// never multiplies padding). Register tiles whose rows all read the input for a tap take the plain loop. Here:
// the per-thread gather tables, the register tile held across all taps, the grouping of a block's rows by the taps
// they read, the block product with column tiles outermost, and its dot-product form for layers with only a few
// output channels. bfloat16 operands in builds with the bf16 dot product take its micro-kernels (cpu/bf16_dot.h)
// for each tap, with the same masking.
//
// Compiled once per instruction set, inside that build's namespace (see cpu/simd.h).
#ifndef JAXSEG_CPU_GATHER_GEMM_H_
#define JAXSEG_CPU_GATHER_GEMM_H_

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common/conv_shape.h"
#include "cpu/bf16_dot.h"
#include "cpu/buffer_cache.h"
#include "cpu/numeric.h"
#include "cpu/packing.h"
#include "cpu/simd.h"

namespace jaxseg::cpu::JAXSEG_ISA {
namespace {

constexpr int64_t kBlockTiles = 16;  // register tiles of rows per block (one work item)
constexpr int64_t kBlockRows = kRows * kBlockTiles;

// The row a gather reads where a tap meets padding: zeros, longer than any pixel row of the call. Null when
// memory runs out.
template <typename T>
CachedBuffer MakeZeroRow(const ConvShape& shape) {
  const int64_t len = std::max(shape.in_ch, shape.out_ch) + 64;
  CachedBuffer row = AcquireBuffer(len * static_cast<int64_t>(sizeof(T)));
  if (row) std::memset(row.get(), 0, static_cast<size_t>(len) * sizeof(T));
  return row;
}

// The tables one block fills for GatherGemmBlock, kept per thread across items.
template <typename T, typename U>
struct BlockTables {
  std::vector<const T*> src;   // (row, tap) -> source row
  std::vector<U*> dst;         // row -> destination
  std::vector<int64_t> tap_k;  // tap -> flat kernel index

  static BlockTables& ForThread(int64_t rows, int64_t taps) {
    thread_local BlockTables t;
    t.src.resize(rows * taps);
    t.dst.resize(rows);
    t.tap_k.resize(taps);
    return t;
  }
};

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
inline void GatherTile(typename Vec<Acc>::type (&acc)[kRows][CV], const T* const* src, int64_t taps,
                       int64_t r0, int nrows, const int64_t* tap_k, const PanelElement<T, Acc>* __restrict w,
                       int64_t tap_stride, int64_t depth, const T* zero) {
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

// Rows near the border read the zero row for some taps, and a register tile spends FMAs on a tap unless all of
// its rows skip it (on small images a good part of the FMAs). Ordering the block's rows by the set of taps they
// read (rows that read all taps first) gives most tiles rows with one set, so whole tiles skip their missing
// taps. The order of a block's rows is free: each row carries its own destination. Not worth it where a tap costs
// a tile few FMAs (depth x columns small): there the sort costs more than it saves.
template <typename T, typename U>
void GroupRowsByTaps(int64_t rows, int64_t taps, int64_t work_per_tap, const T* const*& src, U* const*& dst,
                     const T* zero) {
  if (taps > 64 || work_per_tap < 4096) return;
  thread_local std::vector<uint64_t> key;
  key.resize(rows);
  bool mixed = false;
  const uint64_t all = taps == 64 ? ~uint64_t{0} : (uint64_t{1} << taps) - 1;
  for (int64_t i = 0; i < rows; ++i) {
    uint64_t k = 0;
    for (int64_t t = 0; t < taps; ++t) k |= uint64_t{src[i * taps + t] != zero} << t;
    key[i] = k;
    mixed |= k != all;
  }
  if (!mixed) return;
  thread_local std::vector<int64_t> order;
  order.resize(rows);
  for (int64_t i = 0; i < rows; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return key[a] > key[b]; });
  thread_local std::vector<const T*> sorted_src;
  thread_local std::vector<U*> sorted_dst;
  sorted_src.resize(rows * taps);
  sorted_dst.resize(rows);
  for (int64_t i = 0; i < rows; ++i) {
    std::copy(src + order[i] * taps, src + (order[i] + 1) * taps, sorted_src.begin() + i * taps);
    sorted_dst[i] = dst[order[i]];
  }
  src = sorted_src.data();
  dst = sorted_dst.data();
}

// The block product: `rows` destination rows of `ncols` columns, from the packed panels `w` (PackPanels; ld
// columns per depth row). Column tiles are outermost, so a tap's panel (depth x one tile of columns) stays in
// cache while every register tile of the block uses it.
template <typename T, typename U, typename Acc, int CV = kColVecs>
void GatherGemmBlock(int64_t rows, int64_t taps, const T* const* src, const int64_t* tap_k, U* const* dst,
                     const PanelElement<T, Acc>* w, int64_t depth, int64_t ncols, int64_t ld, const T* zero) {
  using V = typename Vec<Acc>::type;
  const int64_t kcols = CV * Vec<Acc>::kWidth;
  GroupRowsByTaps(rows, taps, depth * ncols, src, dst, zero);
  // Tap t's panel for column tile c0 starts at w + (t * tiles + c0 / kcols) * depth * kcols (see PackPanels).
  const int64_t panel_depth = PanelDepth<T>(depth);  // whole pairs where the panels hold pairs
  const int64_t tap_stride = ld * panel_depth;
  for (int64_t c0 = 0; c0 < ncols; c0 += kcols) {
    const int cols = static_cast<int>(std::min<int64_t>(kcols, ncols - c0));
    const auto* wc = w + c0 * panel_depth;
    for (int64_t r0 = 0; r0 < rows; r0 += kRows) {
      const int nrows = static_cast<int>(std::min<int64_t>(kRows, rows - r0));
      V acc[kRows][CV];
      GatherTile<T, Acc, CV>(acc, src, taps, r0, nrows, tap_k, wc, tap_stride, depth, zero);
      U* out[kRows];
      for (int i = 0; i < kRows; ++i) out[i] = dst[r0 + std::min(i, nrows - 1)] + c0;
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
    const int nrows = static_cast<int>(std::min<int64_t>(kNarrowRows, rows - r0));
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
