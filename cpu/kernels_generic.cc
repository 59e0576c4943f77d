// The CPU kernels built for the generic instruction set (flags in CMakeLists.txt); chosen at run time.
#define JAXSEG_ISA generic
#define JAXSEG_ISA_NAME "generic"
#define JAXSEG_ROWS 4
#define JAXSEG_COL_VECS 1
#include "cpu/conv_kernels_impl.h"
