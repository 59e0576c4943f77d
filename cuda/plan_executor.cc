// The CPU executor of the CUDA kernels' plans (see plan_executor.h). The drivers below follow the kernels of
// cuda/kernels.cu statement for statement where it matters to what is computed: the same tile decomposition, the
// same pipeline order (the copies of step + kStages - 1 are issued before step is computed), the same copies,
// fragment loads and epilogue writes, with the data each emulated instruction moves.
#include "cuda/plan_executor.h"

#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/conv_shape.h"
#include "common/dtypes.h"
#include "common/passes.h"
#include "common/half.h"
#include "cuda/conv_plan.h"
#include "cuda/direct_kernels.h"
#include "cuda/tiled_cta.h"

namespace nb = nanobind;

namespace jaxseg::gpu {
namespace {

namespace num = jaxseg::half;  // the 16-bit floats, rounded to nearest even as the GPU's stores
using num::bf16_t;
using num::f16_t;
using tiled::ChunkCopy;
using tiled::Coord;
using tiled::SmemTile;

[[noreturn]] void Fail(const std::string& what) { throw std::runtime_error("gpu plan executor: " + what); }

int Bytes(DType t) { return t == DType::kF64 ? 8 : t == DType::kF32 ? 4 : 2; }

// One tensor the emulated kernels read or write, with a count of the writes of each element.
struct Tensor {
  const char* name;
  uint8_t* data;
  int64_t elements;
  int elem_bytes;
  std::vector<int32_t> writes;
  bool zeroed = false;  // set to zero before the kernels ran (their writes may then leave elements out)

  void CheckRange(int64_t index, int64_t count, const char* what) const {
    if (index < 0 || index + count > elements)
      Fail(std::string(what) + " of " + name + " at element " + std::to_string(index) + " (+" + std::to_string(count) +
           ") outside its " + std::to_string(elements) + " elements");
  }
  void Wrote(int64_t index, int64_t count) {
    CheckRange(index, count, "write");
    for (int64_t i = 0; i < count; ++i) ++writes[index + i];
  }
  void CheckWrittenOnce() const {
    for (int64_t i = 0; i < elements; ++i)
      if (writes[i] != 1 && !(zeroed && writes[i] == 0))
        Fail(std::string(name) + " element " + std::to_string(i) + " written " + std::to_string(writes[i]) + " times");
  }
};

// ---------------------------------------------------------------------------------------------------------------
// The CUDA-core kernels' element access, checked against the tensors of the call.

thread_local std::vector<Tensor*> g_tensors;

Tensor* Owner(const void* p) {
  for (Tensor* t : g_tensors) {
    const uint8_t* b = static_cast<const uint8_t*>(p);
    if (b >= t->data && b < t->data + t->elements * t->elem_bytes) return t;
  }
  Fail("a load or store outside every tensor of the call");
}

struct HostNumeric {
  template <typename Acc, typename T>
  static Acc Load(const T* p) {
    const Tensor* t = Owner(p);
    if ((reinterpret_cast<const uint8_t*>(p) - t->data) % static_cast<int64_t>(sizeof(T)) != 0)
      Fail("misaligned element load");
    return num::ToAcc<Acc>(*p);
  }
  template <typename Acc>
  static void Store(void* out, int64_t i, Acc v, DType type) {
    Tensor* t = Owner(out);
    t->Wrote(i, 1);
    switch (type) {
      case DType::kF32: static_cast<float*>(out)[i] = static_cast<float>(v); break;
      case DType::kF64: static_cast<double*>(out)[i] = static_cast<double>(v); break;
      case DType::kBF16: static_cast<bf16_t*>(out)[i] = num::FromAcc<bf16_t>(static_cast<float>(v)); break;
      case DType::kF16: static_cast<f16_t*>(out)[i] = num::FromAcc<f16_t>(static_cast<float>(v)); break;
    }
  }
};

// ---------------------------------------------------------------------------------------------------------------
// The tensor-core path's instructions.

enum class Math { kBf16, kF16, kTf32, kTf32x3 };

// cvt.rna.tf32.f32: keep 10 explicit mantissa bits, rounding to nearest with ties away from zero.
uint32_t ToTf32(uint32_t bits) {
  if ((bits & 0x7f800000u) == 0x7f800000u) return bits & 0xffffe000u;  // inf, nan (a nan stays a nan)
  return (bits + 0x1000u) & 0xffffe000u;
}

float AsFloat(uint32_t bits) { return num::BitsToFloat(bits); }
uint32_t AsBits(float f) { return num::FloatToBits(f); }

void SplitTf32(uint32_t* x, uint32_t* small) {
  const uint32_t big = tiled::Tf32SplitBig(*x, ToTf32(*x));
  *small = ToTf32(AsBits(AsFloat(*x) - AsFloat(big)));
  *x = big;
}

float Decode16(uint16_t bits, Math m) { return m == Math::kBf16 ? num::Bf16ToFloat(bits) : num::HalfToFloat(bits); }

// mma.sync for one warp: d[lane] (4 floats) += A (16 x K) * B (K x 8) with A and B assembled from the lanes'
// registers by the PTX fragment layouts (K = 16 for 16-bit operands, 8 for TF32). The products are summed
// exactly (in double, where every product of these operands is exact) and added to d with one rounding.
void Mma(Math m, float (&d)[32][4], const uint32_t (&a)[32][4], const uint32_t (&b)[32][2]) {
  const bool half = m == Math::kBf16 || m == Math::kF16;
  const int k_size = half ? 16 : 8;
  double A[16][16] = {}, B[16][8] = {};
  for (int lane = 0; lane < 32; ++lane) {
    for (int r = 0; r < 4; ++r) {
      if (half) {
        for (int h = 0; h < 2; ++h) {
          const Coord c = tiled::MmaA16(lane, r, h);
          A[c.row][c.col] = Decode16(static_cast<uint16_t>(a[lane][r] >> (16 * h)), m);
        }
      } else {
        const Coord c = tiled::MmaATf32(lane, r);
        A[c.row][c.col] = AsFloat(a[lane][r]);
      }
    }
    for (int r = 0; r < 2; ++r) {
      if (half) {
        for (int h = 0; h < 2; ++h) {
          const Coord c = tiled::MmaB16(lane, r, h);
          B[c.row][c.col] = Decode16(static_cast<uint16_t>(b[lane][r] >> (16 * h)), m);
        }
      } else {
        const Coord c = tiled::MmaBTf32(lane, r);
        B[c.row][c.col] = AsFloat(b[lane][r]);
      }
    }
  }
  for (int lane = 0; lane < 32; ++lane)
    for (int r = 0; r < 4; ++r) {
      const Coord c = tiled::MmaC(lane, r);
      double s = 0;
      for (int k = 0; k < k_size; ++k) s += A[c.row][k] * B[k][c.col];
      d[lane][r] = static_cast<float>(static_cast<double>(d[lane][r]) + s);
    }
}

// A shared-memory operand tile of one stage, with a record of which chunks the stage's copies wrote.
struct SharedTile {
  const char* name;
  SmemTile layout;
  std::vector<uint8_t> bytes;
  std::vector<uint8_t> written;  // per chunk, in the current stage's copies

  SharedTile(const char* n, SmemTile l)
      : name(n), layout(l), bytes(static_cast<size_t>(l.Bytes())), written(static_cast<size_t>(l.Bytes() / 16)) {}
  void BeginStage() { std::fill(written.begin(), written.end(), 0); }
  void CheckStageComplete() const {
    for (size_t c = 0; c < written.size(); ++c)
      if (written[c] != 1)
        Fail(std::string("shared tile ") + name + " chunk " + std::to_string(c) + " copied " +
             std::to_string(written[c]) + " times in one stage");
  }
  void CheckOffset(int32_t offset, int32_t width, const char* what) const {
    if (offset < 0 || offset + width > layout.Bytes() || offset % width != 0)
      Fail(std::string(what) + " at byte " + std::to_string(offset) + " of shared tile " + name);
  }
};

// The kStages slots of one operand.
std::vector<SharedTile> StageTiles(const char* name, SmemTile layout, int stage_bytes_budget) {
  if (layout.Bytes() > stage_bytes_budget) Fail(std::string("shared tile ") + name + " larger than its stage slot");
  return std::vector<SharedTile>(tiled::kStages, SharedTile(name, layout));
}

// cp.async.cg 16 bytes: from element `src` of `t` (or zeros for src < 0) into the tile.
void CopyAsync16(SharedTile& tile, const ChunkCopy& c, const Tensor& t) {
  tile.CheckOffset(c.smem, 16, "copy");
  ++tile.written[c.smem / 16];
  if (c.src < 0) {
    std::memset(tile.bytes.data() + c.smem, 0, 16);
    return;
  }
  const int per = 16 / t.elem_bytes;
  t.CheckRange(c.src, per, "16-byte copy");
  if ((c.src * t.elem_bytes) % 16 != 0) Fail(std::string("misaligned 16-byte copy from ") + t.name);
  std::memcpy(tile.bytes.data() + c.smem, t.data + c.src * t.elem_bytes, 16);
}

// ldmatrix.sync.aligned.m8n8.x4(.trans).shared.b16: lanes 8i..8i+7 give the rows of matrix i; lane l receives,
// in register i, elements (l/4, 2(l%4)) and (l/4, 2(l%4)+1) of matrix i, or with .trans (2(l%4), l/4) and
// (2(l%4)+1, l/4); the first element in the low half.
void LoadMatrix(const SharedTile& tile, const int32_t (&offsets)[32], bool trans, uint32_t (&out)[32][4]) {
  uint16_t m[4][8][8];
  for (int lane = 0; lane < 32; ++lane) {
    tile.CheckOffset(offsets[lane], 16, "ldmatrix row");
    std::memcpy(m[lane / 8][lane % 8], tile.bytes.data() + offsets[lane], 16);
  }
  for (int lane = 0; lane < 32; ++lane)
    for (int i = 0; i < 4; ++i) {
      const int r = lane / 4, c = 2 * (lane % 4);
      const uint16_t lo = trans ? m[i][c][r] : m[i][r][c];
      const uint16_t hi = trans ? m[i][c + 1][r] : m[i][r][c + 1];
      out[lane][i] = static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
    }
}

uint32_t Load32(const SharedTile& tile, int32_t offset) {
  tile.CheckOffset(offset, 4, "32-bit shared load");
  uint32_t v;
  std::memcpy(&v, tile.bytes.data() + offset, 4);
  return v;
}

// One warp's accumulators, per lane: [mi][ni][lane][reg].
template <int N>
using WarpAccumulators = float[tiled::kMmaTilesM][tiled::Cta<N>::kMmaTilesN][32][4];

// ComputeStage of cuda/kernels.cu for one warp.
template <int N>
void ComputeStage(Math math, bool a_k_contiguous, bool b_k_contiguous, const SharedTile& ta, const SharedTile& tb,
                  WarpAccumulators<N>& acc, int warp) {
  using Cta = tiled::Cta<N>;
  const bool half = math == Math::kBf16 || math == Math::kF16;
  const bool split = math == Math::kTf32x3;
  for (int ks = 0; ks < tiled::kSubSteps; ++ks) {
    uint32_t a[tiled::kMmaTilesM][32][4], a_small[tiled::kMmaTilesM][32][4];
    for (int mi = 0; mi < tiled::kMmaTilesM; ++mi) {
      if (a_k_contiguous || half) {
        int32_t offsets[32];
        for (int lane = 0; lane < 32; ++lane)
          offsets[lane] = a_k_contiguous ? tiled::LdsmA(ta.layout, warp, lane, ks, mi)
                                         : tiled::LdsmATrans(ta.layout, warp, lane, ks, mi);
        LoadMatrix(ta, offsets, !a_k_contiguous, a[mi]);
      } else {
        for (int lane = 0; lane < 32; ++lane)
          for (int r = 0; r < 4; ++r) a[mi][lane][r] = Load32(ta, tiled::ScalarATf32(ta.layout, warp, lane, ks, mi, r));
      }
      for (int lane = 0; lane < 32; ++lane)
        for (int r = 0; r < 4; ++r) {
          if (split) {
            SplitTf32(&a[mi][lane][r], &a_small[mi][lane][r]);
          } else if (!half) {
            a[mi][lane][r] = ToTf32(a[mi][lane][r]);
          }
        }
    }
    for (int nj = 0; nj < Cta::kMmaTilesN / 2; ++nj) {
      uint32_t b[2][32][2];
      if (b_k_contiguous || half) {
        int32_t offsets[32];
        for (int lane = 0; lane < 32; ++lane)
          offsets[lane] = b_k_contiguous ? Cta::LdsmB(tb.layout, warp, lane, ks, nj)
                                         : Cta::LdsmBTrans(tb.layout, warp, lane, ks, nj);
        uint32_t r[32][4];
        LoadMatrix(tb, offsets, !b_k_contiguous, r);
        for (int lane = 0; lane < 32; ++lane) {
          b[0][lane][0] = r[lane][0];
          b[0][lane][1] = r[lane][1];
          b[1][lane][0] = r[lane][2];
          b[1][lane][1] = r[lane][3];
        }
      } else {
        for (int h = 0; h < 2; ++h)
          for (int lane = 0; lane < 32; ++lane)
            for (int r = 0; r < 2; ++r)
              b[h][lane][r] = Load32(tb, Cta::ScalarBTf32(tb.layout, warp, lane, ks, 2 * nj + h, r));
      }
      for (int h = 0; h < 2; ++h) {
        uint32_t b_small[32][2];
        for (int lane = 0; lane < 32; ++lane)
          for (int r = 0; r < 2; ++r) {
            if (split) {
              SplitTf32(&b[h][lane][r], &b_small[lane][r]);
            } else if (!half) {
              b[h][lane][r] = ToTf32(b[h][lane][r]);
            }
          }
        for (int mi = 0; mi < tiled::kMmaTilesM; ++mi) {
          float (&d)[32][4] = acc[mi][2 * nj + h];
          if (split) {
            Mma(math, d, a_small[mi], b[h]);
            Mma(math, d, a[mi], b_small);
          }
          Mma(math, d, a[mi], b[h]);
        }
      }
    }
  }
}

template <int N>
std::vector<WarpAccumulators<N>> ZeroAccumulators() {
  std::vector<WarpAccumulators<N>> acc(tiled::kWarps);
  for (auto& w : acc) std::memset(&w, 0, sizeof(w));
  return acc;
}

// The epilogue's staging tile, filled from the warps' accumulators.
template <int N>
std::vector<float> Stage(const std::vector<WarpAccumulators<N>>& acc) {
  using Cta = tiled::Cta<N>;
  std::vector<float> staging(Cta::kStagingBytes / 4);
  for (int warp = 0; warp < tiled::kWarps; ++warp)
    for (int mi = 0; mi < tiled::kMmaTilesM; ++mi)
      for (int ni = 0; ni < Cta::kMmaTilesN; ++ni)
        for (int lane = 0; lane < 32; ++lane)
          for (int r = 0; r < 4; ++r)
            staging.at(Cta::StagingIndex(Cta::Accumulator(warp, lane, mi, ni, r))) = acc[warp][mi][ni][lane][r];
  return staging;
}

// One 16-byte store of `count` staged floats as `type` at element `dst` of `out`.
void StoreChunk(Tensor& out, DType type, int64_t dst, const float* v, int count) {
  if ((dst * out.elem_bytes) % 16 != 0) Fail("misaligned 16-byte result store");
  out.Wrote(dst, count);
  for (int e = 0; e < count; ++e) {
    uint8_t* p = out.data + (dst + e) * out.elem_bytes;
    switch (type) {
      case DType::kF32: std::memcpy(p, &v[e], 4); break;
      case DType::kBF16: {
        const uint16_t b = num::FloatToBf16(v[e]);
        std::memcpy(p, &b, 2);
        break;
      }
      case DType::kF16: {
        const uint16_t h = num::FloatToHalf(v[e]);
        std::memcpy(p, &h, 2);
        break;
      }
      case DType::kF64: Fail("the tensor cores do not write float64");
    }
  }
}

// TiledGatherKernel, every CTA of the launch.
template <int N>
void TiledGather(const GatherPlan& plan, Math math, const Tensor& a, const Tensor& b, Tensor& out, DType out_type) {
  using Cta = tiled::Cta<N>;
  const int eb = a.elem_bytes;
  std::vector<SharedTile> stage_a = StageTiles("A", tiled::GatherTileA(), tiled::kTileBytesA);
  std::vector<SharedTile> stage_b = StageTiles("B", Cta::GatherTileB(plan, eb), Cta::kTileBytesB);
  for (int64_t block = 0; block < plan.blocks; ++block) {
    const GatherTile tile = plan.TileAt(block);
    if (!tile.valid) continue;
    RowCoord rows[tiled::kTileM];
    for (int tid = 0; tid < tiled::kThreads; ++tid) rows[tid] = tiled::GatherRow(plan, tile, tid);
    const int32_t steps = plan.KSteps(tile);
    const int64_t group_base = tiled::GatherGroupBase(plan, tile);
    TapCursor next_load = plan.FirstStep();
    std::vector<tiled::GatherSources> sources(tiled::kThreads);  // each thread's, kept across a tap's k-steps
    for (auto& s : sources) std::fill(std::begin(s.pixel), std::end(s.pixel), INT32_MIN);  // never used unset
    auto load_stage = [&](int slot) {
      stage_a[slot].BeginStage();
      stage_b[slot].BeginStage();
      const int64_t weight_base = plan.WeightBase(tile, next_load);
      for (int tid = 0; tid < tiled::kThreads; ++tid) {
        if (next_load.channel == 0) sources[tid] = tiled::GatherSourcePixels(plan, tile, rows, next_load, tid);
        for (int i = 0; i < tiled::kCopiesA; ++i) {
          if (sources[tid].pixel[i] == INT32_MIN) Fail("source pixels read before they were computed");
          CopyAsync16(stage_a[slot], tiled::GatherCopyA(plan, sources[tid], group_base, next_load, eb, tid, i), a);
        }
        for (int i = 0; i < Cta::kCopiesB; ++i)
          CopyAsync16(stage_b[slot], Cta::GatherCopyB(plan, tile, next_load, weight_base, eb, tid, i), b);
      }
      stage_a[slot].CheckStageComplete();
      stage_b[slot].CheckStageComplete();
      plan.Advance(tile, &next_load);
    };
    std::vector<WarpAccumulators<N>> acc = ZeroAccumulators<N>();
    for (int s = 0; s < tiled::kStages - 1; ++s)
      if (s < steps) load_stage(s);
    for (int32_t step = 0; step < steps; ++step) {
      const int32_t next = tiled::NextIssued(step);
      if (next < steps) load_stage(tiled::StageSlot(next));
      const int slot = tiled::StageSlot(step);
      for (int warp = 0; warp < tiled::kWarps; ++warp)
        ComputeStage<N>(math, true, plan.b_k_contiguous(), stage_a[slot], stage_b[slot], acc[warp], warp);
    }
    const std::vector<float> staging = Stage<N>(acc);
    const int out_bytes = Bytes(out_type);
    for (int tid = 0; tid < tiled::kThreads; ++tid)
      for (int i = 0; i < Cta::OutputCopies(out_bytes); ++i) {
        const Coord s = Cta::OutputSlot(out_bytes, tid, i);
        const int64_t dst = Cta::GatherOutputIndex(plan, tile, rows[s.row], s.col);
        if (dst >= 0) StoreChunk(out, out_type, dst, &staging.at(Cta::StagingIndex(s)), 16 / out_bytes);
      }
  }
}

// TiledWeightGradKernel, every CTA of the launch: float partials.
template <int N>
void TiledWeightGrad(const WeightGradPlan& plan, Math math, const Tensor& x, const Tensor& dy, Tensor& partials) {
  using Cta = tiled::Cta<N>;
  const int eb = x.elem_bytes;
  std::vector<SharedTile> stage_a = StageTiles("x", tiled::WeightGradTileA(eb), tiled::kTileBytesA);
  std::vector<SharedTile> stage_b = StageTiles("dy", Cta::WeightGradTileB(eb), Cta::kTileBytesB);
  const int table_rows = tiled::PixelTableRows(eb);
  std::vector<PixelPair> table(tiled::kStages * table_rows);
  std::vector<int32_t> table_step(table.size(), -1);  // which step each entry holds, to catch a stale read
  for (int64_t block = 0; block < plan.blocks; ++block) {
    const WeightGradTile tile = plan.TileAt(block);
    const int32_t steps = tiled::WeightGradSteps(tile, eb);
    std::fill(table_step.begin(), table_step.end(), -1);
    auto fill_table = [&](int32_t step) {
      for (int tid = 0; tid < table_rows; ++tid)
        if (step < steps) {
          const int index = tiled::PixelTableIndex(step, tid, eb);
          table.at(index) = tiled::PixelTableEntry(plan, tile, eb, step, tid);
          table_step.at(index) = step;
        }
    };
    auto load_stage = [&](int32_t step) {
      for (int row = 0; row < table_rows; ++row)
        if (table_step.at(tiled::PixelTableIndex(step, row, eb)) != step)
          Fail("pixel table read before it was filled for its step");
      const int slot = tiled::StageSlot(step);
      stage_a[slot].BeginStage();
      stage_b[slot].BeginStage();
      for (int tid = 0; tid < tiled::kThreads; ++tid) {
        for (int i = 0; i < tiled::kCopiesA; ++i)
          CopyAsync16(stage_a[slot], tiled::WeightGradCopyA(plan, tile, table.data(), step, eb, tid, i), x);
        for (int i = 0; i < Cta::kCopiesB; ++i)
          CopyAsync16(stage_b[slot], Cta::WeightGradCopyB(plan, tile, table.data(), step, eb, tid, i), dy);
      }
      stage_a[slot].CheckStageComplete();
      stage_b[slot].CheckStageComplete();
    };
    std::vector<WarpAccumulators<N>> acc = ZeroAccumulators<N>();
    for (int s = 0; s < tiled::kStages; ++s) fill_table(s);
    for (int s = 0; s < tiled::kStages - 1; ++s)
      if (s < steps) load_stage(s);
    for (int32_t step = 0; step < steps; ++step) {
      const int32_t next = tiled::NextIssued(step);
      if (next < steps) load_stage(next);
      fill_table(step + tiled::kStages);
      const int slot = tiled::StageSlot(step);
      for (int warp = 0; warp < tiled::kWarps; ++warp)
        ComputeStage<N>(math, false, false, stage_a[slot], stage_b[slot], acc[warp], warp);
    }
    const std::vector<float> staging = Stage<N>(acc);
    for (int tid = 0; tid < tiled::kThreads; ++tid)
      for (int i = 0; i < Cta::OutputCopies(4); ++i) {
        const Coord s = Cta::OutputSlot(4, tid, i);
        const int64_t dst = Cta::WeightGradPartialIndex(plan, tile, s);
        if (dst >= 0) StoreChunk(partials, DType::kF32, dst, &staging.at(Cta::StagingIndex(s)), 4);
      }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The CUDA-core kernels, per emulated thread.

template <typename T, typename Acc>
void DirectGather(const GatherPlan& plan, const Tensor& a, const Tensor& b, Tensor& out, DType out_type) {
  const T* ap = reinterpret_cast<const T*>(a.data);
  const T* bp = reinterpret_cast<const T*>(b.data);
  for (int64_t block = 0; block < plan.blocks; ++block) {
    if (plan.path == Path::kDirectOuter) {
      for (int warp = 0; warp < kDirectWarps; ++warp)
        for (int lane = 0; lane < 32; ++lane)
          direct::GatherOuter<HostNumeric, T, Acc>(plan, block, warp, lane, ap, bp, out.data, out_type);
      continue;
    }
    const GatherTile tile = plan.TileAt(block);
    if (!tile.valid) continue;
    for (int warp = 0; warp < kDirectWarps; ++warp) {
      Acc acc[32][direct::kChannels];
      for (int lane = 0; lane < 32; ++lane)
        direct::GatherDotPartial<HostNumeric, T, Acc>(plan, tile, warp, lane, ap, bp, acc[lane]);
      // __shfl_xor_sync butterfly: every lane adds the value of lane ^ offset, all at once.
      for (int offset = 16; offset > 0; offset >>= 1) {
        Acc next[32][direct::kChannels];
        for (int lane = 0; lane < 32; ++lane)
          for (int j = 0; j < direct::kChannels; ++j) next[lane][j] = acc[lane][j] + acc[lane ^ offset][j];
        std::memcpy(acc, next, sizeof(acc));
      }
      direct::GatherDotStore<HostNumeric, Acc>(plan, tile, warp, acc[0], out.data, out_type);
    }
  }
}

template <typename T, typename Acc>
void DirectWeightGrad(const WeightGradPlan& plan, const Tensor& x, const Tensor& dy, const Tensor& partials) {
  const int64_t threads = plan.blocks * kDirectThreads;
  for (int64_t index = 0; index < threads; ++index) {
    if (index >= direct::WeightGradThreads(plan)) break;
    direct::WeightGrad<HostNumeric, T, Acc>(plan, index, reinterpret_cast<const T*>(x.data),
                                            reinterpret_cast<const T*>(dy.data), reinterpret_cast<Acc*>(partials.data));
  }
}

template <typename Acc>
void Reduce(const WeightGradPlan& plan, const Tensor& partials, Tensor& out, DType out_type) {
  const Acc* p = reinterpret_cast<const Acc*>(partials.data);
  for (int64_t index = 0; index < plan.partial_elements(); ++index)
    direct::ReduceSplits<HostNumeric, Acc>(plan, index, p, out.data, out_type);
}

// ---------------------------------------------------------------------------------------------------------------

Math MathFor(DType operand, Precision precision) {
  switch (operand) {
    case DType::kBF16: return Math::kBf16;
    case DType::kF16: return Math::kF16;
    default: return precision == Precision::kHighest ? Math::kTf32x3 : Math::kTf32;
  }
}

const char* PathName(Path p) {
  return p == Path::kTiled ? "tiled" : p == Path::kDirectDot ? "direct_dot" : "direct_outer";
}

Path PathByName(const std::string& name) {
  if (name == "tiled") return Path::kTiled;
  if (name == "direct_dot") return Path::kDirectDot;
  if (name == "direct_outer") return Path::kDirectOuter;
  throw nb::value_error(("unknown path " + name).c_str());
}

DType DTypeByName(const std::string& name) {
  for (DType t : {DType::kF32, DType::kF64, DType::kBF16, DType::kF16})
    if (name == DTypeName(t)) return t;
  throw nb::value_error(("unknown dtype " + name).c_str());
}

Pass PassByName(const std::string& name) {
  for (const PassInfo& p : kPasses)
    if (name == p.name) return p.pass;
  throw nb::value_error(("unknown pass " + name).c_str());
}

Dims AsDims(const std::vector<int64_t>& v) { return Dims{v.data(), v.size()}; }

ConvShape ReadShape(Pass pass, const std::vector<int64_t>& first, const std::vector<int64_t>& second,
                    const std::vector<int64_t>& result, const std::vector<int64_t>& strides,
                    const std::vector<int64_t>& dilation, const std::vector<int64_t>& pad_lo,
                    const std::vector<int64_t>& pad_hi, bool transpose_kernel) {
  ConvShape shape;
  const std::string err = ReadConvShape(pass, AsDims(first), AsDims(second), AsDims(result), AsDims(strides),
                                        AsDims(dilation), AsDims(pad_lo), AsDims(pad_hi), transpose_kernel, &shape);
  if (!err.empty()) throw nb::value_error(err.c_str());
  return shape;
}

int64_t Product(const std::vector<int64_t>& v) {
  int64_t n = 1;
  for (int64_t d : v) n *= d;
  return n;
}

// A call as the CUDA handler would plan it (or on a forced path).
struct PlannedCall {
  Pass pass;
  ConvShape shape;
  DType operand, result;
  Precision precision;
  Path path;
  GatherPlan gather{};
  WeightGradPlan weight_grad{};
  int64_t partial_capacity = 0;  // weight_grad: the bytes of the partials buffer (the CUDA call's second result)
};

PlannedCall Plan(const std::string& pass_name, const std::vector<int64_t>& first_shape,
                 const std::vector<int64_t>& second_shape, const std::vector<int64_t>& result_shape,
                 const std::vector<int64_t>& strides, const std::vector<int64_t>& dilation,
                 const std::vector<int64_t>& pad_lo, const std::vector<int64_t>& pad_hi, bool transpose_kernel,
                 const std::string& operand_name, const std::string& result_name, int64_t precision,
                 const std::optional<std::string>& path_name, int32_t multiprocessors,
                 std::optional<int64_t> partial_bytes) {
  PlannedCall c;
  c.pass = PassByName(pass_name);
  c.operand = DTypeByName(operand_name);
  c.result = DTypeByName(result_name);
  if (!WritesResult(c.operand, c.result)) throw nb::value_error("no such result dtype for these operands");
  c.precision = precision == 1 ? Precision::kHighest : Precision::kDefault;
  c.shape =
      ReadShape(c.pass, first_shape, second_shape, result_shape, strides, dilation, pad_lo, pad_hi, transpose_kernel);
  if (const std::string why = CanImplement(c.shape); !why.empty()) throw nb::value_error(why.c_str());
  const bool forward = c.pass == Pass::kForward;
  const int64_t c_k = c.pass == Pass::kWeightGrad || forward ? c.shape.in_ch : c.shape.out_ch;
  const int64_t c_n = c.pass == Pass::kWeightGrad || forward ? c.shape.out_ch : c.shape.in_ch;
  c.path = path_name ? PathByName(*path_name) : ChoosePath(c.pass, c.operand, c_k, c_n);
  if (c.path == Path::kTiled &&
      (c.operand == DType::kF64 || c_k % VectorElements(c.operand) || c_n % VectorElements(c.operand)))
    throw nb::value_error("the tensor-core path needs 16-bit or float32 operands and whole 16-byte channel vectors");
  DeviceInfo device;
  device.multiprocessors = multiprocessors;
  if (c.pass == Pass::kWeightGrad) {
    // As the lowering sizes the partials and the handler plans within them (cuda/kernels.cu LaunchWeightGrad);
    // `partial_bytes` stands for a buffer lowered for another device.
    c.partial_capacity = partial_bytes ? *partial_bytes : WeightGradPartialBytes(c.shape, c.operand, device);
    c.weight_grad = MakeWeightGradPlan(c.shape, c.operand, c.path, device, c.partial_capacity);
    if (PartialBytes(c.weight_grad, c.operand) > c.partial_capacity)
      throw nb::value_error("the partials buffer is smaller than one split");
  } else {
    c.gather = MakeGatherPlan(c.shape, c.operand, c.path, device);
  }
  return c;
}

int64_t Blocks(const PlannedCall& c) { return c.pass == Pass::kWeightGrad ? c.weight_grad.blocks : c.gather.blocks; }

nb::dict Report(const PlannedCall& c) {
  nb::dict report;
  report["path"] = PathName(c.path);
  report["math"] = c.path != Path::kTiled               ? "fma"
                   : c.operand != DType::kF32           ? "mma16"
                   : c.precision == Precision::kHighest ? "3xtf32"
                                                        : "tf32";
  report["blocks"] = Blocks(c);
  report["tile_n"] = c.pass == Pass::kWeightGrad ? c.weight_grad.tile_n : c.gather.tile_n;
  if (c.pass == Pass::kWeightGrad) {
    report["splits"] = c.weight_grad.splits;
    report["scratch_bytes"] = PartialBytes(c.weight_grad, c.operand);
    report["partial_capacity"] = c.partial_capacity;
  } else {
    report["problems"] = c.gather.problems;
    report["zero_fill"] = c.gather.zero_fill;
    report["b_k_contiguous"] = c.gather.b_k_contiguous();
  }
  return report;
}

// Clears the executor's list of tensors however the run ends.
struct TensorScope {
  explicit TensorScope(std::vector<Tensor*> tensors) { g_tensors = std::move(tensors); }
  ~TensorScope() { g_tensors.clear(); }
};

// Runs pass `pass_name` on the operands' raw bytes as the CUDA handler would plan it (or on a forced path) and
// returns the result's bytes and the plan's description.
nb::tuple Execute(const std::string& pass_name, nb::bytes first, nb::bytes second, std::vector<int64_t> first_shape,
                  std::vector<int64_t> second_shape, std::vector<int64_t> result_shape, std::vector<int64_t> strides,
                  std::vector<int64_t> dilation, std::vector<int64_t> pad_lo, std::vector<int64_t> pad_hi,
                  bool transpose_kernel, const std::string& operand_name, const std::string& result_name,
                  int64_t precision, std::optional<std::string> path_name, int32_t multiprocessors,
                  std::optional<int64_t> partial_bytes) {
  const PlannedCall c =
      Plan(pass_name, first_shape, second_shape, result_shape, strides, dilation, pad_lo, pad_hi, transpose_kernel,
           operand_name, result_name, precision, path_name, multiprocessors, partial_bytes);
  if (Blocks(c) > (int64_t{1} << 31) - 1) Fail("grid too large");
  const int eb = Bytes(c.operand);
  if (static_cast<int64_t>(first.size()) != Product(first_shape) * eb ||
      static_cast<int64_t>(second.size()) != Product(second_shape) * eb)
    throw nb::value_error("operand bytes do not match their shapes");
  std::vector<uint8_t> a(static_cast<const uint8_t*>(first.data()),
                         static_cast<const uint8_t*>(first.data()) + first.size());
  std::vector<uint8_t> b(static_cast<const uint8_t*>(second.data()),
                         static_cast<const uint8_t*>(second.data()) + second.size());
  const int64_t out_elements = Product(result_shape);
  // Poisoned: an element no kernel writes shows up (and the write count catches it first).
  std::vector<uint8_t> out(static_cast<size_t>(out_elements * Bytes(c.result)), 0xff);
  Tensor ta{"first operand", a.data(), Product(first_shape), eb, std::vector<int32_t>(Product(first_shape))};
  Tensor tb{"second operand", b.data(), Product(second_shape), eb, std::vector<int32_t>(Product(second_shape))};
  Tensor tr{"result", out.data(), out_elements, Bytes(c.result), std::vector<int32_t>(out_elements)};
  if (c.pass != Pass::kWeightGrad) {
    const TensorScope scope({&ta, &tb, &tr});
    if (c.gather.zero_fill) {  // cudaMemsetAsync
      std::fill(out.begin(), out.end(), 0);
      tr.zeroed = true;
    }
    if (c.path == Path::kTiled) {
      if (c.gather.tile_n == 64) {
        TiledGather<64>(c.gather, MathFor(c.operand, c.precision), ta, tb, tr, c.result);
      } else {
        TiledGather<128>(c.gather, MathFor(c.operand, c.precision), ta, tb, tr, c.result);
      }
    } else {
      switch (c.operand) {
        case DType::kF32: DirectGather<float, float>(c.gather, ta, tb, tr, c.result); break;
        case DType::kF64: DirectGather<double, double>(c.gather, ta, tb, tr, c.result); break;
        case DType::kBF16: DirectGather<bf16_t, float>(c.gather, ta, tb, tr, c.result); break;
        case DType::kF16: DirectGather<f16_t, float>(c.gather, ta, tb, tr, c.result); break;
      }
    }
  } else {
    const WeightGradPlan& plan = c.weight_grad;
    const int acc_bytes = c.operand == DType::kF64 ? 8 : 4;
    const int64_t partial_elements = plan.splits * plan.partial_elements();
    std::vector<uint8_t> partial_bytes(static_cast<size_t>(partial_elements * acc_bytes), 0xff);
    Tensor tp{"partials", partial_bytes.data(), partial_elements, acc_bytes, std::vector<int32_t>(partial_elements)};
    const TensorScope scope({&ta, &tb, &tr, &tp});
    if (c.path == Path::kTiled) {
      if (plan.tile_n == 64) {
        TiledWeightGrad<64>(plan, MathFor(c.operand, c.precision), ta, tb, tp);
      } else {
        TiledWeightGrad<128>(plan, MathFor(c.operand, c.precision), ta, tb, tp);
      }
    } else {
      switch (c.operand) {
        case DType::kF32: DirectWeightGrad<float, float>(plan, ta, tb, tp); break;
        case DType::kF64: DirectWeightGrad<double, double>(plan, ta, tb, tp); break;
        case DType::kBF16: DirectWeightGrad<bf16_t, float>(plan, ta, tb, tp); break;
        case DType::kF16: DirectWeightGrad<f16_t, float>(plan, ta, tb, tp); break;
      }
    }
    tp.CheckWrittenOnce();
    if (acc_bytes == 8) {
      Reduce<double>(plan, tp, tr, c.result);
    } else {
      Reduce<float>(plan, tp, tr, c.result);
    }
  }
  tr.CheckWrittenOnce();
  return nb::make_tuple(nb::bytes(reinterpret_cast<const char*>(out.data()), out.size()), Report(c));
}

nb::dict Describe(const std::string& pass_name, std::vector<int64_t> first_shape, std::vector<int64_t> second_shape,
                  std::vector<int64_t> result_shape, std::vector<int64_t> strides, std::vector<int64_t> dilation,
                  std::vector<int64_t> pad_lo, std::vector<int64_t> pad_hi, bool transpose_kernel,
                  const std::string& operand_name, int64_t precision, int32_t multiprocessors) {
  return Report(Plan(pass_name, first_shape, second_shape, result_shape, strides, dilation, pad_lo, pad_hi,
                     transpose_kernel, operand_name, operand_name, precision, std::nullopt, multiprocessors,
                     std::nullopt));
}

}  // namespace

void RegisterPlanExecutor(nb::module_& m) {
  m.def("gpu_plan_execute", &Execute, nb::arg("pass_name"), nb::arg("first"), nb::arg("second"), nb::arg("first_shape"),
        nb::arg("second_shape"), nb::arg("result_shape"), nb::arg("strides"), nb::arg("dilation"), nb::arg("pad_lo"),
        nb::arg("pad_hi"), nb::arg("transpose_kernel"), nb::arg("operand_dtype"), nb::arg("result_dtype"),
        nb::arg("precision") = 0, nb::arg("path") = nb::none(), nb::arg("multiprocessors") = 132,
        nb::arg("partial_bytes") = nb::none(),
        "Runs one pass as the CUDA kernels' plan would on a GPU (emulated on the CPU, with its index checks); "
        "operands and result as raw bytes of canonical tensors. Returns (result bytes, plan description).");
  m.def("gpu_plan_describe", &Describe, nb::arg("pass_name"), nb::arg("first_shape"), nb::arg("second_shape"),
        nb::arg("result_shape"), nb::arg("strides"), nb::arg("dilation"), nb::arg("pad_lo"), nb::arg("pad_hi"),
        nb::arg("transpose_kernel"), nb::arg("operand_dtype"), nb::arg("precision") = 0,
        nb::arg("multiprocessors") = 132, "The plan the CUDA handler makes for this call (path, grid, splits).");
  m.def(
      "gpu_can_implement",
      [](const std::string& pass_name, std::vector<int64_t> first, std::vector<int64_t> second,
         std::vector<int64_t> result, std::vector<int64_t> strides, std::vector<int64_t> dilation,
         std::vector<int64_t> pad_lo, std::vector<int64_t> pad_hi, bool transpose_kernel) {
        return CanImplementCall(PassByName(pass_name), AsDims(first), AsDims(second), AsDims(result), AsDims(strides),
                                AsDims(dilation), AsDims(pad_lo), AsDims(pad_hi), transpose_kernel);
      },
      nb::arg("pass_name"), nb::arg("first_shape"), nb::arg("second_shape"), nb::arg("result_shape"),
      nb::arg("strides"), nb::arg("dilation"), nb::arg("pad_lo"), nb::arg("pad_hi"), nb::arg("transpose_kernel"),
      "Why the CUDA kernels cannot run this call, or an empty string when they can.");
  m.def(
      "gpu_fast_divmod",
      [](int32_t divisor, std::vector<int32_t> values) {
        if (divisor < 1) throw nb::value_error("divisor must be positive");
        const FastDivmod d = FastDivmod::Make(divisor);
        std::vector<std::tuple<int32_t, int32_t>> out;
        for (int32_t v : values) {
          if (v < 0) throw nb::value_error("dividends must be non-negative");
          int32_t r;
          const int32_t q = d.DivMod(v, &r);
          out.emplace_back(q, r);
        }
        return out;
      },
      nb::arg("divisor"), nb::arg("values"), "The plans' division by an invariant divisor: [(q, r)].");
}

}  // namespace jaxseg::gpu
