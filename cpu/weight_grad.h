// The weight gradient: dw (G, K..., Ci, Co) from x and dy, dW[k] = X_k^T . DY_k over the (input, output) pixel
// pairs that tap k links. The pairs form runs along the last spatial axis (input step Ci, output step stride*Co).
// A register tile of "row" channels x "column" channels is held over runs; columns are the wider of Ci and Co, so a
// layer with few output channels still fills the vectors. Its plan (WeightGradPlan, built once per call by
// PrepareWeightGrad) orders the phases, chooses the tile, splits blocks of dW where threads would idle and sizes
// the workspace; RunWeightGrad computes one item: it collects each tap's runs of a chunk, has the chosen build's
// micro-kernel (cpu/weight_grad_tile.h, through cpu/kernel_set.h) update the register tiles, and stores them.
// Planning code, compiled once (cpu/prepare.cc).
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
#include "cpu/buffer_cache.h"
#include "cpu/kernel_set.h"
#include "cpu/numeric.h"
#include "cpu/packing.h"
#include "cpu/pixel_index.h"
#include "cpu/workspace.h"

namespace jaxseg::cpu::planning {
namespace {

// The tile: the build's register tile (the forward's shape; other shapes were no faster), or, when there are only
// a few row channels (a layer with 1-3 output channels), as many rows as there are (at most KernelSet::few_rows)
// x the build's few_col_vecs lines, so no FMA is spent on a repeated row.
constexpr int kFewRows = KernelSet::few_rows;
constexpr int64_t kVecBytes = 64;
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
  const KernelSet* kernels = nullptr;
  const TypedKernels* typed = nullptr;  // the build's micro-kernels of the call's dtype pair
  bool pairs = false;                   // bf16 operands multiplied as pairs (full-height tiles only)
  std::vector<PhaseND> phases;  // phases with more taps first, so the threads that take the last items finish
                                // together
  bool rows_from_x = true;      // rows are input channels and columns output channels; else the reverse
  bool few_rows = false;        // at most kFewRows row channels: a tile exactly as tall
  // Where each block of dW is split into `parts` ranges of pixel lines, the part that finishes its block last
  // (counted in `parts_done`) adds the parts' tiles and stores the block.
  int64_t parts = 1;
  std::unique_ptr<std::atomic<int64_t>[]> parts_done;  // per block of dW, when parts > 1
  int tile_rows = 0;        // the register tile: rows
  int tile_col_vecs = 0;    //   and vectors of columns
  int64_t tiles_bytes = 0;  // an item's register tiles (all taps of its phase), 64-byte aligned
  // An item's register tiles live in its worker's workspace, or, when parts > 1, in its own slot of `partials`,
  // where the part that finishes its block last finds them.
  CachedBuffer partials;
  int64_t chunk_pixels = 0;     // the most pixels of one chunk's runs of one tap
  int64_t chunk_lines = 0;      // the most lines of a chunk
  int64_t workspace_bytes = 0;  // per worker
  int64_t num_items = 0;

  void* Partial(int64_t slot) const { return static_cast<char*>(partials.get()) + slot * tiles_bytes; }
};

// The workspace of an item: its register tiles (unless parts > 1), the runs of one tap of a chunk, and the bf16
// pair panels (cpu/weight_grad_tile.h) where the build multiplies pairs.
struct WeightGradScratch {
  void* sums = nullptr;
  PixelRun* runs = nullptr;
  const void** a_px = nullptr;
  const void** b_px = nullptr;
  uint32_t* a_panel = nullptr;
  uint32_t* b_panel = nullptr;

  template <typename Slot>
  static WeightGradScratch Take(const WeightGradPlan& plan, Slot& slot) {
    WeightGradScratch w;
    if (plan.parts == 1) w.sums = slot.template Take<char>(plan.tiles_bytes);
    w.runs = slot.template Take<PixelRun>(plan.chunk_lines);
    if (plan.pairs) {
      // Pair panels: ceil(pixels / 2) pairs of the block's rows, and of every column tile.
      const int64_t pairs = (plan.chunk_pixels + 1) / 2;
      const int64_t col_ch = plan.rows_from_x ? plan.call.out_ch : plan.call.in_ch;
      const int64_t tile_cols = plan.tile_col_vecs * (kVecBytes / 4);
      w.a_px = slot.template Take<const void*>(plan.chunk_pixels);
      w.b_px = slot.template Take<const void*>(plan.chunk_pixels);
      w.a_panel = slot.template Take<uint32_t>(pairs * kWeightGradRowTiles * plan.tile_rows);
      w.b_panel = slot.template Take<uint32_t>(RoundUp(col_ch, tile_cols) * pairs);
    }
    return w;
  }
};

template <typename T, typename U, typename Acc>
void RunWeightGrad(const WeightGradPlan& plan, int64_t item, WorkspaceSlot& slot) {
  const int R = plan.tile_rows, CV = plan.tile_col_vecs;
  const int64_t tile_cols = CV * kWidth<Acc>;
  const int64_t block_size = R * kWeightGradRowTiles;
  const ConvCall& call = plan.call;
  const auto& axes = call.axes;
  const int64_t d = static_cast<int64_t>(axes.size());
  const bool rows_from_x = plan.rows_from_x;
  const int64_t row_ch = rows_from_x ? call.in_ch : call.out_ch;
  const int64_t col_ch = rows_from_x ? call.out_ch : call.in_ch;
  const int64_t blocks = std::max<int64_t>(1, (row_ch + block_size - 1) / block_size);
  const int64_t num_phases = static_cast<int64_t>(plan.phases.size());

  const int64_t parts = plan.parts;
  const int64_t part = item % parts;
  const int64_t block_item = item / parts;
  const int64_t rb = block_item % blocks;
  const PhaseND& phase = plan.phases[(block_item / blocks) % num_phases];
  const int64_t g = block_item / blocks / num_phases;
  const int64_t b0 = rb * block_size;
  const int64_t block_rows = std::min<int64_t>(block_size, row_ch - b0);
  if (block_rows <= 0) return;
  const int64_t taps = static_cast<int64_t>(phase.taps.size());
  const int64_t row_tiles = (block_rows + R - 1) / R;
  const int64_t col_tiles = (col_ch + tile_cols - 1) / tile_cols;
  const int64_t tile_elems = R * tile_cols;  // accumulation-type elements of a register tile
  const int64_t tap_elems = row_tiles * col_tiles * tile_elems;

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

  WeightGradScratch scratch = WeightGradScratch::Take(plan, slot);
  WeightGradTapArgs args;
  args.x = call.first;
  args.y_grad = call.second;
  // The end of the array the columns come from (no vector read may pass it).
  args.b_end = rows_from_x ? static_cast<const void*>(static_cast<const T*>(call.second) +
                                                      call.groups * call.batch * call.OutSpatial() * call.out_ch)
                           : static_cast<const void*>(static_cast<const T*>(call.first) +
                                                      call.groups * call.batch * call.InSpatial() * call.in_ch);
  args.rows_from_x = rows_from_x;
  args.row_ch = row_ch;
  args.col_ch = col_ch;
  args.b0 = b0;
  args.row_tiles = row_tiles;
  args.col_tiles = col_tiles;
  args.x_step = call.in_ch;
  args.y_grad_step = axes[last].stride * call.out_ch;
  args.tile_rows = R;
  args.tile_col_vecs = CV;
  args.runs = scratch.runs;
  args.a_px = scratch.a_px;
  args.b_px = scratch.b_px;
  args.a_panel = scratch.a_panel;
  args.b_panel = scratch.b_panel;

  // (tap, row tile, column tile) register tiles, in this worker's workspace or this part's slot of the partials.
  Acc* sums = static_cast<Acc*>(parts > 1 ? plan.Partial(item) : scratch.sums);
  std::fill(sums, sums + taps * tap_elems, Acc(0));
  for (int64_t l0 = lines_begin; l0 < lines_end; l0 += chunk_lines) {
    const int64_t l1 = std::min(lines_end, l0 + chunk_lines);
    for (int64_t t = 0; t < taps; ++t) {
      const TapND& tap = phase.taps[t];
      const int64_t qb = tap.q_begin[last], qe = tap.q_end[last];
      if (qe <= qb) continue;
      int64_t num_runs = 0;
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
        scratch.runs[num_runs++] = PixelRun{(gn * call.InSpatial() + j_flat) * call.in_ch,
                                            (gn * call.OutSpatial() + o_flat) * call.out_ch, qe - qb};
      }
      if (num_runs == 0) continue;
      args.num_runs = num_runs;
      args.tap_sums = sums + t * tap_elems;
      plan.typed->weight_grad_tap(args);
    }
  }

  if (parts > 1) {
    // The last part of this block to finish adds up all parts' tiles (in part order, so the result does not
    // depend on which thread came last) and stores them; acq_rel makes the other parts' tiles visible.
    if (plan.parts_done[block_item].fetch_add(1, std::memory_order_acq_rel) != parts - 1) return;
    sums = static_cast<Acc*>(plan.Partial(block_item * parts));
    for (int64_t p = 1; p < parts; ++p) {
      const Acc* other = static_cast<const Acc*>(plan.Partial(block_item * parts + p));
      for (int64_t v = 0; v < taps * tap_elems; ++v) sums[v] += other[v];
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
        const int64_t c0 = ct * tile_cols;
        const int ncols = static_cast<int>(std::min<int64_t>(tile_cols, col_ch - c0));
        const Acc* tile = sums + t * tap_elems + (rt * col_tiles + ct) * tile_elems;
        for (int i = 0; i < nrows; ++i)
          for (int c = 0; c < ncols; ++c) {
            const int64_t ci = rows_from_x ? r0 + i : c0 + c;
            const int64_t co = rows_from_x ? c0 + c : r0 + i;
            w_grad[call.StoredChannels(ci, co)] = FromAcc<U>(tile[i * tile_cols + c]);
          }
      }
    }
  }
}

// Fills the plan of plan.call (plan.kernels and plan.typed set) for at most `workers` concurrent workers; false
// when memory runs out.
template <typename T, typename U, typename Acc>
bool PrepareWeightGrad(WeightGradPlan& plan, int64_t workers) {
  const ConvCall& call = plan.call;
  const KernelSet& kernels = *plan.kernels;
  plan.phases = MakePhasesND(call.axes);
  std::stable_sort(plan.phases.begin(), plan.phases.end(),
                   [](const PhaseND& a, const PhaseND& b) { return a.taps.size() > b.taps.size(); });
  // Rows are output channels (and columns input channels) when that fills the vectors better.
  plan.rows_from_x = !(call.out_ch < call.in_ch && call.out_ch < 16);
  const int64_t rows = plan.rows_from_x ? call.in_ch : call.out_ch;
  const int64_t col_ch = plan.rows_from_x ? call.out_ch : call.in_ch;
  plan.few_rows = rows <= kFewRows;
  // A tile exactly as tall as the row channels where there are few: no FMA on a repeated row.
  plan.tile_rows = plan.few_rows ? static_cast<int>(std::min<int64_t>(rows, kFewRows)) : kernels.rows;
  plan.tile_col_vecs = plan.few_rows ? kernels.few_col_vecs : kernels.col_vecs;
  // Pairs only in full-height tiles (cpu/weight_grad_tile.h).
  plan.pairs = Pairs<T>(kernels) && !plan.few_rows;
  const int64_t block = (plan.few_rows ? kFewRows : kernels.rows) * kWeightGradRowTiles;
  const int64_t blocks =
      call.groups * static_cast<int64_t>(plan.phases.size()) * std::max<int64_t>(1, (rows + block - 1) / block);
  int64_t max_taps = 0;
  for (const PhaseND& p : plan.phases) max_taps = std::max<int64_t>(max_taps, static_cast<int64_t>(p.taps.size()));
  const int64_t tile_cols = plan.tile_col_vecs * kWidth<Acc>;
  plan.tiles_bytes = RoundUp(std::max<int64_t>(max_taps * kWeightGradRowTiles * ((col_ch + tile_cols - 1) / tile_cols) *
                                                   plan.tile_rows * plan.tile_col_vecs * kVecBytes,
                                               64),
                             64);
  // With fewer blocks than threads, some threads would idle: split each block into parts over ranges of pixel
  // lines, kItemsPerWorker items per thread, as long as the parts' tiles stay small. Not with more blocks, where
  // the split cost more than it balanced.
  int64_t min_lines = call.batch;
  plan.chunk_lines = 1;
  plan.chunk_pixels = 1;
  for (const PhaseND& p : plan.phases) {
    int64_t lines = call.batch;
    for (size_t a = 0; a + 1 < call.axes.size(); ++a) lines *= p.count[a];
    min_lines = std::min(min_lines, lines);
    const int64_t line = std::max<int64_t>(1, p.count[call.axes.size() - 1]);
    const int64_t chunk_lines = std::max<int64_t>(1, kChunkPixels / line);
    plan.chunk_lines = std::max(plan.chunk_lines, chunk_lines);
    plan.chunk_pixels = std::max(plan.chunk_pixels, chunk_lines * line);
  }
  const int64_t want = blocks >= workers ? 1 : (kItemsPerWorker * workers + blocks - 1) / blocks;
  const int64_t fit = kMaxPartialBytes / (blocks * plan.tiles_bytes);
  const double block_macs = static_cast<double>(call.groups * call.batch * call.InSpatial()) *
                            static_cast<double>(call.KernelSpatial() * call.in_ch * call.out_ch) / blocks;
  const int64_t worth = static_cast<int64_t>(std::min(block_macs / kMinPartMacs, 1e6));
  plan.parts = std::max<int64_t>(1, std::min({want, fit, min_lines, worth}));
  plan.num_items = blocks * plan.parts;
  if (plan.parts > 1) {
    plan.parts_done = std::make_unique<std::atomic<int64_t>[]>(blocks);
    for (int64_t b = 0; b < blocks; ++b) plan.parts_done[b].store(0, std::memory_order_relaxed);
    plan.partials = AcquireBuffer(plan.num_items * plan.tiles_bytes);
    if (!plan.partials) return false;
  }
  WorkspaceSize size;
  WeightGradScratch::Take(plan, size);
  plan.workspace_bytes = size.bytes();
  return true;
}

}  // namespace
}  // namespace jaxseg::cpu::planning

#endif  // JAXSEG_CPU_WEIGHT_GRAD_H_
