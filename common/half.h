// The 16-bit floats (bfloat16, IEEE half) as the host code stores them, and their conversions to and from the
// accumulation type: read exactly into float, stored with rounding to nearest-even (as XLA's CPU code and the
// GPU's stores round). Used by the CPU kernels (through cpu/numeric.h) and by the CPU executor of the CUDA
// kernels' plans (cuda/plan_executor.cc); the CUDA kernels themselves use the CUDA types.
//
// Everything here has internal linkage (an unnamed namespace): each object that includes it compiles its own copy
// with its own flags, so a per-instruction-set build can never lend the linker an AVX-512 copy of these functions
// for the objects that must run without it.
#ifndef JAXSEG_COMMON_HALF_H_
#define JAXSEG_COMMON_HALF_H_

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace jaxseg::half {
namespace {

struct bf16_t {
  uint16_t bits;
};
struct f16_t {
  uint16_t bits;
};

inline float BitsToFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}
inline uint32_t FloatToBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

inline float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  if (exp == 0) {  // zero or subnormal: mant * 2^-24, exact in float
    const float v = static_cast<float>(mant) * 5.9604644775390625e-08f;
    return BitsToFloat(FloatToBits(v) | sign);
  }
  if (exp == 31) return BitsToFloat(sign | 0x7f800000u | (mant << 13));  // inf / nan
  return BitsToFloat(sign | ((exp + 112) << 23) | (mant << 13));
}

inline uint16_t FloatToHalf(float f) {
  uint32_t x = FloatToBits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  x &= 0x7fffffffu;
  if (x >= 0x7f800000u) return static_cast<uint16_t>(sign | (x > 0x7f800000u ? 0x7e00u : 0x7c00u));
  if (x >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to infinity
  if (x < 0x38800000u) {
    // Below the smallest normal half: adding 0.5 puts the value's half-subnormal units in the low mantissa
    // bits of a float whose ulp is 2^-24, so the addition itself rounds to nearest-even.
    const float v = BitsToFloat(x) + 0.5f;
    return static_cast<uint16_t>(sign | (FloatToBits(v) - 0x3f000000u));
  }
  const uint32_t odd = (x >> 13) & 1u;
  x += 0xc8000fffu + odd;  // rebias the exponent by -112 and round the 13 dropped bits to nearest-even
  return static_cast<uint16_t>(sign | (x >> 13));
}

inline float Bf16ToFloat(uint16_t b) { return BitsToFloat(static_cast<uint32_t>(b) << 16); }

inline uint16_t FloatToBf16(float f) {
  uint32_t u = FloatToBits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet nan
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// A stored element read into the accumulation type.
template <typename Acc, typename T>
inline Acc ToAcc(T v) {
  if constexpr (std::is_same_v<T, bf16_t>) {
    return Bf16ToFloat(v.bits);
  } else if constexpr (std::is_same_v<T, f16_t>) {
    return HalfToFloat(v.bits);
  } else {
    return static_cast<Acc>(v);
  }
}

// An accumulated value rounded to the stored type.
template <typename U, typename Acc>
inline U FromAcc(Acc v) {
  if constexpr (std::is_same_v<U, bf16_t>) {
    return bf16_t{FloatToBf16(static_cast<float>(v))};
  } else if constexpr (std::is_same_v<U, f16_t>) {
    return f16_t{FloatToHalf(static_cast<float>(v))};
  } else {
    return static_cast<U>(v);
  }
}

}  // namespace
}  // namespace jaxseg::half

#endif  // JAXSEG_COMMON_HALF_H_
