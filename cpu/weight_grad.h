// The weight gradient of one kernel build: dw (G, K..., Ci, Co) from x and dy, dW[k] = X_k^T . DY_k over the
// (input, output) pixel pairs that tap k links. The pairs form runs along the last spatial axis (input step Ci,
// output step stride*Co). A register tile of "row" channels x "column" channels is held over runs; columns are
// the wider of Ci and Co, so a layer with few output channels still fills the vectors. Its plan (WeightGradPlan,
// built once per call by PrepareWeightGrad) orders the phases, chooses the tile, splits blocks of dW where threads
// would idle and sizes the scratch of register tiles; RunWeightGrad computes one item.
//
// Compiled once per instruction set, inside that build's namespace (see cpu/simd.h).
#ifndef JAXSEG_CPU_WEIGHT_GRAD_H_
#define JAXSEG_CPU_WEIGHT_GRAD_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "common/conv_shape.h"
#include "common/phase_geometry.h"
#include "cpu/bf16_dot.h"
#include "cpu/buffer_cache.h"
#include "cpu/numeric.h"
#include "cpu/pixel_index.h"
#include "cpu/simd.h"

namespace jaxseg::cpu::JAXSEG_ISA {
namespace {

// The tile: kWeightGradRows x kWeightGradColVecs vectors (the forward's shape; other shapes were no faster), or,
// when there are only a few row channels (a layer with 1-3 output channels), as many rows as there are (at most
// kFewRows) x kFewColVecs vectors, so no FMA is spent on a repeated row.
constexpr int kWeightGradRows = kRows;
constexpr int kWeightGradColVecs = kColVecs;
constexpr int kFewRows = 4;
constexpr int kFewColVecs = 16 / kFewRows;
// An item owns this many register tiles of row channels and walks the pixels in chunks of about kChunkPixels,
// updating all of its tiles from each chunk while the chunk's activations are in cache.
constexpr int64_t kWeightGradRowTiles = 8;
constexpr int64_t kChunkPixels = 128;
// Work items per thread that the weight gradient aims for when it splits blocks of dW, and the most bytes of
// register tiles its parts keep.
constexpr int64_t kItemsPerWorker = 4;
constexpr int64_t kMaxPartialBytes = int64_t{64} << 20;
// The fewest multiply-adds (about) worth a part of its own: below, the split costs more than it balances.
constexpr double kMinPartMacs = 1 << 22;

// Items are (group, phase, block of row channels, part): an item owns those rows of dW for every tap of the
// phase, so threads never share an output, and the phase's taps share each pass over the activations (a
// tap-by-tap order reads them once per tap, which bounds large-batch layers by memory).
struct WeightGradPlan {
  ConvCall call;
  std::vector<PhaseND> phases;  // phases with more taps first, so the threads that take the last items finish
                                // together
  bool rows_from_x = true;      // rows are input channels and columns output channels; else the reverse
  bool few_rows = false;        // at most kFewRows row channels: a tile exactly as tall
  // Where each block of dW is split into `parts` ranges of pixel lines, the part that finishes its block last
  // (counted in `parts_done`) adds the parts' tiles and stores the block.
  int64_t parts = 1;
  std::unique_ptr<std::atomic<int64_t>[]> parts_done;  // per block of dW, when parts > 1
  // Register tiles live in 64-byte-aligned slots of `scratch`, one per worker, or one per item when parts > 1.
  CachedBuffer scratch;
  int64_t scratch_bytes = 0;  // per slot
  int64_t num_items = 0;

  void* Scratch(int64_t slot) const { return static_cast<char*>(scratch.get()) + slot * scratch_bytes; }
};

// A run of pixel pairs that one tap links: `count` inputs at step Ci and outputs at step stride*Co.
struct PixelRun {
  int64_t x_off;       // element offset of the run's first input pixel (channel 0)
  int64_t y_grad_off;  // element offset of its first output pixel (channel 0)
  int64_t count;
};

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
inline void AccumulateRun(typename Vec<Acc>::type (&r)[R][CV], const T* ap, const T* bp, int64_t count,
                          int64_t a_step, int64_t b_step, const int64_t (&lane)[R], int ncols) {
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
inline void AccumulateRuns(typename Vec<Acc>::type (&acc)[R][CV], const PixelRun* runs_begin,
                           const PixelRun* runs_end, bool rows_from_x, const T* x, const T* y_grad, const T* b_end,
                           int64_t x_step, int64_t y_grad_step, int nrows, int ncols) {
  using V = typename Vec<Acc>::type;
  constexpr int kMax = CV * Vec<Acc>::kWidth;
  V r[R][CV];
  for (int i = 0; i < R; ++i)
    for (int c = 0; c < CV; ++c) r[i][c] = acc[i][c];
  int64_t lane[R];
  for (int i = 0; i < R; ++i) lane[i] = kFullRows ? i : std::min(i, nrows - 1);
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
// chunk may be paired with zeros, in both panels. tap_sums holds the tap's (row tile, column tile) tiles. Only for
// full-height tiles: with 1-4 row channels the packing costs more than the products it feeds (ebgan-celeba-g4's
// weight gradient took twice as long as the widened float32 path, benchmarks/NOTES.md), so those take the
// widened path.
template <typename T, typename Acc, int R, int CV>
void AccumulatePairs(typename Vec<Acc>::type* tap_sums, const std::vector<PixelRun>& runs, const WeightGradPlan& plan,
                     int64_t b0, int64_t row_tiles, int64_t col_tiles) {
  using V = typename Vec<Acc>::type;
  constexpr int64_t kTileCols = CV * Vec<Acc>::kWidth;  // one 32-bit pair per column
  const ConvCall& call = plan.call;
  const int64_t row_ch = plan.rows_from_x ? call.in_ch : call.out_ch;
  const int64_t col_ch = plan.rows_from_x ? call.out_ch : call.in_ch;
  const int64_t block_rows = std::min(row_tiles * R, row_ch - b0);
  const int64_t x_step = call.in_ch, y_grad_step = call.axes.back().stride * call.out_ch;
  const T* x = static_cast<const T*>(call.first);
  const T* y_grad = static_cast<const T*>(call.second);

  // The chunk's pixels in order: where their row channels and their column channels start.
  thread_local std::vector<const T*> a_px, b_px;
  a_px.clear();
  b_px.clear();
  for (const PixelRun& run : runs)
    for (int64_t p = 0; p < run.count; ++p) {
      const T* xp = x + run.x_off + p * x_step;
      const T* yp = y_grad + run.y_grad_off + p * y_grad_step;
      a_px.push_back((plan.rows_from_x ? xp : yp) + b0);
      b_px.push_back(plan.rows_from_x ? yp : xp);
    }
  const int64_t pixels = static_cast<int64_t>(a_px.size());
  const int64_t pairs = (pixels + 1) / 2;
  const auto partner = [&](const std::vector<const T*>& px, int64_t j) {
    return 2 * j + 1 < pixels ? px[2 * j + 1] : nullptr;
  };

  // Panels in 64-byte lines (uint32 pairs), kept per thread.
  struct alignas(64) Line {
    uint32_t v[16];
  };
  const int64_t lda = row_tiles * R;
  thread_local std::vector<Line> a_lines, b_lines;
  a_lines.resize((pairs * lda + 15) / 16);
  b_lines.resize(col_tiles * pairs * kTileCols / 16);
  uint32_t* a = a_lines.data()->v;
  uint32_t* b = b_lines.data()->v;
  for (int64_t j = 0; j < pairs; ++j) InterleavePairs(a + j * lda, a_px[2 * j], partner(a_px, j), block_rows, lda);
  for (int64_t ct = 0; ct < col_tiles; ++ct) {
    const int64_t c0 = ct * kTileCols;
    const int64_t ncols = std::min(kTileCols, col_ch - c0);
    uint32_t* bt = b + ct * pairs * kTileCols;
    for (int64_t j = 0; j < pairs; ++j) {
      const T* hi = partner(b_px, j);
      InterleavePairs(bt + j * kTileCols, b_px[2 * j] + c0, hi ? hi + c0 : nullptr, ncols, kTileCols);
    }
  }
  constexpr int64_t kTileVecs = R * CV;
  for (int64_t ct = 0; ct < col_tiles; ++ct)
    for (int64_t rt = 0; rt < row_tiles; ++rt) {
      V(&acc)[R][CV] = *reinterpret_cast<V(*)[R][CV]>(tap_sums + (rt * col_tiles + ct) * kTileVecs);
      PairPanelTile<R, CV>(acc, a + rt * R, lda, b + ct * pairs * kTileCols, pairs);
    }
}

template <typename T, typename U, typename Acc, int R, int CV>
void WeightGradTile(const WeightGradPlan& plan, int64_t item, int64_t worker) {
  using V = typename Vec<Acc>::type;
  constexpr int64_t kTileCols = CV * Vec<Acc>::kWidth;
  constexpr int64_t kBlock = R * kWeightGradRowTiles;
  const ConvCall& call = plan.call;
  const auto& axes = call.axes;
  const int64_t d = static_cast<int64_t>(axes.size());
  const bool rows_from_x = plan.rows_from_x;
  const int64_t row_ch = rows_from_x ? call.in_ch : call.out_ch;
  const int64_t col_ch = rows_from_x ? call.out_ch : call.in_ch;
  const int64_t blocks = std::max<int64_t>(1, (row_ch + kBlock - 1) / kBlock);
  const int64_t num_phases = static_cast<int64_t>(plan.phases.size());

  const int64_t parts = plan.parts;
  const int64_t part = item % parts;
  const int64_t block_item = item / parts;
  const int64_t rb = block_item % blocks;
  const PhaseND& phase = plan.phases[(block_item / blocks) % num_phases];
  const int64_t g = block_item / blocks / num_phases;
  const int64_t b0 = rb * kBlock;
  const int64_t block_rows = std::min<int64_t>(kBlock, row_ch - b0);
  if (block_rows <= 0) return;
  const int64_t taps = static_cast<int64_t>(phase.taps.size());
  const int64_t row_tiles = (block_rows + R - 1) / R;
  const int64_t col_tiles = (col_ch + kTileCols - 1) / kTileCols;
  const int64_t tile_vecs = R * CV;

  // The phase's outputs as lines along the last axis, one per (image, leading-axis q); a chunk is enough whole
  // lines for about kChunkPixels outputs. Every tap of the phase reads the chunk's outputs (and nearly the same
  // inputs), so its activations come from memory once for all the taps.
  const int64_t last = d - 1;
  const int64_t line = phase.count[last];
  int64_t lines = call.batch;
  for (int64_t a = 0; a < last; ++a) lines *= phase.count[a];
  const int64_t chunk_lines = std::max<int64_t>(1, kChunkPixels / std::max<int64_t>(1, line));
  const int64_t lines_begin = lines * part / parts, lines_end = lines * (part + 1) / parts;
  int64_t in_stride[kMaxSpatialDims], out_stride[kMaxSpatialDims];
  PixelStrides(axes, true, in_stride);
  PixelStrides(axes, false, out_stride);
  const int64_t x_step = call.in_ch, y_grad_step = axes[last].stride * call.out_ch;
  // The end of the array the columns come from (no vector read may pass it).
  const T* b_end = rows_from_x
                       ? static_cast<const T*>(call.second) + call.groups * call.batch * call.OutSpatial() * call.out_ch
                       : static_cast<const T*>(call.first) + call.groups * call.batch * call.InSpatial() * call.in_ch;

  // (tap, row tile, column tile) register tiles, in this worker's or this part's slot of the scratch (sized by
  // WeightGradScratchBytes).
  const int64_t sum_vecs = taps * row_tiles * col_tiles * tile_vecs;
  V* sums = static_cast<V*>(plan.Scratch(parts > 1 ? item : worker));
  std::fill(sums, sums + sum_vecs, V{});
  thread_local std::vector<PixelRun> runs;
  for (int64_t l0 = lines_begin; l0 < lines_end; l0 += chunk_lines) {
    const int64_t l1 = std::min(lines_end, l0 + chunk_lines);
    for (int64_t t = 0; t < taps; ++t) {
      const TapND& tap = phase.taps[t];
      const int64_t qb = tap.q_begin[last], qe = tap.q_end[last];
      if (qe <= qb) continue;
      runs.clear();
      for (int64_t l = l0; l < l1; ++l) {
        int64_t rest = l, j_flat = 0, o_flat = 0;
        bool inside = true;
        for (int64_t a = last - 1; a >= 0; --a) {
          const int64_t q = rest % phase.count[a];
          rest /= phase.count[a];
          inside &= q >= tap.q_begin[a] && q < tap.q_end[a];
          j_flat += (q + tap.offset[a]) * in_stride[a];
          o_flat += (q * axes[a].stride + phase.residue[a]) * out_stride[a];
        }
        if (!inside) continue;
        const int64_t gn = g * call.batch + rest;
        j_flat += qb + tap.offset[last];
        o_flat += qb * axes[last].stride + phase.residue[last];
        runs.push_back(PixelRun{(gn * call.InSpatial() + j_flat) * call.in_ch,
                                (gn * call.OutSpatial() + o_flat) * call.out_ch, qe - qb});
      }
      if (runs.empty()) continue;
      if constexpr (kPairs<T> && R == kWeightGradRows) {
        AccumulatePairs<T, Acc, R, CV>(sums + t * row_tiles * col_tiles * tile_vecs, runs, plan, b0, row_tiles,
                                       col_tiles);
      } else {
        for (int64_t rt = 0; rt < row_tiles; ++rt) {
          const int64_t r0 = b0 + rt * R;
          const int nrows = static_cast<int>(std::min<int64_t>(R, row_ch - r0));
          const T* x = static_cast<const T*>(call.first) + (rows_from_x ? r0 : 0);
          const T* y_grad = static_cast<const T*>(call.second) + (rows_from_x ? 0 : r0);
          for (int64_t ct = 0; ct < col_tiles; ++ct) {
            const int64_t c0 = ct * kTileCols;
            const int ncols = static_cast<int>(std::min<int64_t>(kTileCols, col_ch - c0));
            V(&acc)[R][CV] =
                *reinterpret_cast<V(*)[R][CV]>(&sums[((t * row_tiles + rt) * col_tiles + ct) * tile_vecs]);
            const T* xc = rows_from_x ? x : x + c0;
            const T* yc = rows_from_x ? y_grad + c0 : y_grad;
            if (nrows == R)
              AccumulateRuns<T, Acc, R, CV, true>(acc, runs.data(), runs.data() + runs.size(), rows_from_x, xc, yc,
                                                  b_end, x_step, y_grad_step, nrows, ncols);
            else
              AccumulateRuns<T, Acc, R, CV, false>(acc, runs.data(), runs.data() + runs.size(), rows_from_x, xc,
                                                   yc, b_end, x_step, y_grad_step, nrows, ncols);
          }
        }
      }
    }
  }

  if (parts > 1) {
    // The last part of this block to finish adds up all parts' tiles (in part order, so the result does not
    // depend on which thread came last) and stores them; acq_rel makes the other parts' tiles visible.
    if (plan.parts_done[block_item].fetch_add(1, std::memory_order_acq_rel) != parts - 1) return;
    sums = static_cast<V*>(plan.Scratch(block_item * parts));
    for (int64_t p = 1; p < parts; ++p) {
      const V* other = static_cast<const V*>(plan.Scratch(block_item * parts + p));
      for (int64_t v = 0; v < sum_vecs; ++v) sums[v] += other[v];
    }
  }

  // Every tap is stored, also one that never meets the input (its gradient is zero).
  for (int64_t t = 0; t < taps; ++t) {
    U* w_grad = static_cast<U*>(call.result) +
                (g * call.KernelSpatial() + call.StoredTap(phase.taps[t].k)) * call.in_ch * call.out_ch;
    for (int64_t rt = 0; rt < row_tiles; ++rt) {
      const int64_t r0 = b0 + rt * R;
      const int nrows = static_cast<int>(std::min<int64_t>(R, row_ch - r0));
      for (int64_t ct = 0; ct < col_tiles; ++ct) {
        const int64_t c0 = ct * kTileCols;
        const int ncols = static_cast<int>(std::min<int64_t>(kTileCols, col_ch - c0));
        Acc tile[R][kTileCols];
        std::memcpy(tile, &sums[((t * row_tiles + rt) * col_tiles + ct) * tile_vecs], sizeof(tile));
        for (int i = 0; i < nrows; ++i)
          for (int c = 0; c < ncols; ++c) {
            const int64_t ci = rows_from_x ? r0 + i : c0 + c;
            const int64_t co = rows_from_x ? c0 + c : r0 + i;
            w_grad[call.StoredChannels(ci, co)] = FromAcc<U>(tile[i][c]);
          }
      }
    }
  }
}

template <typename T, typename U, typename Acc>
void RunWeightGrad(const WeightGradPlan& plan, int64_t item, int64_t worker) {
  if (!plan.few_rows) return WeightGradTile<T, U, Acc, kWeightGradRows, kWeightGradColVecs>(plan, item, worker);
  // A tile exactly as tall as the row channels: no FMA on a repeated row.
  switch (plan.rows_from_x ? plan.call.in_ch : plan.call.out_ch) {
    case 1: return WeightGradTile<T, U, Acc, 1, kFewColVecs>(plan, item, worker);
    case 2: return WeightGradTile<T, U, Acc, 2, kFewColVecs>(plan, item, worker);
    case 3: return WeightGradTile<T, U, Acc, 3, kFewColVecs>(plan, item, worker);
    default: return WeightGradTile<T, U, Acc, kFewRows, kFewColVecs>(plan, item, worker);
  }
}

// The most bytes of register tiles one item keeps (WeightGradTile's `sums`), for any tile shape.
template <typename Acc>
int64_t WeightGradScratchBytes(const WeightGradPlan& plan) {
  int64_t taps = 0;
  for (const PhaseND& p : plan.phases) taps = std::max<int64_t>(taps, static_cast<int64_t>(p.taps.size()));
  const int64_t col_ch = plan.rows_from_x ? plan.call.out_ch : plan.call.in_ch;
  const int64_t min_cols = std::min(kWeightGradColVecs, kFewColVecs) * Vec<Acc>::kWidth;
  const int64_t tile_vecs = std::max(kWeightGradRows * kWeightGradColVecs, kFewRows * kFewColVecs);
  return taps * kWeightGradRowTiles * ((col_ch + min_cols - 1) / min_cols) * tile_vecs *
         static_cast<int64_t>(sizeof(typename Vec<Acc>::type));
}

// Fills the plan of plan.call for at most `workers` concurrent workers; false when memory runs out.
template <typename T, typename U, typename Acc>
bool PrepareWeightGrad(WeightGradPlan& plan, int64_t workers) {
  const ConvCall& call = plan.call;
  plan.phases = MakePhasesND(call.axes);
  std::stable_sort(plan.phases.begin(), plan.phases.end(),
                   [](const PhaseND& a, const PhaseND& b) { return a.taps.size() > b.taps.size(); });
  // Rows are output channels (and columns input channels) when that fills the vectors better.
  plan.rows_from_x = !(call.out_ch < call.in_ch && call.out_ch < 16);
  const int64_t rows = plan.rows_from_x ? call.in_ch : call.out_ch;
  plan.few_rows = rows <= kFewRows;
  const int64_t block = (plan.few_rows ? kFewRows : kWeightGradRows) * kWeightGradRowTiles;
  const int64_t blocks =
      call.groups * static_cast<int64_t>(plan.phases.size()) * std::max<int64_t>(1, (rows + block - 1) / block);
  plan.scratch_bytes = RoundUp(std::max<int64_t>(WeightGradScratchBytes<Acc>(plan), 64), 64);
  // With fewer blocks than threads, some threads would idle: split each block into parts over ranges of pixel
  // lines, kItemsPerWorker items per thread, as long as the parts' tiles stay small. Not with more blocks, where
  // the split cost more than it balanced.
  int64_t min_lines = call.batch;
  for (const PhaseND& p : plan.phases) {
    int64_t lines = call.batch;
    for (size_t a = 0; a + 1 < call.axes.size(); ++a) lines *= p.count[a];
    min_lines = std::min(min_lines, lines);
  }
  const int64_t want = blocks >= workers ? 1 : (kItemsPerWorker * workers + blocks - 1) / blocks;
  const int64_t fit = kMaxPartialBytes / (blocks * plan.scratch_bytes);
  const double block_macs = static_cast<double>(call.groups * call.batch * call.InSpatial()) *
                            static_cast<double>(call.KernelSpatial() * call.in_ch * call.out_ch) / blocks;
  const int64_t worth = static_cast<int64_t>(std::min(block_macs / kMinPartMacs, 1e6));
  plan.parts = std::max<int64_t>(1, std::min({want, fit, min_lines, worth}));
  plan.num_items = blocks * plan.parts;
  if (plan.parts > 1) {
    plan.parts_done = std::make_unique<std::atomic<int64_t>[]>(blocks);
    for (int64_t b = 0; b < blocks; ++b) plan.parts_done[b].store(0, std::memory_order_relaxed);
  }
  plan.scratch = AcquireBuffer((plan.parts > 1 ? plan.num_items : workers) * plan.scratch_bytes);
  return plan.scratch != nullptr;
}

}  // namespace
}  // namespace jaxseg::cpu::JAXSEG_ISA

#endif  // JAXSEG_CPU_WEIGHT_GRAD_H_
