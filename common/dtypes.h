// The one table of what the kernels compute: for each operand dtype (both operands share it), the type they
// accumulate in and the result dtypes they may write. Plain C++17, shared by the CPU and CUDA handlers and
// exported to Python by the extension module; anything else is cast by the Python side or goes to XLA.
#ifndef JAXSEG_COMMON_DTYPES_H_
#define JAXSEG_COMMON_DTYPES_H_

#include <cstdint>

namespace jaxseg {

enum class DType { kF32, kF64, kBF16, kF16 };

struct DTypeRule {
  DType operand;
  DType accumulate;
  DType results[2];
  int num_results;
};

// 16-bit operands accumulate in float32, as XLA's own convolutions do, and may write float32
// (preferred_element_type) without a rounding to 16 bits in between.
inline constexpr DTypeRule kDTypeRules[] = {
    {DType::kF32, DType::kF32, {DType::kF32, DType::kF32}, 1},
    {DType::kF64, DType::kF64, {DType::kF64, DType::kF64}, 1},
    {DType::kBF16, DType::kF32, {DType::kBF16, DType::kF32}, 2},
    {DType::kF16, DType::kF32, {DType::kF16, DType::kF32}, 2},
};

// How float32 operands are multiplied: the `precision` attribute of every call, from the primitive's precision
// (jaxseg/_passes.py). kDefault is what XLA's GPU convolutions do at precision None/DEFAULT/HIGH, TF32 tensor
// cores on Ampere and later (jax.lax.Precision: "On GPU: uses tensorfloat32 if available"); kHighest is float32
// accuracy (HIGHEST: "On GPU: uses float32"). The CPU kernels compute exactly at both; the other dtypes ignore it.
enum class Precision : int64_t { kDefault = 0, kHighest = 1 };

constexpr const DTypeRule& Rule(DType operand) { return kDTypeRules[static_cast<int>(operand)]; }

// NumPy's name of the dtype.
constexpr const char* DTypeName(DType t) {
  switch (t) {
    case DType::kF32: return "float32";
    case DType::kF64: return "float64";
    case DType::kBF16: return "bfloat16";
    case DType::kF16: return "float16";
  }
  return "";
}

constexpr bool WritesResult(DType operand, DType result) {
  const DTypeRule& r = Rule(operand);
  for (int i = 0; i < r.num_results; ++i)
    if (r.results[i] == result) return true;
  return false;
}

}  // namespace jaxseg

#endif  // JAXSEG_COMMON_DTYPES_H_
