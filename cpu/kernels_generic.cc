// The CPU micro-kernels built for any x86-64 (or other) CPU, with the compiler's baseline flags: the fallback where
// the CPU has neither AVX2 nor AVX-512, or JAXSEG_CPU_ISA=generic. A register tile of 4 rows x 1 vector.
#define JAXSEG_ISA generic
#define JAXSEG_ISA_NAME "generic"
#define JAXSEG_ROWS 4
#define JAXSEG_COL_VECS 1
#include "cpu/kernel_table.h"
