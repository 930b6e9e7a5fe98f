"""``spin kernels-report --cost``: every shipped kernel at every target shape, bounded from its machine code.

For each target shape (:data:`TARGET_SHAPES`) the fused ops' launches are recorded (:mod:`.launches`), each distinct
binary is compiled for sm_90a once (:mod:`.aot`), its SASS counted with the launch's trip counts
(:mod:`.kernel_models`, :mod:`.cost_model`), and the rows are summed into a shared run, a train step (forward +
backward) and an eval forward of the whole trunk (stem and head, PyTorch ops, are not kernels of ours and are left
out). The host's PyTorch compute ops inside a run (BN vector glue, running statistics) are counted per phase
(``host_ops_per_run``) and printed beside the launches, but not costed. All numbers are estimates from machine
code — lower bounds with no stalls modelled — never measurements.
"""
from __future__ import annotations

import time
from types import SimpleNamespace

from . import cost_model, sass
from .cuda_kernels import cuda_shape_costs, format_cuda_totals
from .kernel_models import TRITON_MODELS
from .roofline import ARCHS, vit_recompute_costs
from .targets import (
    IMG_SIZE,
    PHASES,
    TARGET_SHAPES,
    assign_ids,
    phase_total,
    train_step,
)

__all__ = ["IMG_SIZE", "PHASES", "TARGET_SHAPES", "cost_report", "cost_shape", "format_cost_report"]

# Where the calibration kernels must land (ratio = estimate / floor) for the model to be believed: a copy is
# memory-bound at its floor, a large textbook GEMM tensor-bound near its floor.
CALIBRATION_RANGES = {"copy_kernel": ("hbm", 1.0, 1.05), "matmul_kernel": ("tensor", 1.0, 1.3)}


def shape_launches(name: str, dtype: str = "bf16", sm_count: int = 132, host_ops: dict | None = None,
                   recompute: str = "all"):
    """(launches of one shared run, runs in the model, a description) of a target shape; ``host_ops`` (a dict)
    receives the run's host PyTorch compute ops per phase; ``recompute``: the ViT backward's mode."""
    from .launches import convmixer_run_launches, vit_run_launches  # lazy: imports the ops and Triton

    model, batch, rate = TARGET_SHAPES[name]
    arch = ARCHS[model]
    runs = arch["depth"] // rate
    if arch["family"] == "convmixer":
        hw = IMG_SIZE // arch["patch_size"]
        launches = convmixer_run_launches(batch, arch["dim"], hw, arch["kernel_size"], act=arch["act"],
                                          spin=arch["spin_residual"], run_length=rate, dtype=dtype,
                                          sm_count=sm_count, host_ops=host_ops)
        what = f"[{batch}, {arch['dim']}, {hw}, {hw}] k={arch['kernel_size']} {arch['act']}"
    else:
        tokens = (IMG_SIZE // arch["patch_size"]) ** 2 + 1
        launches = vit_run_launches(batch, tokens, arch["embed_dim"], arch["num_heads"],
                                    mlp_ratio=arch["mlp_ratio"], run_length=rate, dtype=dtype, sm_count=sm_count,
                                    host_ops=host_ops, recompute=recompute)
        what = f"[{batch}, {tokens}, {arch['embed_dim']}] heads={arch['num_heads']}"
    return launches, runs, f"{model} {what} {dtype}, runs of {rate} layer(s) × {runs}"


class Compiler:
    """Compiles each distinct launch once: ``{key: (resources, sass.Function)}``."""

    def __init__(self, capability: int = 90):
        self.capability = capability
        self.cache: dict = {}
        self.seconds = 0.0

    def __call__(self, launch):
        from .aot import compile_kernel  # lazy: Triton, only when a kernel is compiled

        key = launch.key()
        if key not in self.cache:
            t0 = time.perf_counter()
            info = compile_kernel(launch.spec(), self.capability, keep_sass=True)
            fns = sass.parse_sass(info.pop("sass"))
            fn = next((f for n, f in fns.items() if n == launch.kernel), None) or next(iter(fns.values()))
            self.cache[key] = (info, fn)
            self.seconds += time.perf_counter() - t0
        return self.cache[key]


def label(launch) -> str:
    """A readable name of a launch's variant: the kernel and its switched-on constexpr flags."""
    c = launch.constexprs
    flags = [k for k, v in c.items() if v is True]
    extra = [f"k{c['KS']}"] if launch.kernel.startswith("dw_") and "KS" in c else []
    if launch.kernel == "gemm_kernel" and c.get("ACT"):
        extra.append("GELU")
    if launch.grid[1] > 1 and launch.kernel in ("gemm_kernel", "pw_bwd_dw_kernel"):
        extra.append(f"split{launch.grid[1]}")
    inside = ",".join(extra + flags)
    return f"{launch.kernel.removesuffix('_kernel')}[{inside}]"


def launch_cost(launch, compiler: Compiler, rates: cost_model.SMRates, dtype: str) -> dict:
    """One launch: its bounds, estimate, floor and ratio."""
    resources, fn = compiler(launch)
    model = TRITON_MODELS[launch.kernel]
    args = SimpleNamespace(**launch.args, grid=launch.grid, ctas=launch.ctas)
    trips = model.trips(args, len(fn.loops))
    counts = cost_model.count(fn, trips)
    hbm = launch.bytes_touched()
    b = cost_model.bounds(counts, ctas=launch.ctas, warps=launch.num_warps,
                          blocks_per_sm=int(resources.get("blocks_per_sm") or 1), hbm_bytes=hbm, rates=rates)
    est, binding = cost_model.estimate(b)
    # a tail one CTA runs after the others (in-kernel finalize): serial, added whatever bound binds
    tail = (model.tail_waves(args) if model.tail_waves else 0) * rates.l2_round_trip_s
    est += tail
    flops = model.flops(args)
    floor = cost_model.floor_s(flops, model.unit, hbm, dtype, rates)
    return {"kernel": launch.kernel, "label": label(launch), "phase": launch.phase, "grid": list(launch.grid),
            "warps": launch.num_warps, "registers": resources.get("registers"), "spills": resources.get("spills"),
            "blocks_per_sm": resources.get("blocks_per_sm"), "loops": len(fn.loops), "trips": trips,
            "instructions_per_warp": counts.instructions, "hbm_bytes": hbm, "l1_bytes": counts.ldg_bytes *
            launch.num_warps * launch.ctas, "flops": flops, "unit": model.unit,
            "tensor_macs": sum(counts.macs.values()) * launch.num_warps * launch.ctas,
            "bounds_s": {k: b[k] for k in cost_model.BOUNDS},
            "pipe": b["pipe_name"], "binding": binding, "tail_s": tail, "estimate_s": est, "floor_s": floor,
            "ratio": est / floor if floor > 0 else float("inf")}


def cost_rows(launches, compiler: Compiler, rates: cost_model.SMRates, dtype: str) -> list:
    """One cost row per distinct launch (same binary, scalars and buffer sizes: one row, ``count`` calls)."""
    rows: dict = {}
    for launch in launches:
        scalars = tuple(sorted((k, v) for k, v in launch.args.items() if isinstance(v, (int, float))))
        key = (launch.phase, launch.key(), launch.grid, scalars, launch.bytes_touched())
        if key in rows:
            rows[key]["count"] += 1
            continue
        rows[key] = {**launch_cost(launch, compiler, rates, dtype), "count": 1}
    return list(rows.values())


def cost_shape(name: str, compiler: Compiler, rates: cost_model.SMRates = cost_model.H100_RATES,
               dtype: str = "bf16", cuda: bool = False) -> dict:
    """The cost table of one target shape: per launch variant and per phase, for one run and the whole trunk.

    ``cuda``: also the CUDA C++ kernels of ``backend="cuda"`` (:func:`.cuda_kernels.cuda_shape_costs`): extra rows
    with ``backend: "cuda"`` after the Triton ones, and the variant's own totals (``totals_cuda``,
    ``train_step_cuda``, ``eval_forward_persistent``, ...); the Triton rows and totals are unchanged."""
    host_ops: dict = {}
    launches, runs, what = shape_launches(name, dtype, rates.sm_count, host_ops)
    table = cost_rows(launches, compiler, rates, dtype)
    assign_ids(table)
    totals = {phase: phase_total([r for r in table if r["phase"] == phase], runs) for phase in PHASES}
    result = {"shape": name, "what": what, "runs": runs, "rows": table, "totals": totals,
              "train_step": train_step(totals),
              "eval_forward": {k: totals["eval"][k] for k in ("model_estimate_s", "model_floor_s", "ratio")},
              "host_ops_per_run": {phase: dict(sorted(host_ops.get(phase, {}).items())) for phase in PHASES}}
    model, batch, rate = TARGET_SHAPES[name]
    arch = ARCHS[model]
    if arch["family"] == "vit":  # the train step in every recompute mode, with the memory each one keeps
        tokens = (IMG_SIZE // arch["patch_size"]) ** 2 + 1
        memory = vit_recompute_costs(batch, arch["embed_dim"], arch["num_heads"], tokens, dtype,
                                     mlp_ratio=arch["mlp_ratio"])
        result["recompute"] = {}
        for mode, mem in memory.items():
            if mode == "all":
                step = result["train_step"]
            else:
                rows = cost_rows(shape_launches(name, dtype, rates.sm_count, recompute=mode)[0], compiler, rates,
                                 dtype)
                step = train_step({ph: phase_total([r for r in rows if r["phase"] == ph], runs)
                                   for ph in ("fwd", "bwd")})
            result["recompute"][mode] = {"train_step": step, "saved_bytes_model": mem["saved_bytes"] *
                                         arch["depth"]}
    if cuda:  # backend="cuda" (spin_kernels.perf.cuda_kernels), added after the Triton totals
        extra = cuda_shape_costs(name, table, runs, rates, dtype)
        result["rows"] = table + extra.pop("cuda_rows", [])
        result.update(extra)
    return result


def calibration(compiler: Compiler, rates: cost_model.SMRates, dtype: str = "bf16") -> list[dict]:
    """The calibration kernels' rows, each with its expected binding bound and ratio range and whether it lands."""
    from .launches import calibration_launches  # lazy: Triton

    rows = []
    for launch in calibration_launches(dtype=dtype, sm_count=rates.sm_count):
        row = launch_cost(launch, compiler, rates, dtype)
        bound, lo, hi = CALIBRATION_RANGES[launch.kernel]
        row.update(expected_binding=bound, expected_ratio=[lo, hi],
                   ok=row["binding"] == bound and lo <= row["ratio"] <= hi)
        rows.append(row)
    return rows


def cost_report(shapes=None, card: str = "h100", dtype: str = "bf16", cuda: bool = False,
                results_root=None) -> dict:
    """The cost tables of ``shapes`` (default: every target shape) on ``card`` as one JSON-ready dict
    (``cuda``: with the CUDA kernels' rows, see :func:`cost_shape`; ``results_root``: where GPU runs' measured
    ceilings are looked for, e.g. ``bench/results``)."""
    rates = cost_model.RATES[card]
    if results_root is not None:   # a GPU run's measured copy bandwidth and GEMM rate replace the nominal ones
        rates, _ = cost_model.measured_rates(card, results_root)
    compiler = Compiler()
    t0 = time.perf_counter()
    out = {"card": rates.name, "dtype": dtype, "label": "estimates from sm_90a machine code (lower bounds, no "
           "stalls modelled); not measurements", "rates": _rates_dict(rates),
           "calibration": calibration(compiler, rates, dtype),
           "shapes": [cost_shape(s, compiler, rates, dtype, cuda) for s in (shapes or TARGET_SHAPES)]}
    out["compile_s"] = round(compiler.seconds, 1)
    out["total_s"] = round(time.perf_counter() - t0, 1)
    out["binaries"] = len(compiler.cache)
    return out


def _rates_dict(rates: cost_model.SMRates) -> dict:
    return {"sm_count": rates.sm_count, "clock_hz": rates.clock_hz, "issue_per_clk": rates.issue_per_clk,
            "pipe_lanes": rates.pipe_lanes, "smem_bytes_per_clk": rates.smem_bytes_per_clk,
            "hbm_bytes_per_s": rates.ceilings.hbm_bytes_per_s, "tensor_flops": rates.ceilings.tensor_flops,
            "l2_round_trip_cycles": rates.l2_round_trip_cycles, "barrier_cycles": rates.barrier_cycles,
            "grid_sync_s": rates.grid_sync_s, "sources": rates.sources}


def _us(s: float) -> str:
    return f"{s * 1e6:9.1f}"


def format_cost_report(report: dict) -> str:
    """One table per shape: kernel variant, bounds, binding bound, estimate, floor, ratio; then the totals."""
    lines = [f"{report['card']}, {report['dtype']}: {report['label']}", "", "== calibration"]
    for r in report["calibration"]:
        lines.append(f"{r['label']:34s} bound {r['binding']:>7s} (expected {r['expected_binding']}), ratio "
                     f"{r['ratio']:.2f} (expected {r['expected_ratio'][0]}-{r['expected_ratio'][1]}): "
                     f"{'ok' if r['ok'] else 'MODEL WRONG'}; " + ", ".join(
                         f"{b} {r['bounds_s'][b] * 1e6:.1f}" for b in cost_model.BOUNDS) + " us")
    for sh in report["shapes"]:
        lines += ["", f"== {sh['shape']}: {sh['what']}",
                  f"{'phase':5s} {'kernel variant':42s} {'x':>2s} {'grid':>14s} {'w':>2s} "
                  + " ".join(f"{b:>9s}" for b in cost_model.BOUNDS)
                  + f" {'bound':>8s} {'est us':>9s} {'floor us':>9s} {'ratio':>7s}"]
        for r in sorted(sh["rows"], key=lambda r: (PHASES.index(r["phase"]), -r["estimate_s"] * r["count"])):
            grid = "x".join(str(g) for g in r["grid"])
            lines.append(f"{r['phase']:5s} {r['label'][:42]:42s} {r['count']:2d} {grid:>14s} {r['warps']:2d} "
                         + " ".join(_us(r["bounds_s"][b]) for b in cost_model.BOUNDS)
                         + f" {r['binding']:>8s} {_us(r['estimate_s'])} {_us(r['floor_s'])} {r['ratio']:7.1f}")
        t = sh["totals"]
        lines.append(f"one run: fwd {t['fwd']['run_estimate_s'] * 1e6:.1f} us (floor "
                     f"{t['fwd']['run_floor_s'] * 1e6:.1f}), bwd {t['bwd']['run_estimate_s'] * 1e6:.1f} us (floor "
                     f"{t['bwd']['run_floor_s'] * 1e6:.1f}), eval {t['eval']['run_estimate_s'] * 1e6:.1f} us (floor "
                     f"{t['eval']['run_floor_s'] * 1e6:.1f})")
        host = sh.get("host_ops_per_run", {})
        lines.append("launches per run (Triton + host PyTorch compute ops, each a kernel launch of its own on a GPU; "
                     "their launch overhead is not in the estimates): " + ", ".join(
                         f"{ph} {sum(r['count'] for r in sh['rows'] if r['phase'] == ph)} + "
                         f"{sum(host.get(ph, {}).values())}" for ph in PHASES))
        lines.append(f"whole trunk ({sh['runs']} runs): train step {sh['train_step']['model_estimate_s'] * 1e3:.3f} ms"
                     f" vs floor {sh['train_step']['model_floor_s'] * 1e3:.3f} ms ({sh['train_step']['ratio']:.1f}x);"
                     f" eval forward {sh['eval_forward']['model_estimate_s'] * 1e3:.3f} ms vs floor "
                     f"{sh['eval_forward']['model_floor_s'] * 1e3:.3f} ms ({sh['eval_forward']['ratio']:.1f}x)")
        if "recompute" in sh:
            lines.append("recompute modes (ViT backward; saved activations of the whole model): " + ", ".join(
                f"{mode} {v['train_step']['model_estimate_s'] * 1e3:.3f} ms ({v['train_step']['ratio']:.2f}x), "
                f"{v['saved_bytes_model'] / 2 ** 20:.0f} MiB" for mode, v in sh["recompute"].items()))
        if "train_step_cuda" in sh or "cuda_note" in sh:  # backend="cuda" totals (cost_shape(cuda=True))
            lines += format_cuda_totals(sh)
    lines.append("")
    lines.append(f"{report['binaries']} binaries compiled for sm_90a in {report['compile_s']} s; bounds in us per "
                 "launch (busiest SM); estimate = the largest bound; floor = max(FLOPs/peak, bytes/bandwidth)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ files and budgets
def _rounded(obj, digits: int = 6):
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}")
    if isinstance(obj, dict):
        return {k: _rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_rounded(v, digits) for v in obj]
    return obj


def stable_json(report: dict) -> dict:
    """The report without run-to-run noise (timings), floats to 6 significant digits: what is committed under
    ``bench/results/static/`` so that every kernel change shows as a diff."""
    return _rounded({k: v for k, v in report.items() if k not in ("compile_s", "total_s")})


def write_json(report: dict, path) -> None:
    """Write :func:`stable_json` of ``report`` to ``path``."""
    import json
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(stable_json(report), indent=1, sort_keys=True) + "\n")


def budgets_of(report: dict) -> dict:
    """``{shape: {row id: ratio}}`` plus each shape's train-step and eval-forward ratios: the values CI holds
    every later report to (a ratio may shrink, never grow)."""
    out = {}
    for sh in report["shapes"]:
        b = {r["id"]: round(r["ratio"], 4) for r in sh["rows"]}
        b["train_step"] = round(sh["train_step"]["ratio"], 4)
        b["eval_forward"] = round(sh["eval_forward"]["ratio"], 4)
        out[sh["shape"]] = b
    return out


def read_budgets(path) -> dict:
    """The budgets JSON written by ``make cost-budgets``."""
    import json
    from pathlib import Path

    return json.loads(Path(path).read_text())


def check_budgets(report: dict, budgets: dict, slack: float = 1e-3) -> list[str]:
    """One line per kernel × shape whose ratio grew past its budget (or has none): kernel, shape, binding bound,
    ratio. ``slack``: relative rounding allowance of the recorded values."""
    failures = []
    for sh in report["shapes"]:
        recorded = budgets.get(sh["shape"])
        if recorded is None:
            failures.append(f"{sh['shape']}: no budgets recorded (make cost-budgets)")
            continue
        for r in sh["rows"]:
            limit = recorded.get(r["id"])
            if limit is None:
                failures.append(f"{sh['shape']} {r['id']}: no budget recorded; ratio {r['ratio']:.2f} "
                                f"({r['binding']}-bound) (make cost-budgets)")
            elif r["ratio"] > limit * (1 + slack):
                failures.append(f"{sh['shape']} {r['id']}: ratio {r['ratio']:.2f} ({r['binding']}-bound, estimate "
                                f"{r['estimate_s'] * 1e6:.1f} us vs floor {r['floor_s'] * 1e6:.1f} us) grew past "
                                f"its budget {limit:.2f}")
        for key, value in (("train_step", sh["train_step"]["ratio"]), ("eval_forward", sh["eval_forward"]["ratio"])):
            if key in recorded and value > recorded[key] * (1 + slack):
                failures.append(f"{sh['shape']} {key}: ratio {value:.2f} grew past its budget {recorded[key]:.2f}")
    return failures
