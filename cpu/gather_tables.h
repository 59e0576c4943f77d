// The planning side of the indirect-GEMM products (the micro-kernels are cpu/gather_gemm.h's): the zero row that
// a gather reads where a tap meets padding, the tables of one block (its rows' source rows and destinations) in
// the worker's workspace, and the grouping of the block's rows by the taps they read.
#ifndef JAXSEG_CPU_GATHER_TABLES_H_
#define JAXSEG_CPU_GATHER_TABLES_H_

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "common/conv_shape.h"
#include "cpu/buffer_cache.h"
#include "cpu/kernel_set.h"
#include "cpu/workspace.h"

namespace jaxseg::cpu::planning {
namespace {

// Register tiles of rows per block (one work item of the forward and the input gradient).
constexpr int64_t kBlockTiles = 16;

inline int64_t BlockRows(const KernelSet& kernels) { return kernels.rows * kBlockTiles; }

// The row a gather reads where a tap meets padding: zeros, longer than any pixel row of the call. Null when
// memory runs out.
template <typename T>
CachedBuffer MakeZeroRow(const ConvShape& shape) {
  const int64_t len = std::max(shape.in_ch, shape.out_ch) + 64;
  CachedBuffer row = AcquireBuffer(len * static_cast<int64_t>(sizeof(T)));
  if (row) std::memset(row.get(), 0, static_cast<size_t>(len) * sizeof(T));
  return row;
}

// The tables of one block of `rows` rows and `taps` taps, in a worker's slot (WorkspaceSlot), or counted for its
// size (WorkspaceSize), with the arrays GroupRowsByTaps sorts into.
struct BlockTables {
  const void** src = nullptr;  // (row, tap) -> source row
  void** dst = nullptr;        // row -> destination
  int64_t* tap_k = nullptr;    // tap -> flat kernel index
  int64_t* shift = nullptr;    // tap -> element offset of its source from the pixel's (the forward's interior)
  uint64_t* key = nullptr;     // GroupRowsByTaps: row -> the set of taps it reads
  int64_t* order = nullptr;    //   the rows in sorted order
  const void** sorted_src = nullptr;
  void** sorted_dst = nullptr;

  template <typename Slot>
  static BlockTables Take(Slot& slot, int64_t rows, int64_t taps) {
    BlockTables t;
    t.src = slot.template Take<const void*>(rows * taps);
    t.dst = slot.template Take<void*>(rows);
    t.tap_k = slot.template Take<int64_t>(taps);
    t.shift = slot.template Take<int64_t>(taps);
    t.key = slot.template Take<uint64_t>(rows);
    t.order = slot.template Take<int64_t>(rows);
    t.sorted_src = slot.template Take<const void*>(rows * taps);
    t.sorted_dst = slot.template Take<void*>(rows);
    return t;
  }
};

// Rows near the border read the zero row for some taps, and a register tile spends FMAs on a tap unless all of
// its rows skip it (on small images a good part of the FMAs). Ordering the block's rows by the set of taps they
// read (rows that read all taps first) gives most tiles rows with one set, so whole tiles skip their missing
// taps. The order of a block's rows is free: each row carries its own destination. Not worth it where a tap costs
// a tile few FMAs (depth x columns small): there the sort costs more than it saves. Points args.src and args.dst
// at the sorted tables when it sorts.
inline void GroupRowsByTaps(BlockTables& t, int64_t work_per_tap, GatherBlockArgs& args) {
  const int64_t rows = args.rows, taps = args.taps;
  if (taps > 64 || work_per_tap < 4096) return;
  bool mixed = false;
  const uint64_t all = taps == 64 ? ~uint64_t{0} : (uint64_t{1} << taps) - 1;
  for (int64_t i = 0; i < rows; ++i) {
    uint64_t k = 0;
    for (int64_t tap = 0; tap < taps; ++tap) k |= uint64_t{t.src[i * taps + tap] != args.zero} << tap;
    t.key[i] = k;
    mixed |= k != all;
  }
  if (!mixed) return;
  for (int64_t i = 0; i < rows; ++i) t.order[i] = i;
  const uint64_t* key = t.key;
  std::stable_sort(t.order, t.order + rows, [key](int64_t a, int64_t b) { return key[a] > key[b]; });
  for (int64_t i = 0; i < rows; ++i) {
    std::copy(t.src + t.order[i] * taps, t.src + (t.order[i] + 1) * taps, t.sorted_src + i * taps);
    t.sorted_dst[i] = t.dst[t.order[i]];
  }
  args.src = t.sorted_src;
  args.dst = t.sorted_dst;
}

}  // namespace
}  // namespace jaxseg::cpu::planning

#endif  // JAXSEG_CPU_GATHER_TABLES_H_
