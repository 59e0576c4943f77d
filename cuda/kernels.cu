// CUDA custom calls of the three passes (XLA FFI handlers), one launch per pass covering every phase.
//
// Threads map to real result elements only: the forward kernel gives each output element to one thread, which
// reads its phase's sub-kernel taps from the original input (no zero-inserted buffer, no extra elements for odd
// output sizes); the input-gradient kernel gives each input element the taps that link it to an output; the
// weight-gradient kernel gives each weight the (input, output) pairs its tap links. Consecutive threads take
// consecutive channels, so the channel-contiguous operand is read coalesced. All index arithmetic is 64-bit.
//
// The host side builds per-axis tap tables from the shared phase geometry (common/phase_geometry.h) and passes
// them by value as a kernel parameter; no memory is allocated.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "common/conv_shape.h"
#include "common/dtype_dispatch.h"
#include "common/ffi_binding.h"
#include "common/phase_geometry.h"
#include "cuda/handlers.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace jaxseg::cuda {
namespace {

constexpr int kDims = kMaxSpatialDims;  // spatial axes the tables hold
constexpr int kTaps = kMaxKernelSize;    // kernel size per axis
constexpr int kStride = kMaxStride;      // stride per axis
constexpr int kThreads = 256;

// The C++ type of each DType on CUDA, for the dtype dispatch (common/dtype_dispatch.h).
struct CudaTypes {
  using F32 = float;
  using F64 = double;
  using BF16 = __nv_bfloat16;
  using F16 = __half;
};

struct AxisTable {
  int64_t in, out, kernel, stride;
  int64_t phase_count[kStride];    // outputs of phase r: o = q*stride + r, q < phase_count[r]
  int32_t phase_begin[kStride + 1];  // phase r's taps are entries [phase_begin[r], phase_begin[r+1])
  int32_t tap_k[kTaps];            // ... their kernel indices
  int64_t tap_offset[kTaps];       // ... and input offsets: j = q + offset
  int32_t phase_of_k[kTaps];       // by kernel index: the phase it reaches
  int64_t offset_of_k[kTaps];      // and its offset
};

struct Problem {
  int32_t dims;
  int64_t batch, in_ch, out_ch, in_spatial, out_spatial, kernel_spatial;
  AxisTable axes[kDims];
};

// The tables of one call, from the shared geometry; false when the layer exceeds the tables' sizes.
bool MakeProblem(const ConvShape& shape, Problem* p) {
  if (shape.axes.size() > static_cast<size_t>(kDims)) return false;
  p->dims = static_cast<int32_t>(shape.axes.size());
  p->batch = shape.batch;
  p->in_ch = shape.in_ch;
  p->out_ch = shape.out_ch;
  p->in_spatial = shape.InSpatial();
  p->out_spatial = shape.OutSpatial();
  p->kernel_spatial = shape.KernelSpatial();
  for (size_t a = 0; a < shape.axes.size(); ++a) {
    const AxisGeometry& g = shape.axes[a];
    if (g.kernel_size > kTaps || g.stride > kStride) return false;
    AxisTable& t = p->axes[a];
    t.in = g.in_size;
    t.out = g.out_size;
    t.kernel = g.kernel_size;
    t.stride = g.stride;
    // The geometry lists only the residues with taps (in increasing order); the tables have one entry per
    // residue, those without taps empty.
    int32_t n = 0;
    size_t next = 0;
    for (int64_t r = 0; r < g.stride; ++r) {
      t.phase_count[r] = ResidueCount(g.out_size, g.stride, r);
      t.phase_begin[r] = n;
      if (next < g.phases.size() && g.phases[next].residue == r) {
        for (const Tap& tap : g.phases[next].taps) {
          t.tap_k[n] = static_cast<int32_t>(tap.k);
          t.tap_offset[n] = tap.offset;
          ++n;
        }
        ++next;
      }
    }
    t.phase_begin[g.stride] = n;
    for (int64_t k = 0; k < g.kernel_size; ++k) {
      t.phase_of_k[k] = static_cast<int32_t>(g.phases[g.phase_of_tap[k]].residue);
      t.offset_of_k[k] = g.offset_of_tap[k];
    }
  }
  return true;
}

template <typename T>
__device__ __forceinline__ float Load(const T* p) {
  return static_cast<float>(*p);
}
template <>
__device__ __forceinline__ float Load<__nv_bfloat16>(const __nv_bfloat16* p) {
  return __bfloat162float(*p);
}
template <>
__device__ __forceinline__ float Load<__half>(const __half* p) {
  return __half2float(*p);
}

template <typename T, typename Acc>
__device__ __forceinline__ Acc LoadAcc(const T* p) {
  if constexpr (sizeof(Acc) == 8) {
    return static_cast<Acc>(*p);
  } else {
    return Load<T>(p);
  }
}

template <typename U, typename Acc>
__device__ __forceinline__ U Store(Acc v) {
  if constexpr (std::is_same_v<U, __nv_bfloat16>) {
    return __float2bfloat16(static_cast<float>(v));
  } else if constexpr (std::is_same_v<U, __half>) {
    return __float2half(static_cast<float>(v));
  } else {
    return static_cast<U>(v);
  }
}

// A grid-stride loop over result elements, in 64-bit indices.
__device__ __forceinline__ int64_t FirstIndex() {
  return blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
}
__device__ __forceinline__ int64_t IndexStep() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

// Steps a counter c (one digit per spatial axis, the last fastest) through [begin, end) per axis; false once it
// has passed its last value. Walks a phase's sub-kernel, all kernel taps, or a tap's input range.
template <typename I>
__device__ __forceinline__ bool Next(int dims, I* c, const I* begin, const I* end) {
  int a = dims - 1;
  while (a >= 0 && ++c[a] == end[a]) c[a] = begin[a], --a;
  return a >= 0;
}

// y[g, n, o..., co] = sum over the taps of o's phase and ci of x[g, n, q + offset, ci] * w[g, k, ci, co].
template <typename T, typename U, typename Acc>
__global__ void ForwardKernel(Problem p, const T* __restrict__ x, const T* __restrict__ w, U* __restrict__ y,
                              int64_t total) {
  for (int64_t idx = FirstIndex(); idx < total; idx += IndexStep()) {
    int64_t rest = idx;
    const int64_t co = rest % p.out_ch;
    rest /= p.out_ch;
    int64_t q[kDims];
    int32_t tb[kDims], te[kDims], tc[kDims];
    bool empty = false;
    for (int a = p.dims - 1; a >= 0; --a) {
      const AxisTable& t = p.axes[a];
      const int64_t o = rest % t.out;
      rest /= t.out;
      const int64_t r = o % t.stride;
      q[a] = o / t.stride;
      tb[a] = t.phase_begin[r];
      te[a] = t.phase_begin[r + 1];
      tc[a] = tb[a];
      empty |= tb[a] == te[a];
    }
    const int64_t gn = rest, g = gn / p.batch;
    Acc acc = 0;
    while (!empty) {  // every combination of one tap per axis (the phase's sub-kernel)
      int64_t j_flat = 0, k_flat = 0;
      bool inside = true;
      for (int a = 0; a < p.dims; ++a) {
        const AxisTable& t = p.axes[a];
        const int64_t j = q[a] + t.tap_offset[tc[a]];
        inside &= j >= 0 && j < t.in;
        j_flat = j_flat * t.in + j;
        k_flat = k_flat * t.kernel + t.tap_k[tc[a]];
      }
      if (inside) {
        const T* xp = x + (gn * p.in_spatial + j_flat) * p.in_ch;
        const T* wp = w + (g * p.kernel_spatial + k_flat) * p.in_ch * p.out_ch + co;
        for (int64_t ci = 0; ci < p.in_ch; ++ci) acc += LoadAcc<T, Acc>(xp + ci) * LoadAcc<T, Acc>(wp + ci * p.out_ch);
      }
      if (!Next(p.dims, tc, tb, te)) break;
    }
    y[idx] = Store<U, Acc>(acc);
  }
}

// dx[g, n, j..., ci] = sum over every tap k linking j to an output o, and co, of dy[g, n, o, co] * w[g, k, ci, co].
template <typename T, typename U, typename Acc>
__global__ void InputGradKernel(Problem p, const T* __restrict__ y_grad, const T* __restrict__ w,
                                U* __restrict__ x_grad, int64_t total) {
  for (int64_t idx = FirstIndex(); idx < total; idx += IndexStep()) {
    int64_t rest = idx;
    const int64_t ci = rest % p.in_ch;
    rest /= p.in_ch;
    int64_t j[kDims];
    int32_t kc[kDims], k0[kDims], kn[kDims];
    for (int a = p.dims - 1; a >= 0; --a) {
      j[a] = rest % p.axes[a].in;
      rest /= p.axes[a].in;
      kc[a] = k0[a] = 0;
      kn[a] = static_cast<int32_t>(p.axes[a].kernel);
    }
    const int64_t gn = rest, g = gn / p.batch;
    Acc acc = 0;
    while (true) {
      int64_t o_flat = 0, k_flat = 0;
      bool inside = true;
      for (int a = 0; a < p.dims; ++a) {
        const AxisTable& t = p.axes[a];
        const int32_t r = t.phase_of_k[kc[a]];
        const int64_t qq = j[a] - t.offset_of_k[kc[a]];
        inside &= qq >= 0 && qq < t.phase_count[r];
        o_flat = o_flat * t.out + qq * t.stride + r;
        k_flat = k_flat * t.kernel + kc[a];
      }
      if (inside) {
        const T* yp = y_grad + (gn * p.out_spatial + o_flat) * p.out_ch;
        const T* wp = w + ((g * p.kernel_spatial + k_flat) * p.in_ch + ci) * p.out_ch;
        for (int64_t co = 0; co < p.out_ch; ++co) acc += LoadAcc<T, Acc>(yp + co) * LoadAcc<T, Acc>(wp + co);
      }
      if (!Next(p.dims, kc, k0, kn)) break;
    }
    x_grad[idx] = Store<U, Acc>(acc);
  }
}

// dw[g, k..., ci, co] = sum over n and the inputs j that tap k links to an output o of x[.., j, ci] * dy[.., o, co].
template <typename T, typename U, typename Acc>
__global__ void WeightGradKernel(Problem p, const T* __restrict__ x, const T* __restrict__ y_grad,
                                 U* __restrict__ w_grad, int64_t total) {
  for (int64_t idx = FirstIndex(); idx < total; idx += IndexStep()) {
    int64_t rest = idx;
    const int64_t co = rest % p.out_ch;
    rest /= p.out_ch;
    const int64_t ci = rest % p.in_ch;
    rest /= p.in_ch;
    int64_t k[kDims], jb[kDims], je[kDims], jc[kDims];
    bool empty = false;
    for (int a = p.dims - 1; a >= 0; --a) {
      const AxisTable& t = p.axes[a];
      k[a] = rest % t.kernel;
      rest /= t.kernel;
      const int64_t off = t.offset_of_k[k[a]];
      jb[a] = off > 0 ? off : 0;
      je[a] = t.phase_count[t.phase_of_k[k[a]]] + off;
      je[a] = je[a] < t.in ? je[a] : t.in;
      empty |= je[a] <= jb[a];
    }
    const int64_t g = rest;
    Acc acc = 0;
    for (int64_t n = 0; n < p.batch && !empty; ++n) {
      const int64_t gn = g * p.batch + n;
      for (int a = 0; a < p.dims; ++a) jc[a] = jb[a];
      while (true) {
        int64_t j_flat = 0, o_flat = 0;
        for (int a = 0; a < p.dims; ++a) {
          const AxisTable& t = p.axes[a];
          j_flat = j_flat * t.in + jc[a];
          o_flat = o_flat * t.out + (jc[a] - t.offset_of_k[k[a]]) * t.stride + t.phase_of_k[k[a]];
        }
        acc += LoadAcc<T, Acc>(x + (gn * p.in_spatial + j_flat) * p.in_ch + ci) *
               LoadAcc<T, Acc>(y_grad + (gn * p.out_spatial + o_flat) * p.out_ch + co);
        if (!Next(p.dims, jc, jb, je)) break;
      }
    }
    w_grad[idx] = Store<U, Acc>(acc);
  }
}

template <typename T, typename U, typename Acc>
cudaError_t Launch(Pass pass, cudaStream_t stream, const Problem& p, const void* a, const void* b, void* out,
                   int64_t total) {
  const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, int64_t{1} << 20);
  const auto* ta = static_cast<const T*>(a);
  const auto* tb = static_cast<const T*>(b);
  auto* to = static_cast<U*>(out);
  switch (pass) {
    case Pass::kForward:
      ForwardKernel<T, U, Acc><<<blocks, kThreads, 0, stream>>>(p, ta, tb, to, total);
      break;
    case Pass::kInputGrad:
      InputGradKernel<T, U, Acc><<<blocks, kThreads, 0, stream>>>(p, ta, tb, to, total);
      break;
    case Pass::kWeightGrad:
      WeightGradKernel<T, U, Acc><<<blocks, kThreads, 0, stream>>>(p, ta, tb, to, total);
      break;
  }
  return cudaGetLastError();
}

ffi::Error Execute(Pass pass, cudaStream_t stream, ffi::AnyBuffer first, ffi::AnyBuffer second,
                   ffi::Result<ffi::AnyBuffer> result, const CallAttrs& attrs) {
  ConvCall call;
  if (ffi::Error err = DecodeCall(pass, first, second, *result, attrs, &call); err.failure()) return err;
  // The CUDA kernels read the canonical layout only: for transpose_kernel, Python copies the kernel into it.
  if (call.transpose_kernel)
    return ffi::Error::InvalidArgument("jaxseg (CUDA): the kernels take the canonical kernel layout only");
  Problem p;
  if (!MakeProblem(call, &p))
    return ffi::Error::InvalidArgument("jaxseg (CUDA): at most " + std::to_string(kDims) +
                                       " spatial axes, kernel size <= " + std::to_string(kTaps) +
                                       " and stride <= " + std::to_string(kStride));
  const int64_t total = static_cast<int64_t>(result->element_count());
  if (total == 0) return ffi::Error::Success();
  cudaError_t status = cudaSuccess;
  const bool launched = DispatchDTypes<CudaTypes>(call.operand_type, call.result_type, [&](auto types) {
    using D = decltype(types);
    status = Launch<typename D::Operand, typename D::Result, typename D::Accumulate>(pass, stream, p, call.first,
                                                                                      call.second, call.result, total);
  });
  if (!launched) return ffi::Error::Internal("jaxseg (CUDA): no kernel for this dtype pair");
  if (status != cudaSuccess)
    return ffi::Error::Internal(std::string("jaxseg: CUDA launch failed: ") + cudaGetErrorString(status));
  return ffi::Error::Success();
}

template <Pass kPass>
ffi::Error Handle(cudaStream_t stream, ffi::AnyBuffer first, ffi::AnyBuffer second, ffi::Result<ffi::AnyBuffer> result,
                  CallAttrs attrs) {
  return Execute(kPass, stream, first, second, result, attrs);
}

auto Binding() { return BindConvTranspose<ffi::PlatformStream<cudaStream_t>>(); }

}  // namespace
}  // namespace jaxseg::cuda

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxsegCudaForward, jaxseg::cuda::Handle<jaxseg::Pass::kForward>,
                              jaxseg::cuda::Binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxsegCudaInputGrad, jaxseg::cuda::Handle<jaxseg::Pass::kInputGrad>,
                              jaxseg::cuda::Binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxsegCudaWeightGrad, jaxseg::cuda::Handle<jaxseg::Pass::kWeightGrad>,
                              jaxseg::cuda::Binding());
