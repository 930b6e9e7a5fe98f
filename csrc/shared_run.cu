// Weights-resident persistent shared run (eval-mode ConvMixer; DESIGN.md §2, lever 3).
//
// Computes, for each of the run's L layers (all sharing the pointwise W, b):
//   depthwise half:  u = x + s1 * act(dwconv_l(x) + dwb_l) + t1        (per-layer filters, folded BN1)
//   pointwise half:  x = s2 * act(u W^T + b) + t2   (+ u for SPIN's layer)      (folded BN2)
// in ONE persistent launch. One launch may cover several consecutive runs (up to kMaxRuns: a whole trunk); each
// CTA then reloads its W slice at every run boundary, so the trunk costs one launch instead of one per run.
//
// Work split. CTA i owns the output-channel slice n0 = (i % slices) * 64 of W and keeps W[n0:n0+64, :] in
// shared memory (64 x C bf16/fp16 = 96 KiB for C = 768) for every layer of the run — W is read from HBM once per
// launch instead of once per layer. CTAs with the same slice split the M = B*H*W rows in 16-row tiles (group g
// takes tiles g, g + groups, ...); for each of its tiles a CTA computes the depthwise half on its slice's 64
// channels, then the pointwise half: the four warps split each tile's K (split-K, partials reduced through
// 12 KiB of shared memory) and compute 16 rows x 64 channels with mma.sync m16n8k16 (fp32 accumulate), A
// fragments loaded from u (L2-resident at small batch), B fragments from the resident slice.
//
// Dataflow, not barriers. No grid-wide sync: a tile waits only for the tiles it reads, through monotonic
// counters in global memory (release: bar.sync, then one thread's fence + atomic add; acquire: ld.acquire
// polls, then bar.sync):
//   u_ready[t]      += 1 when a slice's depthwise half has written u rows of tile t; the pointwise half of tile t
//                      at layer l waits for slices * (l + 1) (it reads all C channels of u);
//   x_ready[t][s]   += 1 when slice s's pointwise half has written x rows of tile t; the depthwise half of tile t
//                      at layer l, slice s, waits for l on the tiles within its halo (halo_tiles) — the depthwise
//                      conv is per channel, so only its own slice's CTAs.
// x and u ping-pong (layer l reads x[l % 2] and u[l % 2], writes x[(l + 1) % 2]), so a layer never overwrites
// what a slower CTA still reads: the pointwise half of layer l + 2 that rewrites x tile t' waited (through
// u_ready, then x_ready of its halo, then u_ready again) for every depthwise half of layer l + 1 that read x
// tile t' — the halo relation is symmetric — and the depthwise half of layer l + 2 that rewrites u tile t
// waited for every slice's pointwise half of layer l on tile t in the same way. u_ready sums over slices, so
// "slices * (l + 1)" means "every slice finished layer l" only because no slice gets two layers ahead on a tile:
// its depthwise half of layer l + 1 waits for x_ready of the tile itself (a tile is in its own halo), which needs
// u_ready of layer l complete. CTAs wait on other CTAs, so all must be co-resident: a cooperative launch
// guarantees it (or fails, and the caller falls back). x and u are read with plain (coherent) loads after the
// acquire: never mark them __restrict__ or read them with __ldg, whose non-coherent path may return stale lines.
//
// Latency (batch 1 is a chain of dependent round trips, not bandwidth): the W slice is copied 16 bytes at a time
// with 16 loads in flight per thread; a pixel's taps load together (one instance per kernel size, so the taps
// unroll); each warp's A fragments for a row tile load in one group at C = 768 and the epilogue's per-channel
// vectors once per layer. Per layer what remains is two flag waits and a few L2 round trips (spin
// kernels-report --cost prints the critical path).
//
// Bytes per layer: x read ~once (+halo hits in L2), u written once and read twice (pointwise A operand, SPIN
// residual), x written once; W only at launch; per-layer vectors 6 x C x 4 B and filters C x k^2 x 4 B.
#include "shared_run.h"

#include <cstdint>

#include "device_utils.cuh"

namespace spin {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kTileRows = 16;  // rows of a pointwise row tile (one m16 MMA tile), the unit of the ready flags
constexpr int kSlicePairs = kSliceN / 2;  // channel pairs of a slice (depthwise: two channels per thread)
constexpr int kRowPad = 8;  // elements of padding per resident row: staggers banks across rows
// k-steps (of 16) whose A fragments are loaded together: each warp's whole K quarter at C = 768 (one dependent
// round trip per row tile), two groups up to C = 1536; a partial last group is masked off (`in` below)
constexpr int kKSteps = 12;
constexpr int kWLoadBatch = 16;  // 16-byte W vectors each thread has in flight while loading its slice

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

// Row tiles a k x k neighbourhood of tile t's pixels reaches: [t - reach, t + reach] within [0, row_tiles), with
// reach = ceil(r (W + 1) / 16) — a neighbour pixel is at most r image rows and r columns away, r (W + 1) apart in
// the flattened [M] order. The relation is symmetric (t' is in t's range iff t is in t'), which the reuse of the
// ping-pong buffers relies on (see shared_run_kernel).
__device__ __forceinline__ void halo_tiles(int tile, int r, int W, int row_tiles, int& lo, int& hi) {
  const int reach = (r * (W + 1) + kTileRows - 1) / kTileRows;
  lo = tile > reach ? tile - reach : 0;
  hi = tile + reach < row_tiles ? tile + reach : row_tiles - 1;
}

// u = x + s1 * act(dwconv(x) + dwb) + t1 for the CTA's row tiles and its slice's 64 channels (the same tiles its
// pointwise half multiplies): each thread owns two adjacent channels (32-bit activation loads, 64-bit filter
// loads). Before a tile, the CTA waits for the flags of the x tiles it reads; after it, it adds 1 to the tile's
// u-ready count.
// KS, the kernel size, is a template argument: the k x k taps unroll (in groups of kRows tap rows), so a pixel's
// neighbourhood loads (predicated off outside the image) are independent and issue together — a few dependent
// round trips per pixel instead of one per tap row and kx step (the layer's latency at batch 1 is these chains).
template <typename T, int KS>
__device__ void depthwise_half(const SharedRunArgs& p, int layer, int slice, int group, int groups) {
  constexpr int r = KS / 2, kk = KS * KS;
  // tap rows whose loads are in flight together: all of them up to k = 7 (49 taps, ~150 registers); three at
  // k = 9, whose 81 taps at once would spill
  constexpr int kRows = KS <= 7 ? KS : 3;
  static_assert(KS % kRows == 0, "the tap rows split into whole groups");
  const T* x = static_cast<const T*>(p.x[layer % 2]);
  T* u = static_cast<T*>(p.u[layer % 2]);
  const int C = p.C, M = p.B * p.H * p.W, row_tiles = (M + kTileRows - 1) / kTileRows, slices = C / kSliceN;
  const float* filt = p.dw_weight + static_cast<size_t>(layer) * C * kk;
  const float* dwb = p.dw_bias + static_cast<size_t>(layer) * C;
  const float* s1 = p.s1 + static_cast<size_t>(layer) * C;
  const float* t1 = p.t1 + static_cast<size_t>(layer) * C;
  for (int tile = group; tile < row_tiles; tile += groups) {  // uniform across the CTA: barriers inside are safe
    // The x rows this tile reads (its own and r image rows either side, this slice's channels) are the previous
    // layer's pointwise output of this slice's CTAs: wait for each tile's flag (layer 0 reads the input).
    int lo, hi;
    halo_tiles(tile, r, p.W, row_tiles, lo, hi);
#ifndef SPIN_MUTATE_DROP_X_WAIT  // defined only by the mutation test's emulated build (tests/cuda)
    for (int nb = lo + static_cast<int>(threadIdx.x); nb <= hi; nb += kThreads) {
      flag_wait_geq(p.flags + row_tiles + nb * slices + slice, layer);
    }
#endif
    __syncthreads();
    // 16 rows x 32 channel pairs: a warp covers one row's 64 channels (128-byte loads and stores)
    for (int i = threadIdx.x; i < kTileRows * kSlicePairs; i += kThreads) {
      const int m = tile * kTileRows + i / kSlicePairs;
      if (m >= M) break;  // m grows with i: the rest of this thread's items are past the last row too
      const int c = slice * kSliceN + 2 * (i % kSlicePairs);
      const size_t pix = static_cast<size_t>(m);
      // pixel coordinates by unsigned division (no sign fix-ups); tap addresses as 32-bit element offsets from the
      // image's base (B * H * W * C < 2^31, checked by the binding): a row offset per tap row and a column offset
      // per tap column, so a tap costs one add
      const unsigned hw = static_cast<unsigned>(p.H * p.W), plane = static_cast<unsigned>(m) / hw;
      const unsigned in_plane = static_cast<unsigned>(m) - plane * hw;
      const int oy = static_cast<int>(in_plane / static_cast<unsigned>(p.W)), ox = static_cast<int>(in_plane) - oy * p.W;
      const T* image = x + static_cast<size_t>(plane) * hw * C + c;
      int col_off[KS];
      bool col_in[KS];
#pragma unroll
      for (int kx = 0; kx < KS; ++kx) {
        const int ix = ox + kx - r;
        col_in[kx] = ix >= 0 && ix < p.W;
        col_off[kx] = clamp_index(ix, p.W - 1) * C;  // clamped: an in-image address, zeroed below when outside
      }
      // everything but the taps first: independent loads, in flight with the first tap group
      float x0, x1;
      load2(x + pix * C + c, x0, x1);
      const float2 scale = *reinterpret_cast<const float2*>(s1 + c), shift = *reinterpret_cast<const float2*>(t1 + c);
      const float2 bias = *reinterpret_cast<const float2*>(dwb + c);
      float acc0 = bias.x, acc1 = bias.y;
#pragma unroll 1
      for (int ky0 = 0; ky0 < KS; ky0 += kRows) {
#pragma unroll
        for (int ky = ky0; ky < ky0 + kRows; ++ky) {
          const int iy = oy + ky - r;
          const bool row_in = iy >= 0 && iy < p.H;
          const int row_off = clamp_index(iy, p.H - 1) * p.W * C;
#pragma unroll
          for (int kx = 0; kx < KS; ++kx) {
            // branch-free: every tap loads (from a clamped in-image address) and is zeroed outside the image (zero
            // padding), so the loads of a group have no control flow between them and issue together
            float v0, v1;
            load2(image + (row_off + col_off[kx]), v0, v1);
            const bool in = row_in && col_in[kx];
            const float2 f = *reinterpret_cast<const float2*>(filt + (ky * KS + kx) * C + c);
            acc0 = fmaf(in ? v0 : 0.f, f.x, acc0);
            acc1 = fmaf(in ? v1 : 0.f, f.y, acc1);
          }
        }
      }
      const T out[2] = {from_f32<T>(x0 + scale.x * activate(acc0, p.act) + shift.x),
                        from_f32<T>(x1 + scale.y * activate(acc1, p.act) + shift.y)};
      *reinterpret_cast<uint32_t*>(u + pix * C + c) = *reinterpret_cast<const uint32_t*>(out);
    }
    __syncthreads();  // every thread's u stores come before the release
    if (threadIdx.x == 0) flag_release_add(p.flags + tile, 1);
  }
}

// Copies rows [slice * kSliceN, (slice + 1) * kSliceN) of W [C, C] into the padded resident slice ws (row stride
// C + kRowPad). 16-byte vectors, kWLoadBatch of them loaded by each thread before any is stored: the copy costs
// (C / 16) / kWLoadBatch dependent round trips per thread (3 at C = 768) instead of one per element. W's rows
// and ws's padded rows start on 16-byte boundaries (C % 64 == 0; the binding aligns W's base).
template <typename T>
__device__ void load_w_slice(T* ws, const T* w, int slice, int C) {
  constexpr int kVec = 16 / sizeof(T);                   // elements per 16-byte vector
  const unsigned row_vecs = static_cast<unsigned>(C / kVec), total = kSliceN * row_vecs;
  const uint4* src = reinterpret_cast<const uint4*>(w + static_cast<size_t>(slice) * kSliceN * C);
  for (unsigned first = threadIdx.x; first < total; first += kThreads * kWLoadBatch) {
    uint4 v[kWLoadBatch];
#pragma unroll
    for (int j = 0; j < kWLoadBatch; ++j) {
      const unsigned i = first + j * kThreads;
      if (i < total) v[j] = src[i];
    }
#pragma unroll
    for (int j = 0; j < kWLoadBatch; ++j) {
      const unsigned i = first + j * kThreads;
      if (i < total) *reinterpret_cast<uint4*>(ws + (i / row_vecs) * (C + kRowPad) + (i % row_vecs) * kVec) = v[j];
    }
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
  const T* u = static_cast<const T*>(p.u[layer % 2]);
  T* x = static_cast<T*>(p.x[(layer + 1) % 2]);
  const int C = p.C, M = p.B * p.H * p.W, ldw = C + kRowPad, slices = C / kSliceN;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int n0 = slice * kSliceN;
  const int row_tiles = (M + kTileRows - 1) / kTileRows, ksteps = C / 16;
  const int k_begin = 16 * (warp * ksteps / kWarps), k_end = 16 * ((warp + 1) * ksteps / kWarps);
  // The epilogue's per-channel vectors for the 2 x 2 channels this lane writes (n-tiles 2 warp + i, columns
  // 2t, 2t + 1), loaded once per layer, before the first tile's A fragments: no load waits in the epilogue.
  float e_s2[kOwnNTiles][2], e_t2[kOwnNTiles][2], e_b[kOwnNTiles][2];
#pragma unroll
  for (int i = 0; i < kOwnNTiles; ++i) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int n = n0 + (warp * kOwnNTiles + i) * 8 + 2 * t + j;
      e_s2[i][j] = p.s2[static_cast<size_t>(layer) * C + n];
      e_t2[i][j] = p.t2[static_cast<size_t>(layer) * C + n];
      e_b[i][j] = w_bias[n];
    }
  }
  for (int tile = group; tile < row_tiles; tile += groups) {  // uniform across the CTA: barriers inside are safe
    // u rows of this tile, all C channels: every slice's depthwise half of this layer must have written them
#ifndef SPIN_MUTATE_DROP_U_WAIT  // mutation test only, as above
    if (threadIdx.x == 0) flag_wait_geq(p.flags + tile, slices * (layer + 1));
#endif
    __syncthreads();
    const int m_lo = tile * kTileRows + g, m_hi = m_lo + 8;
    const bool ok_lo = m_lo < M, ok_hi = m_hi < M;
    const T* row_lo = u + static_cast<size_t>(ok_lo ? m_lo : 0) * C;
    const T* row_hi = u + static_cast<size_t>(ok_hi ? m_hi : 0) * C;
    // SPIN's residual for the lane's outputs (channel pairs of rows m_lo / m_hi), issued with the first A loads
    uint32_t res[kOwnNTiles][2];
#pragma unroll
    for (int i = 0; i < kOwnNTiles; ++i) {
      const int n = n0 + (warp * kOwnNTiles + i) * 8 + 2 * t;
      res[i][0] = load_pair(row_lo, n, ok_lo && p.spin_residual);
      res[i][1] = load_pair(row_hi, n, ok_hi && p.spin_residual);
    }
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
    // This warp's own n-tiles (kOwnNTiles warp + i) out of the unrolled accumulators by warp-uniform selects, so
    // that the epilogue below is one copy of code for all warps (with nt a compile-time index it was one copy
    // per warp, four times the instructions).
    float own[kOwnNTiles][4];
#pragma unroll
    for (int i = 0; i < kOwnNTiles; ++i) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float v = acc[i][e];
#pragma unroll
        for (int w = 1; w < kWarps; ++w) v = warp == w ? acc[w * kOwnNTiles + i][e] : v;
        own[i][e] = v;
      }
    }
    // Reduce them over the four K quarters in warp order, then the epilogue: element (row g / g+8, column
    // 2t / 2t+1) of each 16x8 tile.
#pragma unroll
    for (int i = 0; i < kOwnNTiles; ++i) {
      const int nt = warp * kOwnNTiles + i, n = n0 + nt * 8 + 2 * t;
      float sum[4] = {0.f, 0.f, 0.f, 0.f};
      for (int src = 0; src < kWarps; ++src) {
        if (src == warp) {
#pragma unroll
          for (int e = 0; e < 4; ++e) sum[e] += own[i][e];
        } else {
          const float* part = red + ((src * kSharedNTiles + shared_slot(nt, src)) * 32 + lane) * 4;
#pragma unroll
          for (int e = 0; e < 4; ++e) sum[e] += part[e];
        }
      }
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int m = half ? m_hi : m_lo;
        if (m >= M) continue;
        const T* r = reinterpret_cast<const T*>(&res[i][half]);  // zeros unless SPIN's residual
        const T out[2] = {
            from_f32<T>(e_s2[i][0] * activate(sum[2 * half] + e_b[i][0], p.act) + e_t2[i][0] + to_f32(r[0])),
            from_f32<T>(e_s2[i][1] * activate(sum[2 * half + 1] + e_b[i][1], p.act) + e_t2[i][1] + to_f32(r[1]))};
        *reinterpret_cast<uint32_t*>(x + static_cast<size_t>(m) * C + n) = *reinterpret_cast<const uint32_t*>(out);
      }
    }
    __syncthreads();  // red is rewritten by the next tile; every thread's x stores come before the release
    if (threadIdx.x == 0) flag_release_add(p.flags + row_tiles + tile * slices + slice, 1);
  }
}

template <typename T, int KS>
__global__ void __launch_bounds__(kThreads, 1) shared_run_kernel(SharedRunArgs p) {
  T* ws = dynamic_smem<T>();  // [kSliceN][C + kRowPad], resident for the whole run
  float* red = reinterpret_cast<float*>(ws + kSliceN * (p.C + kRowPad));  // split-K partials, see pointwise_half
  const int slices = p.C / kSliceN;
  const int slice = blockIdx.x % slices, group = blockIdx.x / slices, groups = gridDim.x / slices;
  for (int run = 0; run < p.num_runs; ++run) {
    __syncthreads();  // the previous run's last tile is done with ws
    load_w_slice<T>(ws, static_cast<const T*>(p.w[run]), slice, p.C);
    __syncthreads();
    for (int layer = p.run_start[run]; layer < p.run_start[run + 1]; ++layer) {
      depthwise_half<T, KS>(p, layer, slice, group, groups);
      pointwise_half<T>(p, layer, ws, p.w_bias[run], red, slice, group, groups);
    }
  }
}

template <typename T, int KS>
cudaError_t launch(const SharedRunArgs& args, cudaStream_t stream, int* grid_ctas) {
  const size_t smem = shared_run_smem_bytes(args.C);
  auto kernel = shared_run_kernel<T, KS>;
  cudaError_t err = allow_dynamic_smem(kernel, smem);
  if (err != cudaSuccess) return err;
  int sms = 0, per_sm = 0;
  if ((err = multiprocessor_count(&sms)) != cudaSuccess) return err;
  if ((err = max_ctas_per_sm(&per_sm, kernel, kThreads, smem)) != cudaSuccess) return err;
  const int slices = args.C / kSliceN, resident = sms * per_sm;
  if (resident < slices) return cudaErrorCooperativeLaunchTooLarge;
  // Every CTA must be co-resident (a CTA spins on flags other CTAs set): a multiple of the slice count that fits,
  // in a cooperative launch, which guarantees co-residency or fails. No more row groups than row tiles: a group
  // without a tile would only load W slices (batch 1 at 224 px / patch 14: 22 groups fit, 16 tiles).
  const int row_tiles = (args.B * args.H * args.W + kTileRows - 1) / kTileRows;
  const int groups = resident / slices < row_tiles ? resident / slices : row_tiles;
  const int ctas = groups * slices;
  if (grid_ctas) *grid_ctas = ctas;
  return launch_cooperative(kernel, dim3(ctas), dim3(kThreads), smem, stream, args);
}

// The instance for the run's kernel size (the odd sizes up to kMaxKernelSize).
template <typename T>
cudaError_t launch_for_kernel_size(const SharedRunArgs& args, cudaStream_t stream, int* grid_ctas) {
  static_assert(kMaxKernelSize == 9, "one case per odd kernel size up to kMaxKernelSize");
  switch (args.k) {
    case 1: return launch<T, 1>(args, stream, grid_ctas);
    case 3: return launch<T, 3>(args, stream, grid_ctas);
    case 5: return launch<T, 5>(args, stream, grid_ctas);
    case 7: return launch<T, 7>(args, stream, grid_ctas);
    case 9: return launch<T, 9>(args, stream, grid_ctas);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

size_t shared_run_flag_count(int64_t M, int C) {
  const int64_t row_tiles = (M + kTileRows - 1) / kTileRows;
  return static_cast<size_t>(row_tiles * (1 + C / kSliceN));
}

size_t shared_run_smem_bytes(int C) {
  // the resident slice (16-bit elements; C + kRowPad keeps the float partials after it 16-byte aligned) and the
  // split-K partials: kWarps x kSharedNTiles tiles of 32 lanes x 4 floats (12 KiB)
  return static_cast<size_t>(kSliceN) * (C + kRowPad) * 2 + static_cast<size_t>(kWarps) * kSharedNTiles * 32 * 4 * 4;
}

cudaError_t shared_run_forward(int dtype, const SharedRunArgs& args, cudaStream_t stream, int* grid_ctas) {
  if (args.C % kSliceN != 0 || args.num_layers < 1) return cudaErrorInvalidValue;
  if (args.num_runs < 1 || args.num_runs > kMaxRuns || args.run_start[0] != 0 ||
      args.run_start[args.num_runs] != args.num_layers) {
    return cudaErrorInvalidValue;
  }
  for (int r = 0; r < args.num_runs; ++r) {
    if (args.run_start[r + 1] <= args.run_start[r]) return cudaErrorInvalidValue;
  }
  switch (dtype) {
    case 1: return launch_for_kernel_size<__half>(args, stream, grid_ctas);
    case 2: return launch_for_kernel_size<__nv_bfloat16>(args, stream, grid_ctas);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace spin
