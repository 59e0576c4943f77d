// The bfloat16 micro-kernels of builds with the bf16 dot-product instruction (AVX512-BF16's vdpbf16ps): each
// 32-bit lane of its operands holds a pair of bf16 values adjacent in the depth of the product, and it adds both
// products of a lane's pair into the lane's float32 accumulator: 32 multiply-adds per 512-bit instruction, twice
// a float32 FMA's. Here: one tap of the gathered block product (cpu/gather_gemm.h) into a register tile, the same
// in dot-product form, the weight gradient's tile over packed pixel pairs (cpu/weight_grad.h), and the
// interleaving that packs those pairs.
//
// A product with padding contributes nothing, as in XLA: where some rows of a tile read the zero row for a tap
// (cpu/gather_gemm.h), the `kMasked` forms keep those rows' accumulators unchanged (a select per product, as the
// float32 path does), so an infinity in the weights meets no padding zero. The element after an odd depth's last
// one is never read (it is another pixel's, or past the array), and the zero that completes that last pair stands
// in both operands. Selects on vector masks (cpu/simd.h's LaneMask), not mask-register intrinsics: GCC 12 with
// AVX512DQ moved 16-bit masks with kmovb, dropping their upper 8 lanes.
//
// Declared for every build, so the products can name these kernels in branches that only builds with the
// instruction take (kPairs in cpu/simd.h); defined only where JAXSEG_BF16_DOT is set (flags in CMakeLists.txt).
#ifndef JAXSEG_CPU_BF16_DOT_H_
#define JAXSEG_CPU_BF16_DOT_H_

#include <cstdint>
#include <cstring>

#include "cpu/numeric.h"
#include "cpu/simd.h"

#ifdef JAXSEG_BF16_DOT
#include <immintrin.h>
#endif

namespace jaxseg::cpu::JAXSEG_ISA {
namespace {

// bf16 values per 512-bit vector (pairs per vector: 16, one per float32 lane).
constexpr int64_t kBf16PerVector = 32;

// One tap into R rows of a register tile: acc[i][c] += rows[i][0:depth] . panel[:, column vector c], the panel
// holding ceil(depth / 2) pairs of CV vectors (cpu/packing.h, pair layout). With kMasked, only rows i whose
// keep[i] is all ones.
template <int R, int CV, bool kMasked>
void PairTap(VecF32 (*acc)[CV], const bf16_t* const* rows, const bf16_t* panel, int64_t depth, const MaskF32* keep);

// The dot-product form of one tap (few columns): acc[i][c] += rows[i][0:depth] . panel row c, vectors over the
// depth; the panel is (depth tile of kBf16PerVector, C rows, kBf16PerVector) with zeros past the depth. The lanes
// of acc are summed at the end. With kMasked, only rows i whose keep[i] is all ones.
template <int R, int C, bool kMasked>
void PairNarrowTap(VecF32 (*acc)[C], const bf16_t* const* rows, const bf16_t* panels, int64_t depth,
                   const MaskF32* keep);

// acc[i][c] += sum over `pairs` pairs j of a[j * lda + i] . b[j][column c]: a holds the pairs of the tile's rows,
// b those of its CV vectors of columns (InterleavePairs).
template <int R, int CV>
void PairPanelTile(VecF32 (&acc)[R][CV], const uint32_t* a, int64_t lda, const uint32_t* b, int64_t pairs);

// dst[c] = (lo[c], hi[c]) as one 32-bit pair for c < n, zero for n <= c < total; a null hi pairs lo with zeros.
// Plain vector code, compiled in every build.
inline void InterleavePairs(uint32_t* dst, const bf16_t* lo, const bf16_t* hi, int64_t n, int64_t total) {
  typedef uint16_t Halves __attribute__((vector_size(32)));
  typedef uint32_t Pairs __attribute__((vector_size(64)));
  const int64_t full = n / 16 * 16;
  for (int64_t c = 0; c < full; c += 16) {
    Halves l, h = {};
    std::memcpy(&l, lo + c, sizeof(l));
    if (hi) std::memcpy(&h, hi + c, sizeof(h));
    const Pairs p = __builtin_convertvector(l, Pairs) | (__builtin_convertvector(h, Pairs) << 16);
    std::memcpy(dst + c, &p, sizeof(p));
  }
  for (int64_t c = full; c < total; ++c) dst[c] = c < n ? lo[c].bits | (hi ? uint32_t{hi[c].bits} << 16 : 0u) : 0u;
}

#ifdef JAXSEG_BF16_DOT

// Pair p of a row (elements 2p and 2p+1) in every lane.
inline __m512bh BroadcastPair(const bf16_t* row, int64_t p) {
  int32_t v;
  std::memcpy(&v, row + 2 * p, sizeof(v));
  return (__m512bh)_mm512_set1_epi32(v);
}

// The last element of a row of odd length n, paired with zero, in every lane.
inline __m512bh BroadcastLast(const bf16_t* row, int64_t n) { return (__m512bh)_mm512_set1_epi32(row[n - 1].bits); }

inline VecF32 Dot(VecF32 acc, __m512bh a, __m512bh b) { return (VecF32)_mm512_dpbf16_ps((__m512)acc, a, b); }

// acc + a . b, or acc unchanged in the lanes where keep is zero (kMasked).
template <bool kMasked>
inline VecF32 DotKept(VecF32 acc, __m512bh a, __m512bh b, MaskF32 keep) {
  if constexpr (kMasked) {
    return keep ? Dot(acc, a, b) : acc;
  } else {
    return Dot(acc, a, b);
  }
}

template <int R, int CV, bool kMasked>
inline void PairTap(VecF32 (*acc)[CV], const bf16_t* const* rows, const bf16_t* panel, int64_t depth,
                    const MaskF32* keep) {
  constexpr int64_t kPairRow = CV * kBf16PerVector;  // bf16 values per pair of depth rows
  MaskF32 k[R] = {};
  if constexpr (kMasked)
    for (int i = 0; i < R; ++i) k[i] = keep[i];
  const auto step = [&](const bf16_t* b, auto broadcast) __attribute__((always_inline)) {
    __m512bh bv[CV];
#pragma GCC unroll 4
    for (int c = 0; c < CV; ++c) bv[c] = (__m512bh)_mm512_load_si512(b + c * kBf16PerVector);
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      const __m512bh a = broadcast(rows[i]);
#pragma GCC unroll 4
      for (int c = 0; c < CV; ++c) acc[i][c] = DotKept<kMasked>(acc[i][c], a, bv[c], k[i]);
    }
  };
  const int64_t pairs = depth / 2;
  for (int64_t p = 0; p < pairs; ++p)
    step(panel + p * kPairRow, [p](const bf16_t* row) { return BroadcastPair(row, p); });
  if (depth & 1) step(panel + pairs * kPairRow, [depth](const bf16_t* row) { return BroadcastLast(row, depth); });
}

template <int R, int C, bool kMasked>
inline void PairNarrowTap(VecF32 (*acc)[C], const bf16_t* const* rows, const bf16_t* panels, int64_t depth,
                          const MaskF32* keep) {
  MaskF32 k[R] = {};
  if constexpr (kMasked)
    for (int i = 0; i < R; ++i) k[i] = keep[i];
  const auto step = [&](const bf16_t* panel, auto load) __attribute__((always_inline)) {
    __m512bh x[R];
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) x[i] = load(rows[i]);
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) {
      const __m512bh w = (__m512bh)_mm512_load_si512(panel + c * kBf16PerVector);
#pragma GCC unroll 8
      for (int i = 0; i < R; ++i) acc[i][c] = DotKept<kMasked>(acc[i][c], x[i], w, k[i]);
    }
  };
  const int64_t full = depth / kBf16PerVector * kBf16PerVector;
  for (int64_t d0 = 0; d0 < full; d0 += kBf16PerVector)
    step(panels + d0 * C, [d0](const bf16_t* row) { return (__m512bh)_mm512_loadu_si512(row + d0); });
  if (full == depth) return;
  // The rows' tail, zero-padded: no element past the depth (another pixel's) meets a weight.
  step(panels + full * C, [full, depth](const bf16_t* row) {
    bf16_t tail[kBf16PerVector] = {};
    std::memcpy(tail, row + full, (depth - full) * sizeof(bf16_t));
    return (__m512bh)_mm512_loadu_si512(tail);
  });
}

template <int R, int CV>
inline void PairPanelTile(VecF32 (&acc)[R][CV], const uint32_t* a, int64_t lda, const uint32_t* b, int64_t pairs) {
  constexpr int kLanes = 16;
  VecF32 r[R][CV];
  for (int i = 0; i < R; ++i)
    for (int c = 0; c < CV; ++c) r[i][c] = acc[i][c];
  for (int64_t j = 0; j < pairs; ++j, a += lda, b += CV * kLanes) {
    __m512bh bv[CV];
#pragma GCC unroll 4
    for (int c = 0; c < CV; ++c) bv[c] = (__m512bh)_mm512_load_si512(b + c * kLanes);
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int32_t>(a[i]));
#pragma GCC unroll 4
      for (int c = 0; c < CV; ++c) r[i][c] = Dot(r[i][c], av, bv[c]);
    }
  }
  for (int i = 0; i < R; ++i)
    for (int c = 0; c < CV; ++c) acc[i][c] = r[i][c];
}

#endif  // JAXSEG_BF16_DOT

}  // namespace
}  // namespace jaxseg::cpu::JAXSEG_ISA

#endif  // JAXSEG_CPU_BF16_DOT_H_
