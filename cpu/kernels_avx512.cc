// The CPU kernels built for the avx512 instruction set (flags in CMakeLists.txt); chosen at run time.
#define JAXSEG_ISA avx512
#define JAXSEG_ISA_NAME "avx512"
#define JAXSEG_ROWS 8
#define JAXSEG_COL_VECS 2
#define JAXSEG_WIDE_COL_VECS 3
#include "cpu/conv_kernels_impl.h"
