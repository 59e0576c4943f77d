// The machine's bfloat16 dot-product peak: every thread runs 12 independent chains of 512-bit vdpbf16ps (each
// instruction does 32 bf16 multiply-adds into 16 float32 lanes, counted as 64 FLOPs), with nothing else in the
// loop: the bf16 counterpart of fma_peak.c. Build and run (a CPU with AVX512-BF16):
//   cc -O2 -mavx512f -mavx512bf16 -fopenmp benchmarks/bf16_peak.c -o /tmp/bf16_peak && /tmp/bf16_peak
// Prints GFLOP/s, best of 5 runs.
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <time.h>

#define DP _mm512_dpbf16_ps

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(void) {
  const long iters = 100000000;
  double best = 0;
  float sink = 0;
  for (int run = 0; run < 5; ++run) {
    const double t0 = now();
#pragma omp parallel reduction(+ : sink)
    {
      // Small operands (1e-3 squared per pair) keep the accumulators finite over the whole loop.
      const __m512bh b = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3f), _mm512_set1_ps(1e-3f));
      const __m512bh c = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3f), _mm512_set1_ps(1e-3f));
      // Named variables, not an array: GCC kept an array of vectors in memory (a store per instruction).
      __m512 a0 = _mm512_set1_ps(0), a1 = _mm512_set1_ps(1), a2 = _mm512_set1_ps(2), a3 = _mm512_set1_ps(3);
      __m512 a4 = _mm512_set1_ps(4), a5 = _mm512_set1_ps(5), a6 = _mm512_set1_ps(6), a7 = _mm512_set1_ps(7);
      __m512 a8 = _mm512_set1_ps(8), a9 = _mm512_set1_ps(9), a10 = _mm512_set1_ps(10), a11 = _mm512_set1_ps(11);
      for (long i = 0; i < iters; ++i) {
        a0 = DP(a0, b, c); a1 = DP(a1, b, c); a2 = DP(a2, b, c); a3 = DP(a3, b, c);
        a4 = DP(a4, b, c); a5 = DP(a5, b, c); a6 = DP(a6, b, c); a7 = DP(a7, b, c);
        a8 = DP(a8, b, c); a9 = DP(a9, b, c); a10 = DP(a10, b, c); a11 = DP(a11, b, c);
      }
      float out[16];
      __m512 s = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11;
      __builtin_memcpy(out, &s, sizeof(out));
      for (int l = 0; l < 16; ++l) sink += out[l];
    }
    const double flops = 2.0 * 32 * 12 * iters * omp_get_max_threads();
    const double gflops = flops / (now() - t0) / 1e9;
    if (gflops > best) best = gflops;
  }
  printf("%.1f GFLOP/s bf16 dot-product peak, %d threads (checksum %g)\n", best, omp_get_max_threads(), sink);
  return 0;
}
