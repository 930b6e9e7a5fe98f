"""The issue targets from the measurements, report.md, results.json and the plots."""
from __future__ import annotations

import json
import os
import re

from spin_kernels import perf

from .dwconv import DWCONV_TARGET_SHAPES, NATIVE_DW_IMPLS, dwconv_shape_id
from .e2e import ISSUE4_LATENCY

# ------------------------------------------------------------------------------------------------- reporting

def add_speedups(ops: list[dict]) -> None:
    """Fill ``speedup_vs_eager`` / ``speedup_vs_compile`` of every op record from its siblings (same op/shape)."""
    base: dict = {}
    for r in ops:
        base.setdefault((r["family"], r["shape"], r["op"]), {})[r["impl"]] = r["ms"]
    # K1 / K2 have no eager twin of their own (they replace several eager ops): their speed-ups stay empty and
    # the layer / trunk rows carry the comparison.
    for r in ops:
        ref = base.get((r["family"], r["shape"], r["op"]), {})
        r["speedup_vs_eager"] = ref["eager"] / r["ms"] if "eager" in ref else None
        r["speedup_vs_compile"] = ref["compile"] / r["ms"] if "compile" in ref else None
        if r["op"] == "trunk2_fwd":
            r["speedup_vs_eager"] = ref["reference"] / r["ms"] if "reference" in ref else None


def _valid_ms(v) -> float | None:
    """``v`` as a time if it is a finite positive number, else None (nothing is made up from a bad value)."""
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if v > 0 and v != float("inf") else None   # NaN fails v > 0


def _why_missing(results: dict, pieces: list[str]) -> str:
    """Why none of ``pieces`` left a measurement: their failure or skip record, else 'not run'."""
    for p in pieces:
        for f in results.get("failed") or []:
            if f.get("piece") == p:
                return f"{p} failed: {f.get('error', '?')}"
        for s in results.get("skipped") or []:
            if s.get("piece") == p:
                return f"{p} skipped: {s.get('reason', '?')}"
    return f"not run ({', '.join(pieces)})"


def _target(results: dict, name: str, goal: float, ours_ms, ours: str, ours_pieces: list[str], base_ms, base: str,
            base_pieces: list[str]) -> dict:
    """One target record: ``measured`` = baseline time / our time; None (and a ``note`` saying why) unless both
    times were measured."""
    ours_ms, base_ms = _valid_ms(ours_ms), _valid_ms(base_ms)
    rec = {"name": name, "target": goal, "measured": None, "met": None, "ours": ours, "ours_ms": ours_ms,
           "baseline": base, "baseline_ms": base_ms, "note": ""}
    if ours_ms is None or base_ms is None:
        missing = ([_why_missing(results, ours_pieces)] if ours_ms is None else []) + \
                  ([_why_missing(results, base_pieces)] if base_ms is None else [])
        rec["note"] = "; ".join(missing)
        return rec
    rec["measured"] = base_ms / ours_ms
    rec["met"] = rec["measured"] >= goal
    return rec


def compute_targets(results: dict) -> list[dict]:
    """Issue 4's targets from the latency and depthwise-conv measurements (see the module docstring); every target
    is listed, measured or not."""
    model, rate = ISSUE4_LATENCY
    lat = results.get("latency") or []

    def lat_rec(backend, mode=None):
        return next((r for r in lat if r.get("model") == model and r.get("share_rate") == rate
                     and r.get("backend") == backend and (r.get("compile") or None) == mode), {})

    p = f"latency/{model}/r{rate}"
    ours_ms = lat_rec("cuda").get("cuda_graph_ms")
    ours = "backend cuda (weights-resident persistent kernel), CUDA-graph replay"
    targets = [
        _target(results, f"{model} r={rate} batch-1 latency: cuda vs torch.compile max-autotune", 2.5,
                ours_ms, ours, [f"{p}/cuda"], lat_rec("reference", "max-autotune").get("compiled_ms"),
                "reference, torch.compile(mode='max-autotune')", [f"{p}/compile-max-autotune"]),
        _target(results, f"{model} r={rate} batch-1 latency: cuda vs eager reference", 15.0,
                ours_ms, ours, [f"{p}/cuda"], lat_rec("reference").get("eager_ms"), "reference, eager",
                [f"{p}/reference"]),
    ]
    ops = results.get("ops") or []
    for shape in DWCONV_TARGET_SHAPES:
        sid = dwconv_shape_id(*shape)
        times = {r["impl"]: r.get("ms") for r in ops
                 if r.get("family") == "dwconv" and r.get("shape") == sid and r.get("op") == "dwconv_fwd_bwd"}
        native = {i: _valid_ms(times.get(i)) for i in NATIVE_DW_IMPLS}
        native = {i: t for i, t in native.items() if t is not None}
        best = min(native, key=native.get) if native else None
        b, c, hw, k = shape
        targets.append(_target(
            results, f"depthwise conv k={k} fwd+bwd (B={b}, C={c}, {hw}x{hw}, bf16): cuda vs native", 2.0,
            times.get("cuda"), "spin_kernels.cuda dwconv_forward + backward_input + backward_weight",
            [f"targets/dwconv/{sid}/cuda", f"targets/dwconv/{sid}"],
            native.get(best) if best else None,
            f"F.conv2d(groups=C) + autograd, channels-last, {best or 'eager'}",
            [f"targets/dwconv/{sid}/{i}" for i in NATIVE_DW_IMPLS] + [f"targets/dwconv/{sid}"]))
    return targets


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def _md_table(title: str, columns: list[str], align: str, rows: list, fmt_row, intro: str | None = None) -> list[str]:
    """Lines of one report.md section: ``## title``, an optional intro paragraph, then a Markdown table with the
    header ``columns`` (``align``: one letter a column, "l" left or "r" right), a row ``fmt_row(r)`` for each of
    ``rows``, and a closing blank line."""
    lines = [f"## {title}", ""]
    if intro:
        lines += [intro, ""]
    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    return lines + [_md_row(columns), rule] + [fmt_row(r) for r in rows] + [""]


def _md_row(cells: list) -> str:
    """One Markdown table row: ``cells`` (each written as str() writes it) between pipes."""
    return "| " + " | ".join(map(str, cells)) + " |"


def _target_row(t: dict) -> str:
    measured = "not measured" if t["measured"] is None else f"{t['measured']:.2f}x"
    met = "not measured" if t["met"] is None else ("yes" if t["met"] else "NO")
    note = t["note"] or f"ours: {t['ours']}; baseline: {t['baseline']}"
    note = note.replace("|", "/").replace("\n", " ")[:400]
    return _md_row([t["name"], f">= {t['target']:g}x", measured, met, _fmt(t["ours_ms"], ".4f"),
                    _fmt(t["baseline_ms"], ".4f"), note])


def _op_row(r: dict) -> str:
    return _md_row([r["family"], r["shape"], r["op"], r["impl"], f"{r['ms']:.4f}", f"{r['gb_per_s']:.0f}",
                    f"{r['tflop_per_s']:.1f}", f"{r['pct_of_floor']:.0f}%", _fmt(r.get("speedup_vs_eager"), ".2f"),
                    _fmt(r.get("speedup_vs_compile"), ".2f")])


def _train_row(r: dict) -> str:
    return _md_row([r["model"], r["share_rate"], r["backend"], r["compile"], f"{r['ms_per_step']:.1f}",
                    f"{r['img_per_s']:.0f}", _fmt(r.get("peak_mem_gib"), ".2f"), f"{r['params']:,}"])


def _latency_row(r: dict) -> str:
    return _md_row([r["model"], r["share_rate"], r["backend"], r.get("compile") or "-",
                    *(_fmt(r.get(k), ".3f") for k in ("eager_ms", "cuda_graph_ms", "compiled_ms")),
                    _fmt(r.get("compile_s"), ".0f")])


def write_report(results: dict, out_dir: str) -> dict:
    """Write results.json, report.md and the plots into ``out_dir``; returns the written paths."""
    os.makedirs(out_dir, exist_ok=True)
    add_speedups(results.get("ops", []))
    results["targets"] = compute_targets(results)
    paths = {"json": os.path.join(out_dir, "results.json"), "report": os.path.join(out_dir, "report.md")}
    with open(paths["json"], "w") as f:
        json.dump(results, f, indent=1, default=str)
    c = results.get("ceilings") or {}
    lines = [f"# GPU benchmark — {results.get('device', '?')} — {results.get('date', '')}", "",
             (f"torch {results.get('torch')}, triton {results.get('triton')}, CUDA {results.get('cuda')}; "
              "times are medians of triton.testing.do_bench (L2 flushed). Compare only within this card."), ""]
    if c:
        tf = c.get("tensor_flops", {})
        lines += ["## Ceilings (measured)", "",
                  f"- copy bandwidth: {c.get('hbm_bytes_per_s', 0) / 1e12:.2f} TB/s (read + write)",
                  (f"- bf16 GEMM: {tf.get('bf16', 0) / 1e12:.0f} TFLOP/s; tf32 GEMM: {tf.get('tf32', 0) / 1e12:.0f} "
                   "TFLOP/s"), ""]
    lines += _md_table("Targets (issue 4)",
                       ["target", "goal", "measured", "met", "ours (ms)", "baseline (ms)", "note"], "lrrlrrl",
                       results["targets"], _target_row,
                       intro=("speed-up = baseline time / our time; \"not measured\" when either time is missing "
                              "(the note says why)."))
    if results.get("ops"):
        columns = ["family", "shape", "op", "impl", "time (ms)", "GB/s", "TFLOP/s", "% of floor", "vs eager",
                   "vs compile"]
        lines += _md_table("Ops", columns, "llllrrrrrr", results["ops"], _op_row,
                           intro=("% of floor = floor time / measured time, floor = max(FLOPs / peak, min bytes / "
                                  "bandwidth) with the measured ceilings."))
    if results.get("train"):
        columns = ["model", "r", "backend", "compile", "ms/step", "img/s", "peak mem (GiB)", "params"]
        lines += _md_table("Training step (batch 64, bf16 autocast, SGD)", columns, "lrllrrrr", results["train"],
                           _train_row)
    if results.get("latency"):
        columns = ["model", "r", "backend", "compile", "eager (ms)", "CUDA graph (ms)", "compiled (ms)",
                   "compile time (s)"]
        lines += _md_table("Batch-1 latency (bf16, eval)", columns, "lrllrrrr", results["latency"], _latency_row)
    if results.get("skipped"):
        lines += ["## Skipped", ""] + [f"- {s['piece']}: {s['reason'][:300]}" for s in results["skipped"]] + [""]
    if results.get("failed"):
        lines += ["## Failed pieces", ""] + [f"- `{f['piece']}`: {f['error'][:300]}" for f in results["failed"]]
        lines.append("")
    plots = write_plots(results, out_dir)
    if plots:
        lines += ["## Plots", ""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots]
    with open(paths["report"], "w") as f:
        f.write("\n".join(lines) + "\n")
    paths["plots"] = plots
    return paths


def write_plots(results: dict, out_dir: str) -> list[str]:
    """One bar chart of op times per shape (impls side by side) and one roofline; returns the PNG paths."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    ops = results.get("ops", [])
    paths = []
    for shape in sorted({r["shape"] for r in ops}):
        rs = [r for r in ops if r["shape"] == shape]
        names = list(dict.fromkeys(r["op"] for r in rs))
        impls = list(dict.fromkeys(r["impl"] for r in rs))
        fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names)), 4), dpi=110)
        width = 0.8 / max(1, len(impls))
        for j, impl in enumerate(impls):
            vals = [next((r["ms"] for r in rs if r["op"] == n and r["impl"] == impl), np.nan) for n in names]
            ax.bar(np.arange(len(names)) + j * width, vals, width, label=impl)
        floors = [next((r["floor_ms"] for r in rs if r["op"] == n), np.nan) for n in names]
        ax.scatter(np.arange(len(names)) + 0.4 - width / 2, floors, marker="_", s=300, color="k", label="floor",
                   zorder=3)
        ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=30, ha="right", fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("ms (median)")
        ax.set_title(shape, fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = os.path.join(out_dir, f"ops_{re.sub(r'[^A-Za-z0-9_.-]+', '_', shape)}.png")
        fig.savefig(p)
        plt.close(fig)
        paths.append(p)
    if ops:
        c = perf.Ceilings.from_dict(results["ceilings"]) if results.get("ceilings") else perf.H100
        fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=110)
        xs = np.logspace(-1, 4, 200)
        for unit, style in (("tensor", "-"), ("vector", "--")):
            peak = c.peak_flops(unit, "bf16")
            ax.plot(xs, np.minimum(peak, xs * c.hbm_bytes_per_s) / 1e12, style, color="gray",
                    label=f"roof ({unit})")
        for impl in dict.fromkeys(r["impl"] for r in ops):
            rs = [r for r in ops if r["impl"] == impl]
            ax.scatter([r["intensity"] for r in rs], [r["tflop_per_s"] for r in rs], s=18, label=impl, zorder=3)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("arithmetic intensity (FLOP / min byte)")
        ax.set_ylabel("TFLOP/s")
        ax.set_title(f"roofline — {c.name}", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = os.path.join(out_dir, "roofline.png")
        fig.savefig(p)
        plt.close(fig)
        paths.append(p)
    return paths


