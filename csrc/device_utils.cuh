// Small device helpers shared by the kernel families: fp32 conversion of the storage types, activations, dynamic
// shared memory, and the two launch forms (plain and cooperative) written once so that the same kernel source
// builds for the GPU (nvcc) and for the host emulation (-DSPIN_EMULATE, see emulation.h).
#pragma once
#include "runtime.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>


namespace spin {

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// v clamped into [0, hi] (an in-bounds index for a load whose value a mask then discards).
__device__ __forceinline__ int clamp_index(int v, int hi) { return v < 0 ? 0 : (v > hi ? hi : v); }

// act: 0 = identity, 1 = ReLU, 2 = GELU (erf form, as nn.GELU()).
__device__ __forceinline__ float activate(float z, int act) {
  if (act == 1) return fmaxf(z, 0.f);
  if (act == 2) return 0.5f * z * (1.f + erff(z * 0.70710678118654752f));
  return z;
}

// d act(z) / dz for the same codes.
__device__ __forceinline__ float activate_grad(float z, int act) {
  if (act == 1) return z > 0.f ? 1.f : 0.f;
  if (act == 2) {
    const float cdf = 0.5f * (1.f + erff(z * 0.70710678118654752f));
    return cdf + z * 0.3989422804014327f * expf(-0.5f * z * z);
  }
  return 1.f;
}

// The CTA's dynamic shared memory (the launch's smem bytes), 16-byte aligned.
template <typename T>
__device__ __forceinline__ T* dynamic_smem() {
#ifdef SPIN_EMULATE
  return reinterpret_cast<T*>(spin_emu::block_smem());
#else
  extern __shared__ __align__(16) unsigned char spin_dynamic_smem[];
  return reinterpret_cast<T*>(spin_dynamic_smem);
#endif
}

// Inter-CTA ready counters (the persistent kernel's dataflow): counters only grow; a producer adds after its
// writes, a consumer waits until the count reaches a target before it reads. Release: the caller's bar.sync has
// ordered the CTA's writes before this thread's fence; acquire: the caller's bar.sync after the wait orders the
// CTA's reads after it.
__device__ __forceinline__ void flag_release_add(int* flag, int v) {
#ifdef SPIN_EMULATE
  spin_emu::flag_release_add(flag, v);
#else
  __threadfence();
  atomicAdd(flag, v);
#endif
}

__device__ __forceinline__ void flag_wait_geq(const int* flag, int target) {
#ifdef SPIN_EMULATE
  spin_emu::flag_wait_geq(flag, target);
#else
  for (;;) {
    int v;
    asm volatile("ld.acquire.gpu.global.s32 %0, [%1];" : "=r"(v) : "l"(flag) : "memory");
    if (v >= target) break;
    __nanosleep(32);
  }
#endif
}

// The kernel's parameter types drive the launch helpers' argument conversions (std::type_identity_t is C++20;
// this header also builds as C++17, the default of older torch extension builds).
template <typename T> struct NoDeduceT { using type = T; };
template <typename T> using NoDeduce = typename NoDeduceT<T>::type;

// Allow `bytes` of dynamic shared memory for `kernel` (above the 48 KiB default).
template <typename... P>
cudaError_t allow_dynamic_smem(void (*kernel)(P...), size_t bytes) {
#ifdef SPIN_EMULATE
  return spin_emu::check_smem(bytes);
#else
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
#endif
}

// kernel<<<grid, block, smem, stream>>>(args...); returns the launch error.
template <typename... P>
cudaError_t launch_kernel(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                          NoDeduce<P>... args) {
#ifdef SPIN_EMULATE
  (void)stream;
  return spin_emu::launch(kernel, grid, block, smem, /*cooperative=*/false, args...);
#else
  kernel<<<grid, block, smem, stream>>>(args...);
  return cudaGetLastError();
#endif
}

// Cooperative launch (every CTA co-resident, grid-wide sync allowed) of kernel(args...).
template <typename... P>
cudaError_t launch_cooperative(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                               NoDeduce<P>... args) {
#ifdef SPIN_EMULATE
  (void)stream;
  return spin_emu::launch(kernel, grid, block, smem, /*cooperative=*/true, args...);
#else
  void* params[] = {static_cast<void*>(&args)...};
  return cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), grid, block, params, smem, stream);
#endif
}

// One switch per entry point turns the dtype code (depthwise_conv.h DType) into the kernel's element type T.
#define SPIN_DISPATCH_DTYPE(dtype, CALL)                    \
  switch (dtype) {                                          \
    case kFloat32: { using T = float; return CALL; }        \
    case kFloat16: { using T = __half; return CALL; }       \
    case kBFloat16: { using T = __nv_bfloat16; return CALL; } \
    default: return cudaErrorInvalidValue;                  \
  }

// Number of SMs of the current device.
inline cudaError_t multiprocessor_count(int* sms) {
#ifdef SPIN_EMULATE
  *sms = spin_emu::sm_count();
  return cudaSuccess;
#else
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  return err != cudaSuccess ? err : cudaDeviceGetAttribute(sms, cudaDevAttrMultiProcessorCount, device);
#endif
}

// CTAs of `kernel` one SM holds at once with `threads` threads and `smem` bytes of dynamic shared memory.
template <typename... P>
cudaError_t max_ctas_per_sm(int* ctas, void (*kernel)(P...), int threads, size_t smem) {
#ifdef SPIN_EMULATE
  return spin_emu::max_ctas_per_sm(ctas, threads, smem);
#else
  return cudaOccupancyMaxActiveBlocksPerMultiprocessor(ctas, kernel, threads, smem);
#endif
}

}  // namespace spin
