// Vectors and register tiles of one kernel build: the tile shape of the instruction set, vectors of the
// accumulation type as wide as the build's registers (GCC vector extensions), loads at any address, stores of a
// tile to its rows, and the sum of a vector's lanes.
//
// The planning side counts columns in 64-byte lines (KernelSet::col_vecs, the panels' and partial sums' layout);
// a build whose registers are narrower holds a line in 64 / JAXSEG_VECTOR_BYTES registers. The vectors must be
// the registers' width: GCC keeps a vector wider than any register of the target in memory, and every FMA of a
// tile then loads and stores it (the avx2 and generic builds ran at a tenth of their FMA rate so, NOTES).
//
// Compiled once per instruction set, for the micro-kernels only (cpu/kernel_set.h): the including
// cpu/kernels_<isa>.cc defines JAXSEG_ISA (the namespace), JAXSEG_VECTOR_BYTES (its registers' width) and the tile
// JAXSEG_ROWS x JAXSEG_COL_VECS in lines (optionally JAXSEG_WIDE_COL_VECS, and JAXSEG_BF16_DOT where the build has
// the bf16 dot product), and is built with the instruction set's flags.
#ifndef JAXSEG_CPU_SIMD_H_
#define JAXSEG_CPU_SIMD_H_

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cpu/numeric.h"

#if !defined(JAXSEG_ISA) || !defined(JAXSEG_ROWS) || !defined(JAXSEG_COL_VECS) || !defined(JAXSEG_VECTOR_BYTES)
#error "cpu/simd.h belongs to a kernel build: include it from cpu/kernels_<isa>.cc"
#endif

namespace jaxseg::cpu::JAXSEG_ISA {
namespace {

// Bytes per vector register, and registers per 64-byte line of the planning side.
constexpr int kVectorBytes = JAXSEG_VECTOR_BYTES;
static_assert(kVectorBytes == 16 || kVectorBytes == 32 || kVectorBytes == 64);
// The widest register the build's flags give: a vector wider than that would live in memory (see above).
#if defined(__AVX512F__)
constexpr int kRegisterBytes = 64;
#elif defined(__AVX__)
constexpr int kRegisterBytes = 32;
#else
constexpr int kRegisterBytes = 16;
#endif
static_assert(kVectorBytes <= kRegisterBytes, "JAXSEG_VECTOR_BYTES wider than this build's vector registers");
constexpr int kVectorsPerLine = 64 / kVectorBytes;
// The register tile of the products: kRows rows x kColVecs vectors (JAXSEG_COL_VECS lines).
constexpr int kRows = JAXSEG_ROWS;
constexpr int kColVecs = JAXSEG_COL_VECS * kVectorsPerLine;
// The widest tile (kRows rows) for a product with few columns, where the register file allows more than
// kColVecs: the forward with few output channels (ImageForwardItem in cpu/forward.h). In lines, as the planning
// side counts.
#ifndef JAXSEG_WIDE_COL_VECS
#define JAXSEG_WIDE_COL_VECS JAXSEG_COL_VECS
#endif
constexpr int kWideLines = JAXSEG_WIDE_COL_VECS;
// The weight gradient's tile for 1-4 row channels: up to KernelSet::few_rows rows x JAXSEG_FEW_COL_VECS lines.
#ifndef JAXSEG_FEW_COL_VECS
#define JAXSEG_FEW_COL_VECS 4
#endif
constexpr int kFewLines = JAXSEG_FEW_COL_VECS;

// Builds with the bf16 dot-product instruction (JAXSEG_BF16_DOT) multiply bfloat16 operands as pairs, accumulating
// in float32 (cpu/bf16_dot.h), instead of widening each element to float32 for an FMA.
#ifdef JAXSEG_BF16_DOT
constexpr bool kBf16Dot = true;
#else
constexpr bool kBf16Dot = false;
#endif
template <typename T>
constexpr bool kPairs = kBf16Dot && std::is_same_v<T, bf16_t>;

typedef float VecF32 __attribute__((vector_size(kVectorBytes)));
typedef double VecF64 __attribute__((vector_size(kVectorBytes)));
// The same vectors at any element address (loads compile to unaligned moves). Not usable as template arguments,
// which drop the alignment attribute: LoadUnaligned picks one.
typedef float VecF32U __attribute__((vector_size(kVectorBytes), aligned(4)));
typedef double VecF64U __attribute__((vector_size(kVectorBytes), aligned(8)));

typedef int32_t MaskF32 __attribute__((vector_size(kVectorBytes)));
typedef int64_t MaskF64 __attribute__((vector_size(kVectorBytes)));

template <typename Acc>
struct Vec {
  using type = std::conditional_t<std::is_same_v<Acc, double>, VecF64, VecF32>;
  using mask = std::conditional_t<std::is_same_v<Acc, double>, MaskF64, MaskF32>;  // lanes of all ones or zeros
  static constexpr int kWidth = kVectorBytes / sizeof(Acc);
  static constexpr int kCols = kColVecs * kWidth;
};

// A lane mask of all ones where `on`, for `mask ? a : b` selects.
template <typename Acc>
inline typename Vec<Acc>::mask LaneMask(bool on) {
  return typename Vec<Acc>::mask{} - static_cast<int>(on);
}

constexpr int64_t RoundUp(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

// std::min's job, in this build's own namespace: a build calls no inline function that another object emits too
// (cpu/kernel_set.h).
template <typename X>
constexpr X Min(X a, X b) {
  return b < a ? b : a;
}

// What the panels of operand type T hold (cpu/packing.h): bf16 pairs where the build has the dot product for
// them, else the accumulation type; and a panel's depth rows (with pairs, whole pairs).
template <typename T, typename Acc>
using PanelElement = std::conditional_t<kPairs<T>, T, Acc>;

template <typename T>
constexpr int64_t PanelDepth(int64_t depth) {
  return kPairs<T> ? RoundUp(depth, 2) : depth;
}

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

// Stores the first `rows` x `cols` values of a tile, row i to dst[i], converted to the result type.
template <typename U, typename Acc, int CV = kColVecs>
inline void StoreTile(const typename Vec<Acc>::type (&acc)[kRows][CV], U* const (&dst)[kRows], int rows, int cols) {
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

// The sum of a vector's lanes, by halving down to 16 bytes (fewer dependent adds than a lane-by-lane sum).
template <typename Acc, int kBytes>
inline Acc SumLanes(const Acc (&v)[kBytes / sizeof(Acc)]) {
  if constexpr (kBytes == 16) {
    Acc sum = 0;
    for (const Acc l : v) sum += l;
    return sum;
  } else {
    typedef Acc Half __attribute__((vector_size(kBytes / 2)));
    Half h[2];
    std::memcpy(h, v, sizeof(h));
    const Half a = h[0] + h[1];
    Acc lanes[kBytes / 2 / sizeof(Acc)];
    std::memcpy(lanes, &a, sizeof(lanes));
    return SumLanes<Acc, kBytes / 2>(lanes);
  }
}

template <typename Acc>
inline Acc HorizontalSum(const typename Vec<Acc>::type& v) {
  Acc lanes[Vec<Acc>::kWidth];
  std::memcpy(lanes, &v, sizeof(lanes));
  return SumLanes<Acc, kVectorBytes>(lanes);
}

}  // namespace
}  // namespace jaxseg::cpu::JAXSEG_ISA

#endif  // JAXSEG_CPU_SIMD_H_
