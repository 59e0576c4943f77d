// The CPU kernels built for the avx2 instruction set (flags in CMakeLists.txt); chosen at run time.
#define JAXSEG_ISA avx2
#define JAXSEG_ISA_NAME "avx2"
#define JAXSEG_ROWS 4
#define JAXSEG_COL_VECS 1
#include "cpu/conv_kernels_impl.h"
