// CUDA custom calls of the three passes (XLA FFI handlers): one launch per pass covers every phase (plus, for the
// weight gradient, one launch that sums its split-K partials).
//
// What each launch computes is decided by its plan (cuda/conv_plan.h), built on the host from the shared phase
// geometry and passed by value; the kernels below are drivers that move data and issue instructions at the
// addresses the plan and the CTA layout (cuda/tiled_cta.h, cuda/direct_kernels.h) give. The CPU executor
// (cuda/plan_executor.cc) drives the same functions in the same order, so the tests run this index logic on the
// CPU over the conformance grid.
//
//   tensor cores   forward and input_grad: TiledGatherKernel, implicit-GEMM tiles of 128 rows x 128 (or 64) result
//                  channels per phase (forward) or over the input pixels (input_grad), K running over taps x
//                  channels; weight_grad: TiledWeightGradKernel, per tap tiles of 128 Ci x 128 (or 64) Co over a
//                  split of the tap's pixels.
//                  mma.sync m16n8k16 for bfloat16/float16, m16n8k8 TF32 (or 3xTF32 at HIGHEST) for float32,
//                  float32 accumulators, a 4-stage cp.async pipeline.
//   CUDA cores     float64, channels that are not whole 16-byte vectors, very few result channels.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <string>
#include <type_traits>

#include "common/conv_shape.h"
#include "common/dtype_dispatch.h"
#include "common/dtypes.h"
#include "common/ffi_binding.h"
#include "cuda/conv_plan.h"
#include "cuda/device_ops.cuh"
#include "cuda/direct_kernels.h"
#include "cuda/handlers.h"
#include "cuda/tiled_cta.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace jaxseg::gpu {
namespace {

using tiled::Coord;
using tiled::SmemTile;

// The C++ type of each DType on CUDA, for the dtype dispatch (common/dtype_dispatch.h).
struct CudaTypes {
  using F32 = float;
  using F64 = double;
  using BF16 = __nv_bfloat16;
  using F16 = __half;
};

// ---------------------------------------------------------------------------------------------------------------
// Element conversions of the CUDA-core kernels (cuda/direct_kernels.h): round to nearest even on store.

struct DeviceNumeric {
  template <typename Acc>
  __host__ __device__ static Acc Load(const float* p) {
    return static_cast<Acc>(*p);
  }
  template <typename Acc>
  __host__ __device__ static Acc Load(const double* p) {
    return static_cast<Acc>(*p);
  }
  template <typename Acc>
  __host__ __device__ static Acc Load(const __nv_bfloat16* p) {
    return static_cast<Acc>(__bfloat162float(*p));
  }
  template <typename Acc>
  __host__ __device__ static Acc Load(const __half* p) {
    return static_cast<Acc>(__half2float(*p));
  }

  template <typename Acc>
  __host__ __device__ static void Store(void* out, int64_t i, Acc v, DType type) {
    switch (type) {
      case DType::kF32: static_cast<float*>(out)[i] = static_cast<float>(v); break;
      case DType::kF64: static_cast<double*>(out)[i] = static_cast<double>(v); break;
      case DType::kBF16: static_cast<__nv_bfloat16*>(out)[i] = __float2bfloat16_rn(static_cast<float>(v)); break;
      case DType::kF16: static_cast<__half*>(out)[i] = __float2half_rn(static_cast<float>(v)); break;
    }
  }
};

// ---------------------------------------------------------------------------------------------------------------
// The tensor-core kernels' arithmetic per operand type.

struct Bf16Math {
  using Element = __nv_bfloat16;
  static constexpr int kBytes = 2;
  static constexpr bool kTf32 = false, kSplit = false;
  __device__ static void Mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) { ptx::MmaBf16(d, a, b); }
};
struct F16Math {
  using Element = __half;
  static constexpr int kBytes = 2;
  static constexpr bool kTf32 = false, kSplit = false;
  __device__ static void Mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) { ptx::MmaF16(d, a, b); }
};
// float32 at precision DEFAULT: operands rounded to TF32.
struct Tf32Math {
  using Element = float;
  static constexpr int kBytes = 4;
  static constexpr bool kTf32 = true, kSplit = false;
  __device__ static void Mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) { ptx::MmaTf32(d, a, b); }
};
// float32 at precision HIGHEST: x = big + small, both TF32; small*big + big*small + big*big (small*small is below
// float32's rounding).
struct Tf32x3Math : Tf32Math {
  static constexpr bool kSplit = true;
};

template <int N>
using Accumulators = float[tiled::kMmaTilesM][tiled::Cta<N>::kMmaTilesN][4];

// x (float32 bits) = big + small, both TF32: *x becomes big (tiled::Tf32SplitBig: no overflow near FLT_MAX).
__device__ __forceinline__ void SplitTf32(uint32_t* x, uint32_t* small) {
  const uint32_t big = tiled::Tf32SplitBig(*x, ptx::ToTf32(*x));
  *small = ptx::ToTf32(__float_as_uint(__uint_as_float(*x) - __uint_as_float(big)));
  *x = big;
}

template <int N>
__device__ __forceinline__ void ZeroAccumulators(Accumulators<N>& acc) {
#pragma unroll
  for (int mi = 0; mi < tiled::kMmaTilesM; ++mi)
#pragma unroll
    for (int ni = 0; ni < tiled::Cta<N>::kMmaTilesN; ++ni)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[mi][ni][r] = 0.f;
}

// The warp's mma work on one stage: two k-steps, each with all four A fragments loaded (and rounded or split
// for TF32) first, then B one pair of n8 tiles at a time, so that few B registers are live beside the
// accumulators.
template <class Math, int N, bool kAKContiguous, bool kBKContiguous>
__device__ __forceinline__ void ComputeStage(const char* stage, const SmemTile& ta, const SmemTile& tb,
                                             Accumulators<N>& acc, int warp, int lane) {
  using Cta = tiled::Cta<N>;
  const char* a_tile = stage;
  const char* b_tile = stage + tiled::kTileBytesA;
  const uint32_t a_base = ptx::SharedAddress(a_tile);
  const uint32_t b_base = ptx::SharedAddress(b_tile);
  // 3xTF32 keeps twice the fragments live: its two k-steps are not interleaved.
#pragma unroll(Math::kSplit ? 1 : tiled::kSubSteps)
  for (int ks = 0; ks < tiled::kSubSteps; ++ks) {
    uint32_t a[tiled::kMmaTilesM][4];
    uint32_t a_small[Math::kSplit ? tiled::kMmaTilesM : 1][4];
#pragma unroll
    for (int mi = 0; mi < tiled::kMmaTilesM; ++mi) {
      if constexpr (kAKContiguous) {
        ptx::LoadMatrix(a[mi], a_base + tiled::LdsmA(ta, warp, lane, ks, mi));
      } else if constexpr (Math::kBytes == 2) {
        ptx::LoadMatrixTrans(a[mi], a_base + tiled::LdsmATrans(ta, warp, lane, ks, mi));
      } else {
#pragma unroll
        for (int r = 0; r < 4; ++r)
          a[mi][r] = *reinterpret_cast<const uint32_t*>(a_tile + tiled::ScalarATf32(ta, warp, lane, ks, mi, r));
      }
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        if constexpr (Math::kSplit) {
          SplitTf32(&a[mi][r], &a_small[mi][r]);
        } else if constexpr (Math::kTf32) {
          a[mi][r] = ptx::ToTf32(a[mi][r]);
        }
      }
    }
#pragma unroll
    for (int nj = 0; nj < Cta::kMmaTilesN / 2; ++nj) {
      uint32_t b[2][2];
      if constexpr (kBKContiguous || Math::kBytes == 2) {
        uint32_t r[4];
        if constexpr (kBKContiguous) {
          ptx::LoadMatrix(r, b_base + Cta::LdsmB(tb, warp, lane, ks, nj));
        } else {
          ptx::LoadMatrixTrans(r, b_base + Cta::LdsmBTrans(tb, warp, lane, ks, nj));
        }
        b[0][0] = r[0];
        b[0][1] = r[1];
        b[1][0] = r[2];
        b[1][1] = r[3];
      } else {
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
          for (int r = 0; r < 2; ++r)
            b[h][r] = *reinterpret_cast<const uint32_t*>(b_tile + Cta::ScalarBTf32(tb, warp, lane, ks, 2 * nj + h, r));
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        uint32_t b_small[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          if constexpr (Math::kSplit) {
            SplitTf32(&b[h][r], &b_small[r]);
          } else if constexpr (Math::kTf32) {
            b[h][r] = ptx::ToTf32(b[h][r]);
          }
        }
#pragma unroll
        for (int mi = 0; mi < tiled::kMmaTilesM; ++mi) {
          float (&d)[4] = acc[mi][2 * nj + h];
          if constexpr (Math::kSplit) {
            // The small cross terms first: they are added before the large term can swamp them.
            Math::Mma(d, a_small[mi], b[h]);
            Math::Mma(d, a[mi], b_small);
          }
          Math::Mma(d, a[mi], b[h]);
        }
      }
    }
  }
}

// Stages the accumulators as floats in shared memory (the pipeline's buffers are free by then).
template <int N>
__device__ __forceinline__ void StageAccumulators(const Accumulators<N>& acc, float* staging, int warp, int lane) {
  using Cta = tiled::Cta<N>;
#pragma unroll
  for (int mi = 0; mi < tiled::kMmaTilesM; ++mi)
#pragma unroll
    for (int ni = 0; ni < Cta::kMmaTilesN; ++ni)
#pragma unroll
      for (int r = 0; r < 4; ++r) staging[Cta::StagingIndex(Cta::Accumulator(warp, lane, mi, ni, r))] = acc[mi][ni][r];
}

// Narrow tiles hold half the accumulators: three gather CTAs fit a multiprocessor's registers. (The weight
// gradient, whose splits fill the device anyway, keeps two: at three, TF32's narrow kernel spilled.)
template <int N>
constexpr int kMinBlocks = N == 64 ? 3 : 2;

// forward and input_grad on tensor cores. One CTA per (group, row tile, problem, channel tile); the result is
// written in `out_type`: the operand type, or float32.
template <class Math, int N, bool kBKContiguous>
__global__ void __launch_bounds__(tiled::kThreads, kMinBlocks<N>)
    TiledGatherKernel(const __grid_constant__ GatherPlan plan, const typename Math::Element* __restrict__ a,
                      const typename Math::Element* __restrict__ b, void* __restrict__ out, DType out_type) {
  using Cta = tiled::Cta<N>;
  extern __shared__ __align__(128) char smem[];
  RowCoord* rows = reinterpret_cast<RowCoord*>(smem + Cta::kMainBytes);
  const GatherTile tile = plan.TileAt(blockIdx.x);
  if (!tile.valid) return;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  static_assert(tiled::kThreads == tiled::kTileM, "one row of the table per thread");
  rows[tid] = tiled::GatherRow(plan, tile, tid);
  __syncthreads();

  const SmemTile ta = tiled::GatherTileA();
  const SmemTile tb = Cta::GatherTileB(plan, Math::kBytes);
  const int32_t steps = plan.KSteps(tile);
  const int64_t group_base = tiled::GatherGroupBase(plan, tile);
  TapCursor next_load = plan.FirstStep();
  tiled::GatherSources sources;
  auto load_stage = [&](int slot) {
    char* stage = smem + slot * Cta::kStageBytes;
    if (next_load.channel == 0) sources = tiled::GatherSourcePixels(plan, tile, rows, next_load, tid);
    const int64_t weight_base = plan.WeightBase(tile, next_load);
#pragma unroll
    for (int i = 0; i < tiled::kCopiesA; ++i) {
      const tiled::ChunkCopy c = tiled::GatherCopyA(plan, sources, group_base, next_load, Math::kBytes, tid, i);
      ptx::CopyAsync16(ptx::SharedAddress(stage + c.smem), c.src >= 0 ? a + c.src : a, c.src >= 0);
    }
#pragma unroll
    for (int i = 0; i < Cta::kCopiesB; ++i) {
      const tiled::ChunkCopy c = Cta::GatherCopyB(plan, tile, next_load, weight_base, Math::kBytes, tid, i);
      ptx::CopyAsync16(ptx::SharedAddress(stage + tiled::kTileBytesA + c.smem), c.src >= 0 ? b + c.src : b, c.src >= 0);
    }
    plan.Advance(tile, &next_load);
  };

  Accumulators<N> acc;
  ZeroAccumulators<N>(acc);

  // The pipeline: stage s is in flight while stages before it are computed. Each iteration first waits for its
  // own stage and for every warp to leave the previous one, whose slot the next load then refills.
#pragma unroll
  for (int s = 0; s < tiled::kStages - 1; ++s) {
    if (s < steps) load_stage(s);
    ptx::CopyAsyncCommit();
  }
  for (int32_t step = 0; step < steps; ++step) {
    ptx::CopyAsyncWait<tiled::kStages - 2>();
    __syncthreads();
    const int32_t next = tiled::NextIssued(step);
    if (next < steps) load_stage(tiled::StageSlot(next));
    ptx::CopyAsyncCommit();
    ComputeStage<Math, N, true, kBKContiguous>(smem + tiled::StageSlot(step) * Cta::kStageBytes, ta, tb, acc, warp,
                                               lane);
  }
  ptx::CopyAsyncWait<0>();
  __syncthreads();

  // Epilogue: stage the tile as floats, then write whole 16-byte chunks of result rows.
  float* staging = reinterpret_cast<float*>(smem);
  StageAccumulators<N>(acc, staging, warp, lane);
  __syncthreads();
  if (out_type == DType::kF32) {
    for (int i = 0; i < Cta::OutputCopies(4); ++i) {
      const Coord s = Cta::OutputSlot(4, tid, i);
      const int64_t dst = Cta::GatherOutputIndex(plan, tile, rows[s.row], s.col);
      if (dst < 0) continue;
      const float* v = staging + Cta::StagingIndex(s);
      *reinterpret_cast<float4*>(static_cast<float*>(out) + dst) = make_float4(v[0], v[1], v[2], v[3]);
    }
  } else if constexpr (Math::kBytes == 2) {
    using Element = typename Math::Element;
    for (int i = 0; i < Cta::OutputCopies(2); ++i) {
      const Coord s = Cta::OutputSlot(2, tid, i);
      const int64_t dst = Cta::GatherOutputIndex(plan, tile, rows[s.row], s.col);
      if (dst < 0) continue;
      const float* v = staging + Cta::StagingIndex(s);
      uint32_t packed[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        if constexpr (std::is_same_v<Element, __nv_bfloat16>) {
          const __nv_bfloat162 h = __floats2bfloat162_rn(v[2 * e], v[2 * e + 1]);
          packed[e] = *reinterpret_cast<const uint32_t*>(&h);
        } else {
          const __half2 h = __floats2half2_rn(v[2 * e], v[2 * e + 1]);
          packed[e] = *reinterpret_cast<const uint32_t*>(&h);
        }
      }
      *reinterpret_cast<uint4*>(static_cast<Element*>(out) + dst) =
          make_uint4(packed[0], packed[1], packed[2], packed[3]);
    }
  }
}

// weight_grad on tensor cores: one CTA per (group, tap, split, Ci tile, Co tile), its float partial tile written
// to the split's slice of the partials buffer (the call's second result).
template <class Math, int N>
__global__ void __launch_bounds__(tiled::kThreads, 2)
    TiledWeightGradKernel(const __grid_constant__ WeightGradPlan plan, const typename Math::Element* __restrict__ x,
                          const typename Math::Element* __restrict__ dy, float* __restrict__ partials) {
  using Cta = tiled::Cta<N>;
  extern __shared__ __align__(128) char smem[];
  const WeightGradTile tile = plan.TileAt(blockIdx.x);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const SmemTile ta = tiled::WeightGradTileA(Math::kBytes);
  const SmemTile tb = Cta::WeightGradTileB(Math::kBytes);
  const int32_t steps = tiled::WeightGradSteps(tile, Math::kBytes);
  PixelPair* table = reinterpret_cast<PixelPair*>(smem + Cta::kPipelineBytes);
  const int table_rows = tiled::PixelTableRows(Math::kBytes);
  auto fill_table = [&](int32_t step) {
    if (tid < table_rows && step < steps)
      table[tiled::PixelTableIndex(step, tid, Math::kBytes)] =
          tiled::PixelTableEntry(plan, tile, Math::kBytes, step, tid);
  };
  auto load_stage = [&](int32_t step) {
    char* stage = smem + tiled::StageSlot(step) * Cta::kStageBytes;
#pragma unroll
    for (int i = 0; i < tiled::kCopiesA; ++i) {
      const tiled::ChunkCopy c = tiled::WeightGradCopyA(plan, tile, table, step, Math::kBytes, tid, i);
      ptx::CopyAsync16(ptx::SharedAddress(stage + c.smem), c.src >= 0 ? x + c.src : x, c.src >= 0);
    }
#pragma unroll
    for (int i = 0; i < Cta::kCopiesB; ++i) {
      const tiled::ChunkCopy c = Cta::WeightGradCopyB(plan, tile, table, step, Math::kBytes, tid, i);
      ptx::CopyAsync16(ptx::SharedAddress(stage + tiled::kTileBytesA + c.smem), c.src >= 0 ? dy + c.src : dy,
                       c.src >= 0);
    }
  };

  Accumulators<N> acc;
  ZeroAccumulators<N>(acc);

  // As the gather's pipeline; in addition, iteration `step` fills the table slot of step + kStages (the slot of
  // `step`, whose copies were issued kStages - 1 iterations ago), read after the next iteration's barrier.
#pragma unroll
  for (int s = 0; s < tiled::kStages; ++s) fill_table(s);
  __syncthreads();
#pragma unroll
  for (int s = 0; s < tiled::kStages - 1; ++s) {
    if (s < steps) load_stage(s);
    ptx::CopyAsyncCommit();
  }
  for (int32_t step = 0; step < steps; ++step) {
    ptx::CopyAsyncWait<tiled::kStages - 2>();
    __syncthreads();
    const int32_t next = tiled::NextIssued(step);
    if (next < steps) load_stage(next);
    ptx::CopyAsyncCommit();
    fill_table(step + tiled::kStages);
    ComputeStage<Math, N, false, false>(smem + tiled::StageSlot(step) * Cta::kStageBytes, ta, tb, acc, warp, lane);
  }
  ptx::CopyAsyncWait<0>();
  __syncthreads();

  float* staging = reinterpret_cast<float*>(smem);
  StageAccumulators<N>(acc, staging, warp, lane);
  __syncthreads();
  for (int i = 0; i < Cta::OutputCopies(4); ++i) {
    const Coord s = Cta::OutputSlot(4, tid, i);
    const int64_t dst = Cta::WeightGradPartialIndex(plan, tile, s);
    if (dst < 0) continue;
    const float* v = staging + Cta::StagingIndex(s);
    *reinterpret_cast<float4*>(partials + dst) = make_float4(v[0], v[1], v[2], v[3]);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// CUDA-core kernels (cuda/direct_kernels.h).

template <typename T, typename Acc>
__global__ void __launch_bounds__(kDirectThreads, 4)
    DirectOuterKernel(const __grid_constant__ GatherPlan plan, const T* __restrict__ a, const T* __restrict__ b,
                      void* __restrict__ out, DType out_type) {
  direct::GatherOuter<DeviceNumeric, T, Acc>(plan, blockIdx.x, threadIdx.x >> 5, threadIdx.x & 31, a, b, out, out_type);
}

template <typename T, typename Acc>
__global__ void __launch_bounds__(kDirectThreads, 4)
    DirectDotKernel(const __grid_constant__ GatherPlan plan, const T* __restrict__ a, const T* __restrict__ b,
                    void* __restrict__ out, DType out_type) {
  const GatherTile tile = plan.TileAt(blockIdx.x);
  if (!tile.valid) return;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  Acc acc[direct::kChannels];
  direct::GatherDotPartial<DeviceNumeric, T, Acc>(plan, tile, warp, lane, a, b, acc);
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1)
#pragma unroll
    for (int j = 0; j < direct::kChannels; ++j) acc[j] += __shfl_xor_sync(0xffffffffu, acc[j], offset);
  if (lane == 0) direct::GatherDotStore<DeviceNumeric, Acc>(plan, tile, warp, acc, out, out_type);
}

template <typename T, typename Acc>
__global__ void __launch_bounds__(kDirectThreads, 4)
    DirectWeightGradKernel(const __grid_constant__ WeightGradPlan plan, const T* __restrict__ x,
                           const T* __restrict__ dy, Acc* __restrict__ partials) {
  direct::WeightGrad<DeviceNumeric, T, Acc>(plan, static_cast<int64_t>(blockIdx.x) * kDirectThreads + threadIdx.x, x,
                                            dy, partials);
}

constexpr int kReduceThreads = 256;

template <typename Acc>
__global__ void __launch_bounds__(kReduceThreads)
    ReduceSplitsKernel(const __grid_constant__ WeightGradPlan plan, const Acc* __restrict__ partials,
                       void* __restrict__ dw, DType out_type) {
  direct::ReduceSplits<DeviceNumeric, Acc>(plan, static_cast<int64_t>(blockIdx.x) * kReduceThreads + threadIdx.x,
                                           partials, dw, out_type);
}

// ---------------------------------------------------------------------------------------------------------------
// Launches.

constexpr int64_t kMaxBlocks = (int64_t{1} << 31) - 1;

// A kernel gets more than 48 KiB of dynamic shared memory only once it has asked for it.
template <typename Kernel>
cudaError_t AllowSharedMemory(Kernel kernel, int bytes) {
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
}

template <class Math, int N>
cudaError_t LaunchTiledGather(const GatherPlan& plan, const ConvCall& call, cudaStream_t stream) {
  using T = typename Math::Element;
  constexpr int kSmem = tiled::Cta<N>::kGatherSmemBytes;
  const auto* a = static_cast<const T*>(call.first);
  const auto* b = static_cast<const T*>(call.second);
  auto kernel = plan.b_k_contiguous() ? TiledGatherKernel<Math, N, true> : TiledGatherKernel<Math, N, false>;
  if (cudaError_t e = AllowSharedMemory(kernel, kSmem); e != cudaSuccess) return e;
  kernel<<<static_cast<unsigned>(plan.blocks), tiled::kThreads, kSmem, stream>>>(plan, a, b, call.result,
                                                                                 call.result_type);
  return cudaGetLastError();
}

template <class Math>
cudaError_t LaunchTiledGather(const GatherPlan& plan, const ConvCall& call, cudaStream_t stream) {
  return plan.tile_n == 64 ? LaunchTiledGather<Math, 64>(plan, call, stream)
                           : LaunchTiledGather<Math, 128>(plan, call, stream);
}

template <typename T, typename Acc>
cudaError_t LaunchDirectGather(const GatherPlan& plan, const ConvCall& call, cudaStream_t stream) {
  const auto* a = static_cast<const T*>(call.first);
  const auto* b = static_cast<const T*>(call.second);
  const unsigned blocks = static_cast<unsigned>(plan.blocks);
  if (plan.path == Path::kDirectDot) {
    DirectDotKernel<T, Acc><<<blocks, kDirectThreads, 0, stream>>>(plan, a, b, call.result, call.result_type);
  } else {
    DirectOuterKernel<T, Acc><<<blocks, kDirectThreads, 0, stream>>>(plan, a, b, call.result, call.result_type);
  }
  return cudaGetLastError();
}

template <typename Acc>
cudaError_t LaunchReduce(const WeightGradPlan& plan, const Acc* partials, const ConvCall& call, cudaStream_t stream) {
  const int64_t blocks = CeilDivHD(plan.partial_elements(), kReduceThreads);
  ReduceSplitsKernel<Acc>
      <<<static_cast<unsigned>(blocks), kReduceThreads, 0, stream>>>(plan, partials, call.result, call.result_type);
  return cudaGetLastError();
}

template <class Math, int N>
cudaError_t LaunchTiledWeightGrad(const WeightGradPlan& plan, const ConvCall& call, float* partials,
                                  cudaStream_t stream) {
  using T = typename Math::Element;
  constexpr int kSmem = tiled::Cta<N>::kWeightGradSmemBytes;
  auto kernel = TiledWeightGradKernel<Math, N>;
  if (cudaError_t e = AllowSharedMemory(kernel, kSmem); e != cudaSuccess) return e;
  kernel<<<static_cast<unsigned>(plan.blocks), tiled::kThreads, kSmem, stream>>>(
      plan, static_cast<const T*>(call.first), static_cast<const T*>(call.second), partials);
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  return LaunchReduce<float>(plan, partials, call, stream);
}

template <class Math>
cudaError_t LaunchTiledWeightGrad(const WeightGradPlan& plan, const ConvCall& call, float* partials,
                                  cudaStream_t stream) {
  return plan.tile_n == 64 ? LaunchTiledWeightGrad<Math, 64>(plan, call, partials, stream)
                           : LaunchTiledWeightGrad<Math, 128>(plan, call, partials, stream);
}

template <typename T, typename Acc>
cudaError_t LaunchDirectWeightGrad(const WeightGradPlan& plan, const ConvCall& call, Acc* partials,
                                   cudaStream_t stream) {
  DirectWeightGradKernel<T, Acc><<<static_cast<unsigned>(plan.blocks), kDirectThreads, 0, stream>>>(
      plan, static_cast<const T*>(call.first), static_cast<const T*>(call.second), partials);
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  return LaunchReduce<Acc>(plan, partials, call, stream);
}

bool Aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// The tiled path reads and writes 16-byte vectors: XLA's buffers are aligned so, but a misaligned buffer takes
// a CUDA-core path rather than fault.
Path PathFor(Pass pass, const ConvCall& call) {
  const bool forward = pass == Pass::kForward;
  const int64_t c_k = pass == Pass::kWeightGrad ? call.in_ch : forward ? call.in_ch : call.out_ch;
  const int64_t c_n = pass == Pass::kWeightGrad ? call.out_ch : forward ? call.out_ch : call.in_ch;
  return ChoosePath(pass, call.operand_type, c_k, c_n,
                    Aligned16(call.first) && Aligned16(call.second) && Aligned16(call.result));
}

// Calls fn with the tensor cores' arithmetic for operands of type T at `precision` (float64 has none).
template <typename T, typename Fn>
cudaError_t WithMath(Precision precision, Fn&& fn) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return fn(Bf16Math{});
  } else if constexpr (std::is_same_v<T, __half>) {
    return fn(F16Math{});
  } else if constexpr (std::is_same_v<T, float>) {
    return precision == Precision::kHighest ? fn(Tf32x3Math{}) : fn(Tf32Math{});
  } else {
    return cudaErrorInvalidValue;
  }
}

// forward or input_grad. The dtype dispatch gives the operand and accumulation types of the table's pair; the
// result type is a run-time argument of the kernels, so that a 16-bit operand's two result types share them.
cudaError_t LaunchGather(const ConvCall& call, size_t result_bytes, Precision precision, const DeviceInfo& device,
                         cudaStream_t stream) {
  const GatherPlan plan = MakeGatherPlan(call, call.operand_type, PathFor(call.pass, call), device);
  if (plan.blocks > kMaxBlocks) return cudaErrorInvalidConfiguration;
  // Outputs of phases no tap reaches are zero: the result is zeroed first, the kernels write the rest.
  if (plan.zero_fill) {
    if (cudaError_t e = cudaMemsetAsync(call.result, 0, result_bytes, stream); e != cudaSuccess) return e;
  }
  cudaError_t status = cudaErrorInvalidValue;
  DispatchDTypes<CudaTypes>(call.operand_type, call.result_type, [&](auto types) {
    using T = typename decltype(types)::Operand;
    using Acc = typename decltype(types)::Accumulate;
    if (plan.path != Path::kTiled) {
      status = LaunchDirectGather<T, Acc>(plan, call, stream);
      return;
    }
    status = WithMath<T>(precision, [&](auto math) { return LaunchTiledGather<decltype(math)>(plan, call, stream); });
  });
  return status;
}

// `partials` is the call's second result, sized by the lowering (WeightGradPartialBytes): the plan splits within
// it, so the pass allocates nothing at run time and can be captured into a CUDA graph.
// CTAs of TiledWeightGradKernel<Math, N> resident per multiprocessor of the current device, from the occupancy
// calculator, asked once per device; 0 where it cannot say (the plan then keeps its default). A failed query's
// error is cleared, so that no later cudaGetLastError reports it as a launch's.
template <class Math, int N>
int WeightGradResident() {
  constexpr int kDevices = 64;
  static std::atomic<int> cache[kDevices] = {};  // 0: not yet asked; -1: the calculator could not say
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kDevices) return 0;
  int r = cache[device].load(std::memory_order_relaxed);
  if (r == 0) {
    auto kernel = TiledWeightGradKernel<Math, N>;
    constexpr int kSmem = tiled::Cta<N>::kWeightGradSmemBytes;
    if (AllowSharedMemory(kernel, kSmem) != cudaSuccess ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&r, kernel, tiled::kThreads, kSmem) != cudaSuccess || r < 1) {
      cudaGetLastError();
      r = -1;
    }
    cache[device].store(r, std::memory_order_relaxed);
  }
  return r > 0 ? r : 0;
}

// The device as the weight gradient's plan needs it: the tiled kernels' residency for the call's arithmetic.
DeviceInfo WeightGradDevice(const ConvCall& call, Precision precision, DeviceInfo device) {
  DispatchDTypes<CudaTypes>(call.operand_type, call.result_type, [&](auto types) {
    using T = typename decltype(types)::Operand;
    if constexpr (std::is_same_v<typename decltype(types)::Accumulate, float>) {
      WithMath<T>(precision, [&](auto math) {
        const int resident[2] = {WeightGradResident<decltype(math), 64>(), WeightGradResident<decltype(math), 128>()};
        for (int i = 0; i < 2; ++i)
          if (resident[i] > 0) device.weight_grad_resident[i] = resident[i];
        return cudaSuccess;
      });
    }
  });
  return device;
}

ffi::Error LaunchWeightGrad(const ConvCall& call, Precision precision, const DeviceInfo& device,
                            ffi::AnyBuffer partials, cudaStream_t stream, cudaError_t* status) {
  const int64_t partial_capacity = static_cast<int64_t>(partials.size_bytes());
  const Path path = PathFor(Pass::kWeightGrad, call);
  const WeightGradPlan plan =
      MakeWeightGradPlan(call, call.operand_type, path,
                         path == Path::kTiled ? WeightGradDevice(call, precision, device) : device, partial_capacity);
  if (plan.blocks > kMaxBlocks) return ffi::Error::InvalidArgument("jaxseg (CUDA): weight gradient too large");
  if (PartialBytes(plan, call.operand_type) > partial_capacity || !Aligned16(partials.untyped_data()))
    return ffi::Error::InvalidArgument(
        "jaxseg (CUDA): the weight gradient's partials buffer (second result) is smaller than one split or not "
        "16-byte aligned: emit the call through jaxseg's lowering, which sizes it");
  *status = cudaErrorInvalidValue;
  DispatchDTypes<CudaTypes>(call.operand_type, call.result_type, [&](auto types) {
    using T = typename decltype(types)::Operand;
    using Acc = typename decltype(types)::Accumulate;  // also the partials' type
    Acc* acc_partials = static_cast<Acc*>(partials.untyped_data());
    if (plan.path != Path::kTiled) {
      *status = LaunchDirectWeightGrad<T, Acc>(plan, call, acc_partials, stream);
      return;
    }
    if constexpr (std::is_same_v<Acc, float>) {
      *status = WithMath<T>(precision, [&](auto math) {
        return LaunchTiledWeightGrad<decltype(math)>(plan, call, acc_partials, stream);
      });
    }
  });
  return ffi::Error::Success();
}

DeviceInfo QueryDevice() {
  DeviceInfo info;
  int device = 0, count = 0;
  if (cudaGetDevice(&device) == cudaSuccess &&
      cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) == cudaSuccess && count > 0)
    info.multiprocessors = count;
  return info;
}

// `partials`: weight_grad's second result (null for the other passes).
ffi::Error Execute(Pass pass, cudaStream_t stream, ffi::AnyBuffer first, ffi::AnyBuffer second,
                   ffi::Result<ffi::AnyBuffer> result, ffi::AnyBuffer* partials, const CallAttrs& attrs) {
  ConvCall call;
  if (ffi::Error err = DecodeCall(pass, first, second, *result, attrs, &call); err.failure()) return err;
  if (result->element_count() == 0) return ffi::Error::Success();
  if (const std::string why = CanImplement(call); !why.empty())
    return ffi::Error::InvalidArgument("jaxseg (CUDA): " + why + " (the Python lowering sends such layers to XLA)");
  const Precision precision =
      attrs.precision == static_cast<int64_t>(Precision::kHighest) ? Precision::kHighest : Precision::kDefault;
  cudaError_t status = cudaSuccess;
  if (pass == Pass::kWeightGrad) {
    if (ffi::Error err = LaunchWeightGrad(call, precision, QueryDevice(), *partials, stream, &status); err.failure())
      return err;
  } else {
    status = LaunchGather(call, result->size_bytes(), precision, QueryDevice(), stream);
  }
  if (status != cudaSuccess)
    return ffi::Error::Internal(std::string("jaxseg: CUDA launch failed: ") + cudaGetErrorString(status));
  return ffi::Error::Success();
}

template <Pass kPass>
ffi::Error Handle(cudaStream_t stream, ffi::AnyBuffer first, ffi::AnyBuffer second, ffi::Result<ffi::AnyBuffer> result,
                  CallAttrs attrs) {
  return Execute(kPass, stream, first, second, result, nullptr, attrs);
}

ffi::Error HandleWeightGrad(cudaStream_t stream, ffi::AnyBuffer first, ffi::AnyBuffer second,
                            ffi::Result<ffi::AnyBuffer> result, ffi::Result<ffi::AnyBuffer> partials, CallAttrs attrs) {
  ffi::AnyBuffer scratch = *partials;
  return Execute(Pass::kWeightGrad, stream, first, second, result, &scratch, attrs);
}

auto Binding() { return BindCallOperands(ffi::Ffi::Bind().Ctx<ffi::PlatformStream<cudaStream_t>>()); }

// weight_grad's second result: the split-K partials (bytes), allocated by XLA.
auto WeightGradBinding() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::PlatformStream<cudaStream_t>>()
      .Arg<ffi::AnyBuffer>()
      .Arg<ffi::AnyBuffer>()
      .Ret<ffi::AnyBuffer>()
      .Ret<ffi::AnyBuffer>()
      .Attrs<CallAttrs>();
}

// Every launch goes to the stream XLA gives and nothing is allocated or synchronized at run time: XLA may record
// the calls into CUDA graphs (command buffers) instead of splitting its graphs around them.
constexpr ffi::Traits kTraits = ffi::Traits::kCmdBufferCompatible;

}  // namespace
}  // namespace jaxseg::gpu

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxsegCudaForward, jaxseg::gpu::Handle<jaxseg::Pass::kForward>, jaxseg::gpu::Binding(),
                              {jaxseg::gpu::kTraits});
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxsegCudaInputGrad, jaxseg::gpu::Handle<jaxseg::Pass::kInputGrad>,
                              jaxseg::gpu::Binding(), {jaxseg::gpu::kTraits});
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxsegCudaWeightGrad, jaxseg::gpu::HandleWeightGrad, jaxseg::gpu::WeightGradBinding(),
                              {jaxseg::gpu::kTraits});
