// Depthwise k x k convolution on channels-last activations: launchers (raw pointers, no torch types).
//
// Layout: activations [B, H, W, C] contiguous; weight [C, k, k]; per-channel vectors [C] in fp32.
// Element types: 0 = float32, 1 = float16, 2 = bfloat16 (all arithmetic in fp32).
#pragma once
#include <cuda_runtime.h>

namespace spin {

enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };
enum Act : int { kActNone = 0, kActReLU = 1, kActGELU = 2 };

struct DwShape {
  int B, H, W, C, k;
};

// Output tile of one CTA: kTileH x kTileW pixels, kThreadsC threads along C, each owning 16 bytes of channels.
constexpr int kTileH = 8;
constexpr int kTileW = 8;
constexpr int kThreadsC = 8;

// Number of spatial tiles (the first dimension of the partial statistics).
int dw_num_tiles(const DwShape& s);

// y = act(conv(a * h + b) + bias) * post_scale   (zero padding applies to a*h+b)
// a, b, bias, post_scale may be null (identity). stats (optional) gets per-tile [3][tiles][C] fp32:
// count, mean and M2 of y over the tile's valid pixels (merged later with Chan's formula).
// flip: use the spatially flipped kernel (the input gradient of a convolution is the flipped convolution).
cudaError_t dw_forward(int dtype, const void* h, const float* a, const float* b, const void* weight,
                       const float* bias, const float* post_scale, void* y, float* stats, DwShape s, int act,
                       bool flip, cudaStream_t stream);

// Weight and bias gradient of z = conv(x) + bias with x = a * h + b (zero padded):
//   dweight[c, i, j] = sum_{n, p} dz[n, p, c] * x[n, p + (i - r, j - r), c],   dbias[c] = sum dz[.., c].
// Each of `partial_ctas` CTAs per channel chunk strides over the spatial tiles accumulating in fp32, writes its
// partial sums to workspace [partial_ctas][k*k + 1][C]; a second kernel adds them in a fixed order
// (deterministic, no float atomics) into dweight [C, k, k] and dbias [C] (fp32).
size_t dw_wgrad_workspace_bytes(const DwShape& s, int partial_ctas);
cudaError_t dw_backward_weight(int dtype, const void* dz, const void* h, const float* a, const float* b,
                               float* dweight, float* dbias, float* workspace, int partial_ctas, DwShape s,
                               cudaStream_t stream);

}  // namespace spin
