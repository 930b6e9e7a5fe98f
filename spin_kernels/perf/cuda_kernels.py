"""The CUDA C++ kernels of ``csrc/`` in the machine-code cost model: launches, loop descriptors, costs.

``backend="cuda"`` runs the depthwise half of each ConvMixer layer on csrc/depthwise_conv.cu (training: one forward
launch per layer; backward: backward-data, weight-gradient partials and their reduction per layer) and, in eval at
small batch, the whole trunk in ONE cooperative launch of csrc/shared_run.cu (weights resident in shared memory,
two grid-wide barriers per layer). This module states, without a GPU:

* :func:`convmixer_cuda_launches`: which kernels those are at a shape, with the grid, block and dynamic shared
  memory the C++ launchers compute (their code mirrored, function by function) and the compulsory HBM bytes;
* the loop descriptors (:data:`CUDA_MODELS`): each kernel's SASS loops in address order, tied to the source line
  they come from, with trip counts read from the .cu source and the SASS (unrolling, specialised copies);
* :func:`cuda_launch_cost`: the bounds / estimate / floor of a launch (:mod:`.cost_model`, as
  :func:`.cost_report.launch_cost` does for Triton), the ready-flag hops of a persistent launch added as latency;
* :func:`persistent_critical_path`: the dependent chain of the persistent trunk — flag hops between CTAs and the
  serially dependent global round trips of the busiest CTA's warps — as a latency lower bound;
* :func:`cuda_shape_costs`: the rows and totals :func:`.cost_report.cost_shape` adds with ``cuda=True``.

Trip counts follow :mod:`.kernel_models`: *executions of the loop body per execution of the enclosing code*
(per CTA for a top-level loop), averaged over the warps of the launch (the unit the cost model counts; a warp runs
as many iterations as its busiest lane). A loop only some warps enter counts their share. The spin-wait loops of a
ready flag get 1 (one poll): the wait for the producer is the launch's ``flag_hops`` x an L2 round trip.

The descriptors cover the 16-bit instances (``__nv_bfloat16``, ``__half``) only: the fp32 instances unroll
differently (other loop counts), and neither the ConvMixer target shapes nor the persistent kernel use them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cache
from types import SimpleNamespace

from . import cost_model, sass
from .kernel_models import KernelModel, LoopSpec, cdiv
from .machine_code import (
    demangle,
    find_extension_so,
    parse_resource_usage,
    run_tool,
    theoretical_occupancy,
    triton_nvidia_bin,
)
from .roofline import ARCHS
from .targets import (
    IMG_SIZE,
    PHASES,
    TARGET_SHAPES,
    assign_ids,
    phase_total,
    train_step,
)

# ------------------------------------------------------------------------------------------------ csrc constants
# csrc/depthwise_conv.h
TILE_H = TILE_W = 8            # kTileH, kTileW: output pixels of one CTA
THREADS_C = 8                  # kThreadsC: threads along C, 16 bytes of channels each
SPLIT_W = 4                    # kSplitW: column groups of a tile row
CTA_THREADS = THREADS_C * TILE_H * SPLIT_W   # kCtaThreads = 256
GROUPS = TILE_H * SPLIT_W      # kGroups (depthwise_conv.cu): thread partials per channel vector = 32
MAX_TAPS_PER_THREAD = cdiv(81, GROUPS)       # kMaxTapsPerThread = 3
# csrc/dw_row_stream.cu (the forward)
ROW_CHUNK = 64                 # kRowChunk: channels of a CTA, a channel pair per lane
MIN_BAND_ROWS = 4              # kMinBandRows
ACT_CODE = {"none": 0, "relu": 1, "gelu": 2}   # depthwise_conv.h Act
# csrc/shared_run.h / .cu
SLICE_N = 64                   # kSliceN: output channels of W one CTA keeps resident
MAX_RUNS = 64                  # kMaxRuns: runs one cooperative launch covers
SR_WARPS = 4                   # kWarps
SR_THREADS = SR_WARPS * 32     # kThreads = 128
K_STEPS = 12                   # kKSteps: k-steps of A fragments loaded together
W_LOAD_BATCH = 16              # kWLoadBatch: 16-byte W vectors each thread has in flight
ROW_PAD = 8                    # kRowPad
SR_TILE_ROWS = 16              # kTileRows: rows of a row tile, the unit of the ready flags
SHARED_N_TILES = SLICE_N // 8 - SLICE_N // 8 // SR_WARPS   # kSharedNTiles = 6
# spin_kernels/cuda.py, spin_kernels/ops/convmixer_cuda.py
WGRAD_PARTIAL_CTAS = 264       # dwconv_backward_weight's default partial_ctas (2 per SM of an H100)
PERSISTENT_MAX_BATCH = 16      # convmixer_cuda.MAX_BATCH

_ELEM = {"bf16": 2, "fp16": 2}
_CUDA_TYPE = {"bf16": "__nv_bfloat16", "fp16": "__half"}
_SHORT_TYPE = {"__nv_bfloat16": "bf16", "__half": "fp16", "float": "fp32"}


# ------------------------------------------------------------------------------------------------ helpers
def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def warp_iterations(n_items: int, stride: int, first_threads) -> list[int]:
    """Iterations each warp runs of ``for (i = t; i < n_items; i += stride)``, ``t`` its thread's index: the
    count of the warp's first lane (its busiest), for each warp's first thread index in ``first_threads``."""
    return [cdiv(n_items - t, stride) if n_items > t else 0 for t in first_threads]


def _cta_warps(threads: int = CTA_THREADS) -> range:
    return range(0, threads, 32)


def _stage_counts(halo: int) -> list[int]:
    # stage_tile: for (i = tid; i < IH * IW * kThreadsC; i += nthreads), over the 256 threads of a CTA
    return warp_iterations((TILE_H + 2 * halo) * (TILE_W + 2 * halo) * THREADS_C, CTA_THREADS, _cta_warps())


def _filter_counts(a) -> list[int]:
    # conv_tile: for (i = tid; i < kk * CB; i += kCtaThreads)
    return warp_iterations(a.k * a.k * a.CB, CTA_THREADS, _cta_warps())


def _rem4(counts) -> float:
    """ptxas splits a runtime-count loop into a remainder loop (n % 4 trips, first) and a 4x unrolled one."""
    return _mean(n % 4 for n in counts)


def _main4(counts) -> float:
    return _mean(n // 4 for n in counts)


def wgrad_row_parts(k: int) -> int:
    """``wgrad_row_parts`` (csrc/depthwise_conv.cu): row parts per tap, kGroups / kk clamped to 1 .. kTileH."""
    return min(max(GROUPS // (k * k), 1), TILE_H)


def _wgrad_rows(a) -> int:
    """Tile rows of the busiest row part of dw_wgrad_partial_kernel."""
    return cdiv(TILE_H, wgrad_row_parts(a.k))


def _warps_with_items(a, ti: int) -> int:
    """Warps of dw_wgrad_partial_kernel that run item slot ``ti`` (w = grp + ti * kGroups < kk x parts): warp w
    holds the thread groups 4w .. 4w+3 (grp = tid / kThreadsC, 32 threads a warp), and runs the slot if its first
    does."""
    return sum(1 for w in range(CTA_THREADS // 32) if 4 * w + ti * GROUPS < a.k * a.k * wgrad_row_parts(a.k))


def _reduce_active(a) -> float:
    """Share of dw_wgrad_reduce_kernel's warps with a thread below (kk + 1) * C (the others exit at once)."""
    n = (a.k * a.k + 1) * a.C
    return _mean(1 if t < n else 0 for t in range(0, a.ctas * 256, 32))


def _reduce_unrolled(a) -> tuple[float, float, float]:
    """Trips of the three loops ptxas made of ``for (p = 0; p < partial_ctas; ++p)`` (SASS of
    dw_wgrad_reduce_kernel): P - P % 4 iterations go by 16 (loop 0, while more than 12 remain), then one
    straight-line block of 8 (when more than 4 remain), then by 4 (loop 1); P % 4 one at a time (loop 2)."""
    p = a.P
    m4 = p - p % 4
    by16 = m4 // 16
    rest = m4 % 16
    if rest > 4:
        rest -= 8
    return by16, rest // 4, p % 4


def _sr_w_slice_counts(C: int) -> list[int]:
    """Iterations of each warp of load_w_slice: 64 x C / 8 16-byte vectors, kThreads x kWLoadBatch per step."""
    return warp_iterations(SLICE_N * C // 8, SR_THREADS * W_LOAD_BATCH, _cta_warps(SR_THREADS))


_SR_TILES = "for (int tile = group; tile < row_tiles; tile += groups)"
_SR_POLL = "for (;;)"   # flag_wait_geq's spin loop (csrc/device_utils.cuh)


def _sr_tiles_per_cta(a) -> float:
    """Row tiles per CTA (both halves loop over the same tiles): tiles / CTAs per slice."""
    return cdiv(a.M, SR_TILE_ROWS) / (a.ctas // (a.C // SLICE_N))


def _sr_tap_groups(k: int) -> int:
    """depthwise_half's groups of tap rows loaded together (kRows = k up to 7, else 3)."""
    return 1 if k <= 7 else k // 3


def _sr_kstep_trips(a) -> list[int]:
    """k0-loop trips of each warp of pointwise_half: warp w multiplies k-steps [w K/4, (w+1) K/4) (split-K),
    kKSteps at a time."""
    ks = a.C // 16
    return [cdiv((w + 1) * ks // SR_WARPS - w * ks // SR_WARPS, K_STEPS) for w in range(SR_WARPS)]


def row_tile_width(k: int) -> int:
    """``row_tile_width`` (csrc/dw_row_stream.cu): output columns of a forward CTA."""
    return 16 if k <= 3 else 32


def strip_width(k: int) -> int:
    """``strip_width``: output columns of a thread's strip."""
    return 8 if k <= 3 else 4


def row_stream_threads(k: int) -> int:
    """``RowStream<KS>::Threads``: one warp per strip of the tile."""
    return 32 * (row_tile_width(k) // strip_width(k))


def row_stream_smem_bytes(k: int) -> int:
    """``row_stream_smem_bytes<KS>``: the k x k taps and two staged rows (tile + 2P halo columns), float2 per
    lane."""
    return (k * k + 2 * (row_tile_width(k) + 2 * (k // 2))) * 32 * 8


def dw_forward_band_rows(B: int, H: int, W: int, C: int, k: int, sm_count: int) -> int:
    """``dw_forward_band_rows``: the whole image, unless the CTAs would not give each SM two; then at least 4."""
    base = B * cdiv(W, row_tile_width(k)) * cdiv(C, ROW_CHUNK)
    want = 2 * sm_count
    if base >= want:
        return H
    bands = min(cdiv(want, base), cdiv(H, MIN_BAND_ROWS))
    return cdiv(H, bands)


def dw_forward_tiles(B: int, H: int, W: int, C: int, k: int, sm_count: int) -> int:
    """``dw_forward_tiles``: row bands x column tiles of the batch (the forward's grid.x, its statistics' rows)."""
    return B * cdiv(H, dw_forward_band_rows(B, H, W, C, k, sm_count)) * cdiv(W, row_tile_width(k))


def dw_forward_name(cuda_type: str, k: int, act: str) -> str:
    """The dw_forward_kernel instance backend="cuda" runs for a ConvMixer layer (the activation compiled in as
    act_in and stats_act, none as the output's: ``launch_for_activations``)."""
    a = ACT_CODE[act]
    return f"dw_forward_kernel<{cuda_type}, {k}, {a}, 0, {a}>"


def _rs_filter_counts(a) -> list[int]:
    # dw_forward_kernel: for (i = threadIdx.x; i < KK * kPairLanes; i += G::Threads)
    return warp_iterations(a.k * a.k * 32, a.threads, _cta_warps(a.threads))


def _rs_rows(a) -> float:
    """Trips of the row stream per CTA, averaged over the bands: rows [max(r0 - P, 0), r1 + P)."""
    p, rows = a.k // 2, a.band_rows
    starts = range(0, a.H, rows)
    return _mean(min(r0 + rows, a.H) + p - max(r0 - p, 0) for r0 in starts)


# ------------------------------------------------------------------------------------------------ descriptors
# Loop sites: the source line each SASS loop comes from (a " [...]" suffix says which of several SASS loops one
# source loop became). tests/perf/test_cuda_cost.py checks that each line is in csrc/ and that the number of loops
# matches the SASS at every ConvMixer target shape.
_W_STAGE = "for (int i = tid; i < kk * CB; i += kCtaThreads)"
_RS_W_STAGE = "for (int i = threadIdx.x; i < KK * kPairLanes; i += G::Threads)"
_STAGE = "for (int i = tid; i < IH * IW * kThreadsC; i += nthreads)"
_KY = "for (int ky = 0; ky < k; ++ky)"
_PY = "for (int py = py_begin; py < py_end; ++py)"
_KX = "for (int kx = 0; kx < k; ++kx)"

DW_FORWARD = KernelModel(
    loops=(
        # the filter staging, specialised by ptxas on `flip` (a kernel argument): the flip copy first
        LoopSpec(_RS_W_STAGE + " [flip: remainder of the 4x unroll]", lambda a: a.flip * _rem4(_rs_filter_counts(a))),
        LoopSpec(_RS_W_STAGE + " [flip: 4x unrolled]", lambda a: a.flip * _main4(_rs_filter_counts(a))),
        LoopSpec(_RS_W_STAGE + " [no flip: remainder of the 4x unroll]",
                 lambda a: (1 - a.flip) * _rem4(_rs_filter_counts(a))),
        LoopSpec(_RS_W_STAGE + " [no flip: 4x unrolled]", lambda a: (1 - a.flip) * _main4(_rs_filter_counts(a))),
        # the row stream: the band's rows and P halo rows either side (those above the image skipped)
        LoopSpec("for (int iy = first; iy < last; ++iy)", _rs_rows),
    ),
    flops=lambda a: 2.0 * a.M * a.C * a.k * a.k,
    note="row stream (csrc/dw_row_stream.cu): a band of rows x a 16- / 32-column tile x 64 channels per CTA; each "
         "input row rebuilt once, staged, k x k FMAs into a ring of k accumulator rows")

DW_BACKWARD_DATA = KernelModel(
    loops=(
        # flip is the constant true here: one copy of the filter staging
        LoopSpec(_W_STAGE + " [remainder of the 4x unroll]", lambda a: _rem4(_filter_counts(a))),
        LoopSpec(_W_STAGE + " [4x unrolled]", lambda a: _main4(_filter_counts(a))),
        LoopSpec(_STAGE + " [GradLoader, halo k/2]", lambda a: _mean(_stage_counts(a.k // 2))),
        LoopSpec(_KY, lambda a: a.k),
        LoopSpec(_KX + " [4x unrolled]", lambda a: a.k // 4),
        # reduce_groups_to's loop over the 32 groups is fully unrolled (no SASS loop)
    ),
    flops=lambda a: 2.0 * a.M * a.C * a.k * a.k,
    note="transposed conv of dq rebuilt on load (BN + act backward), dx / dhz epilogue, per-tile sums")

DW_WGRAD_PARTIAL = KernelModel(
    loops=(
        LoopSpec("for (int t_id = blockIdx.x; t_id < num_tiles; t_id += gridDim.x)",
                 lambda a: a.tiles / a.P),          # P = min(264, tiles) CTAs share the tiles: tiles / P on average
        LoopSpec(_STAGE + " [x: InputLoader, halo k/2]", lambda a: _mean(_stage_counts(a.k // 2))),
        LoopSpec(_STAGE + " [dq: GradLoader, halo 0]", lambda a: _mean(_stage_counts(0))),
        # the item slots ti = 0, 1, 2 (unrolled), each with its `#pragma unroll 1` row loop behind `if (w < items)`
        # over its row part's rows (the busiest part's: ceil(8 / parts))
        LoopSpec(_PY + " [item slot 0]", lambda a: _wgrad_rows(a) * _warps_with_items(a, 0) / (CTA_THREADS // 32)),
        LoopSpec(_PY + " [item slot 1]", lambda a: _wgrad_rows(a) * _warps_with_items(a, 1) / (CTA_THREADS // 32)),
        LoopSpec(_PY + " [item slot 2]", lambda a: _wgrad_rows(a) * _warps_with_items(a, 2) / (CTA_THREADS // 32)),
        # dbias over 64 pixels by the threads of group 0 (warp 0): ptxas peeled 4 pixels and unrolled by 20 (3 trips)
        LoopSpec("for (int pix = 0; pix < kTileH * kTileW; ++pix)",
                 lambda a: (TILE_H * TILE_W - 4) / 20 / (CTA_THREADS // 32)),
    ),
    flops=lambda a: 2.0 * a.M * a.C * a.k * a.k + a.M * a.C,
    note="P CTAs per 64-channel chunk stride over the tiles; fp32 partials [P][kk+1][C]")

DW_WGRAD_REDUCE = KernelModel(
    loops=(
        LoopSpec("for (int p = 0; p < partial_ctas; ++p) [16x unrolled]",
                 lambda a: _reduce_unrolled(a)[0] * _reduce_active(a)),
        LoopSpec("for (int p = 0; p < partial_ctas; ++p) [4x unrolled]",
                 lambda a: _reduce_unrolled(a)[1] * _reduce_active(a)),
        LoopSpec("for (int p = 0; p < partial_ctas; ++p) [remainder]",
                 lambda a: _reduce_unrolled(a)[2] * _reduce_active(a)),
    ),
    flops=lambda a: float(a.P * (a.k * a.k + 1) * a.C),
    note="one thread per (tap or bias, channel): sums P partials in CTA order")

SHARED_RUN = KernelModel(
    loops=(
        LoopSpec("for (int run = 0; run < p.num_runs; ++run)", lambda a: a.runs),
        # the W slice, kWLoadBatch 16-byte vectors per thread per iteration
        LoopSpec("for (unsigned first = threadIdx.x; first < total; first += kThreads * kWLoadBatch)",
                 lambda a: _mean(_sr_w_slice_counts(a.C))),
        LoopSpec("for (int layer = p.run_start[run]; layer < p.run_start[run + 1]; ++layer)",
                 lambda a: a.depth / a.runs),
        LoopSpec(_SR_TILES + " [depthwise half]", _sr_tiles_per_cta),
        # the x tiles of the halo, one per thread (at most 2 * ceil(4 * 33 / 16) + 1 = 19 < 128 at 224 px)
        LoopSpec("for (int nb = lo + static_cast<int>(threadIdx.x); nb <= hi; nb += kThreads)", lambda a: 1),
        LoopSpec(_SR_POLL + " [x_ready]", lambda a: 1),
        # 16 rows x 32 channel pairs over 128 threads
        LoopSpec("for (int i = threadIdx.x; i < kTileRows * kSlicePairs; i += kThreads)",
                 lambda a: SR_TILE_ROWS * SLICE_N // 2 // SR_THREADS),
        # the taps unroll completely (KS is a template argument); at k = 9 in three groups of three tap rows
        LoopSpec("for (int ky0 = 0; ky0 < KS; ky0 += kRows)",
                 lambda a: _sr_tap_groups(a.k) if _sr_tap_groups(a.k) > 1 else None),
        LoopSpec(_SR_TILES + " [pointwise half]", _sr_tiles_per_cta),
        LoopSpec(_SR_POLL + " [u_ready]", lambda a: 1),
        LoopSpec("for (int k0 = k_begin; k0 < k_end; k0 += 16 * kKSteps)", lambda a: _mean(_sr_kstep_trips(a))),
    ),
    # the floor's work: the pointwise GEMMs on tensor cores (the depthwise FLOPs, ~k^2 / C of them, run on the CUDA
    # cores alongside and are left out: a floor may ignore work that can overlap)
    flops=lambda a: 2.0 * a.M * a.C * a.C * a.depth, unit="tensor",
    note="persistent launch: the whole trunk; the spin-wait loops of the ready flags get trips 1 (a wait's cost is "
         "the launch's flag_hops x an L2 round trip, added as latency)")

CUDA_MODELS: dict[str, KernelModel] = {
    "dw_forward_kernel": DW_FORWARD,
    "dw_backward_data_kernel": DW_BACKWARD_DATA,
    "dw_wgrad_partial_kernel": DW_WGRAD_PARTIAL,
    "dw_wgrad_reduce_kernel": DW_WGRAD_REDUCE,
    "shared_run_kernel": SHARED_RUN,
}
"""Descriptors by kernel template name (the 16-bit instances)."""

# the loops of shared_run_kernel the critical path names (indices into SHARED_RUN.loops = SASS loops)
SR_LOOP = {"runs": 0, "w_slice": 1, "layers": 2, "dw_tiles": 3, "dw_halo": 4, "poll_x": 5, "dw_pixels": 6,
           "dw_tap_groups": 7, "pw_tiles": 8, "poll_u": 9, "pw_k0": 10}
SR_FLAG_HOPS_PER_LAYER = 2   # u_ready (depthwise -> pointwise) and x_ready (pointwise -> next depthwise)


# ------------------------------------------------------------------------------------------------ launches
@dataclass
class CudaLaunch:
    """One launch of a CUDA kernel of the extension, as the C++ launcher would make it."""

    kernel: str                  # readable name, e.g. "dw_forward_kernel<__nv_bfloat16>"
    symbol: str                  # mangled name in the SASS ("" when the extension is not built here)
    grid: tuple                  # (x, y, z)
    threads: int                 # block size
    dynamic_smem: int            # bytes
    args: dict                   # the values the descriptor's formulas read
    phase: str                   # "fwd" (training forward), "bwd", "eval"
    hbm_bytes: int               # compulsory: every distinct buffer read or written, once
    model: KernelModel
    flag_hops: int = 0           # CTA-to-CTA ready-flag hops on the launch's critical path
    scope: str = "run"           # "run": once per shared run (x runs in the trunk); "trunk": once per forward
    flags: tuple = field(default_factory=tuple)   # switched-on options, for the label

    @property
    def ctas(self) -> int:
        """CTAs in the grid."""
        return self.grid[0] * self.grid[1] * self.grid[2]

    @property
    def warps(self) -> int:
        """Warps per CTA."""
        return self.threads // 32

    @property
    def template(self) -> str:
        """The kernel's name without template arguments (the key of :data:`CUDA_MODELS`)."""
        return self.kernel.split("<")[0]

    @property
    def label(self) -> str:
        """A readable name of the variant: ``cuda:dw_forward<bf16>[k3,res,stats]``."""
        name = self.template.removesuffix("_kernel")
        targ = self.kernel[len(self.template):].strip("<>")
        first, *rest = targ.split(", ")   # the storage type, then any integer arguments (a kernel size)
        short = f"{name}<{', '.join([_SHORT_TYPE.get(first, first), *rest])}>" if targ else name
        return f"cuda:{short}[{','.join(self.flags)}]"

    def namespace(self) -> SimpleNamespace:
        """The descriptor's view of the launch: its args plus grid, ctas and threads."""
        return SimpleNamespace(**self.args, grid=self.grid, ctas=self.ctas, threads=self.threads)


def dw_num_tiles(B: int, H: int, W: int) -> int:
    """csrc/depthwise_conv.cu ``dw_num_tiles``: spatial 8x8 tiles of the batch."""
    return B * cdiv(H, TILE_H) * cdiv(W, TILE_W)


def chunk_channels(elem_bytes: int) -> int:
    """``chunk_channels<T>()``: channels of one CTA, kThreadsC x 16 bytes."""
    return THREADS_C * (16 // elem_bytes)


def conv_smem_bytes(k: int, elem_bytes: int) -> int:
    """``conv_smem_bytes<T>`` (the backward-data kernel): the fp32 operand tile with halo plus the filter taps, or
    the epilogue partials (2V floats per thread) if larger."""
    ih = iw = TILE_H + k - 1
    conv = (ih * iw + k * k) * chunk_channels(elem_bytes) * 4
    partials = CTA_THREADS * 2 * (16 // elem_bytes) * 4
    return max(conv, partials)


def wgrad_smem_bytes(k: int, elem_bytes: int) -> int:
    """``launch_wgrad``: the x tile with halo plus the 8x8 dq tile, fp32."""
    ih = iw = TILE_H + k - 1
    return (ih * iw + TILE_H * TILE_W) * chunk_channels(elem_bytes) * 4


def shared_run_smem_bytes(C: int) -> int:
    """csrc/shared_run.cu ``shared_run_smem_bytes``: the resident W slice (padded rows) and 12 KiB of split-K
    partials."""
    return SLICE_N * (C + ROW_PAD) * 2 + SR_WARPS * SHARED_N_TILES * 32 * 4 * 4


def shared_run_name(cuda_type: str, k: int) -> str:
    """The readable name of the shared_run_kernel instance for a storage type and kernel size."""
    return f"shared_run_kernel<{cuda_type}, {k}>"


def persistent_reason(batch: int, dim: int, kernel_size: int, dtype: str) -> str | None:
    """Why the persistent kernel does not take this eval trunk (spin_kernels.ops.convmixer_cuda._unsupported and
    the C++ checks of shared_run_forward), or None when it does. Co-residency is checked by
    :func:`persistent_grid`."""
    if batch > PERSISTENT_MAX_BATCH:
        return f"batch {batch} > {PERSISTENT_MAX_BATCH}"
    if dim % SLICE_N:
        return f"dim {dim} is not a multiple of {SLICE_N}"
    if kernel_size > 9 or kernel_size % 2 == 0:
        return f"kernel_size {kernel_size} (odd, at most 9)"
    if dtype not in _CUDA_TYPE:
        return f"dtype {dtype} (the kernel computes in fp16 / bf16)"
    return None


def persistent_grid(C: int, M: int, sm_count: int, registers: int = 0, static_smem: int = 0) -> int:
    """CTAs of the cooperative launch, as ``launch`` in csrc/shared_run.cu computes them: SMs x co-resident CTAs
    per SM (the occupancy calculator, here :func:`.machine_code.theoretical_occupancy` with the kernel's registers
    and shared memory) in whole row groups of C / 64 slices, at most one group per 16-row tile of the M rows; 0
    when fewer than one per slice fit (cudaErrorCooperativeLaunchTooLarge: the Python side then takes the
    per-layer path)."""
    smem = shared_run_smem_bytes(C) + static_smem
    per_sm = theoretical_occupancy(registers, smem, SR_WARPS)["blocks_per_sm"]
    slices, resident = C // SLICE_N, sm_count * per_sm
    return 0 if resident < slices else min(resident // slices, cdiv(M, SR_TILE_ROWS)) * slices


def convmixer_cuda_launches(batch: int, dim: int, hw: int, kernel_size: int, *, act: str, spin: bool,
                            run_length: int, depth: int, dtype: str = "bf16", sm_count: int = 132,
                            resources: dict | None = None) -> list[CudaLaunch]:
    """The CUDA kernel launches of ``backend="cuda"`` for a ConvMixer trunk at ``[batch, dim, hw, hw]``.

    Training (one shared run of ``run_length`` layers; :mod:`spin_kernels.ops.convmixer` ``run_forward`` /
    ``run_backward`` with ``dw_impl="cuda"``): per layer a ``dw_forward_kernel`` (phase "fwd"), and a
    ``dw_backward_data_kernel``, ``dw_wgrad_partial_kernel`` and ``dw_wgrad_reduce_kernel`` (phase "bwd"); the
    pointwise GEMMs and BN finalizes stay Triton (:func:`.launches.convmixer_run_launches`). Every run is taken
    like a middle one (the SPIN residual input present), as the Triton launches are.

    Eval: where the persistent kernel applies (:func:`persistent_reason`, co-residency on ``sm_count`` SMs), ONE
    ``shared_run_kernel`` launch per 64 runs (one for any usual depth) covering ``depth`` layers, scope "trunk";
    otherwise the per-layer path's ``dw_forward_kernel`` without statistics, per layer of a run.

    ``resources``: ``{readable kernel: {registers, static_smem}}`` for the persistent grid (default: read from the
    built extension; without one, the grid follows from shared memory alone — the same at C = 768).
    """
    if dtype not in _CUDA_TYPE:
        raise ValueError(f"dtype: the descriptors cover the 16-bit instances (bf16, fp16), got {dtype!r}")
    if act not in ("relu", "gelu"):
        raise ValueError(f"act: expected 'relu' or 'gelu', got {act!r}")
    e = _ELEM[dtype]
    T = _CUDA_TYPE[dtype]
    B, H, W, C, k, R = batch, hw, hw, dim, kernel_size, run_length
    M, kk = B * H * W, kernel_size * kernel_size
    CB = chunk_channels(e)
    tiles = dw_num_tiles(B, H, W)
    chunks = cdiv(C, CB)
    block = THREADS_C * TILE_H * SPLIT_W
    act_bytes = M * C * e
    common = {"B": B, "H": H, "W": W, "C": C, "k": k, "M": M, "CB": CB, "tiles": tiles, "spin": int(spin)}
    symbols = _symbols_by_kernel()
    out: list[CudaLaunch] = []

    def launch(kernel, grid, threads, smem, args, phase, hbm, flags, **kw):
        special = {"dw_wgrad_reduce_kernel": kernel, "shared_run_kernel": shared_run_name(T, k),
                   "dw_forward_kernel": dw_forward_name(T, k, act)}
        name = special.get(kernel, f"{kernel}<{T}>")
        out.append(CudaLaunch(kernel=name, symbol=symbols.get(name, ""), grid=tuple(grid) + (1,) * (3 - len(grid)),
                              threads=threads, dynamic_smem=smem, args=args, phase=phase, hbm_bytes=int(hbm),
                              model=CUDA_MODELS[kernel], flags=tuple(flags), **kw))

    def forward(phase):
        # launch_forward (csrc/dw_row_stream.cu): grid (dw_forward_tiles, ceil(C / 64)), RowStream<k>::Threads
        stats = phase == "fwd"
        fwd_tiles = dw_forward_tiles(B, H, W, C, k, sm_count)
        hbm = (act_bytes * (1 + spin)                 # hz, res (x = res + ax act(hz) + bx, rebuilt on load)
               + 2 * C * 4 + C * kk * e + C * 4       # ax, bx; the filter; its bias (fp32 copy)
               + act_bytes                            # q
               + (3 * fwd_tiles * C * 4 if stats else 0))  # per-tile count, mean, M2
        for _ in range(R):
            launch("dw_forward_kernel", (fwd_tiles, cdiv(C, ROW_CHUNK)), row_stream_threads(k),
                   row_stream_smem_bytes(k),
                   dict(common, flip=0, stats=int(stats), band_rows=dw_forward_band_rows(B, H, W, C, k, sm_count)),
                   phase, hbm, [f"k{k}", act] + (["res"] if spin else []) + (["stats"] if stats else []))

    forward("fwd")
    # backward, layer R-1 down to 0 (run_backward): dw_bwd = backward data + weight gradient
    P = min(WGRAD_PARTIAL_CTAS, tiles)               # bindings.cpp dwconv_backward_weight: min(partial_ctas, tiles)
    ws_bytes = P * (kk + 1) * C * 4
    for i in reversed(range(R)):
        write_dx = i > 0 or spin                     # layer 0 writes dx only for SPIN's u_in gradient
        write_dhz = i == 0
        # launch_backward_data: the forward's grid, block and shared memory
        hbm = (3 * act_bytes                         # du, q (dq rebuilt on load), hz
               + 6 * C * 4 + 4 * C * 4 + C * kk * e  # vec6, xvec, the filter
               + act_bytes * (write_dx + write_dhz)  # dx, dhz
               + 2 * tiles * C * 4)                  # per-tile sums
        launch("dw_backward_data_kernel", (tiles, chunks), block, conv_smem_bytes(k, e), dict(common), "bwd", hbm,
               [f"k{k}"] + (["dx"] if write_dx else []) + (["dhz"] if write_dhz else []))
        # launch_wgrad: grid (P, ceil(C / CB)), block (8, 8, 4); then the reduction over (kk + 1) C outputs
        hbm = (act_bytes * (3 + spin) + 6 * C * 4 + 2 * C * 4   # du, q, hz, [res]; vec6; ax, bx
               + ws_bytes)                                     # partials out
        launch("dw_wgrad_partial_kernel", (P, chunks), block, wgrad_smem_bytes(k, e), dict(common, P=P), "bwd",
               hbm, [f"k{k}", f"P{P}"] + (["res"] if spin else []))
        n = (kk + 1) * C
        launch("dw_wgrad_reduce_kernel", (cdiv(n, 256),), 256, 0, dict(common, P=P), "bwd",
               ws_bytes + C * kk * 4 + C * 4, [f"k{k}", f"P{P}"])

    # eval
    reason = persistent_reason(B, C, k, dtype)
    ctas = 0
    if reason is None:
        res = (resources if resources is not None else _resources_by_kernel()).get(shared_run_name(T, k), {})
        ctas = persistent_grid(C, M, sm_count, res.get("registers", 0), res.get("static_smem", 0))
    if ctas:
        # eval_features: launch_parameters chunks the runs, MAX_RUNS_PER_LAUNCH per cooperative launch
        runs = cdiv(depth, R)
        for first in range(0, runs, MAX_RUNS):
            n_runs = min(MAX_RUNS, runs - first)
            layers = min(depth, (first + n_runs) * R) - first * R
            hbm = (2 * act_bytes                                 # x (read and rewritten in place), u
                   + n_runs * (C * C * e + C * 4)                # each run's W and bias
                   + layers * C * (kk + 5) * 4)                  # filters, dw bias, s1, t1, s2, t2 per layer
            launch("shared_run_kernel", (ctas,), SR_THREADS, shared_run_smem_bytes(C),
                   dict(common, runs=n_runs, depth=layers), "eval", hbm,
                   [f"k{k}", f"{n_runs}x{R} layers", f"{ctas} CTAs"] + (["spin"] if spin else []),
                   flag_hops=SR_FLAG_HOPS_PER_LAYER * layers, scope="trunk")
    else:
        forward("eval")
    return out


# ------------------------------------------------------------------------------------------------ the extension
def _cuobjdump() -> str | None:
    return triton_nvidia_bin("cuobjdump")


# The machine code the cost model reads: the extension may also carry sm_80 code (and PTX) for other GPUs.
SASS_ARCH = "sm_90a"


@cache
def _extension_sass(so_path: str) -> str:
    return run_tool([_cuobjdump(), "-sass", "-arch", SASS_ARCH, so_path])


def extension_functions(so_path: str | None = None) -> dict[str, sass.Function]:
    """The parsed SASS of every kernel of the built extension, by mangled name (cuobjdump runs once per .so);
    ``{}`` when the extension or cuobjdump is missing."""
    so_path = so_path or find_extension_so()
    if not so_path or not _cuobjdump():
        return {}
    return _parsed_functions(os.path.abspath(so_path))


@cache
def _parsed_functions(so_path: str) -> dict[str, sass.Function]:
    return sass.parse_sass(_extension_sass(so_path))


@cache
def _resource_usage(so_path: str) -> dict:
    return parse_resource_usage(run_tool([_cuobjdump(), "--dump-resource-usage", "-arch", SASS_ARCH, so_path]))


def extension_resources(so_path: str | None = None) -> dict:
    """``{mangled name: {registers, stack, static_smem, local}}`` of the built extension (cuobjdump
    ``--dump-resource-usage``, once per .so); ``{}`` without the extension or cuobjdump."""
    so_path = so_path or find_extension_so()
    if not so_path or not _cuobjdump():
        return {}
    return _resource_usage(os.path.abspath(so_path))


@cache
def _readable(symbols: tuple) -> dict:
    return demangle(list(symbols))


def _symbols_by_kernel(so_path: str | None = None) -> dict:
    """``{readable name: mangled name}`` of the extension's kernels."""
    syms = tuple(sorted(extension_resources(so_path)))
    return {v: k for k, v in _readable(syms).items()}


def _resources_by_kernel(so_path: str | None = None) -> dict:
    usage = extension_resources(so_path)
    return {_readable(tuple(sorted(usage))).get(s, s): u for s, u in usage.items()}


def find_function(launch: CudaLaunch, functions: dict) -> sass.Function:
    """The SASS function of ``launch``: by its symbol, else by its readable name."""
    if launch.symbol in functions:
        return functions[launch.symbol]
    names = _readable(tuple(sorted(functions)))
    for sym, readable in names.items():
        if readable == launch.kernel:
            return functions[sym]
    raise KeyError(f"{launch.kernel}: not in the extension's SASS (rebuild the extension?)")


# ------------------------------------------------------------------------------------------------ costs
def cuda_launch_cost(launch: CudaLaunch, functions: dict, rates: cost_model.SMRates, dtype: str,
                     resources: dict | None = None) -> dict:
    """One CUDA launch: its bounds, estimate, floor and ratio — the keys of :func:`.cost_report.launch_cost` plus
    ``backend`` ("cuda"), ``scope``, ``flag_hops`` and ``dynamic_smem`` (no mangled symbol: anonymous-namespace
    names carry a hash of the build path, and the committed report must not depend on where it was built).

    ``functions``: the extension's parsed SASS (:func:`extension_functions`); ``resources``: its resource usage
    by mangled name (default :func:`extension_resources`). Flag hops add ``flag_hops`` L2 round trips to
    the latency bound; blocks per SM follow from registers and static + dynamic shared memory.
    """
    fn = find_function(launch, functions)
    usage = (resources if resources is not None else extension_resources()).get(fn.name, {})
    regs, static = usage.get("registers", 0), usage.get("static_smem", 0)
    occ = theoretical_occupancy(regs, static + launch.dynamic_smem, launch.warps)
    args = launch.namespace()
    trips = launch.model.trips(args, len(fn.loops))
    counts = cost_model.count(fn, trips)
    b = cost_model.bounds(counts, ctas=launch.ctas, warps=launch.warps, blocks_per_sm=max(1, occ["blocks_per_sm"]),
                          hbm_bytes=launch.hbm_bytes, rates=rates,
                          extra_latency_s=launch.flag_hops * rates.l2_round_trip_s)
    est, binding = cost_model.estimate(b)
    flops = launch.model.flops(args)
    floor = cost_model.floor_s(flops, launch.model.unit, launch.hbm_bytes, dtype, rates)
    return {"kernel": launch.kernel, "label": launch.label, "phase": launch.phase, "grid": list(launch.grid),
            "warps": launch.warps, "registers": regs, "spills": usage.get("stack", 0) + usage.get("local", 0),
            "blocks_per_sm": occ["blocks_per_sm"], "loops": len(fn.loops), "trips": trips,
            "instructions_per_warp": counts.instructions, "hbm_bytes": launch.hbm_bytes,
            "l1_bytes": counts.ldg_bytes * launch.warps * launch.ctas, "flops": flops, "unit": launch.model.unit,
            "tensor_macs": sum(counts.macs.values()) * launch.warps * launch.ctas,
            "bounds_s": {k: b[k] for k in cost_model.BOUNDS},
            "pipe": b["pipe_name"], "binding": binding, "estimate_s": est, "floor_s": floor,
            "ratio": est / floor if floor > 0 else float("inf"), "backend": "cuda", "scope": launch.scope,
            "flag_hops": launch.flag_hops, "dynamic_smem": launch.dynamic_smem}


def _own_body(fn: sass.Function, loop: int | None) -> list:
    return [ins for ins in fn.instructions if fn.innermost_loop(ins.addr) == loop]


def shared_run_loops(a) -> dict:
    """:data:`SR_LOOP`'s loops as indices among the SASS loops of the instance for launch args ``a`` (a loop the
    instance compiles out — the tap-group loop below k = 9 — is None)."""
    present = [i for i, lp in enumerate(SHARED_RUN.loops) if lp.trips(a) is not None]
    return {name: present.index(i) if i in present else None for name, i in SR_LOOP.items()}


def pointwise_tile_waves(fn: sass.Function, tile_loop: int) -> int:
    """Dependent round trips of one warp per row tile of pointwise_half outside its k0 loop: the tile body's own
    code (the u poll's loop and the k0 loop are counted on their own). The epilogue is one copy for all warps
    (each warp selects its n-tiles out of the accumulators), so every warp runs the whole body."""
    return cost_model.load_waves(_own_body(fn, tile_loop))


def persistent_critical_path(launch: CudaLaunch, fn: sass.Function, rates: cost_model.SMRates) -> dict:
    """The dependent chain of a persistent ``shared_run_kernel`` launch: a latency lower bound.

    Per layer, the busiest CTA's serial path: for each of its row tiles, the depthwise half (the halo's flag polls,
    then its pixel iterations, each with its tap groups) and the pointwise half (the u flag poll, the slowest
    warp's split-K steps, one warp's epilogue block) — :func:`.cost_model.load_waves` of each loop body times its
    executions — plus the layer's 2 flag hops (u_ready, x_ready): the producer's release reaching L2, one round
    trip each (the consumer's poll is in its loop's waves). Per run: the W-slice load, its iterations per thread
    (kWLoadBatch 16-byte vectors each) times the load waves of its body. Latency: round trips x the L2 round trip,
    except the W-slice load at the DRAM round trip: each run's W is read once per launch, from HBM (no earlier
    kernel of the forward touched it), while the activations, filters and per-layer vectors it streams per layer
    were written or read moments before and sit in L2 (a 50 MB L2 holds them at small batch).
    ``latency_all_l2_s`` prices the W load at L2 too: the strict floor when the weights stay in L2 between calls.
    """
    a = launch.namespace()
    loops = fn.loops
    idx = shared_run_loops(a)
    n_present = sum(1 for i in idx.values() if i is not None)
    if len(loops) != n_present:
        raise ValueError(f"{fn.name}: {len(loops)} loops in the SASS, the descriptor has {n_present} at k = {a.k}")
    waves = {name: cost_model.load_waves(_own_body(fn, i)) if i is not None else 0 for name, i in idx.items()}
    l2_s, dram_s = rates.l2_round_trip_s, rates.dram_round_trip_s
    tiles = cdiv(cdiv(a.M, SR_TILE_ROWS), a.ctas // (a.C // SLICE_N))      # the busiest CTA's row tiles
    # depthwise half, per tile: its own code, the halo polls, the pixel iterations (each with its tap groups)
    groups = _sr_tap_groups(a.k)
    per_pixel = waves["dw_pixels"] + (groups * waves["dw_tap_groups"] if idx["dw_tap_groups"] is not None else 0)
    pixel_iters = SR_TILE_ROWS * SLICE_N // 2 // SR_THREADS
    dw_tile = waves["dw_tiles"] + waves["dw_halo"] + waves["poll_x"] + pixel_iters * per_pixel
    dw_trips = tiles * dw_tile
    # pointwise half, per tile: the u poll, the slowest warp's k0 steps, the tile body on one warp's path
    tile_path = pointwise_tile_waves(fn, idx["pw_tiles"])
    pw_trips = tiles * (waves["poll_u"] + max(_sr_kstep_trips(a)) * waves["pw_k0"] + tile_path)
    layer_trips = dw_trips + pw_trips + waves["layers"] + SR_FLAG_HOPS_PER_LAYER
    layer_s = layer_trips * l2_s
    # the W slice at each run boundary
    w_iters = max(_sr_w_slice_counts(a.C))
    w_trips = w_iters * waves["w_slice"]
    run_trips_l2 = waves["runs"]          # the run loop's own code (the run's pointers), once per run
    prologue = cost_model.load_waves(_own_body(fn, None))   # straight-line code outside every loop, once
    hops = SR_FLAG_HOPS_PER_LAYER * a.depth
    l2_trips = a.depth * layer_trips + a.runs * run_trips_l2 + prologue
    dram_trips = a.runs * w_trips
    latency = l2_trips * l2_s + dram_trips * dram_s
    return {
        "kernel": launch.kernel, "ctas": launch.ctas, "depth": a.depth, "runs": a.runs,
        "per_layer": {
            "flag_hops": SR_FLAG_HOPS_PER_LAYER,
            "round_trips": {"depthwise": dw_trips, "pointwise": pw_trips, "total": layer_trips},
            "depthwise_round_trips_per_tile": dw_tile, "round_trips_per_pixel": per_pixel, "tap_groups": groups,
            "row_tiles_busiest_cta": tiles, "round_trips_per_tile": tile_path,
            "latency_s": layer_s},
        "w_slice_load": {
            "loop": idx["w_slice"], "site": SHARED_RUN.loops[SR_LOOP["w_slice"]].site,
            "sass": [hex(loops[idx["w_slice"]].start), hex(loops[idx["w_slice"]].end)],
            "bytes_per_load": 16, "loads_in_flight": W_LOAD_BATCH,
            "iterations_per_thread": w_iters, "round_trips_per_iteration": waves["w_slice"],
            "round_trips_per_thread": w_trips, "memory": "dram",
            "latency_s_per_run": w_trips * dram_s},
        "trunk": {
            "flag_hops": hops, "round_trips_l2": l2_trips, "round_trips_dram": dram_trips,
            "flag_s": hops * l2_s, "round_trip_s": l2_trips * l2_s + dram_trips * dram_s,
            "latency_s": latency,
            "latency_all_l2_s": (l2_trips + dram_trips) * l2_s},
    }


# ------------------------------------------------------------------------------------------------ per shape
def shape_launches(name: str, dtype: str = "bf16", sm_count: int = 132) -> tuple[list[CudaLaunch], int]:
    """(the CUDA launches of a ConvMixer target shape of :data:`.cost_report.TARGET_SHAPES`, runs in the trunk)."""
    model, batch, rate = TARGET_SHAPES[name]
    arch = ARCHS[model]
    if arch["family"] != "convmixer":
        raise ValueError(f"{name}: the CUDA kernels serve ConvMixer shapes only")
    hw = IMG_SIZE // arch["patch_size"]
    launches = convmixer_cuda_launches(batch, arch["dim"], hw, arch["kernel_size"], act=arch["act"],
                                       spin=arch["spin_residual"], run_length=rate, depth=arch["depth"],
                                       dtype=dtype, sm_count=sm_count)
    return launches, arch["depth"] // rate


REPLACED_BY_CUDA = {"fwd": {"dw_fwd_kernel"}, "bwd": {"dw_bwd_dx_kernel", "dw_wgrad_kernel"},
                    "eval": {"dw_fwd_kernel"}}
"""The Triton rows the per-layer CUDA path replaces: the depthwise half (pointwise and BN stay Triton)."""


def _total(rows: list, runs: int) -> dict:
    est = sum(r["estimate_s"] * r["count"] * (runs if r.get("scope", "run") == "run" else 1) for r in rows)
    flo = sum(r["floor_s"] * r["count"] * (runs if r.get("scope", "run") == "run" else 1) for r in rows)
    return {"model_estimate_s": est, "model_floor_s": flo, "ratio": est / flo if flo else None}


def cuda_shape_costs(name: str, triton_rows: list, runs: int, rates: cost_model.SMRates = cost_model.H100_RATES,
                     dtype: str = "bf16") -> dict:
    """The CUDA rows of a target shape and the totals of the ``backend="cuda"`` variant of the trunk.

    Returns ``cuda_rows`` (one per distinct launch, ``count`` per run — or per trunk for scope "trunk" —,
    ``backend: "cuda"``, an ``id``), ``totals_cuda`` (per phase: the Triton rows of ``triton_rows`` with the
    depthwise kernels replaced by the CUDA ones; eval None where the persistent kernel takes the trunk),
    ``train_step_cuda``, ``eval_forward_persistent`` (the persistent launch, whole trunk; None where it does not
    apply), ``eval_forward_cuda`` (whichever eval path backend="cuda" takes), and ``persistent_critical_path``.
    A dict with only ``cuda_note`` when the shape is not a ConvMixer one, the dtype not 16-bit, or the extension
    / cuobjdump is missing here.
    """
    if ARCHS[TARGET_SHAPES[name][0]]["family"] != "convmixer":
        return {"cuda_note": "no CUDA kernels for this model family"}
    if dtype not in _CUDA_TYPE:
        return {"cuda_note": f"the CUDA descriptors cover bf16 / fp16, not {dtype}"}
    functions = extension_functions()
    if not functions:
        return {"cuda_note": "the CUDA extension (spin_kernels/_C*.so) or cuobjdump is missing here"}
    launches, runs_ = shape_launches(name, dtype, rates.sm_count)
    assert runs_ == runs, (runs_, runs)
    rows: dict = {}
    persistent = None
    for launch in launches:
        key = (launch.phase, launch.kernel, launch.grid, launch.dynamic_smem, launch.hbm_bytes,
               tuple(sorted(launch.args.items())))
        if key in rows:
            rows[key]["count"] += 1
            continue
        rows[key] = {**cuda_launch_cost(launch, functions, rates, dtype), "count": 1}
        if launch.scope == "trunk" and persistent is None:
            persistent = persistent_critical_path(launch, find_function(launch, functions), rates)
    table = list(rows.values())
    assign_ids(table, prefix="cuda ")
    trunk = [r for r in table if r["scope"] == "trunk"]
    totals = {}
    for phase in PHASES:
        if phase == "eval" and trunk:
            totals[phase] = None
            continue
        sel = [r for r in triton_rows if r["phase"] == phase and r["kernel"] not in REPLACED_BY_CUDA[phase]]
        totals[phase] = phase_total(sel + [r for r in table if r["phase"] == phase], runs)
    train = train_step(totals)
    eval_persistent = _total(trunk, runs) if trunk else None
    eval_cuda = eval_persistent or {k: totals["eval"][k] for k in ("model_estimate_s", "model_floor_s", "ratio")}
    return {"cuda_rows": table, "totals_cuda": totals, "train_step_cuda": train,
            "eval_forward_persistent": eval_persistent, "eval_forward_cuda": eval_cuda,
            "persistent_critical_path": persistent}


def format_cuda_totals(sh: dict) -> list[str]:
    """The lines :func:`.cost_report.format_cost_report` prints under a shape's table for ``backend="cuda"``."""
    if "train_step_cuda" not in sh:
        return [f"backend cuda: {sh.get('cuda_note', 'not costed')}"]
    t, tr = sh["totals_cuda"], sh["train_step_cuda"]
    ev = sh["eval_forward_cuda"]
    which = "persistent kernel, one launch" if sh["eval_forward_persistent"] else "per-layer path"
    lines = [(f"backend cuda (depthwise on csrc/, pointwise and BN Triton): one run fwd "
              f"{t['fwd']['run_estimate_s'] * 1e6:.1f} us, bwd {t['bwd']['run_estimate_s'] * 1e6:.1f} us; train "
              f"step {tr['model_estimate_s'] * 1e3:.3f} ms vs floor {tr['model_floor_s'] * 1e3:.3f} ms "
              f"({tr['ratio']:.1f}x); eval forward ({which}) {ev['model_estimate_s'] * 1e3:.3f} ms vs floor "
              f"{ev['model_floor_s'] * 1e3:.3f} ms ({ev['ratio']:.1f}x)")]
    cp = sh.get("persistent_critical_path")
    if cp:
        tk, w = cp["trunk"], cp["w_slice_load"]
        lines.append(f"persistent critical path: no grid sync, {tk['flag_hops']} ready-flag hops, "
                     f"{tk['round_trips_l2']} L2 + {tk['round_trips_dram']} DRAM dependent round trips (W slice: "
                     f"{w['round_trips_per_thread']} per thread per run) -> latency >= {tk['latency_s'] * 1e3:.3f} ms "
                     f"({tk['latency_all_l2_s'] * 1e3:.3f} ms with W in L2)")
    return lines
