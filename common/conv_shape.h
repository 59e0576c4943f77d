// The canonical shapes of one pass, read off its buffers and checked against the phase geometry. Shared by the
// CPU and CUDA handlers (plain C++17, no XLA or CUDA headers).
//
//   x: (G, N, H..., Ci)    y / dy: (G, N, O..., Co)    w / dw: (G, K..., Ci, Co)
//   forward: (x, w) -> y;   input grad: (dy, w) -> dx;   weight grad: (x, dy) -> dw
//
// With kernel_flipped, w / dw is stored (G, K..., Co, Ci) with every spatial axis reversed: a PyTorch-oriented
// kernel (transpose_kernel=True) as the user holds it, so nobody has to copy it into the canonical layout.
#ifndef JAXSEG_COMMON_CONV_SHAPE_H_
#define JAXSEG_COMMON_CONV_SHAPE_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "common/phase_geometry.h"

namespace jaxseg {

enum class Pass { kForward, kInputGrad, kWeightGrad };

struct Dims {
  const int64_t* data;
  size_t size;
  int64_t operator[](size_t i) const { return data[i]; }
};

struct ConvShape {
  Pass pass = Pass::kForward;
  int64_t groups = 0, batch = 0, in_ch = 0, out_ch = 0;
  bool kernel_flipped = false;
  std::vector<AxisGeometry> axes;

  // Where canonical tap k (flat, row-major over the kernel's spatial axes) and channels (ci, co) are stored
  // within one group's kernel.
  int64_t StoredTap(int64_t k) const {
    if (!kernel_flipped) return k;
    int64_t stored = 0, scale = 1;
    for (size_t a = axes.size(); a-- > 0;) {
      const int64_t size = axes[a].kernel_size;
      stored += (size - 1 - k % size) * scale;
      k /= size;
      scale *= size;
    }
    return stored;
  }
  int64_t StoredChannels(int64_t ci, int64_t co) const {
    return kernel_flipped ? co * in_ch + ci : ci * out_ch + co;
  }

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

inline std::string DimsString(Dims d) {
  std::string s = "(";
  for (size_t i = 0; i < d.size; ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + ")";
}

// Fills `shape` from the dims of the pass's operands and result; returns an error message, empty when the
// buffers agree with each other and with the geometry.
inline std::string ReadConvShape(Pass pass, Dims first, Dims second, Dims result, Dims strides, Dims dilation,
                                 Dims pad_lo, Dims pad_hi, int64_t kernel_flipped, ConvShape* shape) {
  if (kernel_flipped != 0 && kernel_flipped != 1) return "kernel_flipped must be 0 or 1";
  const size_t d = strides.size;
  if (d == 0 || dilation.size != d || pad_lo.size != d || pad_hi.size != d)
    return "strides, dilation and paddings need one entry per spatial axis";
  if (d > static_cast<size_t>(kMaxSpatialDims))
    return "at most " + std::to_string(kMaxSpatialDims) + " spatial axes";
  Dims x = first, y = result, w = second;
  switch (pass) {
    case Pass::kForward: x = first; w = second; y = result; break;
    case Pass::kInputGrad: y = first; w = second; x = result; break;
    case Pass::kWeightGrad: x = first; y = second; w = result; break;
  }
  if (x.size != d + 3 || y.size != d + 3 || w.size != d + 3)
    return "operands must have rank " + std::to_string(d + 3) + ", got " + DimsString(x) + ", " + DimsString(w) +
           " -> " + DimsString(y);
  const size_t w_ci = kernel_flipped ? d + 2 : d + 1, w_co = kernel_flipped ? d + 1 : d + 2;
  if (x[0] != y[0] || x[0] != w[0] || x[1] != y[1] || x[d + 2] != w[w_ci] || y[d + 2] != w[w_co])
    return "inconsistent shapes " + DimsString(x) + ", " + DimsString(w) + " -> " + DimsString(y);
  shape->pass = pass;
  shape->kernel_flipped = kernel_flipped == 1;
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
