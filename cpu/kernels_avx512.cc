// The CPU micro-kernels built for AVX-512 (flags in CMakeLists.txt); chosen at run time where the CPU has it. A
// register tile of 8 rows x 2 vectors, and up to 3 vectors for the products with few columns.
#define JAXSEG_ISA avx512
#define JAXSEG_ISA_NAME "avx512"
#define JAXSEG_VECTOR_BYTES 64
#define JAXSEG_ROWS 8
#define JAXSEG_COL_VECS 2
#define JAXSEG_WIDE_COL_VECS 3
#include "cpu/kernel_table.h"
