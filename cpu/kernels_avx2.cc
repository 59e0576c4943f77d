// The CPU micro-kernels built for AVX2 + FMA (flags in CMakeLists.txt); chosen at run time. A register tile of 6
// rows x 1 line of 16 floats (two ymm registers): 12 accumulators of the 16 registers, the panel's two vectors and
// the broadcast in the rest. The weight gradient's tile for 1-4 row channels is 2 lines wide (4 x 2 lines would
// take 32 registers).
#define JAXSEG_ISA avx2
#define JAXSEG_ISA_NAME "avx2"
#define JAXSEG_VECTOR_BYTES 32
#define JAXSEG_ROWS 6
#define JAXSEG_COL_VECS 1
#define JAXSEG_FEW_COL_VECS 2
#include "cpu/kernel_table.h"
