// Weights-resident persistent shared run (eval-mode ConvMixer; DESIGN.md §2, lever 3).
//
// Computes, for each of the run's L layers (all sharing the pointwise W, b):
//   depthwise half:  u = x + s1 * act(dwconv_l(x) + dwb_l) + t1        (per-layer filters, folded BN1)
//   pointwise half:  x = s2 * act(u W^T + b) + t2   (+ u for SPIN's layer)      (folded BN2)
// in ONE cooperative launch: grid.sync() separates the halves, x and u ping-pong through L2. One launch may
// cover several consecutive runs (up to kMaxRuns: a whole trunk); each CTA then reloads its W slice at every
// run boundary, so the trunk costs one launch instead of one per run.
//
// Work split. CTA i owns the output-channel slice n0 = (i % slices) * 64 of W and keeps W[n0:n0+64, :] in
// shared memory (64 x C bf16/fp16 = 96 KiB for C = 768) for every layer of the run — W is read from HBM once per
// launch instead of once per layer. CTAs with the same slice split the M = B*H*W rows in 16-row tiles; the four
// warps of a CTA split each tile's K (split-K, partials reduced through 12 KiB of shared memory) and compute
// 16 rows x 64 channels with mma.sync m16n8k16 (fp32 accumulate), A fragments loaded from u (L2-resident at
// small batch), B fragments from the resident slice. The depthwise half is a grid-stride loop over (row,
// channel) of all CTAs, fp32 arithmetic, reading x's k x k neighbourhood from L2 and tap-major filters.
//
// Bytes per layer: x read ~once (+halo hits in L2), u written once and read twice (pointwise A operand, SPIN
// residual), x written once; W only at launch; per-layer vectors 6 x C x 4 B and filters C x k^2 x 4 B.
#include "shared_run.h"

#ifndef SPIN_EMULATE
#include <cooperative_groups.h>
#endif

#include <cstdint>

#include "device_utils.cuh"

namespace cg = cooperative_groups;

namespace spin {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kRowPad = 8;  // elements of padding per resident row: staggers banks across rows
constexpr int kKSteps = 4;  // k-steps (of 16) whose A fragments are loaded together
static_assert(kSliceN % (16 * kKSteps) == 0, "C % kSliceN == 0 must imply C % (16 * kKSteps) == 0");

// D += A B on tensor cores for one warp's m16n8k16 tile (fp32 accumulators; fragment layout in emulation.h).
// The PTX element type of each storage type; one asm body below serves both.
template <typename T> struct MmaType;
template <> struct MmaType<__nv_bfloat16> { static constexpr bool kBf16 = true; };
template <> struct MmaType<__half> { static constexpr bool kBf16 = false; };

#define SPIN_MMA_M16N8K16(ELEM)                                                                       \
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." ELEM "." ELEM ".f32 {%0,%1,%2,%3}, "          \
               "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"                                              \
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                                          \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1))

template <typename T>
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#ifdef SPIN_EMULATE
  spin_emu::mma_m16n8k16(d, a, b0, b1, MmaType<T>::kBf16);
#else
  if constexpr (MmaType<T>::kBf16) {
    SPIN_MMA_M16N8K16("bf16");
  } else {
    SPIN_MMA_M16N8K16("f16");
  }
#endif
}

// Two consecutive elements of a row as one 32-bit register (0 when the row is out of range).
template <typename T>
__device__ __forceinline__ uint32_t load_pair(const T* row, int col, bool valid) {
  return valid ? *reinterpret_cast<const uint32_t*>(row + col) : 0u;
}

// Two consecutive channels of a 16-bit activation as floats (one 32-bit load).
template <typename T>
__device__ __forceinline__ void load2(const T* p, float& lo, float& hi) {
  const uint32_t raw = *reinterpret_cast<const uint32_t*>(p);
  const T* e = reinterpret_cast<const T*>(&raw);
  lo = to_f32(e[0]);
  hi = to_f32(e[1]);
}

// u = x + s1 * act(dwconv(x) + dwb) + t1 over all (pixel, channel pair) of the activation, grid-stride: each
// thread owns two adjacent channels (32-bit activation loads, 64-bit filter loads; a warp covers 64 channels).
template <typename T>
__device__ void depthwise_half(const SharedRunArgs& p, int layer) {
  const T* x = static_cast<const T*>(p.x);
  T* u = static_cast<T*>(p.u);
  const int C = p.C, k = p.k, r = k / 2, kk = k * k, pairs = C / 2;
  const float* filt = p.dw_weight + static_cast<size_t>(layer) * C * kk;
  const float* dwb = p.dw_bias + static_cast<size_t>(layer) * C;
  const float* s1 = p.s1 + static_cast<size_t>(layer) * C;
  const float* t1 = p.t1 + static_cast<size_t>(layer) * C;
  const size_t total = static_cast<size_t>(p.B) * p.H * p.W * pairs;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const int c = 2 * static_cast<int>(i % pairs);
    const size_t pix = i / pairs;
    const int ox = static_cast<int>(pix % p.W), oy = static_cast<int>((pix / p.W) % p.H);
    const size_t n = pix / (static_cast<size_t>(p.W) * p.H);
    float acc0 = dwb[c], acc1 = dwb[c + 1];
    for (int ky = 0; ky < k; ++ky) {
      const int iy = oy + ky - r;
      if (iy < 0 || iy >= p.H) continue;
      for (int kx = 0; kx < k; ++kx) {
        const int ix = ox + kx - r;
        if (ix < 0 || ix >= p.W) continue;
        float v0, v1;
        load2(x + ((n * p.H + iy) * p.W + ix) * C + c, v0, v1);
        const float2 f = *reinterpret_cast<const float2*>(filt + (ky * k + kx) * C + c);
        acc0 = fmaf(v0, f.x, acc0);
        acc1 = fmaf(v1, f.y, acc1);
      }
    }
    float x0, x1;
    load2(x + pix * C + c, x0, x1);
    const T out[2] = {from_f32<T>(x0 + s1[c] * activate(acc0, p.act) + t1[c]),
                      from_f32<T>(x1 + s1[c + 1] * activate(acc1, p.act) + t1[c + 1])};
    *reinterpret_cast<uint32_t*>(u + pix * C + c) = *reinterpret_cast<const uint32_t*>(out);
  }
}

// Partial accumulators one warp hands to the others per row tile: the n-tiles it does not finish itself.
constexpr int kNTiles = kSliceN / 8;                 // 16 x 8 accumulator tiles per 16-row tile
constexpr int kOwnNTiles = kNTiles / kWarps;         // n-tiles each warp reduces and writes (2)
constexpr int kSharedNTiles = kNTiles - kOwnNTiles;  // n-tiles each warp passes on (6)
static_assert(kNTiles % kWarps == 0, "each warp finishes the same number of n-tiles");

// Slot of n-tile nt among the kSharedNTiles that `warp` passes on (its own kOwnNTiles are skipped).
__device__ __forceinline__ int shared_slot(int nt, int warp) {
  return nt < warp * kOwnNTiles ? nt : nt - kOwnNTiles;
}

// x = s2 * act(u W^T + b) + t2 (+ u) for the CTA's 64 resident channels. The CTA's four warps share each 16-row
// tile, split-K: warp w multiplies k-steps [w K/4, (w+1) K/4) for all 64 channels, the partial tiles meet in
// shared memory and warp w reduces (in warp order: deterministic) and writes n-tiles 2w, 2w+1. At batch 1 there
// are fewer row tiles than warps, so splitting K — not rows — keeps every warp busy and shortens the chain of
// dependent loads each warp waits on by 4x.
template <typename T>
__device__ void pointwise_half(const SharedRunArgs& p, int layer, const T* ws, const float* w_bias, float* red,
                               int slice, int group, int groups) {
  const T* u = static_cast<const T*>(p.u);
  T* x = static_cast<T*>(p.x);
  const int C = p.C, M = p.B * p.H * p.W, ldw = C + kRowPad;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int n0 = slice * kSliceN;
  const float* s2 = p.s2 + static_cast<size_t>(layer) * C;
  const float* t2 = p.t2 + static_cast<size_t>(layer) * C;
  const int row_tiles = (M + 15) / 16, ksteps = C / 16;
  const int k_begin = 16 * (warp * ksteps / kWarps), k_end = 16 * ((warp + 1) * ksteps / kWarps);
  for (int tile = group; tile < row_tiles; tile += groups) {  // uniform across the CTA: barriers inside are safe
    const int m_lo = tile * 16 + g, m_hi = m_lo + 8;
    const bool ok_lo = m_lo < M, ok_hi = m_hi < M;
    const T* row_lo = u + static_cast<size_t>(ok_lo ? m_lo : 0) * C;
    const T* row_hi = u + static_cast<size_t>(ok_hi ? m_hi : 0) * C;
    float acc[kNTiles][4];
#pragma unroll
    for (int nt = 0; nt < kNTiles; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.f;
    // kKSteps k-steps of A fragments are loaded before their MMAs: the loads (L2 round trips at small batch) of
    // a group are in flight together instead of one latency per k-step.
    for (int k0 = k_begin; k0 < k_end; k0 += 16 * kKSteps) {
      uint32_t a[kKSteps][4];
#pragma unroll
      for (int s = 0; s < kKSteps; ++s) {
        const int kc = k0 + 16 * s + 2 * t;
        const bool in = k0 + 16 * s < k_end;  // uniform across the warp
        a[s][0] = load_pair(row_lo, kc, ok_lo && in);
        a[s][1] = load_pair(row_hi, kc, ok_hi && in);
        a[s][2] = load_pair(row_lo, kc + 8, ok_lo && in);
        a[s][3] = load_pair(row_hi, kc + 8, ok_hi && in);
      }
#pragma unroll
      for (int s = 0; s < kKSteps; ++s) {
        if (k0 + 16 * s >= k_end) break;
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt) {
          const T* wrow = ws + (nt * 8 + g) * ldw + k0 + 16 * s + 2 * t;
          mma_m16n8k16<T>(acc[nt], a[s], *reinterpret_cast<const uint32_t*>(wrow),
                          *reinterpret_cast<const uint32_t*>(wrow + 8));
        }
      }
    }
    // Hand the n-tiles other warps finish to shared memory: red[warp][slot][lane][4].
#pragma unroll
    for (int nt = 0; nt < kNTiles; ++nt) {
      if (nt / kOwnNTiles == warp) continue;
      float* dst = red + ((warp * kSharedNTiles + shared_slot(nt, warp)) * 32 + lane) * 4;
#pragma unroll
      for (int i = 0; i < 4; ++i) dst[i] = acc[nt][i];
    }
    __syncthreads();
    // Reduce this warp's n-tiles over the four K quarters in warp order, then the epilogue: element
    // (row g / g+8, column 2t / 2t+1) of each 16x8 tile.
#pragma unroll
    for (int nt = 0; nt < kNTiles; ++nt) {
      if (nt / kOwnNTiles != warp) continue;  // warp-uniform; nt stays a compile-time index into acc
      float sum[4] = {0.f, 0.f, 0.f, 0.f};
      for (int src = 0; src < kWarps; ++src) {
        if (src == warp) {
#pragma unroll
          for (int i = 0; i < 4; ++i) sum[i] += acc[nt][i];
        } else {
          const float* part = red + ((src * kSharedNTiles + shared_slot(nt, src)) * 32 + lane) * 4;
#pragma unroll
          for (int i = 0; i < 4; ++i) sum[i] += part[i];
        }
      }
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int m = half ? m_hi : m_lo;
        if (m >= M) continue;
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int n = n0 + nt * 8 + 2 * t + j;
          float v = s2[n] * activate(sum[2 * half + j] + w_bias[n], p.act) + t2[n];
          if (p.spin_residual) v += to_f32(u[static_cast<size_t>(m) * C + n]);
          x[static_cast<size_t>(m) * C + n] = from_f32<T>(v);
        }
      }
    }
    __syncthreads();  // red is rewritten by the next tile
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads, 1) shared_run_kernel(SharedRunArgs p) {
  T* ws = dynamic_smem<T>();  // [kSliceN][C + kRowPad], resident for the whole run
  float* red = reinterpret_cast<float*>(ws + kSliceN * (p.C + kRowPad));  // split-K partials, see pointwise_half
  const int slices = p.C / kSliceN;
  const int slice = blockIdx.x % slices, group = blockIdx.x / slices, groups = gridDim.x / slices;
  const int ldw = p.C + kRowPad;
  cg::grid_group grid = cg::this_grid();
  for (int run = 0; run < p.num_runs; ++run) {
    // Load this run's slice of W (after the grid.sync that ended the previous run's last layer: ws is free).
    const T* w = static_cast<const T*>(p.w[run]);
    for (int i = threadIdx.x; i < kSliceN * p.C; i += blockDim.x) {
      const int n = i / p.C, kx = i % p.C;
      ws[n * ldw + kx] = w[static_cast<size_t>(slice * kSliceN + n) * p.C + kx];
    }
    __syncthreads();
    for (int layer = p.run_start[run]; layer < p.run_start[run + 1]; ++layer) {
      depthwise_half<T>(p, layer);
#ifndef SPIN_MUTATE_DROP_GRID_SYNC  // defined only by the mutation test's emulated build (tests/cuda)
      grid.sync();  // u complete everywhere before any row's GEMM reads it
#endif
      pointwise_half<T>(p, layer, ws, p.w_bias[run], red, slice, group, groups);
#ifndef SPIN_MUTATE_DROP_LAYER_SYNC  // mutation test only, as above
      grid.sync();  // x complete before the next layer's depthwise half reads neighbours
#endif
    }
  }
}

template <typename T>
cudaError_t launch(const SharedRunArgs& args, cudaStream_t stream, int* grid_ctas) {
  const size_t smem = shared_run_smem_bytes(args.C);
  auto kernel = shared_run_kernel<T>;
  cudaError_t err = allow_dynamic_smem(kernel, smem);
  if (err != cudaSuccess) return err;
  int sms = 0, per_sm = 0;
  if ((err = multiprocessor_count(&sms)) != cudaSuccess) return err;
  if ((err = max_ctas_per_sm(&per_sm, kernel, kThreads, smem)) != cudaSuccess) return err;
  const int slices = args.C / kSliceN, resident = sms * per_sm;
  if (resident < slices) return cudaErrorCooperativeLaunchTooLarge;
  // Every CTA must be co-resident for grid.sync(): the largest multiple of the slice count that fits.
  const int ctas = (resident / slices) * slices;
  if (grid_ctas) *grid_ctas = ctas;
  return launch_cooperative(kernel, dim3(ctas), dim3(kThreads), smem, stream, args);
}

}  // namespace

size_t shared_run_smem_bytes(int C) {
  // the resident slice (16-bit elements; C + kRowPad keeps the float partials after it 16-byte aligned) and the
  // split-K partials: kWarps x kSharedNTiles tiles of 32 lanes x 4 floats (12 KiB)
  return static_cast<size_t>(kSliceN) * (C + kRowPad) * 2 + static_cast<size_t>(kWarps) * kSharedNTiles * 32 * 4 * 4;
}

cudaError_t shared_run_forward(int dtype, const SharedRunArgs& args, cudaStream_t stream, int* grid_ctas) {
  if (args.C % kSliceN != 0 || args.k % 2 == 0 || args.num_layers < 1) return cudaErrorInvalidValue;
  if (args.num_runs < 1 || args.num_runs > kMaxRuns || args.run_start[0] != 0 ||
      args.run_start[args.num_runs] != args.num_layers) {
    return cudaErrorInvalidValue;
  }
  for (int r = 0; r < args.num_runs; ++r) {
    if (args.run_start[r + 1] <= args.run_start[r]) return cudaErrorInvalidValue;
  }
  switch (dtype) {
    case 1: return launch<__half>(args, stream, grid_ctas);
    case 2: return launch<__nv_bfloat16>(args, stream, grid_ctas);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace spin
