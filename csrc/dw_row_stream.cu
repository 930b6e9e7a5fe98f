// Depthwise k x k convolution, forward, as a row stream with a register sliding window (the dw_forward contract of
// depthwise_conv.h: x = [res] + a * act_in(h) + b rebuilt on load, y = post * act(conv_w(x) + bias), per-tile
// BatchNorm partial statistics of stats_act(y as stored)).
//
// Tiling: a CTA owns a band of output rows [r0, r1) of one image, a column tile (16 columns at k = 3, 32 above) and
// a chunk of 64 channels. Each lane owns a channel pair (c, c + 1: 8-byte fp32 / 4-byte 16-bit accesses, a warp's
// 32 lanes one contiguous 128 / 256-byte run of a pixel), each warp a strip of SW output columns (SW = 8 at k = 3,
// 4 above, so that k accumulator rows fit in registers). The input rows r0 - P .. r1 + P - 1 (P = k / 2) stream
// by once:
//   1. row iy + 1's raw h / res are loaded into registers (in flight while row iy computes);
//   2. row iy, staged in shared memory as fp32 (tile columns and the 2P halo columns), is read once per thread
//      (SW + 2P column pairs) and multiplied into a ring of k output-row accumulators: slot j holds output row
//      iy - P + j and takes tap row k - 1 - j (k * k * SW FMAs per channel, the taps from shared memory);
//   3. slot 0 is then a finished output row: bias, activation, post-scale, stored; its statistics merged (a row's
//      mean and M2 over the thread's columns, then Chan's formula per row); the ring rotates;
//   4. row iy + 1's prologue (affine, activation, residual) runs once per element and is staged; one barrier.
// Rows outside the image are zero padding: not loaded, not multiplied (the ring still rotates through them).
// The ConvMixer layer's activations are compiled in (launch_for_activations); other combinations take a generic
// instance that branches on the activation codes.
//
// Bytes per CTA: (r1 - r0 + 2P) rows x (tile + 2P) columns x 64 channels of h (and res) read, the halo rows and
// columns from L2 when a neighbour read them; (r1 - r0) x tile x 64 outputs written; k * k * 64 taps; 3 x 64
// floats of statistics. A band is the whole image unless the batch's CTAs would not give each SM two
// (dw_forward_band_rows), so HBM traffic is ~1 read of each operand and 1 write of y.
// Instructions per output element: k * k FMAs, ~(k * k) / SW shared-memory tap loads, (SW + 2P) / SW staged-row
// loads, one prologue and one epilogue (the activations: erf-GELU is ~30 instructions, twice per element, which
// is what keeps the k = 9 GELU instance at ~3x its FMA floor), (k - 1) register moves of the ring rotation.
#include "depthwise_conv.h"

#include "device_utils.cuh"

#include <cstdint>
#include <type_traits>

namespace spin {
namespace {

constexpr int kPairLanes = 32;  // a warp's lanes, one channel pair each
constexpr int kRowChunk = 2 * kPairLanes;
constexpr int kMinBandRows = 4;  // a band this short already re-reads 2P / 4 halo rows per row

// Output columns of a CTA: 16 at k = 3 (2 warps: ConvMixer's 16 x 16 maps at patch 14 in one tile, 32 x 32 maps
// in two with a 2-column halo each), 32 above (8 warps; a 16-column tile would restage 8 halo columns at k = 9).
__host__ __device__ constexpr int row_tile_width(int ks) { return ks <= 3 ? 16 : 32; }

// Output columns of a thread's strip: 8 at k = 3; 4 above, so that k accumulator rows fit in registers.
__host__ __device__ constexpr int strip_width(int ks) { return ks <= 3 ? 8 : 4; }

template <int KS>
struct RowStream {
  static constexpr int P = KS / 2;
  static constexpr int TileW = row_tile_width(KS);
  static constexpr int SW = strip_width(KS);
  static constexpr int Warps = TileW / SW;                         // one strip per warp
  static constexpr int Threads = 32 * Warps;
  static constexpr int Cols = TileW + 2 * P;                       // staged columns: the tile and its halo
  static constexpr int StagePerThread = (Cols + Warps - 1) / Warps;  // staged columns of one lane, at most
};

// Raw storage of a channel pair as loaded (two fp32, or two 16-bit values in one word).
template <typename T>
using PairRaw = std::conditional_t<sizeof(T) == 4, uint2, uint32_t>;

template <typename T>
__device__ __forceinline__ float2 unpack_pair(PairRaw<T> raw) {
  const T* e = reinterpret_cast<const T*>(&raw);
  return make_float2(to_f32(e[0]), to_f32(e[1]));
}

template <typename T>
__device__ __forceinline__ PairRaw<T> load_pair_raw(const T* p) {
  return *reinterpret_cast<const PairRaw<T>*>(p);
}

template <typename T>
__device__ __forceinline__ PairRaw<T> pack_pair(float2 v) {
  PairRaw<T> raw;
  T* e = reinterpret_cast<T*>(&raw);
  e[0] = from_f32<T>(v.x);
  e[1] = from_f32<T>(v.y);
  return raw;
}

// Running (count, mean, M2) of a thread's values, per channel of its pair.
struct PairStats {
  float n = 0.f;
  float2 mean = {0.f, 0.f}, m2 = {0.f, 0.f};

  // Chan's merge of a batch of nb values with mean mb and M2 qb.
  __device__ __forceinline__ void merge(float nb, float2 mb, float2 qb) {
    if (nb == 0.f) return;
    const float n_new = n + nb, wb = nb / n_new, wq = n * wb;
    const float dx = mb.x - mean.x, dy = mb.y - mean.y;
    mean.x += dx * wb;
    mean.y += dy * wb;
    m2.x += qb.x + dx * dx * wq;
    m2.y += qb.y + dy * dy * wq;
    n = n_new;
  }
};

// An activation code fixed at compile time, or kActAny: the kernel argument's (a branch per use).
constexpr int kActAny = -1;

template <int ACT>
__device__ __forceinline__ int act_code(int runtime) {
  return ACT == kActAny ? runtime : ACT;
}

// ACT_IN / ACT / STATS_ACT: the activations of the prologue, the output and the statistics, each fixed at compile
// time (the ConvMixer layer's instance, see launch_for_kernel_size) or kActAny.
template <typename T, int KS, int ACT_IN, int ACT, int STATS_ACT>
__global__ void __launch_bounds__(RowStream<KS>::Threads, 1)
dw_forward_kernel(DwInput in, const T* __restrict__ w, const float* __restrict__ bias,
                  const float* __restrict__ post, int act_arg, int stats_act_arg, T* __restrict__ y,
                  float* __restrict__ stats, DwShape s, bool flip, int band_rows) {
  using G = RowStream<KS>;
  const int act_in = act_code<ACT_IN>(in.act), act = act_code<ACT>(act_arg);
  const int stats_act = act_code<STATS_ACT>(stats_act_arg);
  constexpr int P = G::P, SW = G::SW, KK = KS * KS;
  float2* wsm = dynamic_smem<float2>();       // [KK][32 lanes]: the chunk's taps
  float2* rows = wsm + KK * kPairLanes;       // [2][Cols][32 lanes]: staged input rows (double buffer)
  constexpr int Warps = G::Warps, Cols = G::Cols;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int c = blockIdx.y * kRowChunk + 2 * lane;
  const bool cvalid = c < s.C;  // C is even: a pair is wholly in or out

  const int col_tiles = (s.W + G::TileW - 1) / G::TileW, bands = (s.H + band_rows - 1) / band_rows;
  const int n = blockIdx.x / (bands * col_tiles), rem = blockIdx.x % (bands * col_tiles);
  const int r0 = (rem / col_tiles) * band_rows, r1 = r0 + band_rows < s.H ? r0 + band_rows : s.H;
  const int cx0 = (rem % col_tiles) * G::TileW;

  for (int i = threadIdx.x; i < KK * kPairLanes; i += G::Threads) {
    const int t = i / kPairLanes, cc = blockIdx.y * kRowChunk + 2 * (i % kPairLanes), src = flip ? KK - 1 - t : t;
    wsm[i] = cc < s.C ? make_float2(to_f32(w[static_cast<size_t>(cc) * KK + src]),
                                    to_f32(w[static_cast<size_t>(cc + 1) * KK + src]))
                      : make_float2(0.f, 0.f);
  }

  // The columns this lane stages: sc = warp + j * Warps (image column ix0 + j * Warps), j < StagePerThread; only
  // the last j can fall past the staged columns. A column outside the image is staged as 0 (not loaded).
  const int ix0 = cx0 - P + warp;
  bool col_ok[G::StagePerThread];
#pragma unroll
  for (int j = 0; j < G::StagePerThread; ++j) {
    const bool staged = (j + 1) * Warps <= Cols || warp + j * Warps < Cols;  // folds for all but the last j
    col_ok[j] = cvalid && staged && static_cast<unsigned>(ix0 + j * Warps) < static_cast<unsigned>(s.W);
  }
  const int col_step = Warps * s.C;                         // elements between a lane's staged columns
  const int lane_off = ix0 * s.C + c;                       // its first one's offset within a row
  const float2 a = in.a && cvalid ? *reinterpret_cast<const float2*>(in.a + c) : make_float2(1.f, 1.f);
  const float2 b = in.b && cvalid ? *reinterpret_cast<const float2*>(in.b + c) : make_float2(0.f, 0.f);
  const T* h = static_cast<const T*>(in.h);
  const T* res = static_cast<const T*>(in.res);
  const size_t row_elems = static_cast<size_t>(s.W) * s.C;
  const size_t image_row0 = static_cast<size_t>(n) * s.H;
  PairRaw<T> raw_h[G::StagePerThread], raw_r[G::StagePerThread];

  // Step 1: row iy's raw operands into registers (nothing for a padding row or a padding column).
  auto fetch = [&](int iy) {
    if (iy < 0 || iy >= s.H) return;  // uniform across the CTA
    // 64-bit row pointers once, then 32-bit offsets: one IMAD.WIDE per load
    const size_t base = (image_row0 + iy) * row_elems + lane_off;
    const T* h_row = h + base;
    const T* r_row = res + base;  // not dereferenced without res
#pragma unroll
    for (int j = 0; j < G::StagePerThread; ++j) {
      if (!col_ok[j]) continue;
      raw_h[j] = load_pair_raw(h_row + j * col_step);
      if (res) raw_r[j] = load_pair_raw(r_row + j * col_step);
    }
  };
  // Step 4: x = [res] + a * act_in(h) + b of the fetched row into `buf`; 0 in the padding columns.
  auto stage = [&](int iy, float2* buf) {
    if (iy < 0 || iy >= s.H) return;
#pragma unroll
    for (int j = 0; j < G::StagePerThread; ++j) {
      const int sc = warp + j * Warps;
      if ((j + 1) * Warps > Cols && sc >= Cols) continue;  // past the staged columns (only the last j)
      float2 x = make_float2(0.f, 0.f);
      if (col_ok[j]) {
        const float2 hv = unpack_pair<T>(raw_h[j]);
        const float2 rv = res ? unpack_pair<T>(raw_r[j]) : make_float2(0.f, 0.f);
        x.x = fmaf(a.x, activate(hv.x, act_in), b.x) + rv.x;
        x.y = fmaf(a.y, activate(hv.y, act_in), b.y) + rv.y;
      }
      buf[sc * kPairLanes + lane] = x;
    }
  };

  // Epilogue constants: this thread's strip columns inside the image, bias and post-scale of its pair.
  const int strip_x0 = cx0 + warp * SW;
  const int ncols = !cvalid ? 0 : (s.W - strip_x0 >= SW ? SW : (s.W - strip_x0 > 0 ? s.W - strip_x0 : 0));
  const int out_col = strip_x0 * s.C;  // element offset of the strip within an output row
  const float inv_ncols = ncols > 0 ? 1.f / static_cast<float>(ncols) : 0.f;
  const float2 bv = bias && cvalid ? *reinterpret_cast<const float2*>(bias + c) : make_float2(0.f, 0.f);
  const float2 pv = post && cvalid ? *reinterpret_cast<const float2*>(post + c) : make_float2(1.f, 1.f);
  PairStats st;

  float2 acc[KS][SW];
#pragma unroll
  for (int j = 0; j < KS; ++j)
#pragma unroll
    for (int ox = 0; ox < SW; ++ox) acc[j][ox] = make_float2(0.f, 0.f);

  // Rows above the image would only rotate zeros: start at row 0 at the latest.
  const int first = r0 - P > 0 ? r0 - P : 0, last = r1 + P;
  fetch(first);
  stage(first, rows);
  __syncthreads();
  for (int iy = first; iy < last; ++iy) {
    const float2* cur = rows + ((iy - first) & 1) * Cols * kPairLanes;
    float2* next = rows + ((iy - first + 1) & 1) * Cols * kPairLanes;
    if (iy + 1 < last) fetch(iy + 1);
    if (iy < s.H) {  // uniform; iy >= 0 here
      float2 x[SW + 2 * P];
#pragma unroll
      for (int j = 0; j < SW + 2 * P; ++j) x[j] = cur[(warp * SW + j) * kPairLanes + lane];
#pragma unroll
      for (int j = 0; j < KS; ++j) {
        const int ky = KS - 1 - j;  // slot j is output row iy - P + j
#pragma unroll
        for (int kx = 0; kx < KS; ++kx) {
          const float2 wv = wsm[(ky * KS + kx) * kPairLanes + lane];
#pragma unroll
          for (int ox = 0; ox < SW; ++ox) {
            acc[j][ox].x = fmaf(x[ox + kx].x, wv.x, acc[j][ox].x);
            acc[j][ox].y = fmaf(x[ox + kx].y, wv.y, acc[j][ox].y);
          }
        }
      }
    }
    const int oy = iy - P;  // slot 0: finished
    if (oy >= r0) {
      T* out = y + (image_row0 + oy) * row_elems + c;
      float2 z[SW];
#pragma unroll
      for (int ox = 0; ox < SW; ++ox) {
        z[ox].x = activate(acc[0][ox].x + bv.x, act) * pv.x;
        z[ox].y = activate(acc[0][ox].y + bv.y, act) * pv.y;
        const PairRaw<T> packed = pack_pair<T>(z[ox]);
        if (ox < ncols) *reinterpret_cast<PairRaw<T>*>(out + out_col + ox * s.C) = packed;
      }
      if (stats) {  // uniform
        // statistics of what the consumer (BatchNorm) reads: the stored value, through its activation; the row's
        // mean and M2 over the thread's columns, merged into its running ones
        float2 sum = make_float2(0.f, 0.f);
#pragma unroll
        for (int ox = 0; ox < SW; ++ox) {
          z[ox].x = activate(to_f32(from_f32<T>(z[ox].x)), stats_act);
          z[ox].y = activate(to_f32(from_f32<T>(z[ox].y)), stats_act);
          if (ox < ncols) {
            sum.x += z[ox].x;
            sum.y += z[ox].y;
          }
        }
        const float2 mean = make_float2(sum.x * inv_ncols, sum.y * inv_ncols);
        float2 m2 = make_float2(0.f, 0.f);
#pragma unroll
        for (int ox = 0; ox < SW; ++ox) {
          if (ox < ncols) {
            const float dx = z[ox].x - mean.x, dy = z[ox].y - mean.y;
            m2.x = fmaf(dx, dx, m2.x);
            m2.y = fmaf(dy, dy, m2.y);
          }
        }
        st.merge(static_cast<float>(ncols), mean, m2);
      }
    }
#pragma unroll
    for (int j = 0; j + 1 < KS; ++j)
#pragma unroll
      for (int ox = 0; ox < SW; ++ox) acc[j][ox] = acc[j + 1][ox];
#pragma unroll
    for (int ox = 0; ox < SW; ++ox) acc[KS - 1][ox] = make_float2(0.f, 0.f);
    if (iy + 1 < last) stage(iy + 1, next);
    __syncthreads();  // next is written before it is read; cur is read before the next iteration rewrites it
  }
  if (stats == nullptr) return;  // uniform across the CTA

  // The warps' partials of each channel pair, merged in warp order (deterministic); rows is free after the loop.
  float* part = reinterpret_cast<float*>(rows);  // [Warps][32 lanes][5]
  float* mine = part + (warp * kPairLanes + lane) * 5;
  mine[0] = st.n;
  mine[1] = st.mean.x;
  mine[2] = st.mean.y;
  mine[3] = st.m2.x;
  mine[4] = st.m2.y;
  __syncthreads();
  if (warp != 0 || !cvalid) return;
  PairStats total;
#pragma unroll
  for (int wp = 0; wp < Warps; ++wp) {
    const float* p = part + (wp * kPairLanes + lane) * 5;
    total.merge(p[0], make_float2(p[1], p[2]), make_float2(p[3], p[4]));
  }
  const size_t stride = static_cast<size_t>(gridDim.x) * s.C, base = static_cast<size_t>(blockIdx.x) * s.C + c;
  stats[base] = stats[base + 1] = total.n;
  stats[stride + base] = total.mean.x;
  stats[stride + base + 1] = total.mean.y;
  stats[2 * stride + base] = total.m2.x;
  stats[2 * stride + base + 1] = total.m2.y;
}

template <int KS>
size_t row_stream_smem_bytes() {
  return static_cast<size_t>(KS * KS + 2 * RowStream<KS>::Cols) * kPairLanes * sizeof(float2);
}

template <typename T, int KS, int ACT_IN = kActAny, int ACT = kActAny, int STATS_ACT = kActAny>
cudaError_t launch_forward(const DwInput& in, const void* weight, const float* bias, const float* post, int act,
                           int stats_act, void* y, float* stats, DwShape s, bool flip, cudaStream_t stream) {
  const size_t smem = row_stream_smem_bytes<KS>();
  auto kernel = dw_forward_kernel<T, KS, ACT_IN, ACT, STATS_ACT>;
  cudaError_t err = allow_dynamic_smem(kernel, smem);
  if (err != cudaSuccess) return err;
  dim3 grid(dw_forward_tiles(s), (s.C + kRowChunk - 1) / kRowChunk), block(RowStream<KS>::Threads);
  return launch_kernel(kernel, grid, block, smem, stream, in, static_cast<const T*>(weight), bias, post, act,
                       stats_act, static_cast<T*>(y), stats, s, flip, dw_forward_band_rows(s));
}

// The ConvMixer layer's depthwise half (x = [res] + BN(act(h)), q = conv(x) + bias, statistics of act(q)) gets an
// instance with its activation compiled in, for ReLU and GELU; any other combination the generic one.
template <typename T, int KS>
cudaError_t launch_for_activations(const DwInput& in, const void* weight, const float* bias, const float* post,
                                   int act, int stats_act, void* y, float* stats, DwShape s, bool flip,
                                   cudaStream_t stream) {
  const bool layer = act == kActNone && (stats == nullptr || stats_act == in.act);
  if (layer && in.act == kActGELU)
    return launch_forward<T, KS, kActGELU, kActNone, kActGELU>(in, weight, bias, post, act, stats_act, y, stats, s,
                                                               flip, stream);
  if (layer && in.act == kActReLU)
    return launch_forward<T, KS, kActReLU, kActNone, kActReLU>(in, weight, bias, post, act, stats_act, y, stats, s,
                                                               flip, stream);
  return launch_forward<T, KS>(in, weight, bias, post, act, stats_act, y, stats, s, flip, stream);
}

template <typename T>
cudaError_t launch_for_kernel_size(const DwInput& in, const void* weight, const float* bias, const float* post,
                                   int act, int stats_act, void* y, float* stats, DwShape s, bool flip,
                                   cudaStream_t stream) {
  switch (s.k) {
    case 3: return launch_for_activations<T, 3>(in, weight, bias, post, act, stats_act, y, stats, s, flip, stream);
    case 5: return launch_for_activations<T, 5>(in, weight, bias, post, act, stats_act, y, stats, s, flip, stream);
    case 7: return launch_for_activations<T, 7>(in, weight, bias, post, act, stats_act, y, stats, s, flip, stream);
    case 9: return launch_for_activations<T, 9>(in, weight, bias, post, act, stats_act, y, stats, s, flip, stream);
    default: return cudaErrorInvalidValue;
  }
}

// Column tiles of an image.
int dw_forward_col_tiles(const DwShape& s) {
  return (s.W + row_tile_width(s.k) - 1) / row_tile_width(s.k);
}

}  // namespace

int dw_forward_band_rows(const DwShape& s) {
  int sms = 0;
  if (multiprocessor_count(&sms) != cudaSuccess) sms = 0;  // unknown card: whole-image bands
  const int base = s.B * dw_forward_col_tiles(s) * ((s.C + kRowChunk - 1) / kRowChunk);
  const int want = 2 * sms;  // CTAs: two per SM, when the rows allow, so each SM has a CTA to switch to
  if (base >= want) return s.H;
  int bands = (want + base - 1) / base;
  const int most = (s.H + kMinBandRows - 1) / kMinBandRows;
  if (bands > most) bands = most;
  return (s.H + bands - 1) / bands;
}

int dw_forward_tiles(const DwShape& s) {
  const int rows = dw_forward_band_rows(s);
  return s.B * ((s.H + rows - 1) / rows) * dw_forward_col_tiles(s);
}

cudaError_t dw_forward(int dtype, const DwInput& in, const void* weight, const float* bias, const float* post_scale,
                       int act, int stats_act, void* y, float* stats, DwShape s, bool flip, cudaStream_t stream) {
  SPIN_DISPATCH_DTYPE(dtype, launch_for_kernel_size<T>(in, weight, bias, post_scale, act, stats_act, y, stats, s,
                                                       flip, stream))
}

}  // namespace spin
