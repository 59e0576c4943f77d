// The CPU micro-kernels built for AVX-512 with the bf16 dot product (AVX512-BF16; flags in CMakeLists.txt); chosen
// at run time where the CPU has it. The AVX-512 build's tiles, and bfloat16 operands multiplied as pairs by
// vdpbf16ps (cpu/bf16_dot.h) instead of widened to float32.
#define JAXSEG_ISA avx512_bf16
#define JAXSEG_ISA_NAME "avx512_bf16"
#define JAXSEG_VECTOR_BYTES 64
#define JAXSEG_ROWS 8
#define JAXSEG_COL_VECS 2
#define JAXSEG_WIDE_COL_VECS 3
#define JAXSEG_BF16_DOT 1
#include "cpu/kernel_table.h"
