// The weights-resident shared run (inference): one cooperative launch runs every layer of a ConvMixer run whose
// layers share the pointwise weight W, keeping each CTA's slice of W in shared memory for the whole run — or
// several consecutive runs (a whole trunk), reloading the slice at each run boundary.
#pragma once
#include "runtime.h"

#include <cstdint>

namespace spin {

// Most runs one launch covers (the per-run pointers travel in the kernel's parameter block).
constexpr int kMaxRuns = 64;

struct SharedRunArgs {
  void* x[2];             // [M, C] ping-pong activations (M = B*H*W, channels-last): layer l reads x[l % 2] and
                          // writes x[(l + 1) % 2]; x[0] holds the input, x[num_layers % 2] the output
  void* u[2];             // [M, C] scratch: layer l's residual stream after the depthwise half, in u[l % 2]
  int* flags;             // [shared_run_flag_count(M, C)] zeroed before the launch: the tiles' ready counters
  const void* w[kMaxRuns];        // per run: [C, C] shared pointwise weight (out x in), same dtype as x
  const float* w_bias[kMaxRuns];  // per run: [C] shared pointwise bias
  int run_start[kMaxRuns + 1];    // run r covers layers [run_start[r], run_start[r + 1])
  int num_runs;
  const float* dw_weight; // [L, k*k, C] per-layer depthwise filters (fp32), tap-major: a warp reads a tap of
                          // 32 consecutive channels in one coalesced load
  const float* dw_bias;   // [L, C]
  const float* s1;        // [L, C] folded eval-mode BN1:  BN1(v) = s1 * v + t1
  const float* t1;        // [L, C]
  const float* s2;        // [L, C] folded eval-mode BN2
  const float* t2;        // [L, C]
  int num_layers, B, H, W, C, k;
  int act;                // 1 = ReLU, 2 = GELU
  bool spin_residual;     // SPIN's layer: x' = u + BN2(act(PW u))
};

// Largest depthwise kernel size (odd sizes 1..9; each has its own compiled instance).
constexpr int kMaxKernelSize = 9;

// Channels of W's output dimension each CTA keeps resident (C must be a multiple of this).
constexpr int kSliceN = 64;

// Ready counters one launch needs for M rows and C channels (per 16-row tile: one for u, one per W slice for x).
size_t shared_run_flag_count(int64_t M, int C);

// Shared memory per CTA for channel count C (the resident slice with padded rows, and 12 KiB of split-K partials).
size_t shared_run_smem_bytes(int C);

// Launches cooperatively with as many CTAs as can be co-resident (occupancy API); returns
// cudaErrorCooperativeLaunchTooLarge / cudaErrorInvalidValue for shapes it does not support.
// dtype: 1 = float16, 2 = bfloat16. grid_ctas (out, optional): the grid size used.
cudaError_t shared_run_forward(int dtype, const SharedRunArgs& args, cudaStream_t stream, int* grid_ctas);

}  // namespace spin
