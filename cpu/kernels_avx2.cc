// The CPU micro-kernels built for AVX2 + FMA (flags in CMakeLists.txt); chosen at run time. A register tile of 4
// rows x 1 vector (two ymm registers each).
#define JAXSEG_ISA avx2
#define JAXSEG_ISA_NAME "avx2"
#define JAXSEG_ROWS 4
#define JAXSEG_COL_VECS 1
#include "cpu/kernel_table.h"
