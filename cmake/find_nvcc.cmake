# Finds the CUDA compiler for the CUDA module before check_language(CUDA), in this order (docs/building.md):
#   1. CMAKE_CUDA_COMPILER (-D or -Ccmake.define.) or the CUDACXX environment variable: CMake's own knobs, used as
#      given (the last resort where nothing below finds the toolkit);
#   2. a system toolkit: nvcc under $CUDA_HOME or $CUDA_PATH, then on PATH, then in /usr/local/cuda;
#   3. the CUDA 13 toolkit that pip's nvidia-cuda-nvcc / -runtime / -nvvm / -crt / -cccl wheels (which
#      `pip install "jax[cuda13]"` brings) put into the target interpreter's site-packages, at nvidia/cu13.
# Step 3 asks the interpreter the package is built for (Python_EXECUTABLE) where its site-packages are, with the
# variables by which pip's isolated build hides them (PYTHONPATH, PYTHONNOUSERSITE) unset: an isolated build runs
# the target interpreter, so its own site-packages are still the user's.
# Where it finds nvcc it sets the CUDACXX environment variable, which the check_language(CUDA) that follows tries
# (a compiler that cannot build a test file is then not taken), and JAXSEG_CUDA_SEARCHED to where it looked.

if(CMAKE_CUDA_COMPILER OR DEFINED ENV{CUDACXX})
  set(JAXSEG_CUDA_SEARCHED "CMAKE_CUDA_COMPILER=${CMAKE_CUDA_COMPILER}, CUDACXX=$ENV{CUDACXX}")
  return()
endif()

set(_hints "")
foreach(_var CUDA_HOME CUDA_PATH)
  if(DEFINED ENV{${_var}})
    list(APPEND _hints "$ENV{${_var}}/bin")
  endif()
endforeach()
find_program(JAXSEG_SYSTEM_NVCC nvcc HINTS ${_hints} PATHS /usr/local/cuda/bin)
if(_hints)
  set(JAXSEG_CUDA_SEARCHED "${_hints}, PATH, /usr/local/cuda/bin")
else()
  set(JAXSEG_CUDA_SEARCHED "PATH, /usr/local/cuda/bin (CUDA_HOME and CUDA_PATH unset)")
endif()
if(JAXSEG_SYSTEM_NVCC)
  set(ENV{CUDACXX} "${JAXSEG_SYSTEM_NVCC}")
  message(STATUS "jaxseg: CUDA compiler from the system: $ENV{CUDACXX}")
  return()
endif()

execute_process(
  COMMAND "${CMAKE_COMMAND}" -E env --unset=PYTHONPATH --unset=PYTHONNOUSERSITE
          "${Python_EXECUTABLE}" -c "import site, sysconfig
paths = site.getsitepackages() + [site.getusersitepackages()] + [sysconfig.get_paths()[k] for k in ('purelib', 'platlib')]
print(';'.join(dict.fromkeys(p.replace(';', '') for p in paths)))"
  OUTPUT_VARIABLE _site_dirs OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE _rc)
if(NOT _rc EQUAL 0)
  set(_site_dirs "")
endif()
string(APPEND JAXSEG_CUDA_SEARCHED ", nvidia/cu13/bin/nvcc in ${Python_EXECUTABLE}'s site-packages (${_site_dirs})")
foreach(_dir IN LISTS _site_dirs)
  if(EXISTS "${_dir}/nvidia/cu13/bin/nvcc")
    if(NOT EXISTS "${_dir}/nvidia/cu13/include/crt/host_config.h" OR NOT EXISTS "${_dir}/nvidia/cu13/nvvm/bin/cicc"
       OR NOT EXISTS "${_dir}/nvidia/cu13/include/cuda_runtime.h" OR NOT EXISTS "${_dir}/nvidia/cu13/include/cccl")
      string(APPEND JAXSEG_CUDA_SEARCHED "; ${_dir}/nvidia/cu13 has nvcc but lacks part of the toolkit: "
             "pip install nvidia-cuda-nvcc nvidia-cuda-runtime nvidia-nvvm nvidia-cuda-crt nvidia-cuda-cccl")
      continue()
    endif()
    set(ENV{CUDACXX} "${_dir}/nvidia/cu13/bin/nvcc")
    set(CUDAToolkit_ROOT "${_dir}/nvidia/cu13")
    message(STATUS "jaxseg: CUDA compiler from pip's nvidia-cuda-nvcc wheel: $ENV{CUDACXX}")
    return()
  endif()
endforeach()
