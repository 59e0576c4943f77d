// Phase geometry of a transposed convolution: the one home of the padding arithmetic, the per-phase sub-kernel
// taps and the per-phase output extents. Used by the Python side (through the nanobind module), by the CPU
// kernels and by the host code of the CUDA kernels. Plain C++17, no XLA or CUDA headers.
//
// One spatial axis of `conv_general_dilated(x, w, window_strides=1, padding=(lo, hi), lhs_dilation=s,
// rhs_dilation=d)`:
//
//   y[o] = sum_k x[j] * w[k]   over the k in [0, K) for which  o + d*k - lo = j*s  with 0 <= j < H.
//
// Write o = q*s + r with r in [0, s) (the output's *phase*). Tap k reaches phase r exactly when
// (r + d*k - lo) is a multiple of s, and then j = q + off with off = (r + d*k - lo) / s. So every phase is a
// stride-1 correlation of the *undilated* input with its own sub-kernel (its taps), and every tap belongs to
// exactly one phase. Nothing reads an inserted zero and nothing computes an output that is not asked for.
#ifndef JAXSEG_COMMON_PHASE_GEOMETRY_H_
#define JAXSEG_COMMON_PHASE_GEOMETRY_H_

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace jaxseg {

// Floor division and modulus for a positive divisor, exact for negative numerators.
inline int64_t FloorDiv(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
inline int64_t FloorMod(int64_t a, int64_t b) { return a - FloorDiv(a, b) * b; }
inline int64_t CeilDiv(int64_t a, int64_t b) { return -FloorDiv(-a, b); }

// Size of the kernel with its dilation applied: d*(K-1)+1 (0 for an empty kernel).
inline int64_t EffectiveKernelSize(int64_t kernel, int64_t dilation) {
  return kernel == 0 ? 0 : dilation * (kernel - 1) + 1;
}

// Length of the output axis: (H-1)*s + 1 + lo + hi - (d*(K-1)+1) + 1. Zero for an empty input axis.
inline int64_t OutputSize(int64_t in, int64_t kernel, int64_t stride, int64_t dilation, int64_t lo, int64_t hi) {
  const int64_t dilated_in = in == 0 ? 0 : (in - 1) * stride + 1;
  return dilated_in + lo + hi - EffectiveKernelSize(kernel, dilation) + 1;
}

// Padding (lo, hi) of the dilated input for jax.lax.conv_transpose's 'SAME' and 'VALID' (`mode` upper case),
// given the effective kernel size k and the stride s.
inline bool StringPadding(const std::string& mode, int64_t k, int64_t s, int64_t* lo, int64_t* hi) {
  int64_t total;
  if (mode == "SAME") {
    total = k + s - 2;
    *lo = s > k - 1 ? k - 1 : CeilDiv(total, 2);
  } else if (mode == "VALID") {
    total = k + s - 2 + std::max<int64_t>(k - s, 0);
    *lo = k - 1;
  } else {
    return false;
  }
  *hi = total - *lo;
  return true;
}

// Padding of the dilated input that makes conv_transpose the gradient of a forward convolution padded by
// (p_lo, p_hi): `use_consistent_padding=True`, PyTorch's meaning of `padding`.
inline std::pair<int64_t, int64_t> ConsistentPadding(int64_t k, int64_t p_lo, int64_t p_hi) {
  return {k - 1 - p_lo, k - 1 - p_hi};
}

// Padding that reproduces a PyTorch ConvTranspose (padding p, output_padding op, dilation d) with
// transpose_kernel=True: (d*(K-1) - p, d*(K-1) - p + op).
inline std::pair<int64_t, int64_t> TorchPadding(int64_t kernel, int64_t padding, int64_t output_padding,
                                                int64_t dilation) {
  const int64_t k = EffectiveKernelSize(kernel, dilation) - 1;
  return {k - padding, k - padding + output_padding};
}

// One tap of a phase's sub-kernel: kernel index `k`, and input index j = q + offset for the phase's q-th
// output. Only q in [q_begin, q_end) read inside the input; outside that range the tap meets padding.
struct Tap {
  int64_t k;
  int64_t offset;
  int64_t q_begin;
  int64_t q_end;
};

// The outputs o = q*stride + residue, q in [0, count), and the taps that reach them.
struct Phase {
  int64_t residue;
  int64_t count;
  std::vector<Tap> taps;
};

// Outputs of residue r on an axis of `out_size` outputs and this stride: o = q*stride + r for q in [0, count).
inline int64_t ResidueCount(int64_t out_size, int64_t stride, int64_t r) {
  return r < out_size ? CeilDiv(out_size - r, stride) : 0;
}

// Everything about one spatial axis. `phases` holds only the residues that some tap reaches, in increasing
// order: at most one per tap, whatever the stride, so nothing here grows with a stride much larger than the
// kernel. The outputs of any other residue have no taps: they are zero. `phase_of_tap[k]` (an index into
// `phases`) and `offset_of_tap[k]` give the inverse view used by the input gradient and the weight gradient:
// tap k links input j with output (j - offset)*stride + residue.
struct AxisGeometry {
  int64_t in_size, kernel_size, stride, dilation, pad_lo, pad_hi, out_size;
  std::vector<Phase> phases;
  std::vector<int64_t> phase_of_tap;
  std::vector<int64_t> offset_of_tap;

  // The output index tap k links with input index j, or -1 where that falls outside the output.
  int64_t OutputOf(int64_t k, int64_t j) const {
    const Phase& p = phases[phase_of_tap[k]];
    const int64_t q = j - offset_of_tap[k];
    return (q >= 0 && q < p.count) ? q * stride + p.residue : -1;
  }

  // Whether every output of this axis has a tap (else some outputs are zero whatever the operands).
  bool EveryOutputHasTaps() const {
    int64_t reached = 0;
    for (const Phase& p : phases) reached += p.count > 0;
    return reached == std::min(stride, out_size);
  }
};

// Requires stride >= 1, dilation >= 1, sizes >= 0 and out_size >= 0 (callers validate first).
inline AxisGeometry MakeAxisGeometry(int64_t in, int64_t kernel, int64_t stride, int64_t dilation, int64_t lo,
                                     int64_t hi) {
  AxisGeometry g{in, kernel, stride, dilation, lo, hi, OutputSize(in, kernel, stride, dilation, lo, hi), {}, {}, {}};
  if (g.out_size < 0) g.out_size = 0;
  // Tap k reaches the residue r with r + d*k - lo = 0 (mod s), at input offset (r + d*k - lo) / s.
  std::vector<std::pair<int64_t, int64_t>> residue_of_tap(kernel);  // (residue, k), sorted to group the phases
  for (int64_t k = 0; k < kernel; ++k) residue_of_tap[k] = {FloorMod(lo - dilation * k, stride), k};
  std::sort(residue_of_tap.begin(), residue_of_tap.end());
  g.phase_of_tap.assign(kernel, 0);
  g.offset_of_tap.assign(kernel, 0);
  for (const auto& [r, k] : residue_of_tap) {
    if (g.phases.empty() || g.phases.back().residue != r)
      g.phases.push_back(Phase{r, ResidueCount(g.out_size, stride, r), {}});
    Phase& p = g.phases.back();
    const int64_t off = (r + dilation * k - lo) / stride;  // exact
    g.phase_of_tap[k] = static_cast<int64_t>(g.phases.size()) - 1;
    g.offset_of_tap[k] = off;
    const int64_t q_begin = std::min(p.count, std::max<int64_t>(0, -off));
    const int64_t q_end = std::max(q_begin, std::min(p.count, in - off));
    p.taps.push_back(Tap{k, off, q_begin, q_end});
  }
  return g;
}

// The phases of all spatial axes together: a phase is one residue per axis; its outputs are the grid
// q = (q_0, ..., q_{D-1}), q_a in [0, count_a), at o_a = q_a*stride_a + residue_a, and its taps are every
// combination of one tap per axis (the sub-kernel). The kernels walk these instead of the axes one by one. Only
// phases with taps are listed (see AxisGeometry); every output of another phase is zero.
constexpr int kMaxSpatialDims = 8;

struct TapND {
  int64_t k;                         // flat kernel index
  int64_t offset[kMaxSpatialDims];   // input j_a = q_a + offset_a
  int64_t q_begin[kMaxSpatialDims];  // the tap reads inside the input for q_a in [q_begin_a, q_end_a)
  int64_t q_end[kMaxSpatialDims];
};

struct PhaseND {
  int64_t residue[kMaxSpatialDims];
  int64_t count[kMaxSpatialDims];
  int64_t pixels;  // product of the counts
  std::vector<TapND> taps;
};

inline std::vector<PhaseND> MakePhasesND(const std::vector<AxisGeometry>& axes) {
  const size_t d = axes.size();
  std::vector<PhaseND> phases(1);
  phases[0].pixels = 1;
  phases[0].taps.resize(1);
  phases[0].taps[0].k = 0;
  for (size_t a = 0; a < d; ++a) {
    std::vector<PhaseND> next;
    for (const PhaseND& p : phases) {
      for (const Phase& ap : axes[a].phases) {
        PhaseND q = p;
        q.residue[a] = ap.residue;
        q.count[a] = ap.count;
        q.pixels = p.pixels * ap.count;
        q.taps.clear();
        for (const TapND& t : p.taps) {
          for (const Tap& at : ap.taps) {
            TapND u = t;
            u.k = t.k * axes[a].kernel_size + at.k;
            u.offset[a] = at.offset;
            u.q_begin[a] = at.q_begin;
            u.q_end[a] = at.q_end;
            q.taps.push_back(u);
          }
        }
        next.push_back(std::move(q));
      }
    }
    phases.swap(next);
  }
  return phases;
}

}  // namespace jaxseg

#endif  // JAXSEG_COMMON_PHASE_GEOMETRY_H_
