// Depthwise k x k convolution on channels-last activations: launchers (raw pointers, no torch types).
//
// Layout: activations [B, H, W, C] contiguous (= rows [M = B*H*W, C]); weight [C, k, k]; per-channel vectors
// [C] in fp32. Element types: 0 = float32, 1 = float16, 2 = bfloat16 (all arithmetic in fp32).
// Activation codes: 0 = identity, 1 = ReLU, 2 = GELU (erf).
#pragma once
#include "runtime.h"

namespace spin {

enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };
enum Act : int { kActNone = 0, kActReLU = 1, kActGELU = 2 };

struct DwShape {
  int B, H, W, C, k;
};

// Output tile of one CTA of the backward kernels: kTileH x kTileW pixels x (kThreadsC x 16 bytes) of channels. Threads: kThreadsC along C
// (each owning 16 bytes of channels) x kTileH rows x kSplitW column groups of kTileW / kSplitW pixels.
constexpr int kTileH = 8;
constexpr int kTileW = 8;
constexpr int kThreadsC = 8;
constexpr int kSplitW = 4;
constexpr int kCtaThreads = kThreadsC * kTileH * kSplitW;

// Number of spatial 8 x 8 tiles of the backward kernels (the first dimension of dw_backward_data's sums).
int dw_num_tiles(const DwShape& s);

// The forward's tiles (the first dimension of its statistics): bands of dw_forward_band_rows output rows of one
// image x 32-column tiles. A band is the whole image unless the batch's CTAs would not give every SM of the
// current device two; then at least 4 rows.
int dw_forward_band_rows(const DwShape& s);
int dw_forward_tiles(const DwShape& s);

// The convolution's input, rebuilt on load (the layer input is never stored):
//   x = [res] + a * act(h) + b,   zero outside the image (padding applies to x, after the affine).
// res, a, b may be null (none / 1 / 0). In a ConvMixer layer h is the previous pointwise pre-activation and
// (a, b) the previous BatchNorm folded into an affine.
struct DwInput {
  const void* h;
  const void* res;
  const float* a;
  const float* b;
  int act;
};

// The gradient reaching the convolution's output q, rebuilt on load from du = dL/dy of y = BN(act(q)):
//   dq = du * (act'(q) * alpha + beta) + act'(q) * (c1 + c2 * xhat),   xhat = (act(q) - mean) * invstd,
// with vec6 = [alpha, beta, c1, c2, mean, invstd] ([6][C] fp32; the BatchNorm backward with its batch-statistics
// terms, as in spin_kernels/triton/_common.py bn_act_bwd). q == nullptr means dq = du.
struct DwGradOutput {
  const void* du;
  const void* q;
  const float* vec6;
  int act;
};

// Forward:  y = post_scale * act(conv_w(x) + bias)   (post_scale, bias may be null; flip: the spatially flipped
// filter). stats (optional) gets per-tile [3][dw_forward_tiles][C] fp32 count, mean and M2 of stats_act(y) over the tile's
// pixels, y as stored (rounded to its dtype) — merged later with Chan's formula.
cudaError_t dw_forward(int dtype, const DwInput& in, const void* weight, const float* bias, const float* post_scale,
                       int act, int stats_act, void* y, float* stats, DwShape s, bool flip, cudaStream_t stream);

// Backward, input side, of a ConvMixer layer u = x + BN1(act(q)), q = conv(x) + bias, x = [res] + ax*act_in(hz) + bx:
//   dx  = du + conv_flip(dq)                               (stored when dx != null)
//   dhz = act_in'(hz) * ax * dx                            (stored when dhz != null; gradient of hz)
//   sums (optional) per tile [2][tiles][C]: sum(dx), sum(dx * xhat_in), xhat_in = (act_in(hz) - mean_in) * invstd_in
//        (the previous BatchNorm's backward and its weight / bias gradients).
// xvec = [ax, bx, mean_in, invstd_in] ([4][C] fp32).
cudaError_t dw_backward_data(int dtype, const DwGradOutput& g, const void* weight, const void* hz,
                             const float* xvec, int act_in, void* dx, void* dhz, float* sums, DwShape s,
                             cudaStream_t stream);

// Weight and bias gradient of q = conv(x) + bias:
//   dweight[c, i, j] = sum_{n, p} dq[n, p, c] * x[n, p + (i - r, j - r), c],   dbias[c] = sum dq[.., c].
// Each of `partial_ctas` CTAs per channel chunk strides over the spatial tiles accumulating in fp32, writes its
// partial sums to workspace [partial_ctas][k*k + 1][C]; a second kernel adds them in a fixed order
// (deterministic, no float atomics) into dweight [C, k, k] and dbias [C] (fp32).
size_t dw_wgrad_workspace_bytes(const DwShape& s, int partial_ctas);
cudaError_t dw_backward_weight(int dtype, const DwGradOutput& g, const DwInput& in, float* dweight, float* dbias,
                               float* workspace, int partial_ctas, DwShape s, cudaStream_t stream);

}  // namespace spin
