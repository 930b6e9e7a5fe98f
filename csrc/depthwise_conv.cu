// Depthwise k x k convolution (odd k, "same" zero padding, stride 1) on channels-last [B, H, W, C] activations,
// with the fused prologue / epilogue contract of the ConvMixer kernels (DESIGN.md §2, lever 1; the same contract
// as spin_kernels/triton/dwconv.py, so backend="cuda" can train through it):
//
//   forward:        x = [res] + a * act_in(h) + b  (on load)  ->  y = post * act(conv_w(x) + bias),
//                   per-tile BN partial statistics of stats_act(y)     (dw_row_stream.cu)
//   backward data:  dq = BN/act backward of du (on load)  ->  dx = du + conv_flip(dq), dhz = act_in'(hz) * ax * dx,
//                   per-tile sums of dx and dx * xhat_in (the previous BatchNorm's backward)
//   backward weight: dweight = sum over pixels of dq * shifted x, dbias = sum dq  (fp32, two-pass deterministic)
//
// This file: the two backward kernels. Tiling: one CTA computes an 8 x 8 pixel tile for a chunk of
// 8 x (16 bytes of channels) = 32 fp32 / 64 half channels. Block = 8 (channel vectors) x 8 (tile rows) x 4 (column
// pairs) = 256 threads: the staged tile is what limits CTAs per SM (k = 9, 16-bit: ~86 KiB, 2 CTAs), so each CTA
// brings 8 warps to hide latency. The operand tile plus its (k-1) halo is staged once in shared memory in fp32 —
// after the prologue (affine, or the BN backward), so zero padding applies to the rebuilt tensor — loaded with
// 16-byte vector loads along C; the chunk's k*k filter taps sit in shared memory too. Each thread accumulates
// 2 pixels x its channel vector in registers, all in fp32; per-tile sums merge the 32 thread partials of each
// channel vector in a fixed order.
//
// Bytes per CTA: backward data reads du and q over the (8 + k - 1)^2-pixel tile with halo (the halo re-read from
// L2 by neighbours) and du, hz at the tile, writes dx and/or dhz; backward weight reads du, q at the tile and
// h, res with halo.
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

// x = [res] + a * act(h) + b for the channel vector at element offset off (channel c).
template <typename T>
struct InputLoader {
  DwInput p;
  __device__ __forceinline__ void operator()(size_t off, int c, float (&v)[Vec<T>::N]) const {
    constexpr int V = Vec<T>::N;
    load_vec<T>(static_cast<const T*>(p.h) + off, v);
    float r[V];
    if (p.res) {
      load_vec<T>(static_cast<const T*>(p.res) + off, r);
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j) r[j] = 0.f;
    }
#pragma unroll
    for (int j = 0; j < V; ++j) {
      v[j] = (p.a ? p.a[c + j] : 1.f) * activate(v[j], p.act) + (p.b ? p.b[c + j] : 0.f) + r[j];
    }
  }
};

// dq from du and q (the BatchNorm + activation backward, see DwGradOutput).
template <typename T>
struct GradLoader {
  DwGradOutput p;
  int C;
  __device__ __forceinline__ void operator()(size_t off, int c, float (&v)[Vec<T>::N]) const {
    constexpr int V = Vec<T>::N;
    load_vec<T>(static_cast<const T*>(p.du) + off, v);
    if (p.q == nullptr) return;
    float z[V];
    load_vec<T>(static_cast<const T*>(p.q) + off, z);
    const float* vec = p.vec6 + c;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const float d = activate_grad(z[j], p.act);
      const float xhat = (activate(z[j], p.act) - vec[4 * C + j]) * vec[5 * C + j];
      v[j] = v[j] * (d * vec[j] + vec[C + j]) + d * (vec[2 * C + j] + vec[3 * C + j] * xhat);
    }
  }
};

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

// Pixels of a tile row each thread owns, and the thread's linear index / row-and-column group.
constexpr int kPix = kTileW / kSplitW;
constexpr int kGroups = kTileH * kSplitW;  // thread partials per channel vector

__device__ __forceinline__ int thread_group() { return threadIdx.z * kTileH + threadIdx.y; }
__device__ __forceinline__ int thread_linear() { return thread_group() * kThreadsC + threadIdx.x; }

__device__ __forceinline__ size_t offset(const DwShape& s, int n, int y, int x, int c) {
  return ((static_cast<size_t>(n) * s.H + y) * s.W + x) * s.C + c;
}

// Stage the (kTileH + 2 halo) x (kTileW + 2 halo) operand tile of channel chunk c0 in shared memory as fp32
// (through the prologue `load`); positions outside the image hold 0 (the padding of the rebuilt tensor).
template <typename T, typename Loader>
__device__ __forceinline__ void stage_tile(float* tile, const Loader& load, const DwShape& s, TileCoord tc, int c0,
                                           int halo, int tid, int nthreads) {
  constexpr int V = Vec<T>::N;
  constexpr int CB = kThreadsC * V;
  const int IW = kTileW + 2 * halo, IH = kTileH + 2 * halo;
  for (int i = tid; i < IH * IW * kThreadsC; i += nthreads) {
    const int pix = i / kThreadsC, vx = i % kThreadsC;
    const int iy = tc.oy0 - halo + pix / IW, ix = tc.ox0 - halo + pix % IW, c = c0 + vx * V;
    float v[V];
    if (iy >= 0 && iy < s.H && ix >= 0 && ix < s.W && c < s.C) {
      load(offset(s, tc.n, iy, ix, c), c, v);
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j) v[j] = 0.f;
    }
#pragma unroll
    for (int j = 0; j < V; ++j) tile[pix * CB + vx * V + j] = v[j];
  }
}

// The convolution of one CTA: stage the operand tile and the filter taps, then each thread's kPix pixels of
// row ty (columns tz*kPix ...) x V channels in acc. Leaves a __syncthreads() owed before smem is reused.
template <typename T, typename Loader>
__device__ __forceinline__ void conv_tile(float* smem, const Loader& load, const T* w, const DwShape& s,
                                          TileCoord tc, int c0, bool flip, float (&acc)[kPix][Vec<T>::N]) {
  constexpr int V = Vec<T>::N;
  constexpr int CB = kThreadsC * V;
  const int k = s.k, kk = k * k, IW = kTileW + k - 1, IH = kTileH + k - 1;
  float* tile = smem;                // [IH * IW][CB]
  float* wsm = tile + IH * IW * CB;  // [k * k][CB]
  const int tx = threadIdx.x, ty = threadIdx.y, px0 = threadIdx.z * kPix;
  const int tid = thread_linear();
  for (int i = tid; i < kk * CB; i += kCtaThreads) {
    const int t = i / CB, c = c0 + i % CB;
    wsm[i] = c < s.C ? to_f32(w[static_cast<size_t>(c) * kk + (flip ? kk - 1 - t : t)]) : 0.f;
  }
  stage_tile<T>(tile, load, s, tc, c0, k / 2, tid, kCtaThreads);
  __syncthreads();
#pragma unroll
  for (int px = 0; px < kPix; ++px)
#pragma unroll
    for (int j = 0; j < V; ++j) acc[px][j] = 0.f;
  for (int ky = 0; ky < k; ++ky) {
    for (int kx = 0; kx < k; ++kx) {
      float wv[V];
#pragma unroll
      for (int j = 0; j < V; ++j) wv[j] = wsm[(ky * k + kx) * CB + tx * V + j];
      const float* row = tile + ((ty + ky) * IW + kx + px0) * CB + tx * V;
#pragma unroll
      for (int px = 0; px < kPix; ++px)
#pragma unroll
        for (int j = 0; j < V; ++j) acc[px][j] = fmaf(row[px * CB + j], wv[j], acc[px][j]);
    }
  }
}

// Writes NV per-thread values to smem, then the threads of group 0 add the kGroups partials of their channel
// vector in a fixed order (plain sums) into out[v * stride + base + j]. The caller has synchronised since smem
// was last read.
template <int NV, int V>
__device__ __forceinline__ void reduce_groups_to(float* smem, const float (&vals)[NV][V], float* out, size_t stride,
                                                 size_t base, bool valid) {
  const int tx = threadIdx.x;
  float* part = smem + thread_linear() * NV * V;
#pragma unroll
  for (int v = 0; v < NV; ++v)
#pragma unroll
    for (int j = 0; j < V; ++j) part[v * V + j] = vals[v][j];
  __syncthreads();
  if (thread_group() != 0 || !valid) return;
#pragma unroll
  for (int v = 0; v < NV; ++v)
#pragma unroll
    for (int j = 0; j < V; ++j) {
      float sum = 0.f;
      for (int grp = 0; grp < kGroups; ++grp) sum += smem[(grp * kThreadsC + tx) * NV * V + v * V + j];
      out[v * stride + base + j] = sum;
    }
}

// (kCtaThreads, 2): left to itself ptxas caps the fp32 instance at 64 registers and spills; 2 CTAs per SM is
// what the staged tile allows at k = 9 anyway.
template <typename T>
__global__ void __launch_bounds__(kCtaThreads, 2)
dw_backward_data_kernel(DwGradOutput g, const T* __restrict__ w, const T* __restrict__ hz,
                        const float* __restrict__ xvec, int act_in, T* __restrict__ dx, T* __restrict__ dhz,
                        float* __restrict__ sums, DwShape s, int num_tiles) {
  constexpr int V = Vec<T>::N;
  constexpr int CB = kThreadsC * V;
  float* smem = dynamic_smem<float>();
  const TileCoord tc = tile_coord(blockIdx.x, s);
  const int c0 = blockIdx.y * CB;
  float acc[kPix][V];
  conv_tile<T>(smem, GradLoader<T>{g, s.C}, w, s, tc, c0, /*flip=*/true, acc);

  // Epilogue: dx = du + conv_flip(dq); dhz; per-thread sums of dx and dx * xhat_in.
  const int c = c0 + threadIdx.x * V, oy = tc.oy0 + threadIdx.y, ox0 = tc.ox0 + threadIdx.z * kPix;
  const bool cvalid = c < s.C;
  float part[2][V];
#pragma unroll
  for (int j = 0; j < V; ++j) part[0][j] = part[1][j] = 0.f;
#pragma unroll
  for (int px = 0; px < kPix; ++px) {
    const int ox = ox0 + px;
    if (!(cvalid && oy < s.H && ox < s.W)) continue;
    const size_t off = offset(s, tc.n, oy, ox, c);
    float du[V], h[V], o[V];
    load_vec<T>(static_cast<const T*>(g.du) + off, du);
    load_vec<T>(hz + off, h);
#pragma unroll
    for (int j = 0; j < V; ++j) {
      o[j] = du[j] + acc[px][j];
      const float xhat = (activate(h[j], act_in) - xvec[2 * s.C + c + j]) * xvec[3 * s.C + c + j];
      part[0][j] += o[j];
      part[1][j] += o[j] * xhat;
    }
    if (dx) store_vec<T>(dx + off, o);
    if (dhz) {
#pragma unroll
      for (int j = 0; j < V; ++j) o[j] *= activate_grad(h[j], act_in) * xvec[c + j];
      store_vec<T>(dhz + off, o);
    }
  }
  if (sums == nullptr) return;  // uniform across the CTA
  __syncthreads();              // the tile buffer is reused
  reduce_groups_to<2, V>(smem, part, sums, static_cast<size_t>(num_tiles) * s.C,
                       static_cast<size_t>(blockIdx.x) * s.C + c, cvalid);
}

// Most filter taps one thread owns in the weight-gradient kernel (k <= 9): taps are dealt round-robin to the
// kGroups thread groups, so each thread keeps at most this many tap accumulators in registers.
constexpr int kMaxTapsPerThread = (81 + kGroups - 1) / kGroups;

// Row parts each tap's tile rows are split into when there are fewer taps than thread groups: at k = 3 the 9 taps
// would keep 9 of the 32 groups busy; split in 3 row ranges, 27 are. 1 from k = 5 on (25 or more taps).
__device__ __forceinline__ int wgrad_row_parts(int kk) {
  const int parts = kGroups / kk;
  return parts < 1 ? 1 : (parts > kTileH ? kTileH : parts);
}

// Two CTAs per SM stated explicitly: with the bound left to ptxas it kept the fp32 instance under 64 registers
// and spilled 20 bytes.
template <typename T>
__global__ void __launch_bounds__(kCtaThreads, 2)
dw_wgrad_partial_kernel(DwGradOutput g, DwInput in, float* __restrict__ ws, DwShape s, int num_tiles) {
  constexpr int V = Vec<T>::N;
  constexpr int CB = kThreadsC * V;
  float* smem = dynamic_smem<float>();
  const int k = s.k, kk = k * k, IW = kTileW + k - 1, IH = kTileH + k - 1;
  float* tile = smem;                // [IH * IW][CB]   x with halo
  float* dzs = tile + IH * IW * CB;  // [kTileH * kTileW][CB]   dq
  const int c0 = blockIdx.y * CB;
  const int tx = threadIdx.x, grp = thread_group(), tid = thread_linear();
  const InputLoader<T> load_x{in};
  const GradLoader<T> load_dq{g, s.C};

  float acc[kMaxTapsPerThread][V], dbias[V];
#pragma unroll
  for (int t = 0; t < kMaxTapsPerThread; ++t)
#pragma unroll
    for (int j = 0; j < V; ++j) acc[t][j] = 0.f;
#pragma unroll
  for (int j = 0; j < V; ++j) dbias[j] = 0.f;

  // Work items grp + ti * kGroups: item w is tap w % kk over tile rows [py_begin, py_end) of row part w / kk.
  const int parts = wgrad_row_parts(kk), items = kk * parts;
  for (int t_id = blockIdx.x; t_id < num_tiles; t_id += gridDim.x) {
    const TileCoord tc = tile_coord(t_id, s);
    __syncthreads();  // the previous tile's buffers are no longer read
    stage_tile<T>(tile, load_x, s, tc, c0, k / 2, tid, kCtaThreads);
    stage_tile<T>(dzs, load_dq, s, tc, c0, 0, tid, kCtaThreads);
    __syncthreads();
#pragma unroll
    for (int ti = 0; ti < kMaxTapsPerThread; ++ti) {
      const int w = grp + ti * kGroups;
      if (w < items) {  // a guard, not a break: acc[ti] must keep compile-time indices to stay in registers
        const int t = w % kk, part = w / kk, ky = t / k, kx = t % k;
        const int py_begin = part * kTileH / parts, py_end = (part + 1) * kTileH / parts;
#pragma unroll 1
        for (int py = py_begin; py < py_end; ++py) {
          const float* xrow = tile + ((py + ky) * IW + kx) * CB + tx * V;
          const float* grow = dzs + py * kTileW * CB + tx * V;
#pragma unroll
          for (int px = 0; px < kTileW; ++px)
#pragma unroll
            for (int j = 0; j < V; ++j) acc[ti][j] = fmaf(grow[px * CB + j], xrow[px * CB + j], acc[ti][j]);
        }
      }
    }
    if (grp == 0) {
      for (int pix = 0; pix < kTileH * kTileW; ++pix)
#pragma unroll
        for (int j = 0; j < V; ++j) dbias[j] += dzs[pix * CB + tx * V + j];
    }
  }

  // Row parts 1.. hand their sums to part 0 through shared memory (the tile buffer: (parts - 1) * kk <= 64
  // slots of CB floats, fewer than its IH * IW), which adds them in part order (deterministic).
  if (parts > 1) {  // uniform across the CTA
    __syncthreads();  // the last tile's buffers are no longer read
    if (grp < items && grp >= kk) {  // parts > 1 only for kk <= 16: one item per thread (ti = 0)
#pragma unroll
      for (int j = 0; j < V; ++j) tile[(grp - kk) * CB + tx * V + j] = acc[0][j];
    }
    __syncthreads();
    if (grp < kk) {
#pragma unroll
      for (int part = 1; part < kTileH; ++part) {  // unrolled to the most parts there can be: no loop in the SASS
        if (part < parts) {
#pragma unroll
          for (int j = 0; j < V; ++j) acc[0][j] += tile[((part - 1) * kk + grp) * CB + tx * V + j];
        }
      }
    }
  }
  const int c = c0 + tx * V;
  if (c >= s.C) return;
  float* out = ws + static_cast<size_t>(blockIdx.x) * (kk + 1) * s.C;
#pragma unroll
  for (int ti = 0; ti < kMaxTapsPerThread; ++ti) {
    const int t = grp + ti * kGroups;
    if (t < kk) {  // part 0 of every tap (items t < kk): its row parts merged above
#pragma unroll
      for (int j = 0; j < V; ++j) out[static_cast<size_t>(t) * s.C + c + j] = acc[ti][j];
    }
  }
  if (grp == 0) {
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

// Shared memory of the backward-data kernel: the operand tile with halo plus the filter taps.
template <typename T>
size_t conv_smem_bytes(const DwShape& s) {
  const int IW = kTileW + s.k - 1, IH = kTileH + s.k - 1;
  const size_t conv = static_cast<size_t>(IH * IW + s.k * s.k) * chunk_channels<T>() * sizeof(float);
  // the epilogue reuses it for one partial per thread: two sums (2V floats)
  const size_t partials = static_cast<size_t>(kCtaThreads) * 2 * Vec<T>::N * sizeof(float);
  return conv > partials ? conv : partials;
}

template <typename T>
cudaError_t launch_backward_data(const DwGradOutput& g, const void* weight, const void* hz, const float* xvec,
                                 int act_in, void* dx, void* dhz, float* sums, DwShape s, cudaStream_t stream) {
  const int CB = chunk_channels<T>();
  const size_t smem = conv_smem_bytes<T>(s);
  auto kernel = dw_backward_data_kernel<T>;
  cudaError_t err = allow_dynamic_smem(kernel, smem);
  if (err != cudaSuccess) return err;
  const int tiles = dw_num_tiles(s);
  dim3 grid(tiles, (s.C + CB - 1) / CB), block(kThreadsC, kTileH, kSplitW);
  return launch_kernel(kernel, grid, block, smem, stream, g, static_cast<const T*>(weight),
                       static_cast<const T*>(hz), xvec, act_in, static_cast<T*>(dx), static_cast<T*>(dhz), sums, s,
                       tiles);
}

template <typename T>
cudaError_t launch_wgrad(const DwGradOutput& g, const DwInput& in, float* dweight, float* dbias, float* ws,
                         int partial_ctas, DwShape s, cudaStream_t stream) {
  const int CB = chunk_channels<T>(), IW = kTileW + s.k - 1, IH = kTileH + s.k - 1;
  const size_t smem = static_cast<size_t>(IH * IW + kTileH * kTileW) * CB * sizeof(float);
  auto kernel = dw_wgrad_partial_kernel<T>;
  cudaError_t err = allow_dynamic_smem(kernel, smem);
  if (err != cudaSuccess) return err;
  dim3 grid(partial_ctas, (s.C + CB - 1) / CB), block(kThreadsC, kTileH, kSplitW);
  err = launch_kernel(kernel, grid, block, smem, stream, g, in, ws, s, dw_num_tiles(s));
  if (err != cudaSuccess) return err;
  const int kk = s.k * s.k, n = (kk + 1) * s.C;
  return launch_kernel(dw_wgrad_reduce_kernel, dim3((n + 255) / 256), dim3(256), 0, stream, ws, dweight, dbias,
                       partial_ctas, kk, s.C);
}

}  // namespace

int dw_num_tiles(const DwShape& s) {
  return s.B * ((s.H + kTileH - 1) / kTileH) * ((s.W + kTileW - 1) / kTileW);
}

size_t dw_wgrad_workspace_bytes(const DwShape& s, int partial_ctas) {
  return static_cast<size_t>(partial_ctas) * (s.k * s.k + 1) * s.C * sizeof(float);
}

cudaError_t dw_backward_data(int dtype, const DwGradOutput& g, const void* weight, const void* hz,
                             const float* xvec, int act_in, void* dx, void* dhz, float* sums, DwShape s,
                             cudaStream_t stream) {
  SPIN_DISPATCH_DTYPE(dtype, launch_backward_data<T>(g, weight, hz, xvec, act_in, dx, dhz, sums, s, stream))
}

cudaError_t dw_backward_weight(int dtype, const DwGradOutput& g, const DwInput& in, float* dweight, float* dbias,
                               float* workspace, int partial_ctas, DwShape s, cudaStream_t stream) {
  SPIN_DISPATCH_DTYPE(dtype, launch_wgrad<T>(g, in, dweight, dbias, workspace, partial_ctas, s, stream))
}

}  // namespace spin
