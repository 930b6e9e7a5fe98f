// Host emulation runtime (see emulation.h): threads, barriers, per-CTA shared memory, warp collectives, and the
// few CUDA runtime calls the launchers and bindings make. Compiled only into the emulated test build.
#include "emulation.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <thread>
#include <vector>

namespace spin_emu {

thread_local ThreadState tls;

namespace {

// H100 per-SM limits.
constexpr size_t kSmemPerSm = 228 * 1024;
constexpr size_t kSmemPerCtaMax = 227 * 1024;
constexpr size_t kSmemReservedPerCta = 1024;
constexpr int kThreadsPerSm = 2048;
constexpr int kCtasPerSm = 32;

int g_sm_count = 1;

// CTA schedule (set_schedule): seed 0 = blockIdx order, one CTA at a time.
constexpr long kPlainWave = 4;  // CTAs of a plain launch in flight at once under a seeded schedule
uint64_t g_schedule_seed = 0;
int g_jitter_us = 0;
std::atomic<uint64_t> g_launches{0};

uint64_t mix(uint64_t x) {  // splitmix64: a well-spread hash of the schedule coordinates
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Every thread of a CTA computes the same delay at the same point, so the CTA moves on as one.
void jitter(uint32_t point) {
  if (g_schedule_seed == 0 || g_jitter_us <= 0) return;
  const uint64_t h = mix(g_schedule_seed ^ mix(tls.launch) ^ mix(static_cast<uint64_t>(tls.cta) << 20 | point));
  std::this_thread::sleep_for(std::chrono::microseconds(h % static_cast<uint64_t>(g_jitter_us + 1)));
}

}  // namespace

void set_schedule(uint64_t seed, int jitter_us) {
  g_schedule_seed = seed;
  g_jitter_us = std::max(0, jitter_us);
}

struct Warp {
  explicit Warp(int lanes) : barrier(lanes) {}
  std::barrier<> barrier;
  uint32_t scratch[32][6] = {};
};

struct Block {
  Block(int threads, size_t smem_bytes) : barrier(threads), smem(smem_bytes + 16, 0xFF) {
    for (int w = 0; w * 32 < threads; ++w) warps.push_back(std::make_unique<Warp>(std::min(32, threads - w * 32)));
  }
  std::barrier<> barrier;
  std::vector<unsigned char> smem;
  std::vector<std::unique_ptr<Warp>> warps;
};

void syncthreads() { tls.block->barrier.arrive_and_wait(); }

void grid_sync() {
  // The GPU raises an error for grid.sync() outside a cooperative launch; here it would deadlock, so abort loudly.
  if (tls.grid_barrier == nullptr) std::abort();
  tls.grid_barrier->arrive_and_wait();
  jitter(++tls.grid_syncs);
}

void flag_release_add(int* flag, int v) { std::atomic_ref<int>(*flag).fetch_add(v, std::memory_order_release); }

void flag_wait_geq(const int* flag, int target) {
  // atomic_ref needs a non-const object; the wait only loads
  std::atomic_ref<int> counter(*const_cast<int*>(flag));
  // a target no CTA will ever reach (a kernel bug) fails loudly instead of hanging the test run
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(300);
  while (counter.load(std::memory_order_acquire) < target) {
    if (std::chrono::steady_clock::now() > deadline) {
      std::fprintf(stderr, "spin_emu: CTA %ld waited 300 s for a ready flag to reach %d (it holds %d): deadlock\n",
                   tls.cta, target, counter.load());
      std::abort();
    }
    std::this_thread::yield();
  }
  jitter(0x10000u + ++tls.flag_waits);  // points above any grid-sync count: a different delay
}

unsigned char* block_smem() {
  auto p = reinterpret_cast<uintptr_t>(tls.block->smem.data());
  return reinterpret_cast<unsigned char*>((p + 15) & ~uintptr_t{15});
}

void set_sm_count(int sms) { g_sm_count = std::max(1, sms); }
int sm_count() { return g_sm_count; }

cudaError_t check_smem(size_t bytes) { return bytes <= kSmemPerCtaMax ? cudaSuccess : cudaErrorInvalidValue; }

cudaError_t max_ctas_per_sm(int* ctas, int threads, size_t smem) {
  if (threads <= 0 || threads > 1024 || smem > kSmemPerCtaMax) {
    *ctas = 0;
    return cudaSuccess;
  }
  *ctas = std::min({kCtasPerSm, kThreadsPerSm / threads, static_cast<int>(kSmemPerSm / (smem + kSmemReservedPerCta))});
  return cudaSuccess;
}

cudaError_t run_grid(dim3 grid, dim3 block, size_t smem, bool cooperative, const std::function<void()>& body) {
  const int threads = static_cast<int>(block.x * block.y * block.z);
  const long ctas = static_cast<long>(grid.x) * grid.y * grid.z;
  if (threads <= 0 || threads > 1024 || ctas <= 0 || check_smem(smem) != cudaSuccess) {
    return cudaErrorInvalidConfiguration;
  }
  if (cooperative) {
    int per_sm = 0;
    max_ctas_per_sm(&per_sm, threads, smem);
    if (ctas > static_cast<long>(per_sm) * g_sm_count) return cudaErrorCooperativeLaunchTooLarge;
  }
  std::unique_ptr<std::barrier<>> grid_barrier;
  if (cooperative) grid_barrier = std::make_unique<std::barrier<>>(ctas * threads);

  const uint64_t launch_id = g_launches.fetch_add(1);
  auto run_thread = [&](Block* b, long cta, dim3 bidx, int tid) {
    tls.thread_idx = dim3(tid % block.x, (tid / block.x) % block.y, tid / (block.x * block.y));
    tls.block_idx = bidx;
    tls.block_dim = block;
    tls.grid_dim = grid;
    tls.block = b;
    tls.warp = b->warps[tid / 32].get();
    tls.lane = tid % 32;
    tls.grid_barrier = grid_barrier.get();
    tls.cta = cta;
    tls.launch = launch_id;
    jitter(0);
    body();
    // A returned thread no longer takes part in any barrier (as on the GPU).
    b->barrier.arrive_and_drop();
    tls.warp->barrier.arrive_and_drop();
    if (tls.grid_barrier) tls.grid_barrier->arrive_and_drop();
    tls = ThreadState{};
  };
  auto block_index = [&](long i) {
    return dim3(i % grid.x, (i / grid.x) % grid.y, i / (static_cast<long>(grid.x) * grid.y));
  };
  // Cooperative: every CTA at once. Plain: one CTA at a time in blockIdx order, or under a seeded schedule a
  // random order, kPlainWave CTAs at a time.
  std::vector<long> order(ctas);
  std::iota(order.begin(), order.end(), 0L);
  if (g_schedule_seed != 0) std::shuffle(order.begin(), order.end(), std::mt19937_64(mix(g_schedule_seed ^ launch_id)));
  const long wave = cooperative ? ctas : (g_schedule_seed != 0 ? std::min(ctas, kPlainWave) : 1);
  for (long first = 0; first < ctas; first += wave) {
    std::vector<std::unique_ptr<Block>> blocks;
    std::vector<std::thread> pool;
    for (long i = first; i < std::min(ctas, first + wave); ++i) {
      blocks.push_back(std::make_unique<Block>(threads, smem));
      for (int t = 0; t < threads; ++t) {
        pool.emplace_back(run_thread, blocks.back().get(), order[i], block_index(order[i]), t);
      }
    }
    for (auto& th : pool) th.join();
  }
  return cudaSuccess;
}

namespace {

float element(uint32_t reg, int half, bool bf16) {
  const auto bits = static_cast<uint16_t>(half ? reg >> 16 : reg & 0xFFFFu);
  if (bf16) {
    const uint32_t f = static_cast<uint32_t>(bits) << 16;
    float v;
    std::memcpy(&v, &f, sizeof v);
    return v;
  }
  __half_raw raw;
  raw.x = bits;
  return __half2float(__half(raw));
}

}  // namespace

void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, bool bf16) {
  Warp& w = *tls.warp;
  const int lane = tls.lane;
  for (int i = 0; i < 4; ++i) w.scratch[lane][i] = a[i];
  w.scratch[lane][4] = b0;
  w.scratch[lane][5] = b1;
  w.barrier.arrive_and_wait();
  float A[16][16], B[16][8];
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, t = l % 4;
    for (int h = 0; h < 2; ++h) {
      A[g][2 * t + h] = element(w.scratch[l][0], h, bf16);
      A[g + 8][2 * t + h] = element(w.scratch[l][1], h, bf16);
      A[g][2 * t + 8 + h] = element(w.scratch[l][2], h, bf16);
      A[g + 8][2 * t + 8 + h] = element(w.scratch[l][3], h, bf16);
      B[2 * t + h][g] = element(w.scratch[l][4], h, bf16);
      B[2 * t + 8 + h][g] = element(w.scratch[l][5], h, bf16);
    }
  }
  w.barrier.arrive_and_wait();  // every lane has read the scratch before any lane's next mma overwrites it
  const int g = lane / 4, t = lane % 4;
  for (int i = 0; i < 4; ++i) {
    const int row = g + (i / 2) * 8, col = 2 * t + i % 2;
    float acc = d[i];
    for (int k = 0; k < 16; ++k) acc += A[row][k] * B[k][col];
    d[i] = acc;
  }
}

const char* error_string(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error (emulated)";
    case cudaErrorInvalidValue: return "invalid argument (emulated)";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument (emulated)";
    case cudaErrorCooperativeLaunchTooLarge: return "too many blocks in cooperative launch (emulated)";
    default: return "error (emulated)";
  }
}

}  // namespace spin_emu
