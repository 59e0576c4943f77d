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
// The widest tile (in vectors, kRows rows) for a product with few columns, where the register file allows more
// than kColVecs: the forward with few output channels (ImageForwardItem).
#ifndef JAXSEG_WIDE_COL_VECS
#define JAXSEG_WIDE_COL_VECS JAXSEG_COL_VECS
#endif
constexpr int kWideColVecs = JAXSEG_WIDE_COL_VECS;

typedef float VecF32 __attribute__((vector_size(64)));
typedef double VecF64 __attribute__((vector_size(64)));
// The same vectors at any element address (loads compile to unaligned moves). Not usable as template arguments,
// which drop the alignment attribute: LoadUnaligned picks one.
typedef float VecF32U __attribute__((vector_size(64), aligned(4)));
typedef double VecF64U __attribute__((vector_size(64), aligned(8)));

template <typename Acc>
struct Vec {
  using type = std::conditional_t<std::is_same_v<Acc, double>, VecF64, VecF32>;
  static constexpr int kWidth = 64 / sizeof(Acc);
  static constexpr int kCols = kColVecs * kWidth;
};

template <typename Acc>
inline typename Vec<Acc>::type LoadUnaligned(const Acc* p) {
  if constexpr (std::is_same_v<Acc, double>) {
    return *reinterpret_cast<const VecF64U*>(p);
  } else {
    return *reinterpret_cast<const VecF32U*>(p);
  }
}

// One vector of the accumulation type from W consecutive stored elements at any address.
template <typename T, typename Acc>
inline typename Vec<Acc>::type LoadVector(const T* p) {
  if constexpr (std::is_same_v<T, Acc>) {
    return LoadUnaligned<Acc>(p);
  } else {
    Acc tmp[Vec<Acc>::kWidth];
    for (int e = 0; e < Vec<Acc>::kWidth; ++e) tmp[e] = ToAcc<Acc>(p[e]);
    typename Vec<Acc>::type v;
    std::memcpy(&v, tmp, sizeof(v));
    return v;
  }
}

template <typename U, typename Acc, int CV = kColVecs>
inline void StoreTile(const typename Vec<Acc>::type (&acc)[kRows][CV], U* const (&dst)[kRows], int rows,
                      int cols) {
  using V = typename Vec<Acc>::type;
  if constexpr (std::is_same_v<U, Acc>) {
    // Whole vectors where the tile is full: a variable-length copy compiles to `rep movs`, whose start-up cost
    // rivals the tile's FMAs when the depth is small.
    if (cols == CV * Vec<Acc>::kWidth) {
      for (int i = 0; i < rows; ++i)
        for (int c = 0; c < CV; ++c) std::memcpy(dst[i] + c * Vec<Acc>::kWidth, &acc[i][c], sizeof(V));
      return;
    }
  }
  for (int i = 0; i < rows; ++i) {
    Acc tmp[CV * Vec<Acc>::kWidth];
    std::memcpy(tmp, acc[i], sizeof(tmp));
    for (int c = 0; c < cols; ++c) dst[i][c] = FromAcc<U>(tmp[c]);
  }
}

inline int64_t RoundUp(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

inline AlignedBuffer AllocateAligned(int64_t bytes) {
  bytes = RoundUp(std::max<int64_t>(bytes, 64), 64);
  return AlignedBuffer(std::aligned_alloc(64, static_cast<size_t>(bytes)));
}

// ---------------------------------------------------------------------------------------------------------------
// Packing: weights to the accumulation type, once per call, as contiguous panels of one register tile of columns
// (tap, column tile, depth, kCols): a panel is read row after row without the cache-set conflicts that a
// power-of-two row stride would cause. Columns past the last are zero.

template <typename T, typename Acc>
bool PackWeights(ConvProblem& pb, bool transpose) {
  const int64_t kcols = Vec<Acc>::kCols;
  const int64_t taps = pb.groups * pb.KernelSpatial();
  const int64_t depth = transpose ? pb.out_ch : pb.in_ch;
  const int64_t cols = transpose ? pb.in_ch : pb.out_ch;
  pb.packed_ld = RoundUp(std::max<int64_t>(cols, 1), kcols);
  const int64_t tiles = pb.packed_ld / kcols;
  pb.packed = AcquireBuffer(taps * depth * pb.packed_ld * static_cast<int64_t>(sizeof(Acc)));
  if (!pb.packed) return false;
  const T* w = static_cast<const T*>(pb.second);
  Acc* dst = static_cast<Acc*>(pb.packed.get());
  const int64_t ksp = pb.KernelSpatial();
  // Element (depth r, column c) of a tap is stored at r * r_step + c * c_step (see common/conv_shape.h).
  const auto stored = [&](int64_t r, int64_t c) { return transpose ? pb.StoredChannels(c, r) : pb.StoredChannels(r, c); };
  const int64_t r_step = stored(1, 0) - stored(0, 0), c_step = stored(0, 1) - stored(0, 0);
  // When the depth is the contiguous axis of the stored kernel, the panel is filled 16 depth rows at a time, so
  // each stored line is used whole before the next is read: a column-by-column walk at a stride of a power of
  // two (1024 channels) hits one cache set over and over (45 ms to pack ebgan-celeba-g1's 32 MB, against 13 ms
  // with 960 channels).
  constexpr int64_t kSpan = 16;
  for (int64_t t = 0; t < taps; ++t) {
    // Canonical tap t of group t / ksp, wherever the kernel's layout stores it.
    const T* wt = w + ((t / ksp) * ksp + pb.StoredTap(t % ksp)) * pb.in_ch * pb.out_ch;
    for (int64_t tile = 0; tile < tiles; ++tile) {
      Acc* panel = dst + (t * tiles + tile) * depth * kcols;
      const int64_t c0 = tile * kcols;
      const int64_t valid = std::min(kcols, cols - c0);
      if (c_step == 1) {
        for (int64_t r = 0; r < depth; ++r) {
          const T* from = wt + r * r_step + c0;
          for (int64_t c = 0; c < valid; ++c) panel[r * kcols + c] = ToAcc<Acc>(from[c]);
          for (int64_t c = valid; c < kcols; ++c) panel[r * kcols + c] = Acc(0);
        }
        continue;
      }
      for (int64_t r0 = 0; r0 < depth; r0 += kSpan) {
        const int64_t rn = std::min(kSpan, depth - r0);
        for (int64_t c = 0; c < kcols; ++c) {
          const T* from = wt + r0 * r_step + (c0 + c) * c_step;
          for (int64_t r = 0; r < rn; ++r)
            panel[(r0 + r) * kcols + c] = c < valid ? ToAcc<Acc>(from[r * r_step]) : Acc(0);
        }
      }
    }
  }
  return true;
}

// The forward's per-input form (see ImageForwardItem): panels (group, column tile, in_ch, image_col_vecs vectors)
// whose columns are (tap, output channel) pairs, column k * out_ch + co holding W[k][:, co].
template <typename T, typename Acc>
bool PackTapColumns(ConvProblem& pb) {
  const int64_t kcols = pb.image_col_vecs * Vec<Acc>::kWidth;
  const int64_t ksp = pb.KernelSpatial();
  const int64_t cols = ksp * pb.out_ch;
  pb.packed_ld = RoundUp(cols, kcols);
  const int64_t tiles = pb.packed_ld / kcols;
  pb.packed = AcquireBuffer(pb.groups * pb.in_ch * pb.packed_ld * static_cast<int64_t>(sizeof(Acc)));
  if (!pb.packed) return false;
  const T* w = static_cast<const T*>(pb.second);
  Acc* dst = static_cast<Acc*>(pb.packed.get());
  for (int64_t g = 0; g < pb.groups; ++g)
    for (int64_t tile = 0; tile < tiles; ++tile) {
      Acc* panel = dst + (g * tiles + tile) * pb.in_ch * kcols;
      for (int64_t c = 0; c < kcols; ++c) {
        const int64_t col = tile * kcols + c;
        const int64_t k = col / pb.out_ch, co = col % pb.out_ch;
        const T* wk = w + (g * ksp + pb.StoredTap(k)) * pb.in_ch * pb.out_ch;
        for (int64_t ci = 0; ci < pb.in_ch; ++ci)
          panel[ci * kcols + c] = col < cols ? ToAcc<Acc>(wk[pb.StoredChannels(ci, co)]) : Acc(0);
      }
    }
  return true;
}

// ---------------------------------------------------------------------------------------------------------------
// Forward and input gradient share one driver: for a block of destination pixels (spanning images, so small
// images still give long blocks), dst[m] = sum over taps t of src(m, t) . W[t], where src(m, t) is the pixel row
// tap t reads for pixel m (the zero row where it meets padding). Column tiles are outermost, so a tap's weight
// panel (depth x one tile of columns) stays in cache while every register tile of the block uses it.

// Source rows of tap t for the R rows of a tile starting at r0 (the zero row past the block's end); false when
// every one of them is the zero row, so the tap can be skipped.
template <int R, typename T>
inline bool TileRows(const T* const* src, int64_t taps, int64_t r0, int nrows, int64_t t, const T* zero,
                     const T* (&rp)[R]) {
  bool any = false;
  for (int i = 0; i < R; ++i) {
    rp[i] = i < nrows ? src[(r0 + i) * taps + t] : zero;
    any |= rp[i] != zero;
  }
  return any;
}

constexpr int64_t kBlockTiles = 16;  // register tiles of rows per work item
constexpr int64_t kBlockRows = kRows * kBlockTiles;

// One register tile: acc = sum over taps t of (its rows' sources for t) . (t's panel), depth rows each. The
// tile stays in registers across all taps (when the depth is small, a load and store of the tile per tap would
// cost more than the tap's FMAs).
template <typename T, typename Acc, int CV = kColVecs>
inline void GatherTile(typename Vec<Acc>::type (&acc)[kRows][CV], const T* const* src, int64_t taps,
                       int64_t r0, int nrows, const int64_t* tap_k, const Acc* __restrict w, int64_t tap_stride,
                       int64_t depth, const T* zero) {
  using V = typename Vec<Acc>::type;
  constexpr int W = Vec<Acc>::kWidth;
  constexpr int64_t kcols = CV * W;
  V r[kRows][CV] = {};
  for (int64_t t = 0; t < taps; ++t) {
    const T* rows[kRows];
    if (!TileRows<kRows>(src, taps, r0, nrows, t, zero, rows)) continue;
    const Acc* b = w + tap_k[t] * tap_stride;  // the panel: depth rows of kcols, 64-byte aligned
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
  }
#pragma GCC unroll 16
  for (int i = 0; i < kRows; ++i)
#pragma GCC unroll 4
    for (int c = 0; c < CV; ++c) acc[i][c] = r[i][c];
}

// Rows near the border read the zero row for some taps, and a register tile spends FMAs on a tap unless all of its
// rows skip it; on 7x7 inputs that was about 14 % of the forward's FMAs. Ordering the block's rows by the set of
// taps they read (rows that read all taps first) gives most tiles rows with one set, so whole tiles skip their
// missing taps. The order of a block's rows is free: each row carries its own destination. Not worth it where a
// tap costs a tile few FMAs (depth x columns small: the 1-channel input gradient of ebgan-mnist-g2 was 35 % slower).
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

template <typename T, typename U, typename Acc, int CV = kColVecs>
void GatherGemmBlock(int64_t rows, int64_t taps, const T* const* src, const int64_t* tap_k, U* const* dst,
                     const Acc* w, int64_t depth, int64_t ncols, int64_t ld, const T* zero) {
  using V = typename Vec<Acc>::type;
  const int64_t kcols = CV * Vec<Acc>::kWidth;
  GroupRowsByTaps(rows, taps, depth * ncols, src, dst, zero);
  // Tap t's panel for column tile c0 starts at w + (t * tiles + c0 / kcols) * depth * kcols (see PackWeights).
  const int64_t tap_stride = ld * depth;
  for (int64_t c0 = 0; c0 < ncols; c0 += kcols) {
    const int cols = static_cast<int>(std::min<int64_t>(kcols, ncols - c0));
    const Acc* wc = w + c0 * depth;
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
// (tap, depth tile, C rows, kCols) that PackWeights(transpose) writes.
constexpr int kNarrowMax = 4;
constexpr int kNarrowRows = 4;

// The sum of a vector's lanes, by halving (fewer dependent adds than a lane-by-lane sum).
template <typename Acc>
inline Acc HorizontalSum(const typename Vec<Acc>::type& v) {
  typedef Acc Half __attribute__((vector_size(32)));
  typedef Acc Quarter __attribute__((vector_size(16)));
  Half h[2];
  std::memcpy(h, &v, sizeof(h));
  const Half a = h[0] + h[1];
  Quarter q[2];
  std::memcpy(q, &a, sizeof(q));
  const Quarter b = q[0] + q[1];
  Acc lanes[16 / sizeof(Acc)];
  std::memcpy(lanes, &b, sizeof(lanes));
  Acc sum = 0;
  for (const Acc l : lanes) sum += l;
  return sum;
}

template <typename T, typename U, typename Acc, int C>
void NarrowBlock(int64_t rows, int64_t taps, const T* const* src, const int64_t* tap_k, U* const* dst,
                 const Acc* wt, int64_t depth, int64_t ld, const T* zero) {
  using V = typename Vec<Acc>::type;
  constexpr int W = Vec<Acc>::kWidth;
  constexpr int64_t kcols = Vec<Acc>::kCols;
  const int64_t tiles = ld / kcols;
  const int64_t full = depth / kcols;  // depth tiles read as whole vectors; the rest element by element
  for (int64_t r0 = 0; r0 < rows; r0 += kNarrowRows) {
    const int nrows = static_cast<int>(std::min<int64_t>(kNarrowRows, rows - r0));
    V acc[kNarrowRows][C] = {};
    Acc rest[kNarrowRows][C] = {};
    for (int64_t t = 0; t < taps; ++t) {
      const T* rp[kNarrowRows];
      if (!TileRows<kNarrowRows>(src, taps, r0, nrows, t, zero, rp)) continue;
      const Acc* tap_panels = wt + tap_k[t] * tiles * C * kcols;
      for (int64_t tile = 0; tile < full; ++tile) {
        const Acc* panel = tap_panels + tile * C * kcols;
        for (int v = 0; v < kColVecs; ++v) {
          V xv[kNarrowRows];
          for (int i = 0; i < kNarrowRows; ++i) xv[i] = LoadVector<T, Acc>(rp[i] + tile * kcols + v * W);
#pragma GCC unroll 4
          for (int c = 0; c < C; ++c) {
            const V wv = *reinterpret_cast<const V*>(panel + c * kcols + v * W);
#pragma GCC unroll 4
            for (int i = 0; i < kNarrowRows; ++i) acc[i][c] += xv[i] * wv;
          }
        }
      }
      const Acc* panel = tap_panels + full * C * kcols;
      for (int64_t p = full * kcols; p < depth; ++p)
        for (int i = 0; i < kNarrowRows; ++i) {
          const Acc xval = ToAcc<Acc>(rp[i][p]);
          for (int c = 0; c < C; ++c) rest[i][c] += xval * panel[c * kcols + (p - full * kcols)];
        }
    }
    for (int i = 0; i < nrows; ++i)
      for (int c = 0; c < C; ++c) {
        const Acc sum = rest[i][c] + HorizontalSum<Acc>(acc[i][c]);
        dst[r0 + i][c] = FromAcc<U>(sum);
      }
  }
}

// The tables one block fills for GatherGemmBlock, kept per thread across items.
template <typename T, typename U>
struct BlockTables {
  std::vector<const T*> src;  // (row, tap) -> source row
  std::vector<U*> dst;        // row -> destination
  std::vector<int64_t> tap_k; // tap -> flat kernel index

  static BlockTables& ForThread(int64_t rows, int64_t taps) {
    thread_local BlockTables t;
    t.src.resize(rows * taps);
    t.dst.resize(rows);
    t.tap_k.resize(taps);
    return t;
  }
};

// Row-major strides of a spatial extent (elements per step of each axis, in pixels).
inline void PixelStrides(const std::vector<AxisGeometry>& axes, bool in, int64_t* stride) {
  int64_t s = 1;
  for (int64_t a = static_cast<int64_t>(axes.size()) - 1; a >= 0; --a) {
    stride[a] = s;
    s *= in ? axes[a].in_size : axes[a].out_size;
  }
}

// The coordinates of pixel m of a batch of images with spatial extent `extent` (row-major, the last axis fastest):
// image *n, coordinates c. NextPixel then steps them like an odometer, so a block's pixels cost no division.
inline void PixelCoords(int64_t d, const int64_t* extent, int64_t m, int64_t* n, int64_t* c) {
  for (int64_t a = d - 1; a >= 0; --a) {
    c[a] = m % extent[a];
    m /= extent[a];
  }
  *n = m;
}

inline void NextPixel(int64_t d, const int64_t* extent, int64_t* n, int64_t* c) {
  for (int64_t a = d - 1; a >= 0; --a) {
    if (++c[a] < extent[a]) return;
    c[a] = 0;
  }
  ++*n;
}

// Forward. Item = (group, block, phase): block b of every phase covers about the same outputs q over the batch,
// so they read the same inputs; with the phase innermost, consecutive items (taken by the threads together) find
// those inputs in cache instead of streaming the input from memory once per phase.
template <typename T, typename U, typename Acc>
void ForwardItem(const ConvProblem& pb, int64_t item) {
  const auto& axes = pb.axes;
  const int64_t d = static_cast<int64_t>(axes.size());
  const int64_t num_phases = static_cast<int64_t>(pb.phases.size());
  const PhaseND& phase = pb.phases[item % num_phases];
  item /= num_phases;
  const int64_t m0 = (item % pb.phase_blocks) * kBlockRows;
  const int64_t g = item / pb.phase_blocks;
  const int64_t rows = std::min(kBlockRows, pb.batch * phase.pixels - m0);
  if (rows <= 0) return;  // a phase with fewer outputs than the largest
  const int64_t taps = static_cast<int64_t>(phase.taps.size());

  int64_t in_stride[kMaxSpatialDims], out_stride[kMaxSpatialDims];
  PixelStrides(axes, true, in_stride);
  PixelStrides(axes, false, out_stride);
  const T* x = static_cast<const T*>(pb.first);
  U* y = static_cast<U*>(pb.result);
  const T* zero = static_cast<const T*>(pb.zeros.get());
  auto& tables = BlockTables<T, U>::ForThread(rows, taps);
  auto& src = tables.src;
  auto& dst = tables.dst;
  // Tap t reads input q + offset_t for the phase's output q: for the outputs where every tap reads inside the
  // input (q in [inner_begin, inner_end) on every axis) that is the pixel's q plus a fixed shift per tap.
  int64_t inner_begin[kMaxSpatialDims], inner_end[kMaxSpatialDims];
  for (int64_t a = 0; a < d; ++a) {
    inner_begin[a] = 0;
    inner_end[a] = phase.count[a];
  }
  thread_local std::vector<int64_t> shift;
  shift.assign(taps, 0);
  for (int64_t t = 0; t < taps; ++t) {
    const TapND& tap = phase.taps[t];
    tables.tap_k[t] = tap.k;
    for (int64_t a = 0; a < d; ++a) {
      inner_begin[a] = std::max(inner_begin[a], tap.q_begin[a]);
      inner_end[a] = std::min(inner_end[a], tap.q_end[a]);
      shift[t] += tap.offset[a] * in_stride[a] * pb.in_ch;
    }
  }
  const int64_t in_pixels = pb.InSpatial(), out_pixels = pb.OutSpatial();
  int64_t n, q[kMaxSpatialDims];  // the output's image and coordinates within the phase
  PixelCoords(d, phase.count, m0, &n, q);
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t gn = g * pb.batch + n;
    int64_t o_flat = 0, j_flat = 0;
    bool interior = true;
    for (int64_t a = 0; a < d; ++a) {
      o_flat += (q[a] * axes[a].stride + phase.residue[a]) * out_stride[a];
      j_flat += q[a] * in_stride[a];
      interior &= q[a] >= inner_begin[a] && q[a] < inner_end[a];
    }
    dst[i] = y + (gn * out_pixels + o_flat) * pb.out_ch;
    const T* here = x + (gn * in_pixels + j_flat) * pb.in_ch;
    const T** row_src = src.data() + i * taps;
    if (interior) {
      for (int64_t t = 0; t < taps; ++t) row_src[t] = here + shift[t];
    } else {
      for (int64_t t = 0; t < taps; ++t) {
        const TapND& tap = phase.taps[t];
        bool inside = true;
        for (int64_t a = 0; a < d; ++a) inside &= q[a] >= tap.q_begin[a] && q[a] < tap.q_end[a];
        row_src[t] = inside ? here + shift[t] : zero;
      }
    }
    NextPixel(d, phase.count, &n, q);
  }
  if (pb.narrow_out) {
    const Acc* wt = static_cast<const Acc*>(pb.packed.get()) + g * pb.KernelSpatial() * pb.out_ch * pb.packed_ld;
    const int64_t* tk = tables.tap_k.data();
    switch (pb.out_ch) {
      case 1: NarrowBlock<T, U, Acc, 1>(rows, taps, src.data(), tk, dst.data(), wt, pb.in_ch, pb.packed_ld, zero); break;
      case 2: NarrowBlock<T, U, Acc, 2>(rows, taps, src.data(), tk, dst.data(), wt, pb.in_ch, pb.packed_ld, zero); break;
      case 3: NarrowBlock<T, U, Acc, 3>(rows, taps, src.data(), tk, dst.data(), wt, pb.in_ch, pb.packed_ld, zero); break;
      default: NarrowBlock<T, U, Acc, 4>(rows, taps, src.data(), tk, dst.data(), wt, pb.in_ch, pb.packed_ld, zero); break;
    }
    return;
  }
  const Acc* w = static_cast<const Acc*>(pb.packed.get()) + g * pb.KernelSpatial() * pb.in_ch * pb.packed_ld;
  GatherGemmBlock<T, U, Acc>(rows, taps, src.data(), tables.tap_k.data(), dst.data(), w, pb.in_ch, pb.out_ch,
                             pb.packed_ld, zero);
}

// Forward with few output channels, one item per image: z[j] = x[j] . [W[k][:, co] for every tap k and channel
// co], a plain product whose ksp * Co columns fill the vectors (the tap-by-tap form has Co <= 4 columns, and its
// dot-product variant reads every input row once per tap and phase); then each output gathers the z entries of
// the taps that reach it. z of an image is kept per thread (kMaxImageProducts bounds it). Used where the batch
// gives every thread at least 4 images. ebgan-celeba-g4 (3 channels, 16 taps: 48 columns, one 3-vector tile):
// 10.3 -> 7.2 ms.
constexpr int64_t kMaxImageProducts = int64_t{4} << 20;  // bytes
constexpr int64_t kMaxImageColumns = 128;

inline bool UseImageForward(const ConvProblem& pb, int64_t acc_bytes) {
  const int64_t cols = pb.KernelSpatial() * pb.out_ch;
  return !pb.axes.empty() && pb.out_ch <= kNarrowMax && cols <= kMaxImageColumns &&
         pb.InSpatial() * cols * acc_bytes <= kMaxImageProducts && pb.groups * pb.batch >= 4 * pb.workers;
}

template <typename T, typename U, typename Acc>
void ImageForwardItem(const ConvProblem& pb, int64_t item) {
  const auto& axes = pb.axes;
  const int64_t d = static_cast<int64_t>(axes.size());
  const int64_t g = item / pb.batch;
  const int64_t in_pixels = pb.InSpatial(), out_pixels = pb.OutSpatial();
  const int64_t ldz = pb.KernelSpatial() * pb.out_ch;
  const T* x = static_cast<const T*>(pb.first) + item * in_pixels * pb.in_ch;
  U* y = static_cast<U*>(pb.result) + item * out_pixels * pb.out_ch;

  thread_local std::vector<Acc> z;
  thread_local std::vector<const T*> src;
  thread_local std::vector<Acc*> dst;
  z.resize(in_pixels * ldz);
  src.resize(in_pixels);
  dst.resize(in_pixels);
  for (int64_t j = 0; j < in_pixels; ++j) {
    src[j] = x + j * pb.in_ch;
    dst[j] = z.data() + j * ldz;
  }
  const Acc* w = static_cast<const Acc*>(pb.packed.get()) + g * pb.in_ch * pb.packed_ld;
  const int64_t tap0 = 0;
  const T* zero = static_cast<const T*>(pb.zeros.get());
  for (int64_t m0 = 0; m0 < in_pixels; m0 += kBlockRows) {
    const int64_t rows = std::min(kBlockRows, in_pixels - m0);
    const auto product = [&](auto cv) {
      GatherGemmBlock<T, Acc, Acc, decltype(cv)::value>(rows, 1, src.data() + m0, &tap0, dst.data() + m0, w,
                                                        pb.in_ch, ldz, pb.packed_ld, zero);
    };
    if constexpr (kWideColVecs >= 3) {
      if (pb.image_col_vecs == 3) { product(std::integral_constant<int, 3>{}); continue; }
    }
    if constexpr (kWideColVecs >= 2) {
      if (pb.image_col_vecs == 2) { product(std::integral_constant<int, 2>{}); continue; }
    }
    product(std::integral_constant<int, 1>{});
  }

  // Gather, one line of a phase's outputs (along the last axis) at a time: each tap that reaches the line adds
  // a run of z entries, so the inner loop has no per-pixel checks.
  int64_t in_stride[kMaxSpatialDims], out_stride[kMaxSpatialDims];
  PixelStrides(axes, true, in_stride);
  PixelStrides(axes, false, out_stride);
  const int64_t last = d - 1, co_n = pb.out_ch;
  thread_local std::vector<Acc> line_sum;
  for (const PhaseND& phase : pb.phases) {
    if (phase.pixels == 0) continue;
    const int64_t line = phase.count[last];
    line_sum.resize(line * co_n);
    int64_t q[kMaxSpatialDims] = {};  // leading coordinates of the line
    for (int64_t l = 0; l < phase.pixels / line; ++l) {
      std::fill(line_sum.begin(), line_sum.end(), Acc(0));
      int64_t j_lead = 0, o_lead = phase.residue[last] * out_stride[last];
      for (int64_t a = 0; a < last; ++a) {
        j_lead += q[a] * in_stride[a];
        o_lead += (q[a] * axes[a].stride + phase.residue[a]) * out_stride[a];
      }
      for (const TapND& tap : phase.taps) {
        bool inside = true;
        int64_t j = j_lead + tap.offset[last];
        for (int64_t a = 0; a < last; ++a) {
          inside &= q[a] >= tap.q_begin[a] && q[a] < tap.q_end[a];
          j += tap.offset[a] * in_stride[a];
        }
        if (!inside) continue;
        const Acc* zt = z.data() + j * ldz + tap.k * co_n;
        for (int64_t p = tap.q_begin[last]; p < tap.q_end[last]; ++p)
          for (int64_t co = 0; co < co_n; ++co) line_sum[p * co_n + co] += zt[p * ldz + co];
      }
      const int64_t o_step = axes[last].stride * out_stride[last] * co_n;
      U* out = y + o_lead * co_n;
      for (int64_t p = 0; p < line; ++p, out += o_step)
        for (int64_t co = 0; co < co_n; ++co) out[co] = FromAcc<U>(line_sum[p * co_n + co]);
      for (int64_t a = last - 1; a >= 0 && ++q[a] == phase.count[a]; --a) q[a] = 0;
    }
  }
}

// Input gradient: dx[j] = sum over every tap k that links input j to an output o of dy[o] . W[k]^T.
// Item = (group, block of input pixels over the batch).
template <typename T, typename U, typename Acc>
void InputGradItem(const ConvProblem& pb, int64_t item) {
  const auto& axes = pb.axes;
  const int64_t d = static_cast<int64_t>(axes.size());
  const int64_t total = pb.batch * pb.InSpatial();
  const int64_t per_group = (total + kBlockRows - 1) / kBlockRows;
  const int64_t g = item / per_group;
  const int64_t m0 = (item % per_group) * kBlockRows;
  const int64_t rows = std::min(kBlockRows, total - m0);
  const int64_t taps = pb.KernelSpatial();

  int64_t in_stride[kMaxSpatialDims];
  PixelStrides(axes, true, in_stride);
  const T* dy = static_cast<const T*>(pb.first);
  U* dx = static_cast<U*>(pb.result);
  const T* zero = static_cast<const T*>(pb.zeros.get());
  auto& tables = BlockTables<T, U>::ForThread(rows, taps);
  auto& src = tables.src;
  auto& dst = tables.dst;
  // The output a tap reaches is a sum of per-axis table entries (pb.links), negative where the tap meets
  // padding. The pixel's coordinates advance like an odometer: no division per pixel and none per (pixel, tap),
  // which matters when the depth (the output channels) is small.
  const int64_t k_last = axes[d - 1].kernel_size;
  for (int64_t t = 0; t < taps; ++t) tables.tap_k[t] = t;
  int64_t in_size[kMaxSpatialDims], n, j[kMaxSpatialDims];
  for (int64_t a = 0; a < d; ++a) in_size[a] = axes[a].in_size;
  PixelCoords(d, in_size, m0, &n, j);
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t gn = g * pb.batch + n;
    dst[i] = dx + (gn * pb.InSpatial()) * pb.in_ch;
    const T* image = dy + gn * pb.OutSpatial() * pb.out_ch;
    const T** row_src = src.data() + i * taps;
    const int64_t* link[kMaxSpatialDims];  // this pixel's row of each axis's table
    int64_t base = 0;
    bool interior = true;
    for (int64_t a = 0; a < d; ++a) {
      link[a] = pb.links.data() + pb.links_begin[a] + j[a] * axes[a].kernel_size;
      interior &= j[a] >= pb.interior_begin[a] && j[a] < pb.interior_end[a];
      base += link[a][0];
      dst[i] += j[a] * in_stride[a] * pb.in_ch;
    }
    if (interior) {
      // Every tap reaches an output: tap t's is the pixel's first plus a fixed shift.
      const T* first = image + base * pb.out_ch;
      for (int64_t t = 0; t < taps; ++t) row_src[t] = first + pb.tap_shift[t];
    } else {
      // Taps in row-major kernel order: the leading axes' part changes once per kernel row.
      int64_t k[kMaxSpatialDims] = {};
      for (int64_t t = 0; t < taps; t += k_last) {
        int64_t lead = 0;
        for (int64_t a = 0; a + 1 < d; ++a) lead += link[a][k[a]];
        for (int64_t kl = 0; kl < k_last; ++kl) {
          const int64_t o = lead + link[d - 1][kl];
          row_src[t + kl] = o >= 0 ? image + o * pb.out_ch : zero;
        }
        for (int64_t a = d - 2; a >= 0 && ++k[a] == axes[a].kernel_size; --a) k[a] = 0;
      }
    }
    NextPixel(d, in_size, &n, j);
  }
  const Acc* wt = static_cast<const Acc*>(pb.packed.get()) + g * taps * pb.out_ch * pb.packed_ld;
  GatherGemmBlock<T, U, Acc>(rows, taps, src.data(), tables.tap_k.data(), dst.data(), wt, pb.out_ch, pb.in_ch,
                             pb.packed_ld, zero);
}

// ---------------------------------------------------------------------------------------------------------------
// Weight gradient: dW[k] = X_k^T . DY_k over the (input, output) pixel pairs that tap k links. The pairs form runs
// along the last spatial axis (input step Ci, output step stride*Co). A register tile of kRows "row" channels x
// kCols "column" channels is held over runs; columns are the wider of Ci and Co, so a layer with few output
// channels still fills the vectors. Item = (group, phase, block of row channels): it owns those rows of dW for
// every tap of the phase, so threads never share an output, and the phase's taps share each pass over the
// activations (a tap-by-tap order reads them once per tap, which bounds large-batch layers by memory).

struct Run {
  int64_t x_off;   // element offset of the run's first input pixel (channel 0)
  int64_t dy_off;  // element offset of its first output pixel (channel 0)
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
inline void AccumulateRuns(typename Vec<Acc>::type (&acc)[R][CV], const Run* runs_begin, const Run* runs_end,
                           bool rows_from_x, const T* x, const T* dy, const T* b_end, int64_t x_step,
                           int64_t dy_step, int nrows, int ncols) {
  using V = typename Vec<Acc>::type;
  constexpr int kMax = CV * Vec<Acc>::kWidth;
  V r[R][CV];
  for (int i = 0; i < R; ++i)
    for (int c = 0; c < CV; ++c) r[i][c] = acc[i][c];
  int64_t lane[R];
  for (int i = 0; i < R; ++i) lane[i] = kFullRows ? i : std::min(i, nrows - 1);
  const int64_t a_step = rows_from_x ? x_step : dy_step;
  const int64_t b_step = rows_from_x ? dy_step : x_step;
  for (const Run* run = runs_begin; run != runs_end; ++run) {
    const T* ap = rows_from_x ? x + run->x_off : dy + run->dy_off;
    const T* bp = rows_from_x ? dy + run->dy_off : x + run->x_off;
    if (ncols == kMax || b_end - (bp + (run->count - 1) * b_step) >= kMax)
      AccumulateRun<T, Acc, R, CV, kFullRows, true>(r, ap, bp, run->count, a_step, b_step, lane, ncols);
    else
      AccumulateRun<T, Acc, R, CV, kFullRows, false>(r, ap, bp, run->count, a_step, b_step, lane, ncols);
  }
  for (int i = 0; i < R; ++i)
    for (int c = 0; c < CV; ++c) acc[i][c] = r[i][c];
}

// Rows are output channels (and columns input channels) when that fills the vectors better.
inline bool WeightGradRowsFromX(const ConvProblem& pb) { return !(pb.out_ch < pb.in_ch && pb.out_ch < 16); }

// The weight-gradient tile: kWgRows x kWgColVecs vectors (the forward's shape; 6x4, 12x2 and 8x3 were no faster),
// or, when there are only a few row channels (a layer with 1-3 output channels), as many rows as there are (at
// most kFewRows) x kFewColVecs vectors, so no FMA is spent on a repeated row.
constexpr int kWgRows = kRows;
constexpr int kWgColVecs = kColVecs;
constexpr int kFewRows = 4;
constexpr int kFewColVecs = 16 / kFewRows;
// An item owns this many register tiles of row channels and walks the pixels in chunks of about kChunkPixels,
// updating all of its tiles from each chunk while the chunk's activations are in cache.
constexpr int64_t kWgradRowTiles = 8;
constexpr int64_t kChunkPixels = 128;
// Work items per thread that the weight gradient aims for when it splits blocks of dW, and the most bytes of
// register tiles its parts keep.
constexpr int64_t kItemsPerWorker = 4;
constexpr int64_t kMaxPartialBytes = int64_t{64} << 20;
// The fewest multiply-adds (about) worth a part of its own: below, the split costs more than it balances.
constexpr double kMinPartMacs = 1 << 22;

inline bool WeightGradFewRows(const ConvProblem& pb) {
  return (WeightGradRowsFromX(pb) ? pb.in_ch : pb.out_ch) <= kFewRows;
}

template <typename T, typename U, typename Acc, int R, int CV>
void WeightGradTile(const ConvProblem& pb, int64_t item, int64_t worker) {
  using V = typename Vec<Acc>::type;
  constexpr int64_t kTileCols = CV * Vec<Acc>::kWidth;
  constexpr int64_t kBlock = R * kWgradRowTiles;
  const auto& axes = pb.axes;
  const int64_t d = static_cast<int64_t>(axes.size());
  const bool rows_from_x = WeightGradRowsFromX(pb);
  const int64_t row_ch = rows_from_x ? pb.in_ch : pb.out_ch;
  const int64_t col_ch = rows_from_x ? pb.out_ch : pb.in_ch;
  const int64_t blocks = std::max<int64_t>(1, (row_ch + kBlock - 1) / kBlock);
  const int64_t num_phases = static_cast<int64_t>(pb.phases.size());

  const int64_t parts = pb.wg_parts;
  const int64_t part = item % parts;
  const int64_t block_item = item / parts;
  const int64_t rb = block_item % blocks;
  const PhaseND& phase = pb.phases[(block_item / blocks) % num_phases];
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
  int64_t lines = pb.batch;
  for (int64_t a = 0; a < last; ++a) lines *= phase.count[a];
  const int64_t chunk_lines = std::max<int64_t>(1, kChunkPixels / std::max<int64_t>(1, line));
  const int64_t lines_begin = lines * part / parts, lines_end = lines * (part + 1) / parts;
  int64_t in_stride[kMaxSpatialDims], out_stride[kMaxSpatialDims];
  PixelStrides(axes, true, in_stride);
  PixelStrides(axes, false, out_stride);
  const int64_t x_step = pb.in_ch, dy_step = axes[last].stride * pb.out_ch;
  // The end of the array the columns come from (no vector read may pass it).
  const T* b_end = rows_from_x ? static_cast<const T*>(pb.second) + pb.groups * pb.batch * pb.OutSpatial() * pb.out_ch
                               : static_cast<const T*>(pb.first) + pb.groups * pb.batch * pb.InSpatial() * pb.in_ch;

  // (tap, row tile, column tile) register tiles, in this worker's or this part's slot of the scratch (sized by
  // WeightGradScratchBytes).
  const int64_t sum_vecs = taps * row_tiles * col_tiles * tile_vecs;
  V* sums = static_cast<V*>(pb.Scratch(parts > 1 ? item : worker));
  std::fill(sums, sums + sum_vecs, V{});
  thread_local std::vector<Run> runs;
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
        const int64_t gn = g * pb.batch + rest;
        j_flat += qb + tap.offset[last];
        o_flat += qb * axes[last].stride + phase.residue[last];
        runs.push_back(Run{(gn * pb.InSpatial() + j_flat) * pb.in_ch, (gn * pb.OutSpatial() + o_flat) * pb.out_ch,
                           qe - qb});
      }
      if (runs.empty()) continue;
      for (int64_t rt = 0; rt < row_tiles; ++rt) {
        const int64_t r0 = b0 + rt * R;
        const int nrows = static_cast<int>(std::min<int64_t>(R, row_ch - r0));
        const T* x = static_cast<const T*>(pb.first) + (rows_from_x ? r0 : 0);
        const T* dy = static_cast<const T*>(pb.second) + (rows_from_x ? 0 : r0);
        for (int64_t ct = 0; ct < col_tiles; ++ct) {
          const int64_t c0 = ct * kTileCols;
          const int ncols = static_cast<int>(std::min<int64_t>(kTileCols, col_ch - c0));
          V(&acc)[R][CV] =
              *reinterpret_cast<V(*)[R][CV]>(&sums[((t * row_tiles + rt) * col_tiles + ct) * tile_vecs]);
          const T* xc = rows_from_x ? x : x + c0;
          const T* dyc = rows_from_x ? dy + c0 : dy;
          if (nrows == R)
            AccumulateRuns<T, Acc, R, CV, true>(acc, runs.data(), runs.data() + runs.size(), rows_from_x, xc, dyc,
                                                b_end, x_step, dy_step, nrows, ncols);
          else
            AccumulateRuns<T, Acc, R, CV, false>(acc, runs.data(), runs.data() + runs.size(), rows_from_x, xc,
                                                 dyc, b_end, x_step, dy_step, nrows, ncols);
        }
      }
    }
  }

  if (parts > 1) {
    // The last part of this block to finish adds up all parts' tiles (in part order, so the result does not
    // depend on which thread came last) and stores them; acq_rel makes the other parts' tiles visible.
    if (pb.parts_done[block_item].fetch_add(1, std::memory_order_acq_rel) != parts - 1) return;
    sums = static_cast<V*>(pb.Scratch(block_item * parts));
    for (int64_t p = 1; p < parts; ++p) {
      const V* other = static_cast<const V*>(pb.Scratch(block_item * parts + p));
      for (int64_t v = 0; v < sum_vecs; ++v) sums[v] += other[v];
    }
  }

  // Every tap is stored, also one that never meets the input (its gradient is zero).
  for (int64_t t = 0; t < taps; ++t) {
    U* dw = static_cast<U*>(pb.result) + (g * pb.KernelSpatial() + pb.StoredTap(phase.taps[t].k)) * pb.in_ch * pb.out_ch;
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
            dw[pb.StoredChannels(ci, co)] = FromAcc<U>(tile[i][c]);
          }
      }
    }
  }
}

template <typename T, typename U, typename Acc>
void WeightGradItem(const ConvProblem& pb, int64_t item, int64_t worker) {
  if (!WeightGradFewRows(pb)) return WeightGradTile<T, U, Acc, kWgRows, kWgColVecs>(pb, item, worker);
  // A tile exactly as tall as the row channels: no FMA on a repeated row.
  switch (WeightGradRowsFromX(pb) ? pb.in_ch : pb.out_ch) {
    case 1: return WeightGradTile<T, U, Acc, 1, kFewColVecs>(pb, item, worker);
    case 2: return WeightGradTile<T, U, Acc, 2, kFewColVecs>(pb, item, worker);
    case 3: return WeightGradTile<T, U, Acc, 3, kFewColVecs>(pb, item, worker);
    default: return WeightGradTile<T, U, Acc, kFewRows, kFewColVecs>(pb, item, worker);
  }
}

// The most bytes of register tiles one weight-gradient item keeps (WeightGradTile's `sums`), for any tile shape.
template <typename Acc>
int64_t WeightGradScratchBytes(const ConvProblem& pb) {
  int64_t taps = 0;
  for (const PhaseND& p : pb.phases) taps = std::max<int64_t>(taps, static_cast<int64_t>(p.taps.size()));
  const int64_t col_ch = WeightGradRowsFromX(pb) ? pb.out_ch : pb.in_ch;
  const int64_t min_cols = std::min(kWgColVecs, kFewColVecs) * Vec<Acc>::kWidth;
  const int64_t tile_vecs = std::max(kWgRows * kWgColVecs, kFewRows * kFewColVecs);
  return taps * kWgradRowTiles * ((col_ch + min_cols - 1) / min_cols) * tile_vecs *
         static_cast<int64_t>(sizeof(typename Vec<Acc>::type));
}

// ---------------------------------------------------------------------------------------------------------------
// Prepare / run, dispatched on (input type, output type).

template <typename T, typename U>
bool PrepareTyped(ConvProblem& pb) {
  using Acc = AccFor<T>;
  const int64_t zero_len = std::max<int64_t>(pb.in_ch, pb.out_ch) + 64;
  pb.zeros = AllocateAligned(zero_len * static_cast<int64_t>(sizeof(T)));
  if (!pb.zeros) return false;
  std::memset(pb.zeros.get(), 0, static_cast<size_t>(zero_len) * sizeof(T));
  switch (pb.pass) {
    case Pass::kForward: {
      pb.phases = MakePhasesND(pb.axes);
      pb.phase_blocks = 0;
      for (const PhaseND& p : pb.phases)
        pb.phase_blocks = std::max(pb.phase_blocks, (pb.batch * p.pixels + kBlockRows - 1) / kBlockRows);
      pb.num_items = pb.groups * pb.phase_blocks * static_cast<int64_t>(pb.phases.size());
      pb.image_forward = UseImageForward(pb, sizeof(Acc));
      if (pb.image_forward) {
        pb.num_items = pb.groups * pb.batch;
        // The tile width (1 .. kWideColVecs vectors) that pads the ksp * Co columns least; the wider on a tie.
        const int64_t cols = pb.KernelSpatial() * pb.out_ch;
        pb.image_col_vecs = 1;
        for (int cv = 2; cv <= kWideColVecs; ++cv)
          if (RoundUp(cols, cv * Vec<Acc>::kWidth) <= RoundUp(cols, pb.image_col_vecs * Vec<Acc>::kWidth))
            pb.image_col_vecs = cv;
        return PackTapColumns<T, Acc>(pb);
      }
      // Few output channels and enough input channels to fill the vectors: the dot-product form.
      pb.narrow_out = pb.out_ch >= 1 && pb.out_ch <= kNarrowMax && pb.in_ch >= Vec<Acc>::kWidth;
      return PackWeights<T, Acc>(pb, /*transpose=*/pb.narrow_out);
    }
    case Pass::kInputGrad: {
      // links[begin[a] + j*K + k]: output pixel offset (in the flat output) that tap k links with input j on
      // axis a, or kOutside; the sentinel keeps any sum over the axes negative.
      constexpr int64_t kOutside = -(int64_t{1} << 58);
      int64_t out_stride[kMaxSpatialDims];
      PixelStrides(pb.axes, false, out_stride);
      // Tap k links input j with output j*s + lo - d*k, so where every tap of an axis reaches the output (the
      // interior inputs), tap t's output is the pixel's tap-0 output plus tap_shift[t] (in elements).
      const int64_t d = static_cast<int64_t>(pb.axes.size());
      pb.links.clear();
      pb.links_begin.assign(d, 0);
      pb.interior_begin.assign(d, 0);
      pb.interior_end.assign(d, 0);
      pb.tap_shift.assign(pb.KernelSpatial(), 0);
      for (int64_t a = 0; a < d; ++a) {
        const AxisGeometry& ax = pb.axes[a];
        pb.links_begin[a] = static_cast<int64_t>(pb.links.size());
        pb.interior_begin[a] = ax.in_size;
        for (int64_t j = 0; j < ax.in_size; ++j) {
          bool all = true;
          for (int64_t k = 0; k < ax.kernel_size; ++k) {
            const int64_t o = ax.OutputOf(k, j);
            all &= o >= 0;
            pb.links.push_back(o >= 0 ? o * out_stride[a] : kOutside);
          }
          if (all) {
            pb.interior_begin[a] = std::min(pb.interior_begin[a], j);
            pb.interior_end[a] = j + 1;
          }
        }
      }
      for (int64_t t = 0; t < pb.KernelSpatial(); ++t) {
        int64_t rest = t, shift = 0;
        for (int64_t a = d - 1; a >= 0; --a) {
          const int64_t k = rest % pb.axes[a].kernel_size;
          rest /= pb.axes[a].kernel_size;
          shift -= pb.axes[a].dilation * k * out_stride[a];
        }
        pb.tap_shift[t] = shift * pb.out_ch;
      }
      pb.num_items = pb.groups * ((pb.batch * pb.InSpatial() + kBlockRows - 1) / kBlockRows);
      return PackWeights<T, Acc>(pb, /*transpose=*/true);
    }
    case Pass::kWeightGrad: {
      // Blocks of dW are (group, phase, block of row channels); phases with more taps first, so the threads that
      // take the last items finish together.
      pb.phases = MakePhasesND(pb.axes);
      std::stable_sort(pb.phases.begin(), pb.phases.end(),
                       [](const PhaseND& a, const PhaseND& b) { return a.taps.size() > b.taps.size(); });
      const int64_t rows = WeightGradRowsFromX(pb) ? pb.in_ch : pb.out_ch;
      const int64_t block = (WeightGradFewRows(pb) ? kFewRows : kWgRows) * kWgradRowTiles;
      const int64_t blocks = pb.groups * static_cast<int64_t>(pb.phases.size()) *
                             std::max<int64_t>(1, (rows + block - 1) / block);
      pb.scratch_bytes = RoundUp(std::max<int64_t>(WeightGradScratchBytes<Acc>(pb), 64), 64);
      // With fewer blocks than threads, some threads would idle: split each block into parts over ranges of
      // pixels, kItemsPerWorker items per thread, as long as the parts' tiles stay small. Not with more blocks:
      // splitting ebgan-celeba-g4's 4 blocks for 2 threads cost it 10 %.
      int64_t min_lines = pb.batch;
      for (const PhaseND& p : pb.phases) {
        int64_t lines = pb.batch;
        for (size_t a = 0; a + 1 < pb.axes.size(); ++a) lines *= p.count[a];
        min_lines = std::min(min_lines, lines);
      }
      const int64_t want = blocks >= pb.workers ? 1 : (kItemsPerWorker * pb.workers + blocks - 1) / blocks;
      const int64_t fit = kMaxPartialBytes / (blocks * pb.scratch_bytes);
      const double block_macs = static_cast<double>(pb.groups * pb.batch * pb.InSpatial()) *
                                static_cast<double>(pb.KernelSpatial() * pb.in_ch * pb.out_ch) / blocks;
      const int64_t worth = static_cast<int64_t>(std::min(block_macs / kMinPartMacs, 1e6));
      pb.wg_parts = std::max<int64_t>(1, std::min({want, fit, min_lines, worth}));
      pb.num_items = blocks * pb.wg_parts;
      if (pb.wg_parts > 1) {
        pb.parts_done = std::make_unique<std::atomic<int64_t>[]>(blocks);
        for (int64_t b = 0; b < blocks; ++b) pb.parts_done[b].store(0, std::memory_order_relaxed);
      }
      pb.scratch = AcquireBuffer((pb.wg_parts > 1 ? pb.num_items : pb.workers) * pb.scratch_bytes);
      return pb.scratch != nullptr;
    }
  }
  return false;
}

template <typename T, typename U>
void RunTyped(const ConvProblem& pb, int64_t begin, int64_t end, int64_t worker) {
  using Acc = AccFor<T>;
  for (int64_t i = begin; i < end; ++i) {
    switch (pb.pass) {
      case Pass::kForward:
        if (pb.image_forward)
          ImageForwardItem<T, U, Acc>(pb, i);
        else
          ForwardItem<T, U, Acc>(pb, i);
        break;
      case Pass::kInputGrad:
        InputGradItem<T, U, Acc>(pb, i);
        break;
      case Pass::kWeightGrad:
        WeightGradItem<T, U, Acc>(pb, i, worker);
        break;
    }
  }
}

template <template <typename, typename> class Fn, typename... Args>
auto DispatchTypes(const ConvProblem& pb, Args&&... args) {
  using R = decltype(Fn<float, float>::Call(args...));
  switch (pb.operand_type) {
    case DType::kF32:
      return Fn<float, float>::Call(args...);
    case DType::kF64:
      return Fn<double, double>::Call(args...);
    case DType::kBF16:
      return pb.result_type == DType::kF32 ? Fn<bf16_t, float>::Call(args...) : Fn<bf16_t, bf16_t>::Call(args...);
    case DType::kF16:
      return pb.result_type == DType::kF32 ? Fn<f16_t, float>::Call(args...) : Fn<f16_t, f16_t>::Call(args...);
  }
  return R();
}

template <typename T, typename U>
struct PrepareFn {
  static bool Call(ConvProblem& pb) { return PrepareTyped<T, U>(pb); }
};
template <typename T, typename U>
struct RunFn {
  static void Call(const ConvProblem& pb, int64_t b, int64_t e, int64_t w) { RunTyped<T, U>(pb, b, e, w); }
};

bool Prepare(ConvProblem& pb) { return DispatchTypes<PrepareFn>(pb, pb); }
void Run(const ConvProblem& pb, int64_t begin, int64_t end, int64_t worker) {
  DispatchTypes<RunFn>(pb, pb, begin, end, worker);
}

}  // namespace

const KernelSet& Kernels() {
  static const KernelSet kSet{JAXSEG_ISA_NAME, &Prepare, &Run};
  return kSet;
}

}  // namespace jaxseg::cpu::JAXSEG_ISA
