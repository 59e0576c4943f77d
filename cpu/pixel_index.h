// Pixel indexing of the canonical channels-last tensors, for the planning code (cpu/kernel_set.h): row-major
// strides of the input or output spatial extent, the coordinates of a flat pixel index, and the odometer that steps
// them, so that a walk over a block of pixels costs no division per pixel.
#ifndef JAXSEG_CPU_PIXEL_INDEX_H_
#define JAXSEG_CPU_PIXEL_INDEX_H_

#include <cstdint>
#include <vector>

#include "common/phase_geometry.h"

namespace jaxseg::cpu::planning {
namespace {

// Row-major strides of a spatial extent (elements per step of each axis, in pixels): of the input when `in`,
// else of the output.
inline void PixelStrides(const std::vector<AxisGeometry>& axes, bool in, int64_t* stride) {
  int64_t s = 1;
  for (int64_t a = static_cast<int64_t>(axes.size()) - 1; a >= 0; --a) {
    stride[a] = s;
    s *= in ? axes[a].in_size : axes[a].out_size;
  }
}

// The coordinates of pixel m of a batch of images with spatial extent `extent` (row-major, the last axis fastest):
// image *n, coordinates c. NextPixel then steps them like an odometer.
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

}  // namespace
}  // namespace jaxseg::cpu::planning

#endif  // JAXSEG_CPU_PIXEL_INDEX_H_
