// Small device helpers shared by the kernel families: fp32 conversion of the storage types, activations.
#pragma once
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

// act: 0 = identity, 1 = ReLU, 2 = GELU (erf form, as nn.GELU()).
__device__ __forceinline__ float activate(float z, int act) {
  if (act == 1) return fmaxf(z, 0.f);
  if (act == 2) return 0.5f * z * (1.f + erff(z * 0.70710678118654752f));
  return z;
}

}  // namespace spin
