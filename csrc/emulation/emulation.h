// Host emulation of the CUDA features the kernels in csrc/ use, so that the same kernel source runs on the CPU
// (built with -DSPIN_EMULATE by spin_kernels.cuda_emulation) and is tested against the float64 reference on
// machines without a GPU — the CUDA counterpart of TRITON_INTERPRET=1.
//
// Model: every CUDA thread is a host thread, each CTA's threads concurrent (so __syncthreads is a real barrier).
// A cooperative launch runs all CTAs at once (grid.sync() is a barrier over every thread). A plain launch runs its
// CTAs one after another in blockIdx order, unless a schedule is set (set_schedule(seed, jitter_us), seed != 0):
// then CTAs run in a seeded random order, up to kPlainWave of them at once, and with jitter_us > 0 every CTA
// sleeps a seeded random 0..jitter_us microseconds when it starts, after each grid.sync() and after each flag wait
// (a thread's own delay there: the CTA waits for its slowest thread at the next barrier), so the order in which
// CTAs reach shared data changes with the seed and a missing barrier, flag or fence changes the result. Each CTA
// gets its own dynamic shared memory, filled with 0xFF bytes (NaN) so a read before a write shows up in the
// result. Warp-collective instructions are emulated from their documented
// semantics (mma.sync m16n8k16 fragment layouts from the PTX ISA). Threads that return early drop out of every
// barrier, as on the GPU. The emulated device has the per-SM limits of an H100 (228 KiB shared memory, 2048
// threads, 32 CTAs) and spin_emu::set_sm_count() SMs (default 1) — enough CTAs to exercise every grid path.
//
// What it does not model: memory-model subtleties between unsynchronised threads (a missing barrier is only
// caught when it changes the result), timing, and out-of-bounds global accesses (tests guard buffers instead).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <barrier>
#include <type_traits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <tuple>

// CUDA qualifiers the host compiler must ignore. __shared__ stays undefined on purpose: kernels take shared memory
// from spin::dynamic_smem(), which the emulation can give each CTA separately.
#undef __device__
#undef __global__
#undef __host__
#undef __shared__
#undef __forceinline__
#define __device__
#define __global__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

namespace spin_emu {

struct Block;
struct Warp;

// The CUDA built-ins of the calling (emulated) thread.
struct ThreadState {
  dim3 thread_idx, block_idx, block_dim, grid_dim;
  Block* block = nullptr;
  Warp* warp = nullptr;
  std::barrier<>* grid_barrier = nullptr;
  int lane = 0;
  long cta = 0;             // linear CTA index in the launch
  uint64_t launch = 0;      // launch counter (the schedule's jitter differs per launch)
  uint32_t grid_syncs = 0;  // grid.sync() calls so far by this thread
  uint32_t flag_waits = 0;  // flag_wait_geq() calls so far by this thread
};
extern thread_local ThreadState tls;

void syncthreads();
void grid_sync();
unsigned char* block_smem();

// Inter-CTA ready counters (device_utils.cuh): an atomic add with release order, and a wait (acquire order)
// until the counter reaches target — under a seeded schedule with jitter, followed by the CTA's jitter, so the
// order in which CTAs pass a wait changes with the seed.
void flag_release_add(int* flag, int v);
void flag_wait_geq(const int* flag, int target);

// The emulation defines no cuda* runtime symbols: a CUDA build of torch loads the real libcudart, whose symbols
// would take precedence. Launchers reach the emulated device through these and the spin:: helpers instead.
const char* error_string(cudaError_t error);

// The CTA schedule (see the model above): seed 0 = blockIdx order, one CTA at a time.
void set_schedule(uint64_t seed, int jitter_us);

// Emulated device properties.
void set_sm_count(int sms);
int sm_count();
cudaError_t check_smem(size_t bytes);
cudaError_t max_ctas_per_sm(int* ctas, int threads, size_t smem);

// Runs body() as every thread of the grid (see the model above); returns cudaSuccess or the launch error.
cudaError_t run_grid(dim3 grid, dim3 block, size_t smem, bool cooperative, const std::function<void()>& body);

template <typename... P, typename... A>
cudaError_t launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, bool cooperative, A... args) {
  const std::tuple<std::decay_t<P>...> params(args...);
  return run_grid(grid, block, smem, cooperative, [&] { std::apply(kernel, params); });
}

// D += A B for one warp's m16n8k16 tile (row-major A, column-major B, fp32 accumulators), each lane passing its
// fragments in the PTX ISA layout: g = lane / 4, t = lane % 4;
//   a[0] = A[g][2t..2t+1], a[1] = A[g+8][2t..2t+1], a[2] = A[g][2t+8..2t+9], a[3] = A[g+8][2t+8..2t+9]
//   b0 = B[2t..2t+1][g], b1 = B[2t+8..2t+9][g]      (low 16 bits hold the lower index)
//   d = {D[g][2t], D[g][2t+1], D[g+8][2t], D[g+8][2t+1]}.
void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, bool bf16);

}  // namespace spin_emu

#define threadIdx (::spin_emu::tls.thread_idx)
#define blockIdx (::spin_emu::tls.block_idx)
#define blockDim (::spin_emu::tls.block_dim)
#define gridDim (::spin_emu::tls.grid_dim)
#define __syncthreads() ::spin_emu::syncthreads()

// The cooperative-groups surface the kernels use: this_grid().sync().
namespace cooperative_groups {
struct grid_group {
  void sync() const { ::spin_emu::grid_sync(); }
};
inline grid_group this_grid() { return {}; }
}  // namespace cooperative_groups
