"""The machine-code cost model: lower bounds on a kernel's time from its sm_90a SASS, its launch and the card.

For one launch of one compiled kernel (SASS parsed by :mod:`.sass`, trip counts from :mod:`.kernel_models`, the
launch recorded by :mod:`.launches`) it counts, per CTA, the instructions of each class each loop body executes
(× the trip counts of the loops around it), and turns the counts into times on the busiest SM
(``ceil(CTAs / SMs)`` CTAs):

==========  ====================================================================================================
issue       warp instructions / (4 schedulers × 1 per clock)
pipe        per execution pipe: FP32 128, integer 64, MUFU 16, conversions 16 results per clock per SM, the most
            loaded one
tensor      HGMMA / HMMA multiply-adds at the card's dense tensor rate (the same ceiling as the floor)
smem        shared-memory bytes (LDS/STS/LDSM width × 32 lanes, HGMMA operand reads) at 128 B per clock
hbm         the launch's compulsory bytes (every distinct buffer it is given, once) at the card's bandwidth
latency     CTA waves × one CTA's dependent chain: its instructions at one per clock, or its serially dependent
            global-load waves at the L2 round trip plus its barriers, whichever is longer
==========  ====================================================================================================

The estimate is the largest bound — a lower bound, no stalls modelled, never a measured time — and the *ratio*
is estimate / floor, the floor being ``max(FLOPs / peak, bytes / bandwidth)`` of the launch's analytic work. Code
on both sides of a branch is counted for every CTA (an over-count where only some CTAs take a branch).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from . import sass
from .cards import H100, H200, Ceilings


@dataclass(frozen=True)
class SMRates:
    """Per-SM rates and latencies of one card, with a source for each number."""

    name: str
    ceilings: Ceilings                     # HBM bandwidth and dense FLOP/s (shared with the roofline floors)
    sm_count: int = 132
    clock_hz: float = 1.83e9
    issue_per_clk: float = 4.0             # warp instructions per clock per SM
    pipe_lanes: dict = field(default_factory=lambda: {"fp32": 128, "int": 64, "mufu": 16, "convert": 16,
                                                      "convert_packed": 32, "warp": 32})
    smem_bytes_per_clk: float = 128.0
    l2_round_trip_cycles: float = 262.0
    dram_round_trip_cycles: float = 479.0
    barrier_cycles: float = 24.0
    grid_sync_s: float = 1.5e-6
    sources: dict = field(default_factory=lambda: dict(SOURCES))

    @property
    def l2_round_trip_s(self) -> float:
        """One dependent global round trip served by L2, in seconds."""
        return self.l2_round_trip_cycles / self.clock_hz

    @property
    def dram_round_trip_s(self) -> float:
        """One dependent global round trip served by device memory, in seconds."""
        return self.dram_round_trip_cycles / self.clock_hz

    def tensor_macs_per_clk(self, dtype: str) -> float:
        """Dense tensor-core multiply-adds per clock per SM, from the card's dense FLOP/s ceiling."""
        return self.ceilings.peak_flops("tensor", dtype) / 2 / self.sm_count / self.clock_hz


SOURCES = {
    "sm_count": "NVIDIA H100 whitepaper: 132 SMs on the SXM5 part (H200 SXM: the same die); 132 read on the lent "
                "H200 (device tool KINDS.md, 2026-10-28)",
    "clock_hz": "1.83 GHz: the clock of NVIDIA's quoted peaks (989.4 TFLOP/s dense bf16 = 132 SMs × 2048 MAC/clk × "
                "2 × 1.83 GHz); the lent H200 read 1.98 GHz right after a GEMM (KINDS.md), so issue-bound "
                "estimates may be up to 8% pessimistic",
    "issue_per_clk": "4 SM sub-partitions, each with one warp scheduler issuing one warp instruction per clock "
                     "(NVIDIA H100 whitepaper, SM architecture)",
    "pipe_lanes": "CUDA C++ Programming Guide, arithmetic instruction throughput, compute capability 9.0: 32-bit "
                  "FP add/mul/fma 128, 32-bit integer add/compare/logic/multiply-add 64, special functions "
                  "(rcp, rsqrt, exp2, lg2, sin, cos) 16, type conversions 16, warp shuffle 32 results per clock "
                  "per SM; F2FP (two values packed per instruction) assumed at twice the conversion rate",
    "smem_bytes_per_clk": "32 banks × 4 bytes per clock per SM (CUDA C++ Programming Guide, shared memory)",
    "tensor": "the dense FLOP/s ceiling of spin_kernels.perf.cards (the roofline's), so estimate and floor agree "
              "on a tensor-bound kernel",
    "l2_round_trip_cycles": "Luo et al., 'Benchmarking and Dissecting the Nvidia Hopper GPU Architecture' "
                            "(arXiv:2402.13499, 2024), pointer-chase latency, L2 hit ~262 cycles; approximate",
    "dram_round_trip_cycles": "the same study, device memory ~479 cycles; approximate",
    "barrier_cycles": "an estimate (__syncthreads of a resident CTA, ~20-30 cycles); no published Hopper figure",
    "grid_sync_s": "DESIGN.md §2's 1-2 µs per grid-wide barrier (cooperative groups), an estimate to be replaced "
                   "by a measurement",
}

H100_RATES = SMRates(name="H100 SXM (machine-code model)", ceilings=H100)
H200_RATES = SMRates(name="H200 SXM (machine-code model)", ceilings=H200)
RATES = {"h100": H100_RATES, "h200": H200_RATES}


def measured_rates(card: str, results_root) -> tuple[SMRates, str | None]:
    """``RATES[card]`` with the HBM bandwidth and tensor FLOP/s replaced by the newest GPU run of that card under
    ``results_root`` (``bench/results/<gpu>-<date>/**/results.json`` with measured ``ceilings``), and the path
    used (None: no such run, the nominal rates stand)."""
    import dataclasses
    import json
    from pathlib import Path

    base = RATES[card]
    runs = sorted((p for p in Path(results_root).glob(f"*{card}*/**/results.json")), key=lambda p: p.parent.name)
    for path in reversed(runs):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if data.get("ceilings"):
            ceilings = Ceilings.from_dict(data["ceilings"])
            return dataclasses.replace(base, name=f"{base.name}, measured ceilings of {path.parent}",
                                       ceilings=ceilings), str(path)
    return base, None

BOUNDS = ("issue", "pipe", "tensor", "smem", "hbm", "latency")
_REG = re.compile(r"\bR(\d+)(\.64)?\b")
_GLOBAL_LOADS = {"LDG", "LD"}


def _dest_regs(ins: sass.Instruction) -> set[int]:
    m = _REG.match(ins.operands.split(",")[0].strip())
    if not m:
        return set()
    n = int(m.group(1))
    return set(range(n, n + max(1, ins.bytes_per_thread() // 4)))


def _source_regs(ins: sass.Instruction) -> set[int]:
    ops = ins.operands.split(",")
    stores = ins.cls in ("stg", "sts", "atomic") or ins.opcode.startswith("ST")
    srcs = ops if stores else ops[1:]
    out = set()
    for op in srcs:
        for m in _REG.finditer(op):
            n = int(m.group(1))
            out.update((n, n + 1) if m.group(2) else (n,))
    return out


def load_waves(instrs: list[sass.Instruction]) -> int:
    """Serially dependent global-load waves in a straight run of instructions: a new wave starts each time an
    instruction reads a register that an outstanding global load writes (the warp waits a round trip there);
    loads still outstanding at the end count as one more wave."""
    waves, pending = 0, set()
    for ins in instrs:
        if pending and _source_regs(ins) & pending:
            waves += 1
            pending = set()
        if ins.opcode in _GLOBAL_LOADS:
            pending |= _dest_regs(ins)
    return waves + (1 if pending else 0)


@dataclass
class Counts:
    """Per-warp executed counts of one CTA (trip counts applied)."""

    instructions: float = 0.0
    by_class: dict = field(default_factory=dict)
    macs: dict = field(default_factory=dict)        # per warp, by tensor dtype ("bf16", "fp16", "tf32", "fp8")
    smem_bytes: float = 0.0
    ldg_bytes: float = 0.0                          # per warp: what global loads request (L1/L2 traffic)
    stg_bytes: float = 0.0
    load_waves: float = 0.0
    barriers: float = 0.0


def _tensor_dtype(ins: sass.Instruction) -> str:
    mods = set(ins.modifiers)
    if "TF32" in mods:
        return "tf32"
    if mods & {"E4M3", "E5M2"}:
        return "fp8"
    return "fp16" if "F16" in mods else "bf16"


def count(fn: sass.Function, trips: list[float]) -> Counts:
    """Executed per-warp counts of one CTA of ``fn`` with ``trips[i]`` iterations per entry of loop ``i``."""
    if len(trips) != len(fn.loops):
        raise ValueError(f"trips: {len(fn.loops)} loops in {fn.name}, got {len(trips)} trip counts")
    mult_of_loop = []
    for i, lp in enumerate(fn.loops):
        parent = mult_of_loop[lp.parent] if lp.parent is not None else 1.0
        mult_of_loop.append(parent * trips[i])
    c = Counts()
    bodies: dict = {}
    for ins in fn.instructions:
        loop = fn.innermost_loop(ins.addr)
        mult = 1.0 if loop is None else mult_of_loop[loop]
        bodies.setdefault(loop, []).append(ins)
        c.instructions += mult
        c.by_class[ins.cls] = c.by_class.get(ins.cls, 0.0) + mult
        if ins.cls in ("tensor_gmma", "tensor_mma"):
            dt = _tensor_dtype(ins)
            c.macs[dt] = c.macs.get(dt, 0.0) + ins.macs_per_warp() * mult
        c.smem_bytes += ins.smem_bytes_per_warp() * mult
        if ins.cls in ("ldg", "ldgsts"):
            c.ldg_bytes += ins.bytes_per_thread() * 32 * mult
        elif ins.cls == "stg":
            c.stg_bytes += ins.bytes_per_thread() * 32 * mult
        if ins.opcode == "BAR":
            c.barriers += mult
    for loop, body in bodies.items():
        c.load_waves += load_waves(body) * (1.0 if loop is None else mult_of_loop[loop])
    return c


def bounds(counts: Counts, *, ctas: int, warps: int, blocks_per_sm: int, hbm_bytes: float, rates: SMRates,
           extra_latency_s: float = 0.0) -> dict:
    """The bounds (seconds) of a launch of ``ctas`` CTAs of ``warps`` warps whose per-warp counts are ``counts``."""
    clk = rates.clock_hz
    busiest = math.ceil(ctas / rates.sm_count)
    per_sm = busiest * warps                        # warps the busiest SM runs, all CTAs together
    pipes = {p: per_sm * counts.by_class.get(p, 0.0) / (lanes / 32) / clk for p, lanes in rates.pipe_lanes.items()}
    tensor = sum(per_sm * macs / rates.tensor_macs_per_clk(dt if dt != "fp8" else "bf16") / clk
                 for dt, macs in counts.macs.items())
    waves = math.ceil(busiest / max(1, blocks_per_sm))
    chain = max(counts.instructions,
                counts.load_waves * rates.l2_round_trip_cycles + counts.barriers * rates.barrier_cycles)
    out = {
        "issue": per_sm * counts.instructions / rates.issue_per_clk / clk,
        "pipe": max(pipes.values()) if pipes else 0.0,
        "tensor": tensor,
        "smem": per_sm * counts.smem_bytes / rates.smem_bytes_per_clk / clk,
        "hbm": hbm_bytes / rates.ceilings.hbm_bytes_per_s,
        "latency": waves * chain / clk + extra_latency_s,
    }
    out["pipe_name"] = max(pipes, key=pipes.get) if pipes else ""
    return out


def floor_s(flops: float, unit: str, hbm_bytes: float, dtype: str, rates: SMRates) -> float:
    """The analytic floor of one launch: ``max(FLOPs / peak, bytes / bandwidth)``. Vector work is counted at the
    fp32 CUDA-core rate (the kernels compute in fp32)."""
    peak = rates.ceilings.peak_flops("tensor", dtype) if unit == "tensor" else \
        rates.ceilings.peak_flops("vector", "fp32")
    return max(flops / peak, hbm_bytes / rates.ceilings.hbm_bytes_per_s)


def estimate(b: dict) -> tuple[float, str]:
    """(the largest bound, its name)."""
    name = max(BOUNDS, key=lambda k: b[k])
    return b[name], name
