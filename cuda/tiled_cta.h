// The tensor-core CTA of the tiled path, as data movement: which 16-byte chunk each thread copies into which slot
// of shared memory, which shared-memory row each lane hands to ldmatrix, which tile element each mma register
// holds, and where the epilogue puts each result. The device kernels (cuda/kernels.cu) and the CPU executor
// (cuda/plan_executor.cc) both compute every address through these functions, so the executor's run over the
// conformance grid checks the index logic the GPU runs. Plain C++17 (no CUDA headers).
//
// The CTA: 4 warps (2 x 2) over a result tile of 128 rows and Cta<N>::kTileN = 128 or 64 columns (the plan picks
// 64 for 64 result channels or fewer, and where 128-column tiles would leave multiprocessors idle), each warp a
// 64 x N/2 block; K advances 64 bytes per stage (32 16-bit or 16 float32 elements) through a 4-stage cp.async
// pipeline; per stage two mma k-steps (m16n8k16 for 16-bit operands, m16n8k8 for TF32).
//
// Shared-memory tiles are stored in 16-byte chunks, one of two ways:
//   K-contiguous    rows are M (or N), 4 chunks of K per row (64 bytes): an operand whose channels run along K
//                   (the gathered activation; a kernel stored with K innermost). Read with ldmatrix.
//   MN-contiguous   rows are K, chunks of M (or N) across: an operand whose channels run along M or N (the weight
//                   gradient's operands; a kernel stored with N innermost). Read with ldmatrix.trans (16-bit) or
//                   with one 32-bit load per register (TF32: ldmatrix transposes 16-bit elements only).
// Chunks are XOR-swizzled within their row so that the 8 rows one ldmatrix phase reads fall on distinct banks.
#ifndef JAXSEG_CUDA_TILED_CTA_H_
#define JAXSEG_CUDA_TILED_CTA_H_

#include <cstdint>

#include "cuda/conv_plan.h"

namespace jaxseg::gpu::tiled {

constexpr int kThreads = 128;
constexpr int kWarps = 4;
constexpr int kStages = 4;
constexpr int kTileM = 128;
constexpr int kWarpM = 64;
constexpr int kMmaTilesM = kWarpM / 16;   // m16 tiles per warp
constexpr int kRowBytes = 64;             // bytes of K per stage
constexpr int kSubSteps = 2;              // mma k-steps per stage (32 bytes of K each)
constexpr int kTileBytesA = kTileM * kRowBytes;
constexpr int kCopiesA = kTileBytesA / 16 / kThreads;

// ---------------------------------------------------------------------------------------------------------------
// mma.sync fragments (PTX ISA, "Matrix Fragments for mma.m16n8k16" and "mma.m16n8k8" with .tf32): lane l holds
// elements of the 16 x K tile of A, the K x 8 tile of B and the 16 x 8 tile of C. groupID = l >> 2,
// threadID_in_group = l & 3.

struct Coord {
  int32_t row;
  int32_t col;
};

// 16-bit A (16 x 16): register `reg` (0..3) holds two elements, `half` 0 or 1.
JAXSEG_HD constexpr Coord MmaA16(int lane, int reg, int half) {
  return Coord{(lane >> 2) + 8 * (reg & 1), 2 * (lane & 3) + half + 8 * (reg >> 1)};
}
// 16-bit B (16 x 8), as (k, n): register 0..1, two elements each.
JAXSEG_HD constexpr Coord MmaB16(int lane, int reg, int half) {
  return Coord{2 * (lane & 3) + half + 8 * reg, lane >> 2};
}
// TF32 A (16 x 8): register 0..3, one element each.
JAXSEG_HD constexpr Coord MmaATf32(int lane, int reg) {
  return Coord{(lane >> 2) + 8 * (reg & 1), (lane & 3) + 4 * (reg >> 1)};
}
// TF32 B (8 x 8), as (k, n): register 0..1.
JAXSEG_HD constexpr Coord MmaBTf32(int lane, int reg) { return Coord{(lane & 3) + 4 * reg, lane >> 2}; }
// float32 C and D (16 x 8): register 0..3.
JAXSEG_HD constexpr Coord MmaC(int lane, int reg) {
  return Coord{(lane >> 2) + 8 * (reg >> 1), 2 * (lane & 3) + (reg & 1)};
}

// 3xTF32's big part of a finite float32 x (bits), given x rounded to TF32 (cvt.rna): that rounding, unless it
// overflowed to infinity (|x| within half a TF32 unit of float32's maximum), where x truncated to TF32 is taken
// instead: exact in TF32, and x - big stays exact, so the split's products stay finite where the exact one is.
JAXSEG_HD constexpr uint32_t Tf32SplitBig(uint32_t x, uint32_t rounded) {
  return (rounded & 0x7f800000u) == 0x7f800000u && (x & 0x7f800000u) != 0x7f800000u ? x & 0xffffe000u : rounded;
}

// Entries of the PTX ISA's fragment tables, pinned: lane 13 (groupID 3, threadID_in_group 1) and lane 30 (7, 2).
// m16n8k16 A: a0..a7 are (reg i/2, half i%2); row groupID (+8 for a2, a3, a6, a7), col 2*tig + (i&1) (+8 from a4).
static_assert(MmaA16(13, 0, 1).row == 3 && MmaA16(13, 0, 1).col == 3, "a1");
static_assert(MmaA16(13, 1, 0).row == 11 && MmaA16(13, 1, 0).col == 2, "a2");
static_assert(MmaA16(13, 2, 0).row == 3 && MmaA16(13, 2, 0).col == 10, "a4");
static_assert(MmaA16(30, 3, 1).row == 15 && MmaA16(30, 3, 1).col == 13, "a7");
// m16n8k16 B: b0..b3; row (k) 2*tig + (i&1) (+8 for b2, b3), col groupID.
static_assert(MmaB16(13, 0, 0).row == 2 && MmaB16(13, 0, 0).col == 3, "b0");
static_assert(MmaB16(30, 1, 1).row == 13 && MmaB16(30, 1, 1).col == 7, "b3");
// m16n8k8 .tf32 A: a0 (g, t), a1 (g+8, t), a2 (g, t+4), a3 (g+8, t+4); B: b0 (t, g), b1 (t+4, g).
static_assert(MmaATf32(13, 1).row == 11 && MmaATf32(13, 1).col == 1, "tf32 a1");
static_assert(MmaATf32(30, 2).row == 7 && MmaATf32(30, 2).col == 6, "tf32 a2");
static_assert(MmaBTf32(13, 1).row == 5 && MmaBTf32(13, 1).col == 3, "tf32 b1");
// C/D (f32): c0, c1 (g, 2*tig + i), c2, c3 (g+8, 2*tig + i - 2).
static_assert(MmaC(13, 1).row == 3 && MmaC(13, 1).col == 3, "c1");
static_assert(MmaC(30, 2).row == 15 && MmaC(30, 2).col == 4, "c2");

// The warp's rows of the result tile: warps 0 and 2 above, 1 and 3 below.
JAXSEG_HD int WarpRow(int warp) { return (warp & 1) * kWarpM; }

// The pipeline of both tiled kernels: the copies of k-step `step` land in stage slot StageSlot(step); the
// prologue issues steps 0 .. kStages - 2, and the iteration that computes `step` first issues
// NextIssued(step), into the slot step - 1 has just left.
JAXSEG_HD constexpr int StageSlot(int32_t step) { return step % kStages; }
JAXSEG_HD constexpr int32_t NextIssued(int32_t step) { return step + kStages - 1; }

// ---------------------------------------------------------------------------------------------------------------
// Shared-memory tiles.

struct SmemTile {
  int32_t rows;
  int32_t chunks;  // 16-byte chunks per row

  // Byte offset of chunk `chunk` of row `row`. 64-byte rows (4 chunks) pair up in 128-byte bank lines: the chunk
  // is XORed with bits 1-2 of the row. Wider rows XOR the low 3 bits of the chunk with the low 3 bits of the row.
  JAXSEG_HD int32_t Offset(int32_t row, int32_t chunk) const {
    const int32_t swizzled = chunks == 4 ? chunk ^ ((row >> 1) & 3) : chunk ^ (row & 7);
    return (row * chunks + swizzled) * 16;
  }
  JAXSEG_HD int32_t Bytes() const { return rows * chunks * 16; }
};

JAXSEG_HD SmemTile KContiguous(int rows) { return SmemTile{rows, kRowBytes / 16}; }
JAXSEG_HD SmemTile MNContiguous(int elem_bytes, int cols) {
  return SmemTile{kRowBytes / elem_bytes, cols * elem_bytes / 16};
}

// Copy i of thread `tid` into a tile: its row and chunk. A warp fills whole rows, contiguous in memory.
JAXSEG_HD Coord CopySlot(const SmemTile& tile, int tid, int i) {
  const int c = tid + kThreads * i;
  return Coord{c / tile.chunks, c % tile.chunks};
}

// One 16-byte copy: where it lands (bytes into the operand's tile of the stage) and where it comes from
// (elements into the operand), or src < 0 for a chunk of zeros (past a tensor's edge, in padding).
struct ChunkCopy {
  int32_t smem;
  int64_t src;
};

// ---------------------------------------------------------------------------------------------------------------
// The A side (the same for both tile widths).

// forward and input_grad: A is the gathered activation, K-contiguous.
JAXSEG_HD SmemTile GatherTileA() { return KContiguous(kTileM); }

// The row table entry thread `tid` (< kTileM) writes before the mainloop.
JAXSEG_HD RowCoord GatherRow(const GatherPlan& p, const GatherTile& t, int tid) { return p.Row(t, tid); }

// The pixels (within the tile's group) thread `tid`'s A copies read for the cursor's tap, -1 in padding: computed
// when a tap begins (channel 0) and kept for the tap's k-steps, which differ only in the channel.
struct GatherSources {
  int32_t pixel[kCopiesA];
};

JAXSEG_HD GatherSources GatherSourcePixels(const GatherPlan& p, const GatherTile& t, const RowCoord* rows,
                                           const TapCursor& c, int tid) {
  GatherSources s;
  JAXSEG_UNROLL
  for (int i = 0; i < kCopiesA; ++i) s.pixel[i] = p.SourcePixelInGroup(t, rows[CopySlot(GatherTileA(), tid, i).row], c);
  return s;
}

// The element where the tile's group starts in the gathered tensor.
JAXSEG_HD int64_t GatherGroupBase(const GatherPlan& p, const GatherTile& t) { return t.group * p.src_group_pitch(); }

// Copy i of thread `tid`, from the tap's source pixels.
JAXSEG_HD ChunkCopy GatherCopyA(const GatherPlan& p, const GatherSources& sources, int64_t group_base,
                                const TapCursor& c, int elem_bytes, int tid, int i) {
  const SmemTile tile = GatherTileA();
  const Coord s = CopySlot(tile, tid, i);
  const int32_t channel = c.channel + s.col * (16 / elem_bytes);
  const int32_t pixel = sources.pixel[i];
  return ChunkCopy{tile.Offset(s.row, s.col),
                   pixel >= 0 && channel < p.c_k ? group_base + static_cast<int64_t>(pixel) * p.c_k + channel : -1};
}

// weight_grad: A is x, MN-contiguous (rows are pixels, chunks Ci); B is dy (rows pixels, chunks Co).
JAXSEG_HD SmemTile WeightGradTileA(int elem_bytes) { return MNContiguous(elem_bytes, kTileM); }

// The pixel table: the x and dy pixels of the rows of k-step `step` live in slot StageSlot(step), entry = row.
// Threads tid < rows each fill one entry (the divisions by the tap's extents happen once per pixel, not once per
// copy); the copies of the step read them after a barrier.
JAXSEG_HD int PixelTableRows(int elem_bytes) { return kRowBytes / elem_bytes; }
JAXSEG_HD int PixelTableIndex(int step, int row, int elem_bytes) {
  return StageSlot(step) * PixelTableRows(elem_bytes) + row;
}
JAXSEG_HD PixelPair PixelTableEntry(const WeightGradPlan& p, const WeightGradTile& t, int elem_bytes, int step,
                                    int row) {
  return p.Pixels(t, t.begin + step * PixelTableRows(elem_bytes) + row);
}

JAXSEG_HD ChunkCopy WeightGradCopyA(const WeightGradPlan& p, const WeightGradTile& t, const PixelPair* table, int step,
                                    int elem_bytes, int tid, int i) {
  const SmemTile tile = WeightGradTileA(elem_bytes);
  const Coord s = CopySlot(tile, tid, i);
  const PixelPair px = table[PixelTableIndex(step, s.row, elem_bytes)];
  const int32_t ci = t.tile_m * kTileM + s.col * (16 / elem_bytes);
  return ChunkCopy{tile.Offset(s.row, s.col), px.x >= 0 && ci < p.c_m ? px.x * p.c_m + ci : -1};
}

JAXSEG_HD int32_t WeightGradSteps(const WeightGradTile& t, int elem_bytes) {
  return static_cast<int32_t>(CeilDivHD(t.end - t.begin, kRowBytes / elem_bytes));
}

// Fragment loads: the byte offset into a stage's operand tile of the row each lane hands to ldmatrix.x4 (16 bytes
// at that offset form one row of one of the four 8 x 8 matrices), or of the element a 32-bit load reads.
// `ks` is the mma k-step within the stage (0, 1).

// A, K-contiguous, m16 tile `mi`: matrices (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15),
// (rows 8-15, k 8-15) give registers 0-3 (in 16-byte units of K: the same for TF32's 4-element halves).
JAXSEG_HD int32_t LdsmA(const SmemTile& tile, int warp, int lane, int ks, int mi) {
  const int row = WarpRow(warp) + 16 * mi + (lane & 7) + 8 * ((lane >> 3) & 1);
  return tile.Offset(row, 2 * ks + (lane >> 4));
}

// A, MN-contiguous 16-bit (rows are k), with .trans: matrices (k 0-7, m 0-7), (k 0-7, m 8-15), (k 8-15, m 0-7),
// (k 8-15, m 8-15) give registers 0-3.
JAXSEG_HD int32_t LdsmATrans(const SmemTile& tile, int warp, int lane, int ks, int mi) {
  const int matrix = lane >> 3;
  const int k = 16 * ks + (lane & 7) + 8 * (matrix >> 1);
  const int m = WarpRow(warp) + 16 * mi + 8 * (matrix & 1);
  return tile.Offset(k, m / 8);
}

// TF32 A register `reg` of tile mi from an MN-contiguous tile (rows are k): one float.
JAXSEG_HD int32_t ScalarATf32(const SmemTile& tile, int warp, int lane, int ks, int mi, int reg) {
  const Coord f = MmaATf32(lane, reg);
  const int m = WarpRow(warp) + 16 * mi + f.row;
  const int k = 8 * ks + f.col;
  return tile.Offset(k, m / 4) + 4 * (m % 4);
}

// ---------------------------------------------------------------------------------------------------------------
// The B side, the epilogues and the shared-memory budget, for a tile of N columns.

template <int N>
struct Cta {
  static_assert(N == 64 || N == 128, "the tile widths the kernels are built for");
  static constexpr int kTileN = N;
  static constexpr int kWarpN = N / 2;
  static constexpr int kMmaTilesN = kWarpN / 8;  // n8 tiles per warp
  static constexpr int kTileBytesB = N * kRowBytes;
  static constexpr int kCopiesB = kTileBytesB / 16 / kThreads;
  static constexpr int kStageBytes = kTileBytesA + kTileBytesB;  // A at 0, B at kTileBytesA
  static constexpr int kStagePitch = N + 8;  // floats per row of the epilogue's staging tile
  static constexpr int kStagingBytes = kTileM * kStagePitch * 4;
  static constexpr int kPipelineBytes = kStages * kStageBytes;
  static constexpr int kMainBytes = kPipelineBytes > kStagingBytes ? kPipelineBytes : kStagingBytes;
  // Dynamic shared memory of the gather: the pipeline (the staging tile reuses it), then the row table.
  static constexpr int kGatherSmemBytes = kMainBytes + kTileM * static_cast<int>(sizeof(RowCoord));
  // ... of the weight gradient: the pipeline, then the pixel table; the staging tile reuses both.
  static constexpr int kPixelTableBytes = kStages * 32 * static_cast<int>(sizeof(PixelPair));
  static constexpr int kWeightGradSmemBytes =
      kMainBytes > kPipelineBytes + kPixelTableBytes ? kMainBytes : kPipelineBytes + kPixelTableBytes;

  // The warp's columns: warps 0 and 1 left, 2 and 3 right.
  JAXSEG_HD static int WarpCol(int warp) { return (warp >> 1) * kWarpN; }

  // The result-tile element accumulator register `reg` of mma tile (mi, ni) holds.
  JAXSEG_HD static Coord Accumulator(int warp, int lane, int mi, int ni, int reg) {
    const Coord c = MmaC(lane, reg);
    return Coord{WarpRow(warp) + 16 * mi + c.row, WarpCol(warp) + 8 * ni + c.col};
  }

  // forward and input_grad: B is the kernel, K-contiguous where its stored layout has the contracted channels
  // innermost, MN-contiguous otherwise.
  JAXSEG_HD static SmemTile GatherTileB(const GatherPlan& p, int elem_bytes) {
    return p.b_k_contiguous() ? KContiguous(N) : MNContiguous(elem_bytes, N);
  }

  JAXSEG_HD static ChunkCopy GatherCopyB(const GatherPlan& p, const GatherTile& t, const TapCursor& c,
                                         int64_t weight_base, int elem_bytes, int tid, int i) {
    const SmemTile tile = GatherTileB(p, elem_bytes);
    const Coord s = CopySlot(tile, tid, i);
    const int v = 16 / elem_bytes;
    int32_t channel, col;
    if (p.b_k_contiguous()) {
      channel = c.channel + s.col * v;
      col = t.tile_n * N + s.row;
    } else {
      channel = c.channel + s.row;
      col = t.tile_n * N + s.col * v;
    }
    const bool inside = channel < p.c_k && col < p.c_n;
    return ChunkCopy{tile.Offset(s.row, s.col),
                     inside ? weight_base + channel * p.b_stride_k + col * p.b_stride_n : -1};
  }

  // weight_grad: B is dy, MN-contiguous; its copies read the pixel table of their own rows.
  JAXSEG_HD static SmemTile WeightGradTileB(int elem_bytes) { return MNContiguous(elem_bytes, N); }

  JAXSEG_HD static ChunkCopy WeightGradCopyB(const WeightGradPlan& p, const WeightGradTile& t, const PixelPair* table,
                                             int step, int elem_bytes, int tid, int i) {
    const SmemTile tile = WeightGradTileB(elem_bytes);
    const Coord s = CopySlot(tile, tid, i);
    const PixelPair px = table[PixelTableIndex(step, s.row, elem_bytes)];
    const int32_t co = t.tile_n * N + s.col * (16 / elem_bytes);
    return ChunkCopy{tile.Offset(s.row, s.col), px.dy >= 0 && co < p.c_n ? px.dy * p.c_n + co : -1};
  }

  // B, K-contiguous (rows are n), n8 tiles 2*nj and 2*nj+1: matrices give (tile 2nj: k 0-7, k 8-15),
  // (tile 2nj+1: k 0-7, k 8-15), i.e. registers 0, 1 of each.
  JAXSEG_HD static int32_t LdsmB(const SmemTile& tile, int warp, int lane, int ks, int nj) {
    const int row = WarpCol(warp) + 16 * nj + (lane & 7) + 8 * (lane >> 4);
    return tile.Offset(row, 2 * ks + ((lane >> 3) & 1));
  }

  // B, MN-contiguous 16-bit (rows are k), with .trans: matrices (k 0-7, n 0-7), (k 8-15, n 0-7), (k 0-7, n 8-15),
  // (k 8-15, n 8-15) give registers 0, 1 of tile 2nj and 0, 1 of tile 2nj+1.
  JAXSEG_HD static int32_t LdsmBTrans(const SmemTile& tile, int warp, int lane, int ks, int nj) {
    const int matrix = lane >> 3;
    const int k = 16 * ks + (lane & 7) + 8 * (matrix & 1);
    const int n = WarpCol(warp) + 16 * nj + 8 * (matrix >> 1);
    return tile.Offset(k, n / 8);
  }

  // TF32 B register `reg` of tile ni from an MN-contiguous tile (rows are k): one float.
  JAXSEG_HD static int32_t ScalarBTf32(const SmemTile& tile, int warp, int lane, int ks, int ni, int reg) {
    const Coord f = MmaBTf32(lane, reg);
    const int n = WarpCol(warp) + 8 * ni + f.col;
    const int k = 8 * ks + f.row;
    return tile.Offset(k, n / 4) + 4 * (n % 4);
  }

  // Epilogues: the accumulators are staged as floats (kStagePitch per row), then every thread writes 16-byte
  // chunks, whole rows per warp.
  JAXSEG_HD static int32_t StagingIndex(Coord c) { return c.row * kStagePitch + c.col; }

  JAXSEG_HD static constexpr int OutputCopies(int out_bytes) { return kTileM * (N * out_bytes / 16) / kThreads; }

  // Output copy i of thread `tid`: its tile row and first tile column.
  JAXSEG_HD static Coord OutputSlot(int out_bytes, int tid, int i) {
    const int per_chunk = 16 / out_bytes;
    const int chunks = N / per_chunk;
    const int c = tid + kThreads * i;
    return Coord{c / chunks, (c % chunks) * per_chunk};
  }

  // forward and input_grad: the result element (within the whole result) of tile element (row, col), or -1
  // outside the result.
  JAXSEG_HD static int64_t GatherOutputIndex(const GatherPlan& p, const GatherTile& t, const RowCoord& row, int col) {
    const int64_t pixel = p.DestPixel(t, row);
    const int32_t n = t.tile_n * N + col;
    return pixel >= 0 && n < p.c_n ? pixel * p.c_n + n : -1;
  }

  // weight_grad: the split's partial of tile element (row, col), or -1 outside the kernel.
  JAXSEG_HD static int64_t WeightGradPartialIndex(const WeightGradPlan& p, const WeightGradTile& t, Coord c) {
    const int32_t ci = t.tile_m * kTileM + c.row;
    const int32_t co = t.tile_n * N + c.col;
    return ci < p.c_m && co < p.c_n ? p.PartialIndex(t.split, t.group, t.tap, ci, co) : -1;
  }
};

static_assert(kCopiesA == 4 && Cta<128>::kCopiesB == 4 && Cta<64>::kCopiesB == 2, "copies per thread and stage");

}  // namespace jaxseg::gpu::tiled

#endif  // JAXSEG_CUDA_TILED_CTA_H_
