// The CPU kernels of the three passes, written once and compiled once per instruction set: the file that includes
// this defines JAXSEG_ISA (a namespace name) and the register tile JAXSEG_ROWS x JAXSEG_COL_VECS, and is built
// with that instruction set's flags. Vectors are GCC vector extensions of 64 bytes, which the compiler lowers to
// one AVX-512, two AVX2 or four SSE registers.
//
// Every pass is a sum of small matrix products over the phase geometry's taps:
//   forward      y[o]   += x[j] . W[k]       for each output pixel o, over its phase's taps k (j = q + offset)
//   input grad   dx[j]  += dy[o] . W[k]^T    for each input pixel j, over every tap k that links it to an output
//   weight grad  dW[k]  += x[j]^T . dy[o]    for each tap k, over every (j, o) pair it links
// A register tile of ROWS pixels (or input channels) x COLS channels is accumulated over taps and depth, then
// stored once. Pixels that a tap would read from padding read a zero row instead, so the inner loop has no branch.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include "common/phase_geometry.h"
#include "cpu/conv_problem.h"
#include "cpu/numeric.h"

#ifndef JAXSEG_ISA
#error "define JAXSEG_ISA before including conv_kernels_impl.h"
#endif

namespace jaxseg::cpu::JAXSEG_ISA {
namespace {

constexpr int kRows = JAXSEG_ROWS;
constexpr int kColVecs = JAXSEG_COL_VECS;
constexpr int64_t kChunkTiles = 8;  // register tiles of the last spatial axis in one work item

typedef float VecF32 __attribute__((vector_size(64)));
typedef double VecF64 __attribute__((vector_size(64)));

template <typename Acc>
struct Vec {
  using type = std::conditional_t<std::is_same_v<Acc, double>, VecF64, VecF32>;
  static constexpr int kWidth = 64 / sizeof(Acc);
  static constexpr int kCols = kColVecs * kWidth;
};

// acc[i][c] += sum_p rows[i][p] * b[p*ldb + c*width ...]; b is packed, 64-byte aligned, ldb a multiple of kCols.
template <typename T, typename Acc>
inline void AccumulateRows(typename Vec<Acc>::type (&acc)[kRows][kColVecs], const T* const (&rows)[kRows],
                           const Acc* __restrict b, int64_t depth, int64_t ldb) {
  using V = typename Vec<Acc>::type;
  constexpr int W = Vec<Acc>::kWidth;
  V r[kRows][kColVecs];
#pragma GCC unroll 16
  for (int i = 0; i < kRows; ++i)
#pragma GCC unroll 4
    for (int c = 0; c < kColVecs; ++c) r[i][c] = acc[i][c];
  for (int64_t p = 0; p < depth; ++p) {
    V bv[kColVecs];
    const Acc* bp = b + p * ldb;
#pragma GCC unroll 4
    for (int c = 0; c < kColVecs; ++c) bv[c] = *reinterpret_cast<const V*>(bp + c * W);
#pragma GCC unroll 16
    for (int i = 0; i < kRows; ++i) {
      const Acc a = ToAcc<Acc>(rows[i][p]);
#pragma GCC unroll 4
      for (int c = 0; c < kColVecs; ++c) r[i][c] += bv[c] * a;
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < kRows; ++i)
#pragma GCC unroll 4
    for (int c = 0; c < kColVecs; ++c) acc[i][c] = r[i][c];
}

template <typename U, typename Acc>
inline void StoreTile(const typename Vec<Acc>::type (&acc)[kRows][kColVecs], U* const (&dst)[kRows], int rows,
                      int cols) {
  for (int i = 0; i < rows; ++i) {
    Acc tmp[Vec<Acc>::kCols];
    std::memcpy(tmp, acc[i], sizeof(tmp));
    for (int c = 0; c < cols; ++c) dst[i][c] = FromAcc<U>(tmp[c]);
  }
}

template <typename Acc>
inline void ZeroTile(typename Vec<Acc>::type (&acc)[kRows][kColVecs]) {
  for (int i = 0; i < kRows; ++i)
    for (int c = 0; c < kColVecs; ++c) acc[i][c] = typename Vec<Acc>::type{};
}

inline int64_t RoundUp(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

inline AlignedBuffer AllocateAligned(int64_t bytes) {
  bytes = RoundUp(std::max<int64_t>(bytes, 64), 64);
  return AlignedBuffer(std::aligned_alloc(64, static_cast<size_t>(bytes)));
}

// Mixed-radix decomposition of a flat index over the leading (all but last) spatial axes.
inline void Unflatten(int64_t flat, const std::vector<AxisGeometry>& axes, bool in, int64_t* idx) {
  const int64_t n = static_cast<int64_t>(axes.size()) - 1;
  for (int64_t a = n - 1; a >= 0; --a) {
    const int64_t size = in ? axes[a].in_size : axes[a].out_size;
    idx[a] = flat % size;
    flat /= size;
  }
}

// Index pairs over the leading axes as flat indices: the cartesian product of one list of pairs per axis.
// `first` and `second` say which extent each member counts in (so flattening uses the right radix).
enum class Extent { kKernel, kIn, kOut };

inline int64_t ExtentOf(const AxisGeometry& ax, Extent e) {
  return e == Extent::kKernel ? ax.kernel_size : e == Extent::kIn ? ax.in_size : ax.out_size;
}

struct FlatPair {
  int64_t first;
  int64_t second;
};

template <typename PerAxis>
inline void Product(const std::vector<AxisGeometry>& axes, Extent first, Extent second, PerAxis per_axis,
                    std::vector<FlatPair>* out) {
  out->assign(1, FlatPair{0, 0});
  thread_local std::vector<FlatPair> next;
  const int64_t n = static_cast<int64_t>(axes.size()) - 1;
  for (int64_t a = 0; a < n; ++a) {
    next.clear();
    const int64_t r1 = ExtentOf(axes[a], first), r2 = ExtentOf(axes[a], second);
    for (const FlatPair& p : *out)
      per_axis(a, [&](int64_t i1, int64_t i2) { next.push_back({p.first * r1 + i1, p.second * r2 + i2}); });
    out->swap(next);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Packing: weights to the accumulation type, columns padded to the register tile, once per call.

template <typename T, typename Acc>
bool PackWeights(ConvProblem& pb, bool transpose) {
  const int64_t kcols = Vec<Acc>::kCols;
  const int64_t taps = pb.groups * pb.KernelSpatial();
  const int64_t rows = transpose ? pb.out_ch : pb.in_ch;
  const int64_t cols = transpose ? pb.in_ch : pb.out_ch;
  pb.packed_ld = RoundUp(std::max<int64_t>(cols, 1), kcols);
  pb.packed = AllocateAligned(taps * rows * pb.packed_ld * static_cast<int64_t>(sizeof(Acc)));
  if (!pb.packed) return false;
  const T* w = static_cast<const T*>(pb.b);
  Acc* dst = static_cast<Acc*>(pb.packed.get());
  for (int64_t t = 0; t < taps; ++t) {
    const T* wt = w + t * pb.in_ch * pb.out_ch;  // (Ci, Co)
    Acc* dt = dst + t * rows * pb.packed_ld;
    for (int64_t r = 0; r < rows; ++r) {
      Acc* d = dt + r * pb.packed_ld;
      for (int64_t c = 0; c < cols; ++c)
        d[c] = ToAcc<Acc>(transpose ? wt[c * pb.out_ch + r] : wt[r * pb.out_ch + c]);
      for (int64_t c = cols; c < pb.packed_ld; ++c) d[c] = Acc(0);
    }
  }
  return true;
}

// ---------------------------------------------------------------------------------------------------------------
// Forward. Item = (group*batch, leading output pixel, last-axis phase, chunk of that phase's outputs).

template <typename T, typename U, typename Acc>
void ForwardItem(const ConvProblem& pb, int64_t item) {
  using V = typename Vec<Acc>::type;
  const auto& axes = pb.axes;
  const AxisGeometry& last = axes.back();
  const int64_t s = last.stride;
  const int64_t chunk_len = pb.chunk;
  int64_t max_count = 0;
  for (const Phase& p : last.phases) max_count = std::max(max_count, p.count);
  const int64_t chunks = std::max<int64_t>(1, (max_count + chunk_len - 1) / chunk_len);
  int64_t outer_out = 1;
  for (size_t a = 0; a + 1 < axes.size(); ++a) outer_out *= axes[a].out_size;

  const int64_t chunk = item % chunks;
  item /= chunks;
  const int64_t r = item % s;
  item /= s;
  const int64_t o_outer = item % outer_out;
  const int64_t gn = item / outer_out;
  const int64_t g = gn / pb.batch;

  const Phase& phase = last.phases[r];
  const int64_t q_lo = chunk * chunk_len;
  const int64_t q_hi = std::min(phase.count, q_lo + chunk_len);
  if (q_lo >= q_hi) return;

  int64_t o_idx[8];
  Unflatten(o_outer, axes, false, o_idx);
  thread_local std::vector<FlatPair> lead;
  Product(axes, Extent::kKernel, Extent::kIn,
          [&](int64_t a, auto emit) {
            const AxisGeometry& ax = axes[a];
            const int64_t q = o_idx[a] / ax.stride;
            for (const Tap& t : ax.phases[o_idx[a] % ax.stride].taps)
              if (q >= t.q_begin && q < t.q_end) emit(t.k, q + t.offset);
          },
          &lead);

  const T* x = static_cast<const T*>(pb.a) + gn * pb.InSpatial() * pb.in_ch;
  const Acc* w = static_cast<const Acc*>(pb.packed.get()) + g * pb.KernelSpatial() * pb.in_ch * pb.packed_ld;
  U* y = static_cast<U*>(pb.out) + (gn * pb.OutSpatial() + o_outer * last.out_size) * pb.out_ch;
  const T* zero = static_cast<const T*>(pb.zeros.get());
  const int64_t kcols = Vec<Acc>::kCols;

  for (int64_t q0 = q_lo; q0 < q_hi; q0 += kRows) {
    const int nrows = static_cast<int>(std::min<int64_t>(kRows, q_hi - q0));
    U* dst[kRows];
    for (int i = 0; i < kRows; ++i) dst[i] = y + ((q0 + std::min(i, nrows - 1)) * s + r) * pb.out_ch;
    for (int64_t c0 = 0; c0 < pb.out_ch; c0 += kcols) {
      V acc[kRows][kColVecs];
      ZeroTile<Acc>(acc);
      for (const FlatPair& lp : lead) {
        const T* xrow = x + lp.second * last.in_size * pb.in_ch;
        for (const Tap& t : phase.taps) {
          const T* rows[kRows];
          for (int i = 0; i < kRows; ++i) {
            const int64_t q = q0 + i;
            rows[i] = (i < nrows && q >= t.q_begin && q < t.q_end) ? xrow + (q + t.offset) * pb.in_ch : zero;
          }
          const int64_t k = lp.first * last.kernel_size + t.k;
          AccumulateRows<T, Acc>(acc, rows, w + k * pb.in_ch * pb.packed_ld + c0, pb.in_ch, pb.packed_ld);
        }
      }
      U* out[kRows];
      for (int i = 0; i < kRows; ++i) out[i] = dst[i] + c0;
      StoreTile<U, Acc>(acc, out, nrows, static_cast<int>(std::min<int64_t>(kcols, pb.out_ch - c0)));
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Input gradient. Item = (group*batch, leading input pixel, chunk of the last input axis).

template <typename T, typename U, typename Acc>
void InputGradItem(const ConvProblem& pb, int64_t item) {
  using V = typename Vec<Acc>::type;
  const auto& axes = pb.axes;
  const AxisGeometry& last = axes.back();
  const int64_t chunks = std::max<int64_t>(1, (last.in_size + pb.chunk - 1) / pb.chunk);
  int64_t outer_in = 1;
  for (size_t a = 0; a + 1 < axes.size(); ++a) outer_in *= axes[a].in_size;

  const int64_t chunk = item % chunks;
  item /= chunks;
  const int64_t j_outer = item % outer_in;
  const int64_t gn = item / outer_in;
  const int64_t g = gn / pb.batch;
  const int64_t j_lo = chunk * pb.chunk;
  const int64_t j_hi = std::min(last.in_size, j_lo + pb.chunk);
  if (j_lo >= j_hi) return;

  int64_t j_idx[8];
  Unflatten(j_outer, axes, true, j_idx);
  thread_local std::vector<FlatPair> lead;
  Product(axes, Extent::kKernel, Extent::kOut,
          [&](int64_t a, auto emit) {
            const AxisGeometry& ax = axes[a];
            for (int64_t k = 0; k < ax.kernel_size; ++k) {
              const int64_t o = ax.OutputOf(k, j_idx[a]);
              if (o >= 0) emit(k, o);
            }
          },
          &lead);

  const T* dy = static_cast<const T*>(pb.a) + gn * pb.OutSpatial() * pb.out_ch;
  const Acc* wt = static_cast<const Acc*>(pb.packed.get()) + g * pb.KernelSpatial() * pb.out_ch * pb.packed_ld;
  U* dx = static_cast<U*>(pb.out) + (gn * pb.InSpatial() + j_outer * last.in_size) * pb.in_ch;
  const T* zero = static_cast<const T*>(pb.zeros.get());
  const int64_t kcols = Vec<Acc>::kCols;

  for (int64_t j0 = j_lo; j0 < j_hi; j0 += kRows) {
    const int nrows = static_cast<int>(std::min<int64_t>(kRows, j_hi - j0));
    for (int64_t c0 = 0; c0 < pb.in_ch; c0 += kcols) {
      V acc[kRows][kColVecs];
      ZeroTile<Acc>(acc);
      for (const FlatPair& lp : lead) {
        const T* dyrow = dy + lp.second * last.out_size * pb.out_ch;
        for (int64_t k = 0; k < last.kernel_size; ++k) {
          const T* rows[kRows];
          bool any = false;
          for (int i = 0; i < kRows; ++i) {
            const int64_t o = i < nrows ? last.OutputOf(k, j0 + i) : -1;
            rows[i] = o >= 0 ? dyrow + o * pb.out_ch : zero;
            any |= o >= 0;
          }
          if (!any) continue;
          const int64_t kk = lp.first * last.kernel_size + k;
          AccumulateRows<T, Acc>(acc, rows, wt + kk * pb.out_ch * pb.packed_ld + c0, pb.out_ch, pb.packed_ld);
        }
      }
      U* out[kRows];
      for (int i = 0; i < kRows; ++i) out[i] = dx + (j0 + std::min(i, nrows - 1)) * pb.in_ch + c0;
      StoreTile<U, Acc>(acc, out, nrows, static_cast<int>(std::min<int64_t>(kcols, pb.in_ch - c0)));
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Weight gradient: dW[k] = X_k^T . DY_k over the (input, output) pixel pairs that tap k links. The pairs form runs
// along the last spatial axis (input step Ci, output step stride*Co), listed once per item. A register tile of
// kRows "row" channels x kCols "column" channels is held over all runs; columns are the wider of Ci and Co, so a
// layer with few output channels still fills the vectors. Item = (group, tap, tile of row channels): it owns
// those rows of dW[tap], so threads never share an output.

struct Run {
  int64_t x_off;   // element offset of the run's first input pixel (channel 0)
  int64_t dy_off;  // element offset of its first output pixel (channel 0)
  int64_t count;
};

// Loads CV vectors of b (only `cols` values valid, the rest zero) in the accumulation type.
template <typename T, typename Acc, int CV>
inline void LoadColumns(typename Vec<Acc>::type (&v)[CV], const T* b, int cols) {
  constexpr int kMax = CV * Vec<Acc>::kWidth;
  if constexpr (std::is_same_v<T, Acc>) {
    if (cols == kMax) {
      std::memcpy(v, b, sizeof(v));
      return;
    }
  }
  Acc tmp[kMax] = {};
  for (int c = 0; c < cols; ++c) tmp[c] = ToAcc<Acc>(b[c]);
  std::memcpy(v, tmp, sizeof(v));
}

// acc[i][:] += a[lane i] * b[0:R*width] over every pixel of every run; a and b advance by a_step / b_step.
// Rows past `nrows` repeat the last valid row (kFullRows false), so the loop has no branch.
template <typename T, typename Acc, int R, int CV, bool kFullRows>
inline void AccumulateRuns(typename Vec<Acc>::type (&acc)[R][CV], const std::vector<Run>& runs, bool rows_from_x,
                           const T* x, const T* dy, int64_t x_step, int64_t dy_step, int nrows, int ncols) {
  using V = typename Vec<Acc>::type;
  V r[R][CV];
  for (int i = 0; i < R; ++i)
    for (int c = 0; c < CV; ++c) r[i][c] = acc[i][c];
  int64_t lane[R];
  for (int i = 0; i < R; ++i) lane[i] = kFullRows ? i : std::min(i, nrows - 1);
  const int64_t a_step = rows_from_x ? x_step : dy_step;
  const int64_t b_step = rows_from_x ? dy_step : x_step;
  for (const Run& run : runs) {
    const T* ap = rows_from_x ? x + run.x_off : dy + run.dy_off;
    const T* bp = rows_from_x ? dy + run.dy_off : x + run.x_off;
    for (int64_t p = 0; p < run.count; ++p, ap += a_step, bp += b_step) {
      V bv[CV];
      LoadColumns<T, Acc, CV>(bv, bp, ncols);
#pragma GCC unroll 16
      for (int i = 0; i < R; ++i) {
        const Acc a = ToAcc<Acc>(ap[kFullRows ? i : lane[i]]);
#pragma GCC unroll 4
        for (int c = 0; c < CV; ++c) r[i][c] += bv[c] * a;
      }
    }
  }
  for (int i = 0; i < R; ++i)
    for (int c = 0; c < CV; ++c) acc[i][c] = r[i][c];
}

// Rows are output channels (and columns input channels) when that fills the vectors better.
inline bool WeightGradRowsFromX(const ConvProblem& pb) { return !(pb.out_ch < pb.in_ch && pb.out_ch < 16); }

// The weight-gradient tile: kRows x kColVecs vectors, or, when there are only a few row channels (a layer with
// 1-3 output channels), kFewRows rows x kFewColVecs vectors so the FMAs are not spent on repeated rows.
constexpr int kFewRows = 4;
constexpr int kFewColVecs = 16 / kFewRows;

inline bool WeightGradFewRows(const ConvProblem& pb) {
  return (WeightGradRowsFromX(pb) ? pb.in_ch : pb.out_ch) <= kFewRows;
}

template <typename T, typename U, typename Acc, int R, int CV>
void WeightGradTile(const ConvProblem& pb, int64_t item) {
  using V = typename Vec<Acc>::type;
  constexpr int64_t kTileCols = CV * Vec<Acc>::kWidth;
  const auto& axes = pb.axes;
  const AxisGeometry& last = axes.back();
  const int64_t ksp = pb.KernelSpatial();
  const bool rows_from_x = WeightGradRowsFromX(pb);
  const int64_t row_ch = rows_from_x ? pb.in_ch : pb.out_ch;
  const int64_t col_ch = rows_from_x ? pb.out_ch : pb.in_ch;
  const int64_t row_tiles = std::max<int64_t>(1, (row_ch + R - 1) / R);

  const int64_t rt = item % row_tiles;
  item /= row_tiles;
  const int64_t k = item % ksp;
  const int64_t g = item / ksp;
  const int64_t r0 = rt * R;
  const int nrows = static_cast<int>(std::min<int64_t>(R, row_ch - r0));
  if (nrows <= 0) return;
  const int64_t k_last = k % last.kernel_size;
  int64_t k_idx[8];
  {
    int64_t rest = k / last.kernel_size;
    for (int64_t a = static_cast<int64_t>(axes.size()) - 2; a >= 0; --a) {
      k_idx[a] = rest % axes[a].kernel_size;
      rest /= axes[a].kernel_size;
    }
  }
  // The runs of (input, output) pixel pairs this tap links, over the batch and the leading axes.
  thread_local std::vector<FlatPair> lead;
  Product(axes, Extent::kIn, Extent::kOut,
          [&](int64_t a, auto emit) {
            const AxisGeometry& ax = axes[a];
            int64_t jb, je;
            ax.InputRangeOf(k_idx[a], &jb, &je);
            for (int64_t j = jb; j < je; ++j) emit(j, ax.OutputOf(k_idx[a], j));
          },
          &lead);
  int64_t jb, je;
  last.InputRangeOf(k_last, &jb, &je);
  thread_local std::vector<Run> runs;
  runs.clear();
  if (je > jb) {
    const int64_t o_first = last.OutputOf(k_last, jb);
    for (int64_t n = 0; n < pb.batch; ++n) {
      const int64_t gn = g * pb.batch + n;
      for (const FlatPair& lp : lead)
        runs.push_back(Run{((gn * pb.InSpatial()) + lp.first * last.in_size + jb) * pb.in_ch,
                           ((gn * pb.OutSpatial()) + lp.second * last.out_size + o_first) * pb.out_ch, je - jb});
    }
  }

  const T* x = static_cast<const T*>(pb.a) + (rows_from_x ? r0 : 0);
  const T* dy = static_cast<const T*>(pb.b) + (rows_from_x ? 0 : r0);
  U* dw = static_cast<U*>(pb.out) + (g * ksp + k) * pb.in_ch * pb.out_ch;
  for (int64_t c0 = 0; c0 < col_ch; c0 += kTileCols) {
    const int ncols = static_cast<int>(std::min<int64_t>(kTileCols, col_ch - c0));
    V acc[R][CV];
    for (int i = 0; i < R; ++i)
      for (int c = 0; c < CV; ++c) acc[i][c] = V{};
    const T* xc = rows_from_x ? x : x + c0;
    const T* dyc = rows_from_x ? dy + c0 : dy;
    const int64_t x_step = pb.in_ch, dy_step = last.stride * pb.out_ch;
    if (nrows == R)
      AccumulateRuns<T, Acc, R, CV, true>(acc, runs, rows_from_x, xc, dyc, x_step, dy_step, nrows, ncols);
    else
      AccumulateRuns<T, Acc, R, CV, false>(acc, runs, rows_from_x, xc, dyc, x_step, dy_step, nrows, ncols);
    Acc tile[R][kTileCols];
    std::memcpy(tile, acc, sizeof(tile));
    for (int i = 0; i < nrows; ++i)
      for (int c = 0; c < ncols; ++c) {
        const int64_t ci = rows_from_x ? r0 + i : c0 + c;
        const int64_t co = rows_from_x ? c0 + c : r0 + i;
        dw[ci * pb.out_ch + co] = FromAcc<U>(tile[i][c]);
      }
  }
}

template <typename T, typename U, typename Acc>
void WeightGradItem(const ConvProblem& pb, int64_t item) {
  if (WeightGradFewRows(pb))
    WeightGradTile<T, U, Acc, kFewRows, kFewColVecs>(pb, item);
  else
    WeightGradTile<T, U, Acc, kRows, kColVecs>(pb, item);
}

// ---------------------------------------------------------------------------------------------------------------
// Prepare / run, dispatched on (input type, output type).

template <typename T, typename U>
bool PrepareTyped(ConvProblem& pb) {
  using Acc = AccFor<T>;
  const auto& last = pb.axes.back();
  pb.chunk = kRows * kChunkTiles;
  int64_t lead_out = 1, lead_in = 1;
  for (size_t a = 0; a + 1 < pb.axes.size(); ++a) {
    lead_out *= pb.axes[a].out_size;
    lead_in *= pb.axes[a].in_size;
  }
  const int64_t zero_len = std::max<int64_t>(pb.in_ch, pb.out_ch) + 64;
  pb.zeros = AllocateAligned(zero_len * static_cast<int64_t>(sizeof(T)));
  if (!pb.zeros) return false;
  std::memset(pb.zeros.get(), 0, static_cast<size_t>(zero_len) * sizeof(T));
  switch (pb.pass) {
    case Pass::kForward: {
      int64_t max_count = 0;
      for (const Phase& p : last.phases) max_count = std::max(max_count, p.count);
      const int64_t chunks = std::max<int64_t>(1, (max_count + pb.chunk - 1) / pb.chunk);
      pb.num_items = pb.groups * pb.batch * lead_out * last.stride * chunks;
      return PackWeights<T, Acc>(pb, /*transpose=*/false);
    }
    case Pass::kInputGrad: {
      const int64_t chunks = std::max<int64_t>(1, (last.in_size + pb.chunk - 1) / pb.chunk);
      pb.num_items = pb.groups * pb.batch * lead_in * chunks;
      return PackWeights<T, Acc>(pb, /*transpose=*/true);
    }
    case Pass::kWeightGrad: {
      const int64_t rows = WeightGradRowsFromX(pb) ? pb.in_ch : pb.out_ch;
      const int64_t r = WeightGradFewRows(pb) ? kFewRows : kRows;
      pb.num_items = pb.groups * pb.KernelSpatial() * std::max<int64_t>(1, (rows + r - 1) / r);
      return true;
    }
  }
  return false;
}

template <typename T, typename U>
void RunTyped(const ConvProblem& pb, int64_t begin, int64_t end) {
  using Acc = AccFor<T>;
  for (int64_t i = begin; i < end; ++i) {
    switch (pb.pass) {
      case Pass::kForward:
        ForwardItem<T, U, Acc>(pb, i);
        break;
      case Pass::kInputGrad:
        InputGradItem<T, U, Acc>(pb, i);
        break;
      case Pass::kWeightGrad:
        WeightGradItem<T, U, Acc>(pb, i);
        break;
    }
  }
}

template <template <typename, typename> class Fn, typename... Args>
auto DispatchTypes(const ConvProblem& pb, Args&&... args) {
  using R = decltype(Fn<float, float>::Call(args...));
  switch (pb.in_type) {
    case DType::kF32:
      return Fn<float, float>::Call(args...);
    case DType::kF64:
      return Fn<double, double>::Call(args...);
    case DType::kBF16:
      return pb.out_type == DType::kF32 ? Fn<bf16_t, float>::Call(args...) : Fn<bf16_t, bf16_t>::Call(args...);
    case DType::kF16:
      return pb.out_type == DType::kF32 ? Fn<f16_t, float>::Call(args...) : Fn<f16_t, f16_t>::Call(args...);
  }
  return R();
}

template <typename T, typename U>
struct PrepareFn {
  static bool Call(ConvProblem& pb) { return PrepareTyped<T, U>(pb); }
};
template <typename T, typename U>
struct RunFn {
  static void Call(const ConvProblem& pb, int64_t b, int64_t e) { RunTyped<T, U>(pb, b, e); }
};

bool Prepare(ConvProblem& pb) { return DispatchTypes<PrepareFn>(pb, pb); }
void Run(const ConvProblem& pb, int64_t begin, int64_t end) { DispatchTypes<RunFn>(pb, pb, begin, end); }

}  // namespace

const KernelSet& Kernels() {
  static const KernelSet kSet{JAXSEG_ISA_NAME, &Prepare, &Run};
  return kSet;
}

}  // namespace jaxseg::cpu::JAXSEG_ISA
