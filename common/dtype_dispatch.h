// The one dtype dispatch of the kernels: from a call's (operand, result) dtypes to C++ types, for exactly the
// pairs the table in common/dtypes.h allows, on any platform. A platform names its storage types in a struct
// with members F32, F64, BF16 and F16 (the CPU's in cpu/numeric.h, CUDA's in cuda/kernels.cu); the dispatch
// instantiates the caller's function once per pair of the table and for no other. Plain C++17.
#ifndef JAXSEG_COMMON_DTYPE_DISPATCH_H_
#define JAXSEG_COMMON_DTYPE_DISPATCH_H_

#include <cstddef>
#include <tuple>
#include <type_traits>
#include <utility>

#include "common/dtypes.h"

namespace jaxseg {

// The C++ types of one pair of the table on one platform: what the operands are stored in, what the result is
// stored in, and what the kernels accumulate in.
template <typename OperandT, typename ResultT, typename AccumulateT>
struct DTypes {
  using Operand = OperandT;
  using Result = ResultT;
  using Accumulate = AccumulateT;
};

// The platform's C++ type of dtype t (in the order of the enum DType).
template <typename Platform, DType t>
using Storage =
    std::tuple_element_t<static_cast<size_t>(t), std::tuple<typename Platform::F32, typename Platform::F64,
                                                            typename Platform::BF16, typename Platform::F16>>;

namespace dtype_dispatch_internal {

// Result `kResult` of rule `kRule` of the table, when it is the asked-for pair: calls fn with its types.
template <typename Platform, size_t kRule, size_t kResult, typename Fn>
bool TryPair(DType operand, DType result, Fn& fn) {
  constexpr DTypeRule kR = kDTypeRules[kRule];
  if constexpr (kResult < static_cast<size_t>(kR.num_results)) {
    if (operand == kR.operand && result == kR.results[kResult]) {
      fn(DTypes<Storage<Platform, kR.operand>, Storage<Platform, kR.results[kResult]>,
                Storage<Platform, kR.accumulate>>{});
      return true;
    }
  }
  return false;
}

template <typename Platform, size_t kRule, typename Fn, size_t... kResults>
bool TryRule(DType operand, DType result, Fn& fn, std::index_sequence<kResults...>) {
  return (TryPair<Platform, kRule, kResults>(operand, result, fn) || ...);
}

template <typename Platform, typename Fn, size_t... kRules>
bool TryRules(DType operand, DType result, Fn& fn, std::index_sequence<kRules...>) {
  constexpr size_t kMaxResults = std::extent_v<decltype(DTypeRule::results)>;
  return (TryRule<Platform, kRules>(operand, result, fn, std::make_index_sequence<kMaxResults>{}) || ...);
}

}  // namespace dtype_dispatch_internal

// Calls fn(DTypes<...>{}) with the platform's types of the pair (operand, result); false, calling nothing, when
// the table has no such pair (DecodeCall in common/ffi_binding.h has rejected those already).
template <typename Platform, typename Fn>
bool DispatchDTypes(DType operand, DType result, Fn&& fn) {
  constexpr size_t kRules = sizeof(kDTypeRules) / sizeof(kDTypeRules[0]);
  return dtype_dispatch_internal::TryRules<Platform>(operand, result, fn, std::make_index_sequence<kRules>{});
}

}  // namespace jaxseg

#endif  // JAXSEG_COMMON_DTYPE_DISPATCH_H_
