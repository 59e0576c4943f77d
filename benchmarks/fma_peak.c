// The machine's float32 multiply-add peak: every thread runs 12 independent chains of 512-bit FMAs (enough to
// cover the FMA latency on current x86 cores), with nothing else in the loop. Build and run:
//   cc -O2 -mavx512f -fopenmp benchmarks/fma_peak.c -o /tmp/fma_peak && /tmp/fma_peak
// (-mavx2 -mfma -DUSE_AVX2 for a machine without AVX-512). Prints GFLOP/s, best of 5 runs.
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <time.h>

#ifdef USE_AVX2
typedef __m256 vec;
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define LANES 8
#else
typedef __m512 vec;
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define LANES 16
#endif

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
      // Named variables, not an array: GCC kept an array of vectors in memory (a store per FMA).
      const vec b = SET1(0.999f), c = SET1(0.001f);
      vec a0 = SET1(0), a1 = SET1(1), a2 = SET1(2), a3 = SET1(3), a4 = SET1(4), a5 = SET1(5);
      vec a6 = SET1(6), a7 = SET1(7), a8 = SET1(8), a9 = SET1(9), a10 = SET1(10), a11 = SET1(11);
      for (long i = 0; i < iters; ++i) {
        a0 = FMA(a0, b, c); a1 = FMA(a1, b, c); a2 = FMA(a2, b, c); a3 = FMA(a3, b, c);
        a4 = FMA(a4, b, c); a5 = FMA(a5, b, c); a6 = FMA(a6, b, c); a7 = FMA(a7, b, c);
        a8 = FMA(a8, b, c); a9 = FMA(a9, b, c); a10 = FMA(a10, b, c); a11 = FMA(a11, b, c);
      }
      float out[LANES];
      vec s = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11;
      __builtin_memcpy(out, &s, sizeof(out));
      for (int l = 0; l < LANES; ++l) sink += out[l];
    }
    const double flops = 2.0 * LANES * 12 * iters * omp_get_max_threads();
    const double gflops = flops / (now() - t0) / 1e9;
    if (gflops > best) best = gflops;
  }
  printf("%.1f GFLOP/s float32 FMA peak, %d threads (checksum %g)\n", best, omp_get_max_threads(), sink);
  return 0;
}
