// The test-only extension `jaxseg._jaxseg_plan_executor`: the CUDA kernels' plans run on the CPU
// (cuda/plan_executor.h), the tests' view of the GPU code. Plain C++, built when CMake's JAXSEG_TEST_MODULES is ON
// (editable installs turn it on, pyproject.toml): a user's `pip install jaxseg` does not ship it.
#include <nanobind/nanobind.h>

#include "cuda/plan_executor.h"

NB_MODULE(_jaxseg_plan_executor, m) {
  m.doc() = "jaxseg tests: the CUDA kernels' plans executed on the CPU (not part of an installed jaxseg)";
  jaxseg::gpu::RegisterPlanExecutor(m);
}
