// The CPU micro-kernels built for any x86-64 (or other) CPU, with the compiler's baseline flags: the fallback where
// the CPU has neither AVX2 nor AVX-512, or JAXSEG_CPU_ISA=generic. 16-byte vectors (SSE2, or NEON elsewhere); a
// register tile of 3 rows x 1 line of 16 floats (four registers each): 12 accumulators of x86-64's 16, and one
// line for the weight gradient's tile for 1-4 row channels too.
#define JAXSEG_ISA generic
#define JAXSEG_ISA_NAME "generic"
#define JAXSEG_VECTOR_BYTES 16
#define JAXSEG_ROWS 3
#define JAXSEG_COL_VECS 1
#define JAXSEG_FEW_COL_VECS 1
#include "cpu/kernel_table.h"
