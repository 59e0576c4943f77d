// The CPU module in two layers. Everything that plans a call and walks its pixels (cpu/prepare.cc with
// cpu/forward.h, cpu/input_grad.h, cpu/weight_grad.h, cpu/packing.h: the phase geometry, packing, work items, the
// tables of source rows, the stores of the weight gradient) is compiled once, with the compiler's baseline flags.
// Only the micro-kernels, the register-tile loops that run per element, are compiled once per instruction set
// (cpu/kernels_<isa>.cc with cpu/kernel_table.h, each with its own flags), and the planning code reaches them
// through one KernelSet per build: the build's tile sizes and its micro-kernels as function pointers, one set per
// dtype pair, called once per block of rows or per tap of a chunk, never per element. The handler chooses the
// build once, at the first call (cpu/handlers.cc).
//
// A per-ISA object defines only its own namespace (jaxseg::cpu::<isa>): its kernels have internal linkage, call
// plain loops, vector extensions, intrinsics and helpers of that same anonymous namespace, and no inline function
// that another object also emits, so no copy compiled with one build's flags can stand in for another's at link
// time, whatever the order of the sources. tests/test_isa_layering.py disassembles the module and checks it.
#ifndef JAXSEG_CPU_KERNEL_SET_H_
#define JAXSEG_CPU_KERNEL_SET_H_

#include <cstddef>
#include <cstdint>
#include <memory>

#include "common/conv_shape.h"
#include "common/dtypes.h"

namespace jaxseg::cpu {

// Arguments of the gathered block product (cpu/gather_gemm.h), a block of `rows` destination rows of `ncols`
// columns: dst[m] = sum over taps t of src[m * taps + t] . (panel of tap tap_k[t]), where a source row equal to
// `zero` adds nothing. Pointers are of the call's types: source rows and `zero` of the operand type, destination
// rows of the result type (of the accumulation type for the forward's per-image products), `w` the packed panels
// (cpu/packing.h) at the group's first tap, `ld` columns per depth row.
struct GatherBlockArgs {
  int64_t rows = 0;
  int64_t taps = 0;
  const void* const* src = nullptr;
  const int64_t* tap_k = nullptr;
  void* const* dst = nullptr;
  const void* w = nullptr;
  int64_t depth = 0;
  int64_t ncols = 0;
  int64_t ld = 0;
  const void* zero = nullptr;
  int col_vecs = 1;  // vectors per register tile of columns: 1 .. KernelSet::wide_col_vecs
};

// A run of pixel pairs that one tap links in the weight gradient: `count` inputs at step Ci and outputs at step
// stride*Co.
struct PixelRun {
  int64_t x_off;       // element offset of the run's first input pixel (channel 0)
  int64_t y_grad_off;  // element offset of its first output pixel (channel 0)
  int64_t count;
};

// Arguments of one tap of one chunk of the weight gradient (cpu/weight_grad_tile.h): tap_sums += the products
// of the runs' pixels, for the (row tile, column tile) register tiles of rows [b0, b0 + row_tiles * tile_rows)
// and all column channels. Rows are input channels and columns output channels when rows_from_x, else the reverse.
struct WeightGradTapArgs {
  void* tap_sums = nullptr;  // row_tiles x col_tiles tiles of tile_rows x tile_col_vecs vectors (64 bytes each)
  const PixelRun* runs = nullptr;
  int64_t num_runs = 0;
  const void* x = nullptr;
  const void* y_grad = nullptr;
  const void* b_end = nullptr;  // end of the array the columns come from: no vector read may pass it
  bool rows_from_x = true;
  int64_t row_ch = 0;
  int64_t col_ch = 0;
  int64_t b0 = 0;
  int64_t row_tiles = 0;
  int64_t col_tiles = 0;
  int64_t x_step = 0;
  int64_t y_grad_step = 0;
  int tile_rows = 0;      // the build's rows, or 1..4 (KernelSet::few_rows) for layers with few row channels
  int tile_col_vecs = 0;  // the build's col_vecs, or its few_col_vecs
  // Scratch for the bf16 pair panels (builds with bf16_dot, full-height tiles): pixel pointers and 64-byte lines,
  // sized by the plan (cpu/weight_grad.h).
  const void** a_px = nullptr;
  const void** b_px = nullptr;
  uint32_t* a_panel = nullptr;
  uint32_t* b_panel = nullptr;
};

// One build's micro-kernels for one dtype pair (operand T, result U, accumulation Acc).
struct TypedKernels {
  void (*gather_block)(const GatherBlockArgs&);      // rows of U
  void (*gather_block_acc)(const GatherBlockArgs&);  // rows of Acc (the forward's per-image products)
  void (*narrow_block)(const GatherBlockArgs&);      // the dot-product form, ncols (output channels) 1..4
  void (*weight_grad_tap)(const WeightGradTapArgs&);
};

// The dtype pairs of the table (common/dtypes.h) in its order: rule by rule, result by result.
inline constexpr int kNumDTypePairs = [] {
  int n = 0;
  for (const DTypeRule& r : kDTypeRules) n += r.num_results;
  return n;
}();

constexpr int DTypePairIndex(DType operand, DType result) {
  int n = 0;
  for (const DTypeRule& r : kDTypeRules)
    for (int i = 0; i < r.num_results; ++i, ++n)
      if (r.operand == operand && r.results[i] == result) return n;
  return -1;
}

// One build of the micro-kernels: its name, its register tiles and its kernels per dtype pair.
struct KernelSet {
  const char* isa;
  int rows;           // rows of a register tile
  int col_vecs;       // 64-byte lines of columns in a register tile (a build may hold a line in several registers)
  int wide_col_vecs;  // the widest tile for products with few columns (the forward's per-image form)
  int few_col_vecs;   // lines of the weight gradient's tile for 1-4 row channels (up to few_rows x this)
  bool bf16_dot;      // bfloat16 operands are multiplied as pairs (cpu/bf16_dot.h), panels hold bf16 pairs
  TypedKernels typed[kNumDTypePairs];

  static constexpr int few_rows = 4;  // the weight gradient's tile for 1-4 row channels: as many rows as there are
};

namespace generic {
extern const KernelSet kKernels;
}
namespace avx2 {
extern const KernelSet kKernels;
}
namespace avx512 {
extern const KernelSet kKernels;
}
namespace avx512_bf16 {
extern const KernelSet kKernels;
}

// One call, planned: Run(item, worker) computes work item `item` in [0, num_items()). Items are independent and
// may run on several threads at once, each thread with its own worker index in [0, workers) and with it its own
// slot of the call's workspace.
class PreparedCall {
 public:
  virtual ~PreparedCall() = default;
  virtual int64_t num_items() const = 0;
  virtual void Run(int64_t item, int64_t worker) const = 0;
};

// Plans `call` (its pass, dtypes and buffers, decoded by DecodeCall) with the micro-kernels of `kernels` for at
// most `workers` concurrent workers (cpu/prepare.cc); null when memory runs out.
std::unique_ptr<PreparedCall> Prepare(const KernelSet& kernels, ConvCall call, int64_t workers);

}  // namespace jaxseg::cpu

#endif  // JAXSEG_CPU_KERNEL_SET_H_
