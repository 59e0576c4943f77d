// A transposed-convolution call as the CPU kernels see it: canonical channels-last operands with a leading group
// axis (vmap over both operands folds into it), the geometry of every spatial axis, raw pointers and a workspace.
//
//   forward       y  (G, N, O..., Co) = conv_transpose(x (G, N, H..., Ci), w (G, K..., Ci, Co))
//   input grad    dx (G, N, H..., Ci) from dy (G, N, O..., Co) and w
//   weight grad   dw (G, K..., Ci, Co) from x and dy
#ifndef JAXSEG_CPU_CONV_PROBLEM_H_
#define JAXSEG_CPU_CONV_PROBLEM_H_

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

#include "common/conv_shape.h"
#include "common/phase_geometry.h"
#include "cpu/buffer_cache.h"

namespace jaxseg::cpu {

using jaxseg::DType;
using jaxseg::Pass;

struct AlignedFree {
  void operator()(void* p) const { std::free(p); }
};
using AlignedBuffer = std::unique_ptr<void, AlignedFree>;

// The buffers are in the pass's order (common/passes.h): forward (x, w) -> y, input grad (dy, w) -> dx,
// weight grad (x, dy) -> dw.
struct ConvProblem : ConvCall {

  // Filled by Prepare(): packed weights and a zero row (what a tap reads where it meets padding), the number of
  // independent work items, and the chunk length of the last spatial axis.
  CachedBuffer packed;                     // taken from, and handed back to, the buffer cache
  AlignedBuffer zeros;
  int64_t packed_ld = 0;
  int64_t num_items = 0;
  bool narrow_out = false;                 // forward: few output channels, computed in dot-product form
  bool image_forward = false;              // forward: few output channels, per-input products per image
  int image_col_vecs = 1;                  // forward (image_forward): vectors per register tile of columns
  std::vector<PhaseND> phases;             // forward: the phases of all axes together
  int64_t phase_blocks = 0;                // forward: blocks of outputs of the largest phase
  std::vector<int64_t> links;              // input grad: per axis, (input, tap) -> output pixel offset
  std::vector<int64_t> links_begin;        // input grad: where each axis's table starts in `links`
  std::vector<int64_t> interior_begin;     // input grad: per axis, the inputs every tap links with an output
  std::vector<int64_t> interior_end;
  std::vector<int64_t> tap_shift;          // input grad: per tap, its output's offset from tap 0's there
  int64_t workers = 1;                     // set before Prepare(): the most items Run() computes at once
  // Weight grad: register tiles live in 64-byte-aligned slots of `scratch`, one per worker, or, where each block
  // of dW is split into `wg_parts` ranges of pixels, one per item; the part that finishes a block last (counted
  // in `parts_done`) adds the parts' tiles and stores the block.
  CachedBuffer scratch;
  int64_t scratch_bytes = 0;               // bytes per slot
  int64_t wg_parts = 1;
  std::unique_ptr<std::atomic<int64_t>[]> parts_done;  // per block of dW, when wg_parts > 1

  void* Scratch(int64_t slot) const { return static_cast<char*>(scratch.get()) + slot * scratch_bytes; }

};

// One build of the kernels for one instruction set. Prepare() packs weights and sizes the work; Run() computes
// items [begin, end) and may be called from several threads at once on disjoint ranges, each with its own
// worker index in [0, problem.workers).
struct KernelSet {
  const char* isa;
  bool (*prepare)(ConvProblem& problem);
  void (*run)(const ConvProblem& problem, int64_t begin, int64_t end, int64_t worker);
};

namespace generic {
const KernelSet& Kernels();
}
namespace avx2 {
const KernelSet& Kernels();
}
namespace avx512 {
const KernelSet& Kernels();
}

}  // namespace jaxseg::cpu

#endif  // JAXSEG_CPU_CONV_PROBLEM_H_
