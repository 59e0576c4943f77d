// The canonical shapes of one pass, read off its buffers and checked against the phase geometry. Shared by the
// CPU and CUDA handlers (plain C++17, no XLA or CUDA headers). Which buffer holds which canonical tensor is the
// pass's description in common/passes.h.
#ifndef JAXSEG_COMMON_CONV_SHAPE_H_
#define JAXSEG_COMMON_CONV_SHAPE_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "common/dtypes.h"
#include "common/passes.h"
#include "common/phase_geometry.h"

namespace jaxseg {

struct Dims {
  const int64_t* data;
  size_t size;
  int64_t operator[](size_t i) const { return data[i]; }
};

struct ConvShape {
  Pass pass = Pass::kForward;
  int64_t groups = 0, batch = 0, in_ch = 0, out_ch = 0;
  bool transpose_kernel = false;  // the kernel is stored flipped (common/passes.h)
  std::vector<AxisGeometry> axes;

  // Where canonical tap k (flat, row-major over the kernel's spatial axes) and channels (ci, co) are stored
  // within one group's kernel.
  int64_t StoredTap(int64_t k) const {
    if (!transpose_kernel) return k;
    int64_t stored = 0, scale = 1;
    for (size_t a = axes.size(); a-- > 0;) {
      const int64_t size = axes[a].kernel_size;
      stored += (size - 1 - k % size) * scale;
      k /= size;
      scale *= size;
    }
    return stored;
  }
  int64_t StoredChannels(int64_t ci, int64_t co) const { return transpose_kernel ? co * in_ch + ci : ci * out_ch + co; }

  int64_t InSpatial() const {
    int64_t n = 1;
    for (const auto& a : axes) n *= a.in_size;
    return n;
  }
  int64_t OutSpatial() const {
    int64_t n = 1;
    for (const auto& a : axes) n *= a.out_size;
    return n;
  }
  int64_t KernelSpatial() const {
    int64_t n = 1;
    for (const auto& a : axes) n *= a.kernel_size;
    return n;
  }
};

// One call as the kernels see it: its canonical shape and geometry, the dtypes, and the raw buffers in the
// pass's order (common/passes.h).
struct ConvCall : ConvShape {
  DType operand_type = DType::kF32;  // both operands
  DType result_type = DType::kF32;
  const void* first = nullptr;
  const void* second = nullptr;
  void* result = nullptr;
};

inline std::string DimsString(Dims d) {
  std::string s = "(";
  for (size_t i = 0; i < d.size; ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + ")";
}

// Fills `shape` from the dims of the pass's operands and result; returns an error message, empty when the
// buffers agree with each other and with the geometry.
inline std::string ReadConvShape(Pass pass, Dims first, Dims second, Dims result, Dims strides, Dims dilation,
                                 Dims pad_lo, Dims pad_hi, bool transpose_kernel, ConvShape* shape) {
  const size_t d = strides.size;
  if (d == 0 || dilation.size != d || pad_lo.size != d || pad_hi.size != d)
    return "strides, dilation and paddings need one entry per spatial axis";
  if (d > static_cast<size_t>(kMaxSpatialDims)) return "at most " + std::to_string(kMaxSpatialDims) + " spatial axes";
  Dims by_role[3] = {first, first, first};
  const PassInfo& info = Info(pass);
  by_role[static_cast<int>(info.first)] = first;
  by_role[static_cast<int>(info.second)] = second;
  by_role[static_cast<int>(info.result)] = result;
  const Dims x = by_role[static_cast<int>(Role::kInput)], w = by_role[static_cast<int>(Role::kKernel)],
             y = by_role[static_cast<int>(Role::kOutput)];
  if (x.size != d + 3 || y.size != d + 3 || w.size != d + 3)
    return "operands must have rank " + std::to_string(d + 3) + ", got " + DimsString(x) + ", " + DimsString(w) +
           " -> " + DimsString(y);
  const size_t w_ci = transpose_kernel ? d + 2 : d + 1, w_co = transpose_kernel ? d + 1 : d + 2;
  if (x[0] != y[0] || x[0] != w[0] || x[1] != y[1] || x[d + 2] != w[w_ci] || y[d + 2] != w[w_co])
    return "inconsistent shapes " + DimsString(x) + ", " + DimsString(w) + " -> " + DimsString(y);
  shape->pass = pass;
  shape->transpose_kernel = transpose_kernel;
  shape->groups = x[0];
  shape->batch = x[1];
  shape->in_ch = x[d + 2];
  shape->out_ch = y[d + 2];
  shape->axes.clear();
  for (size_t a = 0; a < d; ++a) {
    if (strides[a] < 1 || dilation[a] < 1) return "strides and dilation must be positive";
    const int64_t out = OutputSize(x[a + 2], w[a + 1], strides[a], dilation[a], pad_lo[a], pad_hi[a]);
    if (out != y[a + 2])
      return "spatial axis " + std::to_string(a) + " gives output size " + std::to_string(out) + ", buffer has " +
             std::to_string(y[a + 2]);
    shape->axes.push_back(MakeAxisGeometry(x[a + 2], w[a + 1], strides[a], dilation[a], pad_lo[a], pad_hi[a]));
  }
  return "";
}

}  // namespace jaxseg

#endif  // JAXSEG_COMMON_CONV_SHAPE_H_
