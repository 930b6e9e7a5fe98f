"""Per-kernel descriptors for the machine-code cost model: what SASS alone cannot say.

For every shipped kernel: the trip count of each loop its machine code has (in address order, tied to the loop's
header in the source), and the analytic work of one launch (the FLOPs of the floor, on tensor cores or CUDA
cores). A descriptor receives the launch's arguments as attributes (tensor arguments as
:class:`~spin_kernels.perf.launches.TensorArg`, plus ``grid`` and ``ctas``) and returns numbers.

Trip counts are *per entry of the loop, averaged over programs* (a loop that half the programs run counts half);
a loop with ``may_fold`` disappears from the machine code when its trip count is the constant 1 (e.g. the
one-tile-per-program case of ``dw_fwd_kernel``). tests/perf/test_cost_model.py checks every descriptor against the
SASS (same number of loops) and, under the interpreter, against the loops' real iteration counts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable


def cdiv(a: float, b: float) -> int:
    """Ceiling division of non-negative integers."""
    return -(-int(a) // int(b))


@dataclass(frozen=True)
class LoopSpec:
    """One loop of a kernel's machine code."""

    site: str                                  # the loop header in the kernel's source (unique in the kernel)
    trips: Callable                            # launch args -> iterations per entry (average over programs)
    may_fold: bool = False                     # gone from SASS when the trip count is the constant 1


@dataclass(frozen=True)
class KernelModel:
    """Loops (address order) and analytic work of one kernel function."""

    loops: tuple
    flops: Callable                            # launch args -> FLOPs of the whole launch
    unit: str = "vector"                       # "tensor" (tensor-core GEMM work) or "vector" (CUDA cores)
    note: str = ""
    # launch args -> serially dependent global-load waves that one CTA runs after all the others are done (an
    # in-kernel finalize): a tail added to the estimate, whatever bound binds
    tail_waves: Callable | None = None

    def trips(self, args, n_sass_loops: int) -> list[float]:
        """Trip counts matched to the ``n_sass_loops`` loops found in the machine code; ValueError when the
        descriptor and the machine code disagree (the descriptor needs updating)."""
        # a loop whose trips are None is compiled out for these constexprs (not in the machine code)
        present = [(lp, float(t)) for lp in self.loops if (t := lp.trips(args)) is not None]
        full = [t for _, t in present]
        if len(full) == n_sass_loops:
            return full
        kept = [t for lp, t in present if not (lp.may_fold and t == 1)]
        if len(kept) == n_sass_loops:
            return kept
        raise ValueError(f"descriptor has {len(full)} loops ({[lp.site for lp in self.loops]}), the machine code "
                         f"{n_sass_loops}: update spin_kernels.perf.kernel_models")


def _numel(t) -> int:
    return math.prod(t.shape)


def _attn_fwd_flops(a) -> float:
    return 4.0 * a.grid[0] * a.N * a.N * a.D          # QKᵀ and PV over all (batch, head) pairs (grid axis 0)


def _dw_fwd_rows(a) -> float:
    """Input rows dw_fwd_kernel streams per tile: the tile's rows and up to KS // 2 halo rows either side,
    clipped to the image (average over the row tiles)."""
    H, p, th = a.H, a.KS // 2, a.tile_h
    return sum(min(h0 + th + p, H) - max(h0 - p, 0) for h0 in range(0, H, th)) / a.row_tiles


# Triton kernels, by function name. The loops are the `for ... in range(...)` loops of the kernels' source.
TRITON_MODELS: dict[str, KernelModel] = {
    "dw_fwd_kernel": KernelModel(
        loops=(LoopSpec("for t in range(pid, n_tiles, n_prog)", lambda a: a.n_tiles / a.grid[0], may_fold=True),
               LoopSpec("for r in range(r_lo, r_hi)", _dw_fwd_rows)),
        flops=lambda a: 2.0 * a.q_ptr.shape[0] * a.C * a.KS * a.KS,
        note="the tiles shared by grid[0] programs; each input row of a tile streams by once (rebuilt, staged for "
             "the neighbours' halos, KS² FMAs per element into a ring of KS output rows); "
             "FINALIZE: the last program per channel block merges the tile partials in finalize_block (a "
             "noinline call: its loop is outside the kernel's SASS loops, costed as the tail)",
        # the ticket atomic, one wave per BLOCK_T partials merged, the stores
        tail_waves=lambda a: 2 + cdiv(a.n_tiles, a.BLOCK_T) if a.FINALIZE else 0),
    "dw_bwd_dx_kernel": KernelModel(
        loops=(LoopSpec("for t in range(pid, n_tiles, n_prog)", lambda a: a.n_tiles / a.grid[0], may_fold=True),
               LoopSpec("for r in range(r_lo, r_hi)", _dw_fwd_rows)),
        flops=lambda a: 2.0 * a.du_ptr.shape[0] * a.C * a.KS * a.KS,    # dx: the transposed conv
        note="dw_fwd's row stream on dq (BN1/act backward once per element, written for dw_wgrad) with the "
             "flipped taps; dx = du + ring row, dhz and the previous BN's sums as rows complete"),
    "dw_wgrad_kernel": KernelModel(
        loops=(LoopSpec("for t in range(pid, n_tiles, n_prog)", lambda a: a.n_tiles / a.grid[0], may_fold=True),
               LoopSpec("for r in range(r_lo, r_hi)", _dw_fwd_rows)),
        flops=lambda a: 2.0 * a.dq_ptr.shape[0] * a.C * a.KS * a.KS,    # dw: the correlation of x with dq
        note="rows of x (rebuilt once, staged for halos) and dq stream by; the last k//2 of each in register "
             "rings; k² per-thread dw accumulators summed over the strips once per program"),
    "bn_finalize_kernel": KernelModel(
        loops=(LoopSpec("for t0 in range(0, n_tiles, BLOCK_T)", lambda a: cdiv(a.n_tiles, a.BLOCK_T), may_fold=True),),
        flops=lambda a: 10.0 * a.n_tiles * a.C),
    "bn_bwd_vectors_kernel": KernelModel(
        loops=(LoopSpec("for p0 in range(0, n_part, BLOCK_P)", lambda a: cdiv(a.n_part, a.BLOCK_P), may_fold=True),),
        flops=lambda a: 2.0 * a.n_part * a.C + 8.0 * a.C),
    "pw_input_kernel": KernelModel(loops=(), flops=lambda a: 12.0 * a.M * a.K,
                                   note="u = [res] + ax·act(hz) + bx + a1·act(q) + b1: two activations, two FMAs"),
    "pw_dz_kernel": KernelModel(loops=(), flops=lambda a: (24.0 if a.WRITE_U else 12.0) * a.M * a.N,
                                note="dz = BN/act backward of G: one activation and its derivative, a few FMAs; "
                                     "WRITE_U: + u as pw_input"),
    "pw_fwd_kernel": KernelModel(
        loops=(LoopSpec("for k0 in range(0, K, BLOCK_K)", lambda a: cdiv(a.K, a.BLOCK_K)),),
        flops=lambda a: 2.0 * a.M * a.N * a.K, unit="tensor"),
    "pw_bwd_dx_kernel": KernelModel(
        loops=(LoopSpec("for n0 in range(0, N, BLOCK_N)", lambda a: cdiv(a.N, a.BLOCK_N)),),
        flops=lambda a: 2.0 * a.M * a.N * a.K, unit="tensor"),
    "pw_bwd_dw_kernel": KernelModel(
        loops=(LoopSpec("for t in range(t_start, t_end)", lambda a: a.R * cdiv(a.M, a.BLOCK_M) / a.grid[1]),),
        flops=lambda a: 2.0 * a.R * a.M * a.N * a.K, unit="tensor",
        note="rows of the run split over grid[1] programs; the average share per program"),
    "gemm_kernel": KernelModel(
        loops=(LoopSpec("for k0 in range(k_start, k_end, BLOCK_K)", lambda a: cdiv(a.K, a.BLOCK_K) / a.grid[1]),
               # split-K: the last of a tile's grid[1] programs sums the grid[1] partials: one iteration per
               # program on average (compiled out without SPLIT_K)
               LoopSpec("for _ in range(0, n_split)", lambda a: 1 if a.SPLIT_K else None)),
        flops=lambda a: 2.0 * a.M * a.N * a.K, unit="tensor",
        note="split-K: the K loop shared by grid[1] programs, reduced in the same launch by each tile's last",
        # the ticket atomic, then grid[1] partial loads of the last tile's reduction
        tail_waves=lambda a: 2 + a.grid[1] if a.SPLIT_K else 0),
    "attn_fwd_kernel": KernelModel(
        loops=(LoopSpec("for start_n in range(0, N, BLOCK_N)", lambda a: cdiv(a.N, a.BLOCK_N)),),
        flops=_attn_fwd_flops, unit="tensor"),
    "attn_bwd_pre_kernel": KernelModel(loops=(), flops=lambda a: 2.0 * a.grid[0] * a.N * a.D),
    "attn_bwd_kernel": KernelModel(
        loops=(LoopSpec("for start_m in range(0, N, STEP)", lambda a: cdiv(a.N, a.STEP) / 2),
               LoopSpec("for start_n in range(0, N, STEP)", lambda a: cdiv(a.N, a.STEP) / 2)),
        flops=lambda a: 2.5 * _attn_fwd_flops(a), unit="tensor",
        note="grid z = 2: half the programs run the dK/dV loop, half the dQ loop"),
    "ln_fwd_kernel": KernelModel(loops=(), flops=lambda a: 8.0 * a.M * a.C),
    "ln_bwd_kernel": KernelModel(
        loops=(LoopSpec("for r in range(0, ROWS_PER_PROG, BLOCK_R)", lambda a: cdiv(a.ROWS_PER_PROG, a.BLOCK_R)),),
        flops=lambda a: 12.0 * a.M * a.C),
    # calibration kernels (spin_kernels.triton.calibration): their true limits are known
    "copy_kernel": KernelModel(loops=(), flops=lambda a: 0.0),
    "matmul_kernel": KernelModel(
        loops=(LoopSpec("for k0 in range(0, K, BLOCK_K)", lambda a: cdiv(a.K, a.BLOCK_K)),),
        flops=lambda a: 2.0 * a.M * a.N * a.K, unit="tensor"),
}
