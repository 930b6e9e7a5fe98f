// The CUDA runtime types the launchers use (cudaError_t, cudaStream_t, dim3): the real runtime under nvcc, the
// host emulation (emulation.h) when built with -DSPIN_EMULATE for GPU-less testing.
#pragma once
#ifdef SPIN_EMULATE
#include "emulation/emulation.h"
#else
#include <cuda_runtime.h>
#endif

namespace spin {

// Message for a CUDA error code (of the real runtime, or of the emulation).
inline const char* error_string(cudaError_t error) {
#ifdef SPIN_EMULATE
  return spin_emu::error_string(error);
#else
  return cudaGetErrorString(error);
#endif
}

}  // namespace spin
