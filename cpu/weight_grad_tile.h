// The weight gradient's micro-kernels of one kernel build (cpu/weight_grad.h plans the pass and walks the
// pixels): for one tap of one chunk of pixel lines, the register tiles of a block of row channels x all column
// channels, each updated over the tap's runs of pixel pairs, dW[k] += X_k^T . DY_k. bfloat16 operands in builds
// with the bf16 dot product are packed into pair panels first and multiplied by PairPanelTile (cpu/bf16_dot.h).
//
// Compiled once per instruction set, inside that build's namespace (see cpu/simd.h).
#ifndef JAXSEG_CPU_WEIGHT_GRAD_TILE_H_
#define JAXSEG_CPU_WEIGHT_GRAD_TILE_H_

#include <cstdint>
#include <cstring>

#include "cpu/bf16_dot.h"
#include "cpu/kernel_set.h"
#include "cpu/numeric.h"
#include "cpu/simd.h"

namespace jaxseg::cpu::JAXSEG_ISA {
namespace {

// Loads CV vectors of b in the accumulation type: all of them (kWide), or only `cols` values with the rest zero.
template <typename T, typename Acc, int CV, bool kWide>
inline void LoadColumns(typename Vec<Acc>::type (&v)[CV], const T* b, int cols) {
  constexpr int kMax = CV * Vec<Acc>::kWidth;
  if (kWide || cols == kMax) {
    // Vector loads, not a memcpy into `v`: GCC kept the memcpy's copy in memory (a store per vector).
    for (int c = 0; c < CV; ++c) v[c] = LoadVector<T, Acc>(b + c * Vec<Acc>::kWidth);
    return;
  }
  Acc tmp[kMax] = {};
  for (int c = 0; c < cols; ++c) tmp[c] = ToAcc<Acc>(b[c]);
  std::memcpy(v, tmp, sizeof(v));
}

// acc[i][:] += a[lane i] * b[0:CV*width] over the `count` pixels of one run; a and b advance by a_step / b_step.
// Rows past `nrows` repeat the last valid row (kFullRows false), so the loop has no branch. A narrow column tile
// (ncols below the tile) is read whole where that stays inside b's array (kWide): the lanes past ncols then hold
// the next pixel's channels, which are summed but never stored.
template <typename T, typename Acc, int R, int CV, bool kFullRows, bool kWide>
inline void AccumulateRun(typename Vec<Acc>::type (&r)[R][CV], const T* ap, const T* bp, int64_t count, int64_t a_step,
                          int64_t b_step, const int64_t (&lane)[R], int ncols) {
  using V = typename Vec<Acc>::type;
  for (int64_t p = 0; p < count; ++p, ap += a_step, bp += b_step) {
    V bv[CV];
    LoadColumns<T, Acc, CV, kWide>(bv, bp, ncols);
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      const Acc a = ToAcc<Acc>(ap[kFullRows ? i : lane[i]]);
#pragma GCC unroll 4
      for (int c = 0; c < CV; ++c) r[i][c] += bv[c] * a;
    }
  }
}

template <typename T, typename Acc, int R, int CV, bool kFullRows>
inline void AccumulateRuns(typename Vec<Acc>::type (&acc)[R][CV], const PixelRun* runs_begin, const PixelRun* runs_end,
                           bool rows_from_x, const T* x, const T* y_grad, const T* b_end, int64_t x_step,
                           int64_t y_grad_step, int nrows, int ncols) {
  using V = typename Vec<Acc>::type;
  constexpr int kMax = CV * Vec<Acc>::kWidth;
  V r[R][CV];
  for (int i = 0; i < R; ++i)
    for (int c = 0; c < CV; ++c) r[i][c] = acc[i][c];
  int64_t lane[R];
  for (int i = 0; i < R; ++i) lane[i] = kFullRows ? i : Min(i, nrows - 1);
  const int64_t a_step = rows_from_x ? x_step : y_grad_step;
  const int64_t b_step = rows_from_x ? y_grad_step : x_step;
  for (const PixelRun* run = runs_begin; run != runs_end; ++run) {
    const T* ap = rows_from_x ? x + run->x_off : y_grad + run->y_grad_off;
    const T* bp = rows_from_x ? y_grad + run->y_grad_off : x + run->x_off;
    if (ncols == kMax || b_end - (bp + (run->count - 1) * b_step) >= kMax)
      AccumulateRun<T, Acc, R, CV, kFullRows, true>(r, ap, bp, run->count, a_step, b_step, lane, ncols);
    else
      AccumulateRun<T, Acc, R, CV, kFullRows, false>(r, ap, bp, run->count, a_step, b_step, lane, ncols);
  }
  for (int i = 0; i < R; ++i)
    for (int c = 0; c < CV; ++c) acc[i][c] = r[i][c];
}

// The same for bf16 operands in builds with the bf16 dot product, whose depth here is the pixels: one tap's runs of
// a chunk are packed once into pair panels, `a` (pixel pair, block row) for the block's row channels and `b`
// (column tile, pixel pair, tile column) for all column channels, and every register tile is a product over them
// (PairPanelTile). Consecutive pixels of the runs form the pairs, across runs too, so only the last pixel of the
// chunk may be paired with zeros, in both panels. Only for full-height tiles: with 1-4 row channels the packing
// costs more than the products it feeds (ebgan-celeba-g4's weight gradient took twice as long as the widened
// float32 path, benchmarks/NOTES.md), so those take the widened path. The panels live in the worker's workspace
// (sized by cpu/weight_grad.h).
template <typename T, typename Acc, int R, int CV>
void AccumulatePairs(const WeightGradTapArgs& args) {
  using V = typename Vec<Acc>::type;
  constexpr int64_t kTileCols = CV * Vec<Acc>::kWidth;  // one 32-bit pair per column
  const int64_t row_tiles = args.row_tiles, col_tiles = args.col_tiles;
  const int64_t block_rows = Min<int64_t>(row_tiles * R, args.row_ch - args.b0);
  const T* x = static_cast<const T*>(args.x);
  const T* y_grad = static_cast<const T*>(args.y_grad);

  // The chunk's pixels in order: where their row channels and their column channels start.
  const T** a_px = reinterpret_cast<const T**>(args.a_px);
  const T** b_px = reinterpret_cast<const T**>(args.b_px);
  int64_t pixels = 0;
  for (int64_t r = 0; r < args.num_runs; ++r) {
    const PixelRun& run = args.runs[r];
    for (int64_t p = 0; p < run.count; ++p, ++pixels) {
      const T* xp = x + run.x_off + p * args.x_step;
      const T* yp = y_grad + run.y_grad_off + p * args.y_grad_step;
      a_px[pixels] = (args.rows_from_x ? xp : yp) + args.b0;
      b_px[pixels] = args.rows_from_x ? yp : xp;
    }
  }
  const int64_t pairs = (pixels + 1) / 2;
  const auto partner = [pixels](const T* const* px, int64_t j) { return 2 * j + 1 < pixels ? px[2 * j + 1] : nullptr; };

  // Panels of uint32 pairs, 64-byte aligned.
  const int64_t lda = row_tiles * R;
  uint32_t* a = args.a_panel;
  uint32_t* b = args.b_panel;
  for (int64_t j = 0; j < pairs; ++j) InterleavePairs(a + j * lda, a_px[2 * j], partner(a_px, j), block_rows, lda);
  for (int64_t ct = 0; ct < col_tiles; ++ct) {
    const int64_t c0 = ct * kTileCols;
    const int64_t ncols = Min<int64_t>(kTileCols, args.col_ch - c0);
    uint32_t* bt = b + ct * pairs * kTileCols;
    for (int64_t j = 0; j < pairs; ++j) {
      const T* hi = partner(b_px, j);
      InterleavePairs(bt + j * kTileCols, b_px[2 * j] + c0, hi ? hi + c0 : nullptr, ncols, kTileCols);
    }
  }
  constexpr int64_t kTileVecs = R * CV;
  V* tap_sums = static_cast<V*>(args.tap_sums);
  for (int64_t ct = 0; ct < col_tiles; ++ct)
    for (int64_t rt = 0; rt < row_tiles; ++rt) {
      V(&acc)[R][CV] = *reinterpret_cast<V(*)[R][CV]>(tap_sums + (rt * col_tiles + ct) * kTileVecs);
      PairPanelTile<R, CV>(acc, a + rt * R, lda, b + ct * pairs * kTileCols, pairs);
    }
}

// One tap of one chunk with register tiles of R rows x CV vectors (see WeightGradTapArgs).
template <typename T, typename Acc, int R, int CV>
void WeightGradTap(const WeightGradTapArgs& args) {
  using V = typename Vec<Acc>::type;
  constexpr int64_t kTileCols = CV * Vec<Acc>::kWidth;
  if constexpr (kPairs<T> && R == kRows && CV == kColVecs) {
    return AccumulatePairs<T, Acc, R, CV>(args);
  } else {
    V* sums = static_cast<V*>(args.tap_sums);
    const PixelRun* runs_end = args.runs + args.num_runs;
    for (int64_t rt = 0; rt < args.row_tiles; ++rt) {
      const int64_t r0 = args.b0 + rt * R;
      const int nrows = static_cast<int>(Min<int64_t>(R, args.row_ch - r0));
      const T* x = static_cast<const T*>(args.x) + (args.rows_from_x ? r0 : 0);
      const T* y_grad = static_cast<const T*>(args.y_grad) + (args.rows_from_x ? 0 : r0);
      for (int64_t ct = 0; ct < args.col_tiles; ++ct) {
        const int64_t c0 = ct * kTileCols;
        const int ncols = static_cast<int>(Min<int64_t>(kTileCols, args.col_ch - c0));
        V(&acc)[R][CV] = *reinterpret_cast<V(*)[R][CV]>(&sums[(rt * args.col_tiles + ct) * R * CV]);
        const T* xc = args.rows_from_x ? x : x + c0;
        const T* yc = args.rows_from_x ? y_grad + c0 : y_grad;
        const T* b_end = static_cast<const T*>(args.b_end);
        if (nrows == R)
          AccumulateRuns<T, Acc, R, CV, true>(acc, args.runs, runs_end, args.rows_from_x, xc, yc, b_end, args.x_step,
                                              args.y_grad_step, nrows, ncols);
        else
          AccumulateRuns<T, Acc, R, CV, false>(acc, args.runs, runs_end, args.rows_from_x, xc, yc, b_end, args.x_step,
                                               args.y_grad_step, nrows, ncols);
      }
    }
  }
}

}  // namespace
}  // namespace jaxseg::cpu::JAXSEG_ISA

#endif  // JAXSEG_CPU_WEIGHT_GRAD_TILE_H_
