// Depthwise k x k convolution (odd k, "same" zero padding, stride 1) on channels-last [B, H, W, C] activations,
// with the fused prologue / epilogue contract of the ConvMixer kernels (DESIGN.md §2, lever 1):
//
//   forward:       y = act(conv_w(a * h + b) + bias) * post_scale,   per-tile BN partial stats of y
//   input grad:    the same kernel with the flipped filter, no affine, post_scale = a  (dh = a * conv_flip(dz))
//   weight grad:   dweight = sum over pixels of dz * shifted x, dbias = sum dz  (fp32, two-pass deterministic)
//
// Tiling: one CTA computes an 8 x 8 pixel tile for a chunk of 8 x (16 bytes of channels) = 32 fp32 / 64 half
// channels. Block = 8 (channel vectors) x 8 (tile rows) threads. The input tile plus its (k-1) halo is staged
// once in shared memory in fp32 (after the affine prologue, so zero padding is post-affine), loaded with 16-byte
// vector loads along C; the k*k filter taps of the chunk sit in shared memory too. Each thread accumulates one
// tile row (8 pixels x its channel vector) in registers, all in fp32.
//
// Bytes per CTA (forward): (8 + k - 1)^2 pixels x chunk of input (halo re-read from L2 by neighbours: for k = 9
// that is 4x the tile, so HBM traffic stays ~1 read + 1 write per element when L2 holds the neighbourhood),
// k*k*chunk weights, 64 pixels x chunk output, 3 x chunk floats of statistics.
#include "depthwise_conv.h"

#include "device_utils.cuh"

#include <cstdint>

namespace spin {
namespace {

// 16 bytes of channels: 4 fp32 or 8 half / bf16 values.
template <typename T> struct Vec {
  static constexpr int N = 16 / sizeof(T);
};

template <typename T>
__device__ __forceinline__ void load_vec(const T* p, float (&out)[Vec<T>::N]) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int j = 0; j < Vec<T>::N; ++j) out[j] = to_f32(e[j]);
}

template <typename T>
__device__ __forceinline__ void store_vec(T* p, const float (&in)[Vec<T>::N]) {
  uint4 raw;
  T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
  for (int j = 0; j < Vec<T>::N; ++j) e[j] = from_f32<T>(in[j]);
  *reinterpret_cast<uint4*>(p) = raw;
}

struct TileCoord {
  int n, oy0, ox0;
};

__device__ __forceinline__ TileCoord tile_coord(int tile, const DwShape& s) {
  const int tiles_w = (s.W + kTileW - 1) / kTileW;
  const int tiles_h = (s.H + kTileH - 1) / kTileH;
  const int per_image = tiles_w * tiles_h;
  const int rem = tile % per_image;
  return {tile / per_image, (rem / tiles_w) * kTileH, (rem % tiles_w) * kTileW};
}

// Stage the (kTileH + k - 1) x (kTileW + k - 1) input tile of channel chunk c0 in shared memory as fp32,
// applying the affine prologue; positions outside the image hold 0 (the padding of the post-affine tensor).
template <typename T>
__device__ __forceinline__ void stage_input(float* tile, const T* h, const float* a, const float* b,
                                            const DwShape& s, TileCoord tc, int c0, int tid, int nthreads) {
  constexpr int V = Vec<T>::N;
  constexpr int CB = kThreadsC * V;
  const int r = s.k / 2, IW = kTileW + s.k - 1, IH = kTileH + s.k - 1;
  for (int i = tid; i < IH * IW * kThreadsC; i += nthreads) {
    const int pix = i / kThreadsC, vx = i % kThreadsC;
    const int iy = tc.oy0 - r + pix / IW, ix = tc.ox0 - r + pix % IW, c = c0 + vx * V;
    float v[V];
    if (iy >= 0 && iy < s.H && ix >= 0 && ix < s.W && c < s.C) {
      load_vec<T>(h + ((static_cast<size_t>(tc.n) * s.H + iy) * s.W + ix) * s.C + c, v);
#pragma unroll
      for (int j = 0; j < V; ++j) v[j] = v[j] * (a ? a[c + j] : 1.f) + (b ? b[c + j] : 0.f);
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j) v[j] = 0.f;
    }
#pragma unroll
    for (int j = 0; j < V; ++j) tile[pix * CB + vx * V + j] = v[j];
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreadsC * kTileH)
dw_forward_kernel(const T* __restrict__ h, const float* __restrict__ a, const float* __restrict__ b,
                  const T* __restrict__ w, const float* __restrict__ bias, const float* __restrict__ post,
                  T* __restrict__ y, float* __restrict__ stats, DwShape s, int act, bool flip, int num_tiles) {
  constexpr int V = Vec<T>::N;
  constexpr int CB = kThreadsC * V;
  extern __shared__ float smem[];
  const int k = s.k, kk = k * k, IW = kTileW + k - 1, IH = kTileH + k - 1;
  float* tile = smem;               // [IH * IW][CB]
  float* wsm = tile + IH * IW * CB;  // [k * k][CB]
  const TileCoord tc = tile_coord(blockIdx.x, s);
  const int c0 = blockIdx.y * CB;
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int tid = ty * kThreadsC + tx, nthreads = kThreadsC * kTileH;

  for (int i = tid; i < kk * CB; i += nthreads) {
    const int t = i / CB, c = c0 + i % CB;
    wsm[i] = c < s.C ? to_f32(w[static_cast<size_t>(c) * kk + (flip ? kk - 1 - t : t)]) : 0.f;
  }
  stage_input<T>(tile, h, a, b, s, tc, c0, tid, nthreads);
  __syncthreads();

  float acc[kTileW][V];
#pragma unroll
  for (int px = 0; px < kTileW; ++px)
#pragma unroll
    for (int j = 0; j < V; ++j) acc[px][j] = 0.f;
  for (int ky = 0; ky < k; ++ky) {
    for (int kx = 0; kx < k; ++kx) {
      float wv[V];
#pragma unroll
      for (int j = 0; j < V; ++j) wv[j] = wsm[(ky * k + kx) * CB + tx * V + j];
      const float* row = tile + ((ty + ky) * IW + kx) * CB + tx * V;
#pragma unroll
      for (int px = 0; px < kTileW; ++px)
#pragma unroll
        for (int j = 0; j < V; ++j) acc[px][j] = fmaf(row[px * CB + j], wv[j], acc[px][j]);
    }
  }

  // Epilogue: bias, activation, post-scale, store; Welford statistics of the stored values.
  const int c = c0 + tx * V, oy = tc.oy0 + ty;
  const bool cvalid = c < s.C;
  float cnt = 0.f, mean[V], m2[V];
#pragma unroll
  for (int j = 0; j < V; ++j) mean[j] = m2[j] = 0.f;
#pragma unroll
  for (int px = 0; px < kTileW; ++px) {
    const int ox = tc.ox0 + px;
    if (!(cvalid && oy < s.H && ox < s.W)) continue;
    float o[V];
#pragma unroll
    for (int j = 0; j < V; ++j) {
      float z = activate(acc[px][j] + (bias ? bias[c + j] : 0.f), act);
      o[j] = post ? z * post[c + j] : z;
    }
    store_vec<T>(y + ((static_cast<size_t>(tc.n) * s.H + oy) * s.W + ox) * s.C + c, o);
    cnt += 1.f;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const float v = to_f32(from_f32<T>(o[j]));  // statistics of what BatchNorm will read
      const float d = v - mean[j];
      mean[j] += d / cnt;
      m2[j] += d * (v - mean[j]);
    }
  }
  if (stats == nullptr) return;  // uniform across the CTA: no thread skips a barrier below

  // Merge the kTileH row partials of each channel vector (Chan et al.), in a fixed order.
  __syncthreads();  // the tile buffer is reused
  float* part = smem + (ty * kThreadsC + tx) * (1 + 2 * V);
  part[0] = cnt;
#pragma unroll
  for (int j = 0; j < V; ++j) {
    part[1 + j] = mean[j];
    part[1 + V + j] = m2[j];
  }
  __syncthreads();
  if (ty != 0 || !cvalid) return;
  float n_acc = 0.f, m_acc[V], q_acc[V];
#pragma unroll
  for (int j = 0; j < V; ++j) m_acc[j] = q_acc[j] = 0.f;
  for (int row = 0; row < kTileH; ++row) {
    const float* p = smem + (row * kThreadsC + tx) * (1 + 2 * V);
    const float nb = p[0];
    if (nb == 0.f) continue;
    const float n_new = n_acc + nb;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const float d = p[1 + j] - m_acc[j];
      m_acc[j] += d * nb / n_new;
      q_acc[j] += p[1 + V + j] + d * d * n_acc * nb / n_new;
    }
    n_acc = n_new;
  }
  const size_t stride = static_cast<size_t>(num_tiles) * s.C, base = static_cast<size_t>(blockIdx.x) * s.C + c;
#pragma unroll
  for (int j = 0; j < V; ++j) {
    stats[base + j] = n_acc;
    stats[stride + base + j] = m_acc[j];
    stats[2 * stride + base + j] = q_acc[j];
  }
}

// Most filter taps one thread owns in the weight-gradient kernel (k <= 9): taps are dealt round-robin to the
// kTileH thread rows, so each thread keeps at most this many tap accumulators in registers.
constexpr int kMaxTapsPerThread = (81 + kTileH - 1) / kTileH;

template <typename T>
__global__ void __launch_bounds__(kThreadsC * kTileH)
dw_wgrad_partial_kernel(const T* __restrict__ dz, const T* __restrict__ h, const float* __restrict__ a,
                        const float* __restrict__ b, float* __restrict__ ws, DwShape s, int num_tiles) {
  constexpr int V = Vec<T>::N;
  constexpr int CB = kThreadsC * V;
  extern __shared__ float smem[];
  const int k = s.k, kk = k * k, IW = kTileW + k - 1, IH = kTileH + k - 1;
  float* tile = smem;                // [IH * IW][CB]
  float* dzs = tile + IH * IW * CB;  // [kTileH * kTileW][CB]
  const int c0 = blockIdx.y * CB;
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int tid = ty * kThreadsC + tx, nthreads = kThreadsC * kTileH;

  float acc[kMaxTapsPerThread][V], dbias[V];
#pragma unroll
  for (int t = 0; t < kMaxTapsPerThread; ++t)
#pragma unroll
    for (int j = 0; j < V; ++j) acc[t][j] = 0.f;
#pragma unroll
  for (int j = 0; j < V; ++j) dbias[j] = 0.f;

  for (int t_id = blockIdx.x; t_id < num_tiles; t_id += gridDim.x) {
    const TileCoord tc = tile_coord(t_id, s);
    __syncthreads();  // the previous tile's buffers are no longer read
    stage_input<T>(tile, h, a, b, s, tc, c0, tid, nthreads);
    for (int i = tid; i < kTileH * kTileW * kThreadsC; i += nthreads) {
      const int pix = i / kThreadsC, vx = i % kThreadsC;
      const int oy = tc.oy0 + pix / kTileW, ox = tc.ox0 + pix % kTileW, c = c0 + vx * V;
      float v[V];
      if (oy < s.H && ox < s.W && c < s.C) {
        load_vec<T>(dz + ((static_cast<size_t>(tc.n) * s.H + oy) * s.W + ox) * s.C + c, v);
      } else {
#pragma unroll
        for (int j = 0; j < V; ++j) v[j] = 0.f;
      }
#pragma unroll
      for (int j = 0; j < V; ++j) dzs[pix * CB + vx * V + j] = v[j];
    }
    __syncthreads();
#pragma unroll
    for (int ti = 0; ti < kMaxTapsPerThread; ++ti) {
      const int t = ty + ti * kTileH;
      if (t < kk) {  // a guard, not a break: acc[ti] must keep compile-time indices to stay in registers
        const int ky = t / k, kx = t % k;
#pragma unroll 1
        for (int py = 0; py < kTileH; ++py) {
          const float* xrow = tile + ((py + ky) * IW + kx) * CB + tx * V;
          const float* grow = dzs + py * kTileW * CB + tx * V;
#pragma unroll
          for (int px = 0; px < kTileW; ++px)
#pragma unroll
            for (int j = 0; j < V; ++j) acc[ti][j] = fmaf(grow[px * CB + j], xrow[px * CB + j], acc[ti][j]);
        }
      }
    }
    if (ty == 0) {
      for (int pix = 0; pix < kTileH * kTileW; ++pix)
#pragma unroll
        for (int j = 0; j < V; ++j) dbias[j] += dzs[pix * CB + tx * V + j];
    }
  }

  const int c = c0 + tx * V;
  if (c >= s.C) return;
  float* out = ws + static_cast<size_t>(blockIdx.x) * (kk + 1) * s.C;
#pragma unroll
  for (int ti = 0; ti < kMaxTapsPerThread; ++ti) {
    const int t = ty + ti * kTileH;
    if (t < kk) {
#pragma unroll
      for (int j = 0; j < V; ++j) out[static_cast<size_t>(t) * s.C + c + j] = acc[ti][j];
    }
  }
  if (ty == 0) {
#pragma unroll
    for (int j = 0; j < V; ++j) out[static_cast<size_t>(kk) * s.C + c + j] = dbias[j];
  }
}

// dweight[c, t] = sum_p ws[p][t][c], dbias[c] = sum_p ws[p][kk][c], summed in CTA order (deterministic).
__global__ void dw_wgrad_reduce_kernel(const float* __restrict__ ws, float* __restrict__ dweight,
                                       float* __restrict__ dbias, int partial_ctas, int kk, int C) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;  // over (kk + 1) * C, channel fastest (coalesced)
  if (i >= (kk + 1) * C) return;
  const int t = i / C, c = i % C;
  float sum = 0.f;
  for (int p = 0; p < partial_ctas; ++p) sum += ws[(static_cast<size_t>(p) * (kk + 1) + t) * C + c];
  if (t < kk) {
    dweight[static_cast<size_t>(c) * kk + t] = sum;
  } else if (dbias) {
    dbias[c] = sum;
  }
}

template <typename T>
int chunk_channels() {
  return kThreadsC * Vec<T>::N;
}

template <typename T>
cudaError_t launch_forward(const void* h, const float* a, const float* b, const void* weight, const float* bias,
                           const float* post, void* y, float* stats, DwShape s, int act, bool flip,
                           cudaStream_t stream) {
  const int CB = chunk_channels<T>(), IW = kTileW + s.k - 1, IH = kTileH + s.k - 1;
  const size_t smem = static_cast<size_t>(IH * IW + s.k * s.k) * CB * sizeof(float);
  auto kernel = dw_forward_kernel<T>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
  if (err != cudaSuccess) return err;
  const int tiles = dw_num_tiles(s);
  dim3 grid(tiles, (s.C + CB - 1) / CB), block(kThreadsC, kTileH);
  kernel<<<grid, block, smem, stream>>>(static_cast<const T*>(h), a, b, static_cast<const T*>(weight), bias, post,
                                        static_cast<T*>(y), stats, s, act, flip, tiles);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_wgrad(const void* dz, const void* h, const float* a, const float* b, float* dweight,
                         float* dbias, float* ws, int partial_ctas, DwShape s, cudaStream_t stream) {
  const int CB = chunk_channels<T>(), IW = kTileW + s.k - 1, IH = kTileH + s.k - 1;
  const size_t smem = static_cast<size_t>(IH * IW + kTileH * kTileW) * CB * sizeof(float);
  auto kernel = dw_wgrad_partial_kernel<T>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
  if (err != cudaSuccess) return err;
  dim3 grid(partial_ctas, (s.C + CB - 1) / CB), block(kThreadsC, kTileH);
  kernel<<<grid, block, smem, stream>>>(static_cast<const T*>(dz), static_cast<const T*>(h), a, b, ws, s,
                                        dw_num_tiles(s));
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const int kk = s.k * s.k, n = (kk + 1) * s.C;
  dw_wgrad_reduce_kernel<<<(n + 255) / 256, 256, 0, stream>>>(ws, dweight, dbias, partial_ctas, kk, s.C);
  return cudaGetLastError();
}

}  // namespace

int dw_num_tiles(const DwShape& s) {
  return s.B * ((s.H + kTileH - 1) / kTileH) * ((s.W + kTileW - 1) / kTileW);
}

size_t dw_wgrad_workspace_bytes(const DwShape& s, int partial_ctas) {
  return static_cast<size_t>(partial_ctas) * (s.k * s.k + 1) * s.C * sizeof(float);
}

cudaError_t dw_forward(int dtype, const void* h, const float* a, const float* b, const void* weight,
                       const float* bias, const float* post_scale, void* y, float* stats, DwShape s, int act,
                       bool flip, cudaStream_t stream) {
  switch (dtype) {
    case kFloat32:
      return launch_forward<float>(h, a, b, weight, bias, post_scale, y, stats, s, act, flip, stream);
    case kFloat16:
      return launch_forward<__half>(h, a, b, weight, bias, post_scale, y, stats, s, act, flip, stream);
    case kBFloat16:
      return launch_forward<__nv_bfloat16>(h, a, b, weight, bias, post_scale, y, stats, s, act, flip, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

cudaError_t dw_backward_weight(int dtype, const void* dz, const void* h, const float* a, const float* b,
                               float* dweight, float* dbias, float* workspace, int partial_ctas, DwShape s,
                               cudaStream_t stream) {
  switch (dtype) {
    case kFloat32:
      return launch_wgrad<float>(dz, h, a, b, dweight, dbias, workspace, partial_ctas, s, stream);
    case kFloat16:
      return launch_wgrad<__half>(dz, h, a, b, dweight, dbias, workspace, partial_ctas, s, stream);
    case kBFloat16:
      return launch_wgrad<__nv_bfloat16>(dz, h, a, b, dweight, dbias, workspace, partial_ctas, s, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace spin
