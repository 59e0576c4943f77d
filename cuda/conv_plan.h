// The launch plans of the CUDA kernels: everything a launch computes is decided here, on the host, from the shared
// phase geometry (common/phase_geometry.h), and read by the device code and by the CPU executor of the same plan
// (cuda/plan_executor.cc) through the __host__ __device__ methods below. Plain C++17: no CUDA headers, so the CPU
// extension compiles it too.
//
// Two plans cover the three passes:
//
//   GatherPlan       forward and input_grad: a GEMM per *problem* whose rows are result pixels and whose K runs
//                    over the problem's taps times the contracted channels, gathering the activation row of each
//                    tap from the original tensor (no zero-inserted buffer).
//                      forward     one problem per output phase (a residue per axis): rows are the phase's
//                                  outputs o = q*s + r, K the phase's sub-kernel taps x Ci; x is read at q + offset.
//                      input_grad  one problem: rows are input pixels j, K every tap x Co; dy is read at
//                                  (j - offset)*s + residue, the output the tap links j with.
//   WeightGradPlan   weight_grad: per tap a GEMM Ci x Co whose K runs over the pixels the tap links, split into
//                    `splits` ranges whose partial tiles (in the accumulation type) a second kernel sums in split
//                    order: deterministic, without atomics.
//
// Every axis is described separately (phases, taps and extents of one spatial axis), so a plan is a fixed-size
// struct passed by value as a kernel parameter: no device allocation or copy is needed for it.
#ifndef JAXSEG_CUDA_CONV_PLAN_H_
#define JAXSEG_CUDA_CONV_PLAN_H_

#include <algorithm>
#include <cstdint>
#include <string>

#include "common/conv_shape.h"
#include "common/dtypes.h"
#include "common/passes.h"
#include "common/phase_geometry.h"

// Loops over the spatial axes run to kMaxDims, unrolled, and skip the axes past `dims`: a run-time loop bound
// would index the small per-axis arrays (RowCoord::e, TapCursor::digit) with a run-time index, which moves them
// to local memory on the device.
#if defined(__CUDACC__)
#define JAXSEG_HD __host__ __device__ __forceinline__
#define JAXSEG_UNROLL _Pragma("unroll")
#else
#define JAXSEG_HD inline
#define JAXSEG_UNROLL
#endif

namespace jaxseg::gpu {

// Limits of the per-axis tables (the plan is a kernel parameter of fixed size): taps, and the phases they reach,
// per axis. The stride has no table: only phases with taps are listed. Larger layers lower to XLA.
constexpr int kMaxDims = 3;
constexpr int kMaxAxisTaps = 32;      // kernel size per axis
// Row, pixel and tile counts are indexed in 32 bits, with room for a tile past the last row.
constexpr int64_t kMaxIndex = (int64_t{1} << 31) - (int64_t{1} << 20);

JAXSEG_HD uint32_t MulHi(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

// Division by a divisor fixed at plan time, for dividends below 2^31: q = (mulhi(n, m) + n) >> s with
// s = ceil(log2 d) and m = floor(2^32 (2^s - d) / d) + 1 (Granlund and Montgomery, "Division by invariant
// integers using multiplication", 1994). The sum cannot overflow 32 bits because mulhi(n, m) < n < 2^31.
struct FastDivmod {
  int32_t divisor;
  uint32_t multiplier;
  uint32_t shift;

  static FastDivmod Make(int32_t d) {  // d >= 1
    uint32_t s = 0;
    while ((int64_t{1} << s) < d) ++s;
    const uint64_t m =
        ((uint64_t{1} << 32) * ((uint64_t{1} << s) - static_cast<uint64_t>(d))) / static_cast<uint64_t>(d) + 1;
    return FastDivmod{d, static_cast<uint32_t>(m), s};
  }
  JAXSEG_HD int32_t Div(int32_t n) const {
    const uint32_t u = static_cast<uint32_t>(n);
    return static_cast<int32_t>((MulHi(u, multiplier) + u) >> shift);
  }
  // n = q*divisor + r, 0 <= r < divisor.
  JAXSEG_HD int32_t DivMod(int32_t n, int32_t* r) const {
    const int32_t q = Div(n);
    *r = n - q * divisor;
    return q;
  }
};

JAXSEG_HD int64_t CeilDivHD(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---------------------------------------------------------------------------------------------------------------
// Which kernels run a call.

enum class Path : int32_t {
  kTiled,       // tensor cores: mma.sync over shared-memory tiles (16-bit and float32 operands, aligned channels)
  kDirectDot,   // CUDA cores, a warp per result pixel, lanes over the contracted channels (few result channels)
  kDirectOuter, // CUDA cores, a warp per result pixel, lanes over result channels (float64, unaligned channels)
};

// How float32 operands meet the tensor cores (common/dtypes.h Precision decides; other dtypes ignore it).
enum class F32Math : int32_t {
  kTf32,     // operands rounded to TF32 once: XLA's default for float32 convolutions on Ampere and later
  kTf32x3,   // a = big + small in TF32, big*big + big*small + small*big: float32 accuracy on tensor cores
};

// ---------------------------------------------------------------------------------------------------------------
// forward and input_grad

struct GatherAxis {
  int32_t src_size;   // the gathered tensor's extent (x for forward, dy for input_grad)
  int32_t dst_size;   // the result's extent
  int32_t src_mul;    // a row at e reads src = e*src_mul + tap_src_base[tap]
  int32_t dst_mul;    // ... and writes dst = e*dst_mul + dst_base[residue]
  int32_t residues;   // problems along this axis: the phases some tap reaches (forward), 1 (input_grad)
  int32_t extent[kMaxAxisTaps];          // rows of each problem (a phase reached by at least one tap)
  FastDivmod extent_div[kMaxAxisTaps];
  int32_t dst_base[kMaxAxisTaps];        // its residue (forward)
  int32_t tap_begin[kMaxAxisTaps + 1];   // problem r's taps are [tap_begin[r], tap_begin[r+1])
  int32_t tap_src_base[kMaxAxisTaps];
  int32_t tap_stored[kMaxAxisTaps];        // this axis's share of the tap's stored index (ConvShape::StoredTap)
};

// A result row of one problem: its coordinates e (one per axis) and its image (group * batch + n); image < 0
// marks a row past the problem's last.
struct RowCoord {
  int32_t e[kMaxDims];
  int32_t image_in_group;
  int64_t image;
};

// Where a CTA works: its group, problem, tile of rows and tile of result channels.
struct GatherTile {
  int64_t group;
  int32_t problem;
  int32_t tile_m;
  int32_t tile_n;
  int32_t residue[kMaxDims];
  int32_t rows;    // the problem's rows (all images)
  int32_t taps;    // the problem's taps
  bool valid;      // false for a tile past its problem's last row (problems differ in rows by a few at most)
};

// The tap and channel offset a k-step reads: K of a problem runs tap-major, channels in blocks of `k_block`.
struct TapCursor {
  int32_t tap;                 // 0 .. taps of the problem
  int32_t digit[kMaxDims];     // the tap's index within its residue's taps, per axis
  int32_t channel;             // first contracted channel of the block
};

struct GatherPlan {
  Pass pass;
  Path path;
  bool zero_fill;          // forward: some outputs belong to no tap's phase; the result is zeroed before the launch
  int32_t dims;
  int64_t groups;
  int32_t batch;
  int32_t c_k;             // contracted channels per tap: Ci (forward), Co (input_grad)
  int32_t c_n;             // result channels: Co (forward), Ci (input_grad)
  int64_t src_pixels;      // pixels of one image of the gathered tensor
  int64_t dst_pixels;      // ... and of the result
  int64_t tap_pitch;       // elements of one stored tap of the kernel (Ci * Co)
  int64_t kernel_taps;     // taps of the kernel (product of kernel sizes)
  int64_t stored_tap_base; // stored index of the tap whose per-axis shares are all zero
  int64_t b_stride_k;      // kernel elements between consecutive contracted channels
  int64_t b_stride_n;      // ... and consecutive result channels
  int32_t problems;        // product of the axes' residues
  int32_t tiles_m;         // M tiles of the problem with the most rows
  int32_t tiles_n;
  int32_t tile_m, tile_n, k_block;  // the schedule's tile (rows, result channels, channels per k-step)
  int64_t blocks;          // CTAs of the launch
  GatherAxis axis[kMaxDims];

  JAXSEG_HD bool b_k_contiguous() const { return b_stride_k == 1; }
  JAXSEG_HD int64_t src_group_pitch() const { return static_cast<int64_t>(batch) * src_pixels * c_k; }
  JAXSEG_HD int64_t dst_group_pitch() const { return static_cast<int64_t>(batch) * dst_pixels * c_n; }
  JAXSEG_HD int64_t weight_group_pitch() const { return kernel_taps * tap_pitch; }
  JAXSEG_HD int32_t k_blocks_per_tap() const { return static_cast<int32_t>(CeilDivHD(c_k, k_block)); }

  // Blocks are ordered (group, row tile, problem, channel tile), the last fastest: CTAs that run together read
  // neighbouring rows of the gathered tensor for every phase and share them through L2.
  JAXSEG_HD GatherTile TileAt(int64_t block) const {
    GatherTile t;
    t.tile_n = static_cast<int32_t>(block % tiles_n);
    block /= tiles_n;
    t.problem = static_cast<int32_t>(block % problems);
    block /= problems;
    t.tile_m = static_cast<int32_t>(block % tiles_m);
    t.group = block / tiles_m;
    int32_t p = t.problem;
    int64_t rows = batch;
    int64_t taps = 1;
    JAXSEG_UNROLL
    for (int a = kMaxDims - 1; a >= 0; --a) {
      t.residue[a] = 0;
      if (a >= dims) continue;
      const GatherAxis& ax = axis[a];
      const int32_t r = p % ax.residues;
      p /= ax.residues;
      t.residue[a] = r;
      rows *= ax.extent[r];
      taps *= ax.tap_begin[r + 1] - ax.tap_begin[r];
    }
    t.rows = static_cast<int32_t>(rows);
    t.taps = static_cast<int32_t>(taps);
    t.valid = static_cast<int64_t>(t.tile_m) * tile_m < rows;
    return t;
  }

  // K-steps of the tile: every tap times the blocks of contracted channels.
  JAXSEG_HD int32_t KSteps(const GatherTile& t) const { return t.taps * k_blocks_per_tap(); }

  // Row `r` of the tile (0 <= r < tile_m).
  JAXSEG_HD RowCoord Row(const GatherTile& t, int32_t r) const {
    RowCoord c;
    int32_t m = t.tile_m * tile_m + r;
    const bool inside = m < t.rows;
    JAXSEG_UNROLL
    for (int a = kMaxDims - 1; a >= 0; --a) {
      c.e[a] = 0;
      if (a >= dims || !inside) continue;
      m = axis[a].extent_div[t.residue[a]].DivMod(m, &c.e[a]);
    }
    c.image_in_group = inside ? m : -1;
    c.image = inside ? t.group * batch + m : -1;
    return c;
  }

  JAXSEG_HD TapCursor FirstStep() const {
    TapCursor c;
    c.tap = 0;
    c.channel = 0;
    JAXSEG_UNROLL
    for (int a = 0; a < kMaxDims; ++a) c.digit[a] = 0;
    return c;
  }

  // The next k-step: the next block of channels, or the first block of the next tap.
  JAXSEG_HD void Advance(const GatherTile& t, TapCursor* c) const {
    c->channel += k_block;
    if (c->channel < c_k) return;
    c->channel = 0;
    NextTap(t, c);
  }

  // The next tap of the problem, the last axis fastest.
  JAXSEG_HD void NextTap(const GatherTile& t, TapCursor* c) const {
    ++c->tap;
    JAXSEG_UNROLL
    for (int a = kMaxDims - 1; a >= 0; --a) {
      if (a >= dims) continue;
      const GatherAxis& ax = axis[a];
      const int32_t count = ax.tap_begin[t.residue[a] + 1] - ax.tap_begin[t.residue[a]];
      if (++c->digit[a] < count) return;
      c->digit[a] = 0;
    }
  }

  // The gathered pixel (index within the whole tensor, all groups) that row `row` reads for the cursor's tap, or
  // -1 where the tap meets padding or the row is past the last.
  JAXSEG_HD int64_t SourcePixel(const GatherTile& t, const RowCoord& row, const TapCursor& c) const {
    const int32_t pixel = SourcePixelInGroup(t, row, c);
    return pixel < 0 ? -1 : t.group * batch * src_pixels + pixel;
  }

  // The same within the tile's group (fewer than 2^31 pixels per group: CanImplement).
  JAXSEG_HD int32_t SourcePixelInGroup(const GatherTile& t, const RowCoord& row, const TapCursor& c) const {
    if (row.image < 0) return -1;
    int64_t pixel = 0;
    JAXSEG_UNROLL
    for (int a = 0; a < kMaxDims; ++a) {
      if (a >= dims) break;
      const GatherAxis& ax = axis[a];
      const int32_t s = row.e[a] * ax.src_mul + ax.tap_src_base[ax.tap_begin[t.residue[a]] + c.digit[a]];
      if (s < 0 || s >= ax.src_size) return -1;
      pixel = pixel * ax.src_size + s;
    }
    return static_cast<int32_t>(row.image_in_group * src_pixels + pixel);
  }

  // The kernel element (tap of the cursor, contracted channel 0, result channel 0) of the tile's group.
  JAXSEG_HD int64_t WeightBase(const GatherTile& t, const TapCursor& c) const {
    int64_t stored = stored_tap_base;
    JAXSEG_UNROLL
    for (int a = 0; a < kMaxDims; ++a) {
      if (a >= dims) break;
      const GatherAxis& ax = axis[a];
      stored += ax.tap_stored[ax.tap_begin[t.residue[a]] + c.digit[a]];
    }
    return t.group * weight_group_pitch() + stored * tap_pitch;
  }

  // The result pixel (within the whole tensor) of a row, or -1 past the last row.
  JAXSEG_HD int64_t DestPixel(const GatherTile& t, const RowCoord& row) const {
    if (row.image < 0) return -1;
    int64_t pixel = 0;
    JAXSEG_UNROLL
    for (int a = 0; a < kMaxDims; ++a) {
      if (a >= dims) break;
      const GatherAxis& ax = axis[a];
      pixel = pixel * ax.dst_size + row.e[a] * ax.dst_mul + ax.dst_base[t.residue[a]];
    }
    return row.image * dst_pixels + pixel;
  }
};

// ---------------------------------------------------------------------------------------------------------------
// weight_grad

struct WeightGradAxis {
  int32_t x_size, dy_size, stride, kernel;
  int32_t extent[kMaxAxisTaps];           // tap k links the pixels u in [0, extent[k]) ...
  FastDivmod extent_div[kMaxAxisTaps];
  int32_t x_base[kMaxAxisTaps];           // ... input j = u + x_base[k]
  int32_t dy_base[kMaxAxisTaps];          // ... and output o = u*stride + dy_base[k]
  int32_t tap_stored[kMaxAxisTaps];       // this axis's share of the tap's stored index
};

struct WeightGradTile {
  int64_t group;
  int32_t tap;
  int32_t split;
  int32_t tile_m;   // over Ci
  int32_t tile_n;   // over Co
  int32_t digit[kMaxDims];  // the tap's kernel index per axis
  int32_t begin, end;       // the split's pixels of the tap
};

// The x and dy pixels (within the whole tensors) of one pixel the tap links, or -1 past the split's end.
struct PixelPair {
  int64_t x;
  int64_t dy;
};

struct WeightGradPlan {
  Path path;
  int32_t dims;
  int64_t groups;
  int32_t batch;
  int32_t c_m;             // Ci
  int32_t c_n;             // Co
  int64_t x_pixels, dy_pixels;
  int32_t taps;            // of the kernel
  int32_t splits;          // ranges each tap's pixels are split into
  int32_t tiles_m, tiles_n;
  int32_t tile_m, tile_n, k_block;  // channels x channels x pixels per k-step
  int64_t blocks;
  int64_t stored_tap_base;
  int64_t stored_ci_stride, stored_co_stride;  // ConvShape::StoredChannels
  WeightGradAxis axis[kMaxDims];

  JAXSEG_HD int64_t partial_elements() const { return groups * taps * static_cast<int64_t>(c_m) * c_n; }

  // Blocks are ordered (group, tap, split, Ci tile, Co tile), the last fastest: CTAs that run together read the
  // same pixels.
  JAXSEG_HD WeightGradTile TileAt(int64_t block) const {
    WeightGradTile t;
    t.tile_n = static_cast<int32_t>(block % tiles_n);
    block /= tiles_n;
    t.tile_m = static_cast<int32_t>(block % tiles_m);
    block /= tiles_m;
    t.split = static_cast<int32_t>(block % splits);
    block /= splits;
    t.tap = static_cast<int32_t>(block % taps);
    t.group = block / taps;
    int32_t k = t.tap;
    int64_t pixels = batch;
    JAXSEG_UNROLL
    for (int a = kMaxDims - 1; a >= 0; --a) {
      t.digit[a] = 0;
      if (a >= dims) continue;
      t.digit[a] = k % axis[a].kernel;
      k /= axis[a].kernel;
      pixels *= axis[a].extent[t.digit[a]];
    }
    const int64_t chunk = CeilDivHD(CeilDivHD(pixels, splits), k_block) * k_block;
    const int64_t begin = t.split * chunk < pixels ? t.split * chunk : pixels;
    t.begin = static_cast<int32_t>(begin);
    t.end = static_cast<int32_t>(begin + chunk < pixels ? begin + chunk : pixels);
    return t;
  }

  // The pixel pair of the tap's pixel index p (begin <= p < end; p < 2^31).
  JAXSEG_HD PixelPair Pixels(const WeightGradTile& t, int32_t p) const {
    if (p >= t.end) return PixelPair{-1, -1};
    int64_t x = 0, dy = 0;
    int32_t u[kMaxDims] = {0, 0, 0};
    JAXSEG_UNROLL
    for (int a = kMaxDims - 1; a >= 0; --a) {
      if (a >= dims) continue;
      p = axis[a].extent_div[t.digit[a]].DivMod(p, &u[a]);
    }
    JAXSEG_UNROLL
    for (int a = 0; a < kMaxDims; ++a) {
      if (a >= dims) break;
      const WeightGradAxis& ax = axis[a];
      x = x * ax.x_size + u[a] + ax.x_base[t.digit[a]];
      dy = dy * ax.dy_size + u[a] * ax.stride + ax.dy_base[t.digit[a]];
    }
    const int64_t image = t.group * batch + p;
    return PixelPair{image * x_pixels + x, image * dy_pixels + dy};
  }

  // Where the partial sum of (tap, ci, co) of a split goes: float (double for float64) partials laid out
  // (split, group, tap, ci, co).
  JAXSEG_HD int64_t PartialIndex(int32_t split, int64_t group, int32_t tap, int32_t ci, int32_t co) const {
    return (((split * groups + group) * taps + tap) * c_m + ci) * static_cast<int64_t>(c_n) + co;
  }

  // Where (group, canonical tap, ci, co) of the kernel gradient is stored (either orientation).
  JAXSEG_HD int64_t StoredIndex(int64_t group, int32_t tap, int32_t ci, int32_t co) const {
    int64_t stored = stored_tap_base;
    JAXSEG_UNROLL
    for (int a = kMaxDims - 1; a >= 0; --a) {
      if (a >= dims) continue;
      stored += axis[a].tap_stored[tap % axis[a].kernel];
      tap /= axis[a].kernel;
    }
    return (group * taps + stored) * c_m * static_cast<int64_t>(c_n) + ci * stored_ci_stride + co * stored_co_stride;
  }
};

// ---------------------------------------------------------------------------------------------------------------
// Building plans (host only).

// What the host knows about the device when it plans.
struct DeviceInfo {
  int32_t multiprocessors = 132;
  // Tiled weight-gradient CTAs resident per multiprocessor, for the 64- and the 128-column tile: the occupancy
  // API's answer for the kernel launched (cuda/kernels.cu, WeightGradDevice); without a device (the lowering sizing
  // the partials' buffer, the executor), the 2 its launch bounds guarantee.
  int32_t weight_grad_resident[2] = {2, 2};
  int32_t WeightGradResident(int tile_n) const { return weight_grad_resident[tile_n == 64 ? 0 : 1]; }
};

// Splits of the tiled weight gradient's pixels for `base` blocks per split, at most `most`: the count whose
// launch ends soonest in whole waves of `wave` resident CTAs, each block doing 1/splits of the pixels
// (ceil(base * s / wave) / s), preferring fewer splits (less partial traffic) unless more are 3 % faster. Only
// counts up to twice the "four blocks per multiprocessor" count are weighed: beyond, the partials' reduction
// would cost more than the tail saves.
constexpr int64_t WholeWaveSplits(int64_t base, int64_t wave, int64_t fill, int64_t most) {
  const int64_t limit = fill * 2 < most ? fill * 2 : most;
  int64_t best = 1;
  double best_waves = static_cast<double>((base + wave - 1) / wave);
  for (int64_t s = 2; s <= limit; ++s) {
    const double waves = static_cast<double>((base * s + wave - 1) / wave) / static_cast<double>(s);
    if (waves < best_waves * 0.97) {
      best = s;
      best_waves = waves;
    }
  }
  return best;
}
// 100 blocks a split on 132 multiprocessors x 2: "four per multiprocessor" took 6 splits, 600 blocks in 3 waves
// (2.27 of work); 5 splits take 2 waves of 500.
static_assert(WholeWaveSplits(100, 264, 6, 1000) == 5);
static_assert(WholeWaveSplits(528, 264, 1, 1000) == 1);  // two whole waves already
static_assert(WholeWaveSplits(600, 264, 1, 1000) == 2);  // 3 waves for 2.27 of work; split, 5 waves of half the work

// Tensor-core tiles (cuda/tiled_cta.h; the device code instantiates exactly these): 128 rows, 128 or 64 result
// columns, 64 bytes of K per stage (32 16-bit elements, 16 float32 ones).
constexpr int kTiledRows = 128;
constexpr int TiledKBlock(DType t) { return t == DType::kF32 ? 16 : 32; }

// The narrow tile where 64 columns hold every result channel, or where wide tiles would leave multiprocessors
// without a CTA.
constexpr int32_t TiledColumns(int64_t result_channels, int64_t wide_blocks, const DeviceInfo& device) {
  return result_channels <= 64 || wide_blocks < device.multiprocessors ? 64 : 128;
}
// CUDA-core paths: a CTA of 4 warps, each a result row; lanes over 4-channel groups (outer) or over the
// contracted channels (dot).
constexpr int kDirectWarps = 4;
constexpr int kDirectChannels = 4;  // result channels per lane (outer) or per warp (dot)
constexpr int kDirectThreads = 128;

// The elements one 16-byte copy moves: the channel alignment the tensor-core path needs.
constexpr int VectorElements(DType t) { return t == DType::kF64 ? 2 : t == DType::kF32 ? 4 : 8; }

// The scratch bytes the weight gradient's two-stage reduction needs (0 for the other passes).
inline int64_t PartialBytes(const WeightGradPlan& p, DType operand) {
  return p.splits * p.partial_elements() * (operand == DType::kF64 ? 8 : 4);
}

// Checks the limits of the tables and of 32-bit row indexing; an empty string when the kernels can run `shape`.
// The Python lowering asks the same question (through the extension) and lowers to XLA where the answer is no.
inline std::string CanImplement(const ConvShape& shape) {
  if (shape.axes.empty() || shape.axes.size() > static_cast<size_t>(kMaxDims))
    return "1 to " + std::to_string(kMaxDims) + " spatial axes";
  int64_t in_pixels = 1, out_pixels = 1;
  for (const AxisGeometry& g : shape.axes) {
    if (g.kernel_size < 1 || g.kernel_size > kMaxAxisTaps) return "kernel size 1 to " + std::to_string(kMaxAxisTaps);
    if (g.in_size > kMaxIndex || g.out_size > kMaxIndex || g.in_size < 1 || g.out_size < 1)
      return "spatial sizes from 1 to 2^31-1";
    // Every index a row computes for a tap, inside or outside the tensor, stays within 32 bits: e*s + base with
    // |base| <= (|offset| + 1) * s (input_grad) and e + offset (forward).
    for (int64_t k = 0; k < g.kernel_size; ++k) {
      const int64_t off = g.offset_of_tap[k] < 0 ? -g.offset_of_tap[k] : g.offset_of_tap[k];
      if ((std::max(g.in_size, g.out_size) + off + 1) * g.stride > kMaxIndex) return "padding too large";
    }
    in_pixels *= g.in_size;
    out_pixels *= g.out_size;
  }
  if (shape.batch < 1 || shape.in_ch < 1 || shape.out_ch < 1) return "empty operands";
  if (shape.batch * in_pixels > kMaxIndex || shape.batch * out_pixels > kMaxIndex)
    return "at most 2^31-1 pixels per group";
  if (shape.in_ch > kMaxIndex || shape.out_ch > kMaxIndex) return "at most 2^31-1 channels";
  if (shape.groups * shape.KernelSpatial() > kMaxIndex) return "at most 2^31-1 kernel taps in all groups";
  return "";
}

// CanImplement for a call as a handler receives it: the dims of its operands and result and its attributes.
inline std::string CanImplementCall(Pass pass, Dims first, Dims second, Dims result, Dims strides, Dims dilation,
                                    Dims pad_lo, Dims pad_hi, bool transpose_kernel) {
  ConvShape shape;
  const std::string err =
      ReadConvShape(pass, first, second, result, strides, dilation, pad_lo, pad_hi, transpose_kernel, &shape);
  return err.empty() ? CanImplement(shape) : err;
}

// Which path computes (pass, operand dtype) for channels (c_k contracted, c_n result; for weight_grad Ci and Co).
// The tensor cores need whole 16-byte vectors of channels (and buffers aligned to 16 bytes, as XLA's are); few
// result channels with many contracted ones go to the dot-product form, the rest (float64 too) to the
// outer-product form.
inline Path ChoosePath(Pass pass, DType operand, int64_t c_k, int64_t c_n, bool buffers_aligned = true) {
  const int64_t v = VectorElements(operand);
  if (operand != DType::kF64 && c_k % v == 0 && c_n % v == 0 && buffers_aligned) return Path::kTiled;
  if (pass != Pass::kWeightGrad && c_n < 32 && c_k >= 32) return Path::kDirectDot;
  return Path::kDirectOuter;
}

inline FastDivmod DivisorOf(int64_t d) { return FastDivmod::Make(static_cast<int32_t>(d > 0 ? d : 1)); }

// The plan of forward or input_grad (`shape.pass`). `path` as ChoosePath, or forced (tests).
inline GatherPlan MakeGatherPlan(const ConvShape& shape, DType operand, Path path, const DeviceInfo& device) {
  const bool forward = shape.pass == Pass::kForward;
  GatherPlan p{};
  p.pass = shape.pass;
  p.path = path;
  p.dims = static_cast<int32_t>(shape.axes.size());
  p.groups = shape.groups;
  p.batch = static_cast<int32_t>(shape.batch);
  p.c_k = static_cast<int32_t>(forward ? shape.in_ch : shape.out_ch);
  p.c_n = static_cast<int32_t>(forward ? shape.out_ch : shape.in_ch);
  p.src_pixels = forward ? shape.InSpatial() : shape.OutSpatial();
  p.dst_pixels = forward ? shape.OutSpatial() : shape.InSpatial();
  p.tap_pitch = shape.in_ch * shape.out_ch;
  p.kernel_taps = shape.KernelSpatial();
  // StoredTap is affine in the per-axis kernel indices: stored(k) = stored(0) + sum over axes of
  // (stored(k_a * axis pitch) - stored(0)).
  p.stored_tap_base = shape.StoredTap(0);
  const int64_t ci_stride = shape.StoredChannels(1, 0) - shape.StoredChannels(0, 0);
  const int64_t co_stride = shape.StoredChannels(0, 1) - shape.StoredChannels(0, 0);
  p.b_stride_k = forward ? ci_stride : co_stride;
  p.b_stride_n = forward ? co_stride : ci_stride;
  p.problems = 1;
  int64_t axis_pitch = p.kernel_taps;
  int64_t max_rows = shape.batch;
  for (int a = 0; a < p.dims; ++a) {
    const AxisGeometry& g = shape.axes[a];
    GatherAxis& ax = p.axis[a];
    axis_pitch /= g.kernel_size;
    ax.src_size = static_cast<int32_t>(forward ? g.in_size : g.out_size);
    ax.dst_size = static_cast<int32_t>(forward ? g.out_size : g.in_size);
    ax.src_mul = static_cast<int32_t>(forward ? 1 : g.stride);
    ax.dst_mul = static_cast<int32_t>(forward ? g.stride : 1);
    ax.residues = static_cast<int32_t>(forward ? g.phases.size() : 1);
    if (forward) p.zero_fill = p.zero_fill || !g.EveryOutputHasTaps();
    int32_t n = 0;
    int64_t most = 0;
    for (int32_t r = 0; r < ax.residues; ++r) {
      ax.tap_begin[r] = n;
      if (forward) {
        const Phase& ph = g.phases[r];
        ax.extent[r] = static_cast<int32_t>(ph.count);
        ax.dst_base[r] = static_cast<int32_t>(ph.residue);
        for (const Tap& tap : ph.taps) {
          ax.tap_src_base[n] = static_cast<int32_t>(tap.offset);
          ax.tap_stored[n] = static_cast<int32_t>(shape.StoredTap(tap.k * axis_pitch) - p.stored_tap_base);
          ++n;
        }
      } else {
        // Every tap: input j reads output (j - offset)*s + residue = j*s + (residue - offset*s).
        ax.extent[r] = static_cast<int32_t>(g.in_size);
        ax.dst_base[r] = 0;
        for (int64_t k = 0; k < g.kernel_size; ++k) {
          const int64_t residue = g.phases[g.phase_of_tap[k]].residue;
          ax.tap_src_base[n] = static_cast<int32_t>(residue - g.offset_of_tap[k] * g.stride);
          ax.tap_stored[n] = static_cast<int32_t>(shape.StoredTap(k * axis_pitch) - p.stored_tap_base);
          ++n;
        }
      }
      ax.extent_div[r] = DivisorOf(ax.extent[r]);
      most = ax.extent[r] > most ? ax.extent[r] : most;
    }
    ax.tap_begin[ax.residues] = n;
    p.problems *= ax.residues;
    max_rows *= most;
  }
  if (path == Path::kTiled) {
    p.tile_m = kTiledRows;
    p.k_block = TiledKBlock(operand);
    const int64_t wide_blocks = p.groups * CeilDivHD(max_rows, kTiledRows) * p.problems * CeilDivHD(p.c_n, 128);
    p.tile_n = TiledColumns(p.c_n, wide_blocks, device);
  } else if (path == Path::kDirectDot) {
    p.tile_m = kDirectWarps;
    p.tile_n = kDirectChannels;
    p.k_block = 32;  // a warp's lanes
  } else {
    p.tile_m = kDirectWarps;
    p.tile_n = 32 * kDirectChannels;
    p.k_block = 1;
  }
  p.tiles_m = static_cast<int32_t>(CeilDivHD(max_rows, p.tile_m));
  p.tiles_n = static_cast<int32_t>(CeilDivHD(p.c_n, p.tile_n));
  p.blocks = p.groups * p.tiles_m * p.problems * p.tiles_n;
  return p;
}

// The plan of weight_grad. `max_partial_bytes` caps the scratch of the split-K reduction.
inline WeightGradPlan MakeWeightGradPlan(const ConvShape& shape, DType operand, Path path, const DeviceInfo& device,
                                         int64_t max_partial_bytes = int64_t{256} << 20) {
  WeightGradPlan p{};
  p.path = path;
  p.dims = static_cast<int32_t>(shape.axes.size());
  p.groups = shape.groups;
  p.batch = static_cast<int32_t>(shape.batch);
  p.c_m = static_cast<int32_t>(shape.in_ch);
  p.c_n = static_cast<int32_t>(shape.out_ch);
  p.x_pixels = shape.InSpatial();
  p.dy_pixels = shape.OutSpatial();
  p.taps = static_cast<int32_t>(shape.KernelSpatial());
  p.stored_tap_base = shape.StoredTap(0);
  p.stored_ci_stride = shape.StoredChannels(1, 0) - shape.StoredChannels(0, 0);
  p.stored_co_stride = shape.StoredChannels(0, 1) - shape.StoredChannels(0, 0);
  int64_t axis_pitch = p.taps;
  int64_t most_pixels = shape.batch;
  for (int a = 0; a < p.dims; ++a) {
    const AxisGeometry& g = shape.axes[a];
    WeightGradAxis& ax = p.axis[a];
    axis_pitch /= g.kernel_size;
    ax.x_size = static_cast<int32_t>(g.in_size);
    ax.dy_size = static_cast<int32_t>(g.out_size);
    ax.stride = static_cast<int32_t>(g.stride);
    ax.kernel = static_cast<int32_t>(g.kernel_size);
    int64_t most = 0;
    for (int64_t k = 0; k < g.kernel_size; ++k) {
      // Tap k links q in [q_begin, q_end) of its phase: input q + offset, output q*s + residue.
      const Phase& phase = g.phases[g.phase_of_tap[k]];
      const int64_t r = phase.residue;
      int64_t q_begin = 0, q_end = 0;
      for (const Tap& tap : phase.taps)
        if (tap.k == k) q_begin = tap.q_begin, q_end = tap.q_end;
      ax.extent[k] = static_cast<int32_t>(q_end - q_begin);
      ax.extent_div[k] = DivisorOf(ax.extent[k]);
      ax.x_base[k] = static_cast<int32_t>(q_begin + g.offset_of_tap[k]);
      ax.dy_base[k] = static_cast<int32_t>(q_begin * g.stride + r);
      ax.tap_stored[k] = static_cast<int32_t>(shape.StoredTap(k * axis_pitch) - p.stored_tap_base);
      most = ax.extent[k] > most ? ax.extent[k] : most;
    }
    most_pixels *= most;
  }
  if (path == Path::kTiled) {
    // Split-K fills the device here: the narrow tile only where 64 columns hold every output channel.
    p.tile_m = kTiledRows;
    p.tile_n = p.c_n <= 64 ? 64 : 128;
    p.k_block = TiledKBlock(operand);
  } else {
    // A thread per (ci, group of co); the "tile" is the CTA's threads.
    p.tile_m = 1;
    p.tile_n = kDirectChannels;
    p.k_block = 1;
  }
  p.tiles_m = static_cast<int32_t>(CeilDivHD(p.c_m, p.tile_m));
  p.tiles_n = static_cast<int32_t>(CeilDivHD(p.c_n, p.tile_n));
  // Split the pixels until the launch fills the device about four times over (the tiled path: in whole waves of
  // its resident CTAs), keeping at least 8 k-steps per split and the partials within the scratch cap.
  const int64_t base = p.groups * p.taps * p.tiles_m * p.tiles_n;
  const int64_t per_block = path == Path::kTiled ? 1 : kDirectThreads;
  const int64_t want = CeilDivHD(4 * static_cast<int64_t>(device.multiprocessors) * per_block, base);
  const int64_t bytes_per_split = p.partial_elements() * (operand == DType::kF64 ? 8 : 4);
  const int64_t fit = max_partial_bytes / bytes_per_split;
  int64_t most_splits = CeilDivHD(most_pixels, 8 * static_cast<int64_t>(p.k_block));
  most_splits = fit < most_splits ? fit : most_splits;
  int64_t splits = want < most_splits ? want : most_splits;
  if (path == Path::kTiled && most_splits > 1) {
    const int64_t wave = static_cast<int64_t>(device.multiprocessors) * device.WeightGradResident(p.tile_n);
    splits = WholeWaveSplits(base, wave, want, most_splits);
  }
  p.splits = static_cast<int32_t>(splits < 1 ? 1 : splits > 65535 ? 65535 : splits);
  if (path == Path::kTiled) {
    p.blocks = base * p.splits;
  } else {
    p.blocks = CeilDivHD(base * p.splits, kDirectThreads);
  }
  return p;
}

// The bytes of the weight gradient's split-K partials for a call, planned as the handler plans it on `device`
// with 16-byte aligned buffers (as XLA's are). The Python lowering sizes the CUDA call's second result (an
// XLA-allocated buffer, so the pass allocates nothing at run time) with this, and the handler plans within the
// buffer it receives (MakeWeightGradPlan's cap): a device with more multiprocessors than the lowering assumed
// only splits less. At least one split's bytes, which every path's plan fits (the CUDA-core path's partials have
// the same elements and type).
inline int64_t WeightGradPartialBytes(const ConvShape& shape, DType operand, const DeviceInfo& device) {
  const Path path = ChoosePath(Pass::kWeightGrad, operand, shape.in_ch, shape.out_ch);
  return PartialBytes(MakeWeightGradPlan(shape, operand, path, device), operand);
}

}  // namespace jaxseg::gpu

#endif  // JAXSEG_CUDA_CONV_PLAN_H_
