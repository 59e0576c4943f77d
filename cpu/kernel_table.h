// The KernelSet (cpu/kernel_set.h) of one kernel build: its tile sizes, and its micro-kernels (cpu/gather_gemm.h,
// cpu/weight_grad_tile.h) instantiated for every dtype pair of the table, each behind one entry point that takes
// the planning side's untyped arguments and picks the register tile's template shape once per block or tap.
//
// Compiled once per instruction set, inside that build's namespace: the including cpu/kernels_<isa>.cc defines
// JAXSEG_ISA, JAXSEG_ISA_NAME and the tile (see cpu/simd.h).
#ifndef JAXSEG_CPU_KERNEL_TABLE_H_
#define JAXSEG_CPU_KERNEL_TABLE_H_

#include <cstdint>

#include "common/dtype_dispatch.h"
#include "common/dtypes.h"
#include "cpu/gather_gemm.h"
#include "cpu/kernel_set.h"
#include "cpu/numeric.h"
#include "cpu/simd.h"
#include "cpu/weight_grad_tile.h"

#ifndef JAXSEG_ISA_NAME
#error "cpu/kernel_table.h belongs to a kernel build: include it from cpu/kernels_<isa>.cc"
#endif

namespace jaxseg::cpu::JAXSEG_ISA {
namespace {

// The planning side counts a tile's columns in 64-byte lines (GatherBlockArgs::col_vecs, WeightGradTapArgs::
// tile_col_vecs); the kernels' templates count this build's vectors, kVectorsPerLine to a line (cpu/simd.h).
template <typename T, typename U, typename Acc>
void GatherBlockKernel(const GatherBlockArgs& a) {
  using P = PanelElement<T, Acc>;
  const auto* src = reinterpret_cast<const T* const*>(a.src);
  auto* const* dst = reinterpret_cast<U* const*>(a.dst);
  const P* w = static_cast<const P*>(a.w);
  const T* zero = static_cast<const T*>(a.zero);
  constexpr int kLine = kVectorsPerLine;
  if constexpr (kWideLines >= 3) {
    if (a.col_vecs == 3)
      return GatherGemmBlock<T, U, Acc, 3 * kLine>(a.rows, a.taps, src, a.tap_k, dst, w, a.depth, a.ncols, a.ld, zero);
  }
  if constexpr (kWideLines >= 2) {
    if (a.col_vecs == 2)
      return GatherGemmBlock<T, U, Acc, 2 * kLine>(a.rows, a.taps, src, a.tap_k, dst, w, a.depth, a.ncols, a.ld, zero);
  }
  if constexpr (kColVecs != kLine) {
    if (a.col_vecs == 1)
      return GatherGemmBlock<T, U, Acc, kLine>(a.rows, a.taps, src, a.tap_k, dst, w, a.depth, a.ncols, a.ld, zero);
  }
  GatherGemmBlock<T, U, Acc, kColVecs>(a.rows, a.taps, src, a.tap_k, dst, w, a.depth, a.ncols, a.ld, zero);
}

template <typename T, typename U, typename Acc>
void NarrowBlockKernel(const GatherBlockArgs& a) {
  using P = PanelElement<T, Acc>;
  const auto* src = reinterpret_cast<const T* const*>(a.src);
  auto* const* dst = reinterpret_cast<U* const*>(a.dst);
  const P* w = static_cast<const P*>(a.w);
  const T* zero = static_cast<const T*>(a.zero);
  switch (a.ncols) {
    case 1: return NarrowBlock<T, U, Acc, 1>(a.rows, a.taps, src, a.tap_k, dst, w, a.depth, a.ld, zero);
    case 2: return NarrowBlock<T, U, Acc, 2>(a.rows, a.taps, src, a.tap_k, dst, w, a.depth, a.ld, zero);
    case 3: return NarrowBlock<T, U, Acc, 3>(a.rows, a.taps, src, a.tap_k, dst, w, a.depth, a.ld, zero);
    default: return NarrowBlock<T, U, Acc, 4>(a.rows, a.taps, src, a.tap_k, dst, w, a.depth, a.ld, zero);
  }
}

template <typename T, typename Acc>
void WeightGradTapKernel(const WeightGradTapArgs& a) {
  constexpr int kFew = kFewLines * kVectorsPerLine;
  if (a.tile_col_vecs * kVectorsPerLine == kColVecs && a.tile_rows == kRows)
    return WeightGradTap<T, Acc, kRows, kColVecs>(a);
  switch (a.tile_rows) {
    case 1: return WeightGradTap<T, Acc, 1, kFew>(a);
    case 2: return WeightGradTap<T, Acc, 2, kFew>(a);
    case 3: return WeightGradTap<T, Acc, 3, kFew>(a);
    default: return WeightGradTap<T, Acc, KernelSet::few_rows, kFew>(a);
  }
}

template <DType kOperand, DType kResult>
constexpr TypedKernels Typed() {
  static_assert(WritesResult(kOperand, kResult));
  using T = Storage<CpuTypes, kOperand>;
  using U = Storage<CpuTypes, kResult>;
  using Acc = Storage<CpuTypes, Rule(kOperand).accumulate>;
  return TypedKernels{&GatherBlockKernel<T, U, Acc>, &GatherBlockKernel<T, Acc, Acc>, &NarrowBlockKernel<T, U, Acc>,
                      &WeightGradTapKernel<T, Acc>};
}

}  // namespace

// Entries in the table's order (cpu/kernel_set.h's DTypePairIndex); the asserts keep the two in step.
static_assert(kNumDTypePairs == 6);
static_assert(DTypePairIndex(DType::kF32, DType::kF32) == 0 && DTypePairIndex(DType::kF64, DType::kF64) == 1 &&
              DTypePairIndex(DType::kBF16, DType::kBF16) == 2 && DTypePairIndex(DType::kBF16, DType::kF32) == 3 &&
              DTypePairIndex(DType::kF16, DType::kF16) == 4 && DTypePairIndex(DType::kF16, DType::kF32) == 5);

extern const KernelSet kKernels;
const KernelSet kKernels{
    JAXSEG_ISA_NAME,
    kRows,
    JAXSEG_COL_VECS,
    kWideLines,
    kFewLines,
    kBf16Dot,
    {Typed<DType::kF32, DType::kF32>(), Typed<DType::kF64, DType::kF64>(), Typed<DType::kBF16, DType::kBF16>(),
     Typed<DType::kBF16, DType::kF32>(), Typed<DType::kF16, DType::kF16>(), Typed<DType::kF16, DType::kF32>()}};

}  // namespace jaxseg::cpu::JAXSEG_ISA

#endif  // JAXSEG_CPU_KERNEL_TABLE_H_
